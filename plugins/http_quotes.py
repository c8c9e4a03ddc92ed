"""Example quote feed: ``http_quotes`` — last prices from a JSON quote service, for the securities
quotes job (holdings valued, price alerts).

Switch it on with ``FINCRM_PLUGINS=plugins.http_quotes`` plus ``FINCRM_QUOTES_URL`` (the
service's endpoint; https, or http for a service on the bank's own network) and optionally
``FINCRM_QUOTES_TOKEN`` (sent as ``Authorization: Bearer <token>``). The wire protocol::

    GET <url>?symbols=600519.SH,000001.SZ
    200 [{"symbol": "600519.SH", "price": "1688.00", "prev_close": "1675.50", "time": "2026-01-05T14:59:58+08:00"},
         {"symbol": "000001.SZ", "price": 11.23, "prev_close": 11.30, "time": "2026-01-05T06:59:58Z"}]

Every value is checked before FinCRM uses it: the answer must be a JSON list of objects; each
``symbol`` must be one that was asked for (others are ignored, never invented: a service that
answers for a different symbol does not move a customer's holding); ``price`` and
``prev_close`` are exact decimals (JSON numbers are read as decimals, never floats), finite and
positive; ``time`` is ISO 8601 (with an offset, or naive meaning Beijing time, the exchanges'
clock), returned as naive UTC. A malformed answer, a bad value for a requested symbol, or the
same symbol twice raises (the caller's interface wrapper logs and retries it); symbols the
service does not know are simply missing from the result. At most 100 symbols go in one
request; more are asked for in several.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import urllib.parse
import urllib.request
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping, Sequence
from zoneinfo import ZoneInfo

from engine.plugins import Quote, QuoteFeed, hookimpl

__all__ = ["HttpQuoteFeed", "fincrm_quote_feeds", "parse_quotes", "BATCH"]

NAME = "http_quotes"
BATCH = 100  # symbols per request
MAX_ANSWER = 1 << 20  # bytes
SYMBOL = re.compile(r"[A-Z0-9]{1,12}(\.[A-Z]{1,4})?", re.ASCII)  # 600519.SH, 00700.HK, AAPL.O
EXCHANGE_TZ = ZoneInfo("Asia/Shanghai")


def _decimal(value: Any, what: str, symbol: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{symbol}: {what} is not a number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{symbol}: {what} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise ValueError(f"{symbol}: {what} must be a positive number")
    return d


def _moment(value: Any, symbol: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"{symbol}: time is not an ISO 8601 string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{symbol}: time is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=EXCHANGE_TZ)
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def parse_quotes(answer: Any, symbols: Sequence[str]) -> dict[str, Quote]:
    """The quotes in a service answer for the requested ``symbols`` (checked as above)."""
    if not isinstance(answer, list):
        raise ValueError("the quote service's answer is not a JSON list")
    wanted = {s.upper(): s for s in symbols}
    out: dict[str, Quote] = {}
    for i, item in enumerate(answer):
        if not isinstance(item, dict) or not isinstance(item.get("symbol"), str):
            raise ValueError(f"item {i} of the quote service's answer is not an object with a symbol")
        asked = wanted.get(item["symbol"].strip().upper())
        if asked is None:
            continue  # not asked for: ignored
        if asked in out:
            raise ValueError(f"{asked}: quoted twice")
        out[asked] = Quote(
            symbol=asked,
            price=_decimal(item.get("price"), "price", asked),
            prev_close=_decimal(item.get("prev_close"), "prev_close", asked),
            at=_moment(item.get("time"), asked),
        )
    return out


class HttpQuoteFeed:
    def __init__(self, url: str, token: str = "") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("FINCRM_QUOTES_URL must be an http(s) URL")
        self.url = url
        self._token = token

    def _get(self, symbols: Sequence[str], timeout: float) -> Any:
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        url = self.url + sep + urllib.parse.urlencode({"symbols": ",".join(symbols)}, safe=",.")
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  (scheme checked above)
            raw = resp.read(MAX_ANSWER + 1)
        if len(raw) > MAX_ANSWER:
            raise ValueError("the quote service's answer is too large")
        try:
            return json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_int=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("the quote service's answer is not JSON") from None

    def quotes(self, symbols: Sequence[str], *, timeout: float) -> Mapping[str, Quote]:
        """``{symbol: Quote}`` for the ``symbols`` the service knows, keyed as the caller wrote them."""
        asked = list(dict.fromkeys(s.strip() for s in symbols))
        bad = [s for s in asked if not SYMBOL.fullmatch(s.upper())]
        if bad:
            raise ValueError(f"not a symbol: {bad[0][:20]!r}")
        out: dict[str, Quote] = {}
        for i in range(0, len(asked), BATCH):
            chunk = asked[i : i + BATCH]
            out.update(parse_quotes(self._get([s.upper() for s in chunk], timeout), chunk))
        return out


@hookimpl
def fincrm_quote_feeds() -> dict[str, QuoteFeed]:
    url = os.environ.get("FINCRM_QUOTES_URL", "").strip()
    if not url:
        return {}
    return {NAME: HttpQuoteFeed(url, os.environ.get("FINCRM_QUOTES_TOKEN", ""))}
