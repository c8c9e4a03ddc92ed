"""Logging that never carries customers' data: one JSON object (or one text line) per record,
with the request's id, user and route template; request lines lose their query strings; ID
numbers, mobiles and card numbers are masked in every message as a last line of defence.

``FINCRM_LOG_FORMAT`` picks the output of the handler :func:`configure_logging` puts on the root
logger (``fincrm.*`` at INFO, other libraries at WARNING): ``json`` (for production: ``fincrm
serve`` sets it unless told otherwise), ``text`` (the default: demo, tests, CLI) or ``off`` (leave
logging to the host's own configuration). A JSON line::

    {"timestamp": "2026-01-05T09:30:01.234Z", "level": "INFO", "logger": "fincrm.access",
     "message": "GET /api/v1/records/<entity>/<record_id> 200", "request_id": "6f1c…",
     "user": "rm1", "route": "/api/v1/records/<entity>/<record_id>", "method": "GET",
     "status": 200, "duration_ms": 4.1, "pid": 4242}

Filters (``filter=…``), searches (``q=…``) and cursors can hold ID numbers or mobiles, so no
line carries a query string or a body, and access lines name the URL rule template, never the
concrete path. The masking (:func:`redact`) follows the output rules of DESIGN §4 and cannot know
names; it is the net under the rule that code logs ids and counts, never values.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

import orjson
from flask import g, has_request_context, request

from ..security.masking import MASKS

__all__ = [
    "RedactQuery",
    "RedactValues",
    "RequestFields",
    "JsonFormatter",
    "TextFormatter",
    "FinCRMHandler",
    "redact",
    "is_plain",
    "PLAIN",
    "install_log_redaction",
    "configure_logging",
    "log_format",
    "sane_request_id",
    "request_user",
    "gunicorn_logconfig",
    "GUNICORN_ACCESS_FORMAT",
    "LOG_FORMATS",
]

# gunicorn: %(U)s is the path without the query string
GUNICORN_ACCESS_FORMAT = '%(h)s - %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'

LOG_FORMATS = ("json", "text", "off")

# a request line inside a message ("GET /x?q=1 HTTP/1.1" in quotes) or as an argument of one
# (Werkzeug logs '"%s" %s %s' with the bare request line as the first argument)
_QUERY = re.compile(r"(\"[A-Z]+ [^\"?\s]*)\?[^\"\s]*")
_QUERY_ARG = re.compile(r"^([A-Z]+ [^?\s]*)\?\S*")


class RedactQuery(logging.Filter):
    """Drops the query string of request lines (Werkzeug's and gunicorn's access lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_QUERY_ARG.sub(r"\1?…", _QUERY.sub(r"\1?…", a)) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _QUERY.sub(r"\1?…", record.msg)
        return True


# ------------------------------------------------------------------ masking

_D = "0-9\uff10-\uff19"  # ASCII and full-width digits: both reach logs
_X = "Xx\uff38\uff58"
_NUMBER = re.compile(
    rf"(?<![{_D}])(?:"
    rf"[{_D}]{{17}}[{_X}]"  # an ID number ending in its check letter
    rf"|[{_D}]{{4}}(?:[ -][{_D}]{{4}}){{3}}(?:[ -]?[{_D}]{{1,3}})?"  # a card number in groups of four
    rf"|1[3-9][{_D}][ -][{_D}]{{4}}[ -][{_D}]{{4}}"  # a mobile written 138 0013 8000
    rf"|[{_D}]{{11,19}}"  # any run of digits long enough to be one of them
    rf")(?![{_D}])"
)
_ASCII_DIGITS = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx")
_BIRTH_DATE = re.compile(r"(?:18|19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])", re.ASCII)
_MOBILE = re.compile(r"1[3-9]\d{9}", re.ASCII)


def _masked(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"[ -]", "", text.translate(_ASCII_DIGITS))
    n = len(digits)
    if digits[-1] in "Xx" or n == 15 or (n == 18 and _BIRTH_DATE.fullmatch(digits[6:14])):
        return MASKS["id"](digits)
    if n == 11 and _MOBILE.fullmatch(digits):
        return MASKS["mobile"](digits)
    if n == 13 and digits.startswith("86") and _MOBILE.fullmatch(digits[2:]):
        return "86" + MASKS["mobile"](digits[2:])
    if 16 <= n <= 19:
        return MASKS["card"](digits)
    return text  # 12–14 digits and 11 that are no mobile: counts, timestamps, amounts in cents


def redact(text: str) -> str:
    """``text`` with anything shaped like a mainland ID number (18 digits or 17 and X, or 15),
    a mobile (1[3-9] and 9 digits, also +86/spaced) or a bank card (16–19 digits) masked by the
    output rules (``110***********002X``, ``138****8000``, ``尾号1234``)."""
    return _NUMBER.sub(_masked, text) if text else text


# A record carrying this attribute (true) was checked by its producer: redact() leaves its
# rendered message unchanged, so the filter and formatters skip the regex.
PLAIN = "fincrm_plain"
_PLAIN_MESSAGES: dict[str, bool] = {}


def is_plain(message: str) -> bool:
    """Does :func:`redact` leave ``message`` as it is? Remembered per message, for producers
    whose messages come from a small fixed set (an access line: method, route template,
    status), never for messages that carry values."""
    plain = _PLAIN_MESSAGES.get(message)
    if plain is None:
        plain = redact(message) == message
        if len(_PLAIN_MESSAGES) >= 4096:
            _PLAIN_MESSAGES.clear()
        _PLAIN_MESSAGES[message] = plain
    return plain


def _message(record: logging.LogRecord) -> str:
    """The record's message, masked unless its producer checked it is plain."""
    message = record.getMessage()
    return message if getattr(record, PLAIN, False) else redact(message)


class RedactValues(logging.Filter):
    """Masks ID numbers, mobiles and card numbers in a record's message and arguments: the
    message is rendered once, masked, and stored without arguments, so every handler after
    this filter sees the masked text only (a record marked :data:`PLAIN` has nothing to mask)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, PLAIN, False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: logging reports it when it formats
            return True
        record.msg = redact(message)
        record.args = None
        return True


# ------------------------------------------------------------------ the request's fields

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_FIELDS = ("request_id", "user", "route", "method", "status", "duration_ms")


def sane_request_id(value: str | None) -> str | None:
    """An incoming ``X-Request-ID`` if it is a short plain token that carries no personal data
    (at most 64 of ``A-Z a-z 0-9 . _ -``, nothing shaped like an ID number or a mobile)."""
    if value and _REQUEST_ID.fullmatch(value) and redact(value) == value:
        return value
    return None


def request_user() -> str | None:
    """The request's user, if authentication already resolved it (nothing is loaded here)."""
    principal = g.get("fincrm_principal")
    if principal is not None:
        return str(principal.username)
    user = g.get("_login_user")  # Flask-Login's per-request cache
    if user is not None and getattr(user, "is_authenticated", False):
        return str(getattr(user, "username", None) or "") or None
    return None


class RequestFields(logging.Filter):
    """Puts the request's id, user, route template and method on every record logged while a
    request is handled (an access line brings its own, with status and duration)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is not None:
            return True
        if has_request_context():
            rule = request.url_rule
            record.request_id = g.get("fincrm_request_id")
            record.user = request_user()
            record.route = rule.rule if rule is not None else None
            record.method = request.method
        else:
            record.request_id = None
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(record, name, None)
        if value is not None or name in ("request_id", "user"):
            out[name] = redact(value) if name == "user" and isinstance(value, str) else value
    return out


# ------------------------------------------------------------------ output


class _Redacting(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return redact(super().formatStack(stack_info))


class JsonFormatter(_Redacting):
    """One JSON object per line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            **_fields(record),
            "pid": record.process,
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exception"] = redact(record.exc_text)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(body, default=str).decode()


class TextFormatter(_Redacting):
    """``2026-01-05 09:30:01,234 INFO fincrm.access [request id] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(fincrm_rid)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.fincrm_rid = getattr(record, "request_id", None) or "-"
        record.msg, record.args = _message(record), None
        return super().format(record)


class FinCRMHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the process's standard error as it is at each record (a server's log pipe;
    a test's capture), like :data:`logging.lastResort`."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_format(value: str | None = None) -> str:
    """The configured format (``FINCRM_LOG_FORMAT``, default ``text``); refused if unknown."""
    fmt = (value if value is not None else os.environ.get("FINCRM_LOG_FORMAT", "")).strip().lower() or "text"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"FINCRM_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)} (got {fmt[:20]!r})")
    return fmt


def configure_logging(fmt: str) -> FinCRMHandler | None:
    """Put FinCRM's handler on the root logger (replacing one an earlier app put there):
    request fields, masking, then ``fmt`` output. ``off`` removes it and installs nothing."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, FinCRMHandler)]:
        root.removeHandler(old)
    if fmt == "off":
        return None
    handler = FinCRMHandler()
    handler.addFilter(RequestFields())
    handler.addFilter(RedactValues())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    logging.getLogger("fincrm").setLevel(logging.INFO)
    return handler


def install_log_redaction() -> None:
    """Werkzeug's development server logs request lines on its own logger (and may give it its
    own handler): no query strings, no unmasked values there either."""
    logger = logging.getLogger("werkzeug")
    for kind in (RedactQuery, RedactValues):
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


def gunicorn_logconfig(fmt: str, *, access: bool = False) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` for ``fmt`` (json or text): gunicorn's own lines and the
    root logger through FinCRM's handler (request fields, query strings dropped, values masked).

    The root handler is defined here too, not only by :func:`configure_logging`: gunicorn's
    defaults name a ``console`` handler that must exist, and gunicorn applies this again on
    SIGHUP, which would otherwise leave the master and its new workers without FinCRM's
    handler. gunicorn's access lines stay off unless ``access``: the ``fincrm.access`` lines
    carry the request id, user and route template that they lack (and with a logging dict
    gunicorn writes them even when ``accesslog`` is unset)."""
    formatter = "engine.web.logs.JsonFormatter" if fmt == "json" else "engine.web.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "fincrm_request": {"()": "engine.web.logs.RequestFields"},
            "fincrm_query": {"()": "engine.web.logs.RedactQuery"},
            "fincrm_redact": {"()": "engine.web.logs.RedactValues"},
        },
        "formatters": {"fincrm": {"()": formatter}},
        "handlers": {
            "console": {"class": "engine.web.logs.FinCRMHandler", "formatter": "fincrm", "filters": ["fincrm_request", "fincrm_query", "fincrm_redact"]},
        },
        "root": {"level": "WARNING", "handlers": ["console"]},
        "loggers": {
            "fincrm": {"level": "INFO"},
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO" if access else "CRITICAL", "handlers": [], "propagate": access},
        },
    }
