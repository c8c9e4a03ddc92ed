"""Example trigger action: ``webhook`` — tell another system that a trigger fired (or a flow
state was entered) by POSTing a JSON summary: which trigger, which entity, which record ids.
Never personal data: the receiver reads what it needs through the API, under its own grants.

Switch it on with ``FINCRM_PLUGINS=plugins.webhook_action`` plus:

| variable | meaning |
|---|---|
| FINCRM_WEBHOOK_URL | where summaries go when the action names no ``url`` (http(s)) |
| FINCRM_WEBHOOK_ALLOW | comma-separated URL prefixes an action's own ``url`` must fall under, e.g. ``https://hooks.bank.example/crm/`` (scheme, host and port must match exactly, the path must start with the prefix's path) |
| FINCRM_WEBHOOK_SECRET | optional: each POST carries ``X-FinCRM-Signature: sha256=<hex HMAC of the body>`` |

In a trigger or a flow state's ``on_enter``::

    {"type": "webhook", "params": {"event": "vip_upgrade", "url": "https://hooks.bank.example/crm/vip"}}

``params`` (both optional): ``url`` (one the allow-list admits; without it FINCRM_WEBHOOK_URL),
``event`` (a name for the receiver, default ``trigger_fired``). A metadata document naming a
URL outside the allow-list, or no URL while FINCRM_WEBHOOK_URL is unset, is refused when it is
frozen; the allow-list is checked again at every send (it may have changed meanwhile).

What is posted, once per 500 records of a firing::

    {"id": "<uuid, the same on every retry: the receiver deduplicates>", "event": "vip_upgrade",
     "source": "trigger:vip_upgrade", "trigger": "vip_upgrade", "entity": "customer",
     "record_ids": [101, 102], "count": 2, "batch": 1, "batches": 1, "fired_at": "2026-01-05T01:00:00Z"}

(``flow`` instead of ``trigger`` for a flow state.) A 2xx answer is success; anything else
raises, so FinCRM retries (5xx, 408, 429, timeouts) and then parks the delivery as a dead
letter operations can replay (``/api/v1/interfaces/dead-letters``). Redirects are not followed:
a redirect could lead outside the allow-list.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Mapping, Sequence

from engine.plugins import ActionContext, TriggerAction, hookimpl

__all__ = ["WebhookAction", "fincrm_trigger_actions", "allowed", "BATCH"]

NAME = "webhook"
BATCH = 500  # record ids per POST
MAX_ANSWER = 64 * 1024


def _prefixes(raw: str | None = None) -> list[urllib.parse.SplitResult]:
    raw = os.environ.get("FINCRM_WEBHOOK_ALLOW", "") if raw is None else raw
    return [urllib.parse.urlsplit(p.strip()) for p in raw.split(",") if p.strip()]


def _port(parts: urllib.parse.SplitResult) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def allowed(url: str, default: str | None = None, allow: str | None = None) -> bool:
    """Whether ``url`` may be posted to: the configured FINCRM_WEBHOOK_URL itself, or under one of
    the FINCRM_WEBHOOK_ALLOW prefixes (same scheme, host and port; path under the prefix's)."""
    default = os.environ.get("FINCRM_WEBHOOK_URL", "").strip() if default is None else default
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    if default and url == default:
        return True
    for prefix in _prefixes(allow):
        if (prefix.scheme, prefix.hostname, _port(prefix)) != (parts.scheme, parts.hostname, _port(parts)):
            continue
        base = prefix.path or "/"
        path = parts.path or "/"
        if path == base or path.startswith(base if base.endswith("/") else base + "/"):
            return True
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


class WebhookAction:
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048, "pattern": "^https?://"},
            "event": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"},
        },
        "additionalProperties": False,
    }

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(_NoRedirect)

    def check_params(self, params: Mapping[str, Any]) -> list[dict[str, str]]:
        url = params.get("url")
        if url is None:
            if not os.environ.get("FINCRM_WEBHOOK_URL", "").strip():
                return [{"pointer": "", "message": "no url given and FINCRM_WEBHOOK_URL is not set"}]
            return []
        if not allowed(str(url)):
            return [{"pointer": "/url", "message": "not under a FINCRM_WEBHOOK_ALLOW prefix"}]
        return []

    def run(self, context: ActionContext) -> Sequence[Mapping[str, Any]]:
        ids = context.record_ids
        batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
        fired = context.now.replace(microsecond=0).isoformat() + "Z"
        out = []
        for n, chunk in enumerate(batches, 1):
            body = {
                "id": str(uuid.uuid4()),
                "event": context.params.get("event") or "trigger_fired",
                "source": context.source,
                context.origin: context.name,
                "entity": context.entity,
                "record_ids": chunk,
                "count": len(chunk),
                "batch": n,
                "batches": len(batches),
                "fired_at": fired,
            }
            out.append({"url": context.params.get("url"), "body": body})
        return out

    def send(self, delivery: Mapping[str, Any], *, timeout: float) -> None:
        url = delivery.get("url") or os.environ.get("FINCRM_WEBHOOK_URL", "").strip()
        if not url:
            raise LookupError("FINCRM_WEBHOOK_URL is not set")
        if not allowed(str(url)):
            raise PermissionError("the webhook URL is not allowed (FINCRM_WEBHOOK_URL / FINCRM_WEBHOOK_ALLOW)")
        data = json.dumps(delivery["body"], ensure_ascii=False, sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "FinCRM-webhook/1"}
        secret = os.environ.get("FINCRM_WEBHOOK_SECRET", "")
        if secret:
            headers["X-FinCRM-Signature"] = "sha256=" + hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()
        request = urllib.request.Request(str(url), data=data, method="POST", headers=headers)
        with self._opener.open(request, timeout=timeout) as resp:  # noqa: S310  (scheme checked by allowed())
            resp.read(MAX_ANSWER)
            if not 200 <= resp.status < 300:
                raise urllib.error.HTTPError(str(url), resp.status, "the webhook receiver did not accept the summary", resp.headers, None)


@hookimpl
def fincrm_trigger_actions() -> dict[str, TriggerAction]:
    return {NAME: WebhookAction()}
