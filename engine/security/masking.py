"""Masking rules (DESIGN §4): applied on the server to every output of a sensitive value.

No rule reveals more than: a name's first character; a mobile's first 3 and last 4 digits; an
ID number's first 3 and last 4; a card's last 4 (``尾号1234``).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["MASKS", "mask_value"]


def _name(v: str) -> str:
    return v[:1] + "*" * (len(v) - 1) if len(v) > 1 else "*"


def _mobile(v: str) -> str:
    return v[:3] + "****" + v[-4:] if len(v) >= 11 else "*" * len(v)


def _id(v: str) -> str:
    return v[:3] + "*" * (len(v) - 7) + v[-4:] if len(v) >= 15 else "*" * len(v)


def _card(v: str) -> str:
    return "尾号" + v[-4:] if len(v) >= 8 else "****"


def _email(v: str) -> str:
    local, _, domain = v.partition("@")
    return (local[:1] + "***@" + domain) if domain else "***"


def _full(v: str) -> str:
    return "******"


MASKS: dict[str, Callable[[str], str]] = {
    "name": _name,
    "mobile": _mobile,
    "id": _id,
    "card": _card,
    "email": _email,
    "full": _full,
}


def mask_value(rule: str | None, value: Any) -> Any:
    """The masked rendering of ``value`` (None stays None; rule "none" or None shows it)."""
    if value is None or rule in (None, "none"):
        return value
    return MASKS[rule](str(value))
