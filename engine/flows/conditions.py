"""Conditions of triggers and flows compiled against a snapshot, with aggregates and a clock."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any, Callable, Mapping

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement

from ..fieldtypes import LOCAL_TZ
from ..meta.spec import EntitySpec, FieldSpec
from ..store.aggregates import AggregateJoins
from ..store.query import FilterContext, compile_filter

__all__ = ["compiled_condition", "condition_checker", "local_today"]


def local_today(now: dt.datetime) -> dt.date:
    """The business date (Asia/Shanghai) at naive-UTC ``now``."""
    return now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).date()


def _context_factory(snap: Any, dialect: str, blind_index: Callable[[EntitySpec], Any], now: dt.datetime) -> Callable[[EntitySpec, Table], FilterContext]:
    def make(spec: EntitySpec, table: Table) -> FilterContext:
        return FilterContext(
            spec=spec,
            table=table,
            dialect=dialect,
            blind_index=blind_index(spec),
            today=lambda: local_today(now),
            now=lambda: now,
            related=lambda name: make(snap.registry.entity(name), snap.tables[name]),
        )

    return make


def compiled_condition(
    snap: Any, spec: EntitySpec, condition: Mapping[str, Any], *, dialect: str, blind_index: Callable[[EntitySpec], Any], now: dt.datetime
) -> tuple[ColumnElement[bool], AggregateJoins]:
    """The WHERE clause of ``condition`` over ``spec``'s table and the aggregate joins it needs
    (``joins.from_clause()`` is the FROM to select with)."""
    make = _context_factory(snap, dialect, blind_index, now)
    table = snap.tables[spec.name]
    joins = AggregateJoins(snap=snap, spec=spec, table=table, context=make)
    ctx = make(spec, table)
    joins.prepare(condition)  # aggregates over the same table share one scan
    clause = compile_filter(replace(ctx, aggregate=joins), dict(condition))
    return clause, joins


def condition_checker(snap: Any, dialect: str) -> Callable[[EntitySpec, Mapping[str, Any]], None]:
    """A check for metadata validation: compiles a condition (no database access)."""

    def no_index(spec: EntitySpec) -> Callable[[FieldSpec, Any], str]:
        return lambda f, v: "0" * 64

    def check(spec: EntitySpec, condition: Mapping[str, Any]) -> None:
        compiled_condition(snap, spec, condition, dialect=dialect, blind_index=no_index, now=dt.datetime(2000, 1, 1))

    return check
