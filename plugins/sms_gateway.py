"""Example notification channel: ``sms`` — text messages through an SMS gateway that speaks
HTTP JSON (the shape most domestic SMS platforms and banks' own gateways offer).

Switch it on with ``FINCRM_PLUGINS=plugins.sms_gateway`` plus:

| variable | meaning |
|---|---|
| FINCRM_SMS_URL | the gateway's endpoint (https; http only for a local test double) |
| FINCRM_SMS_TOKEN | optional: sent as ``Authorization: Bearer <token>`` |
| FINCRM_SMS_SIGN | optional: the registered signature put before every text, e.g. ``【某某银行】`` |

Then a trigger's or flow's ``notify`` action with ``"channel": "sms"`` (``"to": "customer"``,
``"owner"`` or ``"supervisor"``) queues the message in the outbox with the transaction, and the
jobs pass sends it. The wire protocol::

    POST <url>   Content-Type: application/json
    {"to": "13800138000", "text": "【某某银行】您的保单将于7天后到期……", "ref": "fincrm-42"}

    2xx → sent; anything else → the outbox retries with backoff, then a dead message

The mobile number is read when the message is sent (``resolve``: the customer's record, read
by the outbox as the system principal and audited; a staff member's has none, so staff get
e-mail or the inbox instead): it goes in clear to the gateway only — never into the outbox
row, the interface call log, an error message or a log line (errors name the HTTP status, not
the number). ``ref`` is the outbox message id, the same on every retry, so the gateway can drop
duplicates of an at-least-once delivery.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from engine.flows.interfaces import RetryPolicy
from engine.plugins import NotificationChannel, OutboundMessage, Resolve, hookimpl

__all__ = ["SmsGateway", "fincrm_notification_channels", "MAX_TEXT"]

NAME = "sms"
MAX_TEXT = 500  # characters: a long SMS is cut here (the gateway splits it into parts)
MAX_ANSWER = 64 * 1024


class SmsGateway:
    def __init__(self, url: str, token: str = "", sign: str = "") -> None:
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            raise ValueError("FINCRM_SMS_URL must be an http(s) URL")
        self.url = url
        self._token = token
        self.sign = sign

    def text(self, message: OutboundMessage) -> str:
        body = (message.body or "").strip() or message.subject
        return (self.sign + body)[:MAX_TEXT]

    def send(self, message: OutboundMessage, resolve: Resolve) -> None:
        contact = resolve(message.recipient_kind, message.recipient_id)
        mobile = contact.get("mobile")
        if not mobile:
            raise LookupError(f"{message.recipient_kind} {message.recipient_id} has no mobile number to text")
        data = json.dumps({"to": str(mobile), "text": self.text(message), "ref": f"fincrm-{message.id}"}, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url, data=data, method="POST", headers=headers)
        timeout = RetryPolicy.from_env().timeout  # the one outbound timeout (FINCRM_INTERFACE_TIMEOUT)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  (scheme checked above)
                resp.read(MAX_ANSWER)
                status = resp.status
        except urllib.error.HTTPError as exc:
            # the gateway's answer may quote the number back: keep only the status
            raise urllib.error.HTTPError(self.url, exc.code, f"the SMS gateway answered HTTP {exc.code}", exc.headers, None) from None
        if not 200 <= status < 300:
            raise urllib.error.HTTPError(self.url, status, f"the SMS gateway answered HTTP {status}", None, None)  # type: ignore[arg-type]


@hookimpl
def fincrm_notification_channels() -> dict[str, NotificationChannel]:
    url = os.environ.get("FINCRM_SMS_URL", "").strip()
    if not url:
        return {}
    return {NAME: SmsGateway(url, os.environ.get("FINCRM_SMS_TOKEN", ""), os.environ.get("FINCRM_SMS_SIGN", ""))}
