"""Example data connector: a customer's housing provident fund (住房公积金) status and monthly
contribution base, fetched from the fund centre's gateway to enrich the customer profile.

Switch it on with ``FINCRM_PLUGINS=plugins.provident_fund`` plus:

| variable | meaning |
|---|---|
| FINCRM_PROVIDENT_FUND_URL | the gateway's HTTPS endpoint (http only for a local test double) |
| FINCRM_PROVIDENT_FUND_KEY | the key shared with the gateway for the ID token (≥ 16 characters) |

Without both, the plugin offers no connector. The wire protocol (what the gateway must speak):

    POST <url>   Content-Type: application/json
    {"id_token": "<hex HMAC-SHA256(shared key, ID number upper-cased)>", "request_id": "<uuid4>"}

    200 {"status": "正常缴存", "monthly_base": "12000.00"}   → the customer's fields
    404                                                     → no account ("未查到")

The ID number never crosses the wire in clear: the gateway computes the same HMAC over the ID
numbers of its own members and matches tokens (a keyed hash, so a token cannot be reversed by
hashing every possible ID number without the key). Calls, retries, timeouts and dead letters
are FinCRM's (:mod:`engine.flows.interfaces`); this module only speaks the protocol. The customer
must have active ``data_sharing`` consent. Results go to two customer fields that the business
adds (docs/interfaces.md): ``provident_fund_status`` (string) and ``provident_fund_base`` (decimal).
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
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from engine.plugins import DataConnector, hookimpl

__all__ = ["ProvidentFundConnector", "fincrm_data_connectors", "id_token"]

NAME = "provident_fund"
NOT_FOUND = "未查到"
MAX_ANSWER = 64 * 1024  # bytes read from the gateway's answer


def id_token(key: bytes, id_number: str) -> str:
    """The token the gateway matches on: HMAC-SHA256 over the upper-cased, trimmed ID number."""
    return hmac.new(key, id_number.strip().upper().encode("ascii"), hashlib.sha256).hexdigest()


class ProvidentFundConnector:
    """Speaks the gateway protocol above; raises on any failure so FinCRM retries and logs it."""

    reads = ("id_number",)
    purpose = "data_sharing"

    def __init__(self, url: str, key: bytes) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("https", "http"):
            raise ValueError("FINCRM_PROVIDENT_FUND_URL must be an http(s) URL")
        if len(key) < 16:
            raise ValueError("FINCRM_PROVIDENT_FUND_KEY must be at least 16 characters")
        self.url = url
        self._key = key

    def fetch(self, customer: Mapping[str, Any], *, timeout: float) -> Mapping[str, Any]:
        id_number = customer.get("id_number")
        if not id_number:
            raise ValueError("the customer has no ID number to look up")
        body = json.dumps({"id_token": id_token(self._key, str(id_number)), "request_id": str(uuid.uuid4())}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  (scheme checked above)
                raw = resp.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {"provident_fund_status": NOT_FOUND, "provident_fund_base": None}
            raise
        if len(raw) > MAX_ANSWER:
            raise ValueError("the gateway's answer is too large")
        answer = json.loads(raw.decode("utf-8"))
        if not isinstance(answer, dict):
            raise ValueError("the gateway's answer is not a JSON object")
        status, base = answer.get("status"), answer.get("monthly_base")
        if not isinstance(status, str) or not status.strip():
            raise ValueError("the gateway's answer has no status")
        try:
            monthly = None if base in (None, "") else str(Decimal(str(base)))
        except InvalidOperation:
            raise ValueError("the gateway's monthly_base is not a number") from None
        return {"provident_fund_status": status.strip()[:100], "provident_fund_base": monthly}


@hookimpl
def fincrm_data_connectors() -> dict[str, DataConnector]:
    url = os.environ.get("FINCRM_PROVIDENT_FUND_URL", "").strip()
    key = os.environ.get("FINCRM_PROVIDENT_FUND_KEY", "")
    if not url or not key:
        return {}
    return {NAME: ProvidentFundConnector(url, key.encode("utf-8"))}
