"""Consent (PIPL): the one condition every marketing path uses to keep only consenting customers.

A customer has active consent for a purpose when a consent record for that purpose was granted
at or before now, has not expired and has not been withdrawn. The check is SQL (an EXISTS
compiled into the caller's statement), evaluated at query time: a withdrawal takes effect on
the very next query.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, exists, or_
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest

__all__ = ["consent_clause", "PURPOSES"]

PURPOSES = ("marketing", "profiling", "data_sharing", "credit_inquiry")


def consent_clause(snap: Any, customer_id: ColumnElement[Any], purpose: str, now: dt.datetime | None = None) -> ColumnElement[bool]:
    """True for customers with active consent for ``purpose`` (``customer_id`` is their id column)."""
    spec = snap.registry.entity("consent")
    options = spec.field("purpose").option_values if spec.field("purpose") else frozenset(PURPOSES)
    if purpose not in options:
        raise BadRequest(f"unknown consent purpose {purpose[:64]!r}", [{"field": "consent", "message": f"one of {sorted(options)}"}])
    c = snap.tables["consent"]
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    return exists().where(
        and_(
            c.c.customer == customer_id,
            c.c.purpose == purpose,
            c.c.granted_at <= now,
            or_(c.c.expires_at.is_(None), c.c.expires_at > now),
            c.c.withdrawn_at.is_(None),
        )
    )
