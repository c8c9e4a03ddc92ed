"""Membership in a set of values, as the cheapest SQL the database plans well.

Batched work (imports, rule checks) asks "which of these thousand ids / keys …". An ``IN`` list
of a thousand bind parameters costs SQLAlchemy a compile and PostgreSQL a long plan; a run of
consecutive ids is a ``BETWEEN``, and on PostgreSQL any other list is one array parameter
(``= ANY(:values)``), planned once whatever its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

__all__ = ["member_of"]


def member_of(column: ColumnElement[Any], values: Sequence[Any], dialect: str) -> ColumnElement[bool]:
    """``column`` is one of ``values`` (which must be non-empty and of the column's type)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ordered = sorted(set(values))
        if ordered[-1] - ordered[0] + 1 == len(ordered):
            return column.between(ordered[0], ordered[-1])
        values = ordered
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))
