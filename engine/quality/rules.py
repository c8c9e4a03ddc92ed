"""Cross-field rules as SQL: which records break which of their entity's rules.

A rule (``RuleSpec``) says "a record that matches ``when`` must match ``check``". Both are
filter DSL documents; a record *breaks* the rule when ``when`` is true and ``check`` is false.
A condition that is unknown because it compares an empty value neither applies a rule nor
breaks it: missing values are a completeness question, not a logic one.

Writes check the record they wrote with one statement (:func:`check_written`, called by the
records service inside its transaction); imports check a batch of ids with one statement
(:func:`violations`). Both compile the rules as the system sees the record (every field
readable); reports compile them as the reader does (see ``engine.quality.report``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any, Iterable

from sqlalchemy import Connection, Table, and_, case, false, func, not_, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from ..errors import InvalidFilter, ValidationFailed
from ..meta.spec import EntitySpec, FieldSpec, RuleSpec
from ..store.query import FilterContext, compile_filter
from ..store.sets import member_of

__all__ = ["rule_violation", "system_context", "rules_for", "violations", "batch_check", "check_written", "CHUNK"]

CHUNK = 1000  # record ids per statement


def rule_violation(ctx: FilterContext, rule: RuleSpec) -> ColumnElement[bool]:
    """The condition "this record breaks ``rule``" over ``ctx``'s table."""
    broken = not_(func.coalesce(compile_filter(ctx, dict(rule.check)), true()))
    if rule.when is None:
        return broken
    return and_(func.coalesce(compile_filter(ctx, dict(rule.when)), false()), broken)


def _no_blind_index(f: FieldSpec, value: Any) -> str:
    # refused when the metadata is loaded already; kept so no path can compare a ciphertext
    raise InvalidFilter(f"rules test encrypted fields only with is_null ({f.name!r})", [{"field": f.name, "message": "only is_null"}])


def system_context(snap: Any, spec: EntitySpec, table: Table, dialect: str) -> FilterContext:
    """How rules see a record when it is written: every field, references one level deep."""

    def related(name: str) -> FilterContext:
        return FilterContext(spec=snap.registry.entity(name), table=snap.tables[name], dialect=dialect, blind_index=_no_blind_index)

    return FilterContext(spec=spec, table=table, dialect=dialect, blind_index=_no_blind_index, related=related)


def rules_for(spec: EntitySpec, changed: Iterable[str] | None = None) -> list[RuleSpec]:
    """The rules to check after a write: all of them for a new record, for an update those
    reading a field it changed (a record that broke an unrelated rule before — legacy or
    imported data — can still be edited; the report lists it)."""
    if changed is None:
        return list(spec.rules)
    names = set(changed)
    return [r for r in spec.rules if names & set(r.depends)]


def violations(
    conn: Connection, snap: Any, spec: EntitySpec, table: Table, ids: builtins.list[int], *, rules: builtins.list[RuleSpec] | None = None
) -> dict[int, builtins.list[dict[str, str]]]:
    """``{record id: [{"field", "message", "rule"}, …]}`` for the records among ``ids`` that
    break a rule (all of the entity's, or ``rules``); one statement per 1000 ids (a run of
    consecutive ids, an import batch's, is one statement). The message is the rule's English one
    (the rule's label and Chinese text are in the metadata)."""
    return batch_check(snap, spec, table, conn.dialect.name, rules)(conn, ids)


def batch_check(
    snap: Any, spec: EntitySpec, table: Table, dialect: str, rules: builtins.list[RuleSpec] | None = None
) -> Callable[[Connection, builtins.list[int]], dict[int, builtins.list[dict[str, str]]]]:
    """:func:`violations` with the rules compiled once, for a caller checking batch after batch
    (an import: building the rules' expressions was two thirds of the check's time)."""
    chosen = list(spec.rules) if rules is None else rules
    if not chosen:
        return lambda conn, ids: {}
    ctx = system_context(snap, spec, table, dialect)
    clauses = [rule_violation(ctx, r) for r in chosen]
    flags = [case((c, 1), else_=0).label(f"r{i}") for i, c in enumerate(clauses)]
    broken = or_(*clauses)
    found_by = [[{"field": f, "message": f"{rule.message.en} (rule {rule.name})", "rule": rule.name} for f in rule.fields] for rule in chosen]

    def check(conn: Connection, ids: builtins.list[int]) -> dict[int, builtins.list[dict[str, str]]]:
        out: dict[int, builtins.list[dict[str, str]]] = {}
        if not ids:
            return out
        unique_ids = sorted(set(ids))
        # a run of consecutive ids is one BETWEEN (``member_of``) whatever its length
        step = len(unique_ids) if unique_ids[-1] - unique_ids[0] + 1 == len(unique_ids) else CHUNK
        for start in range(0, len(unique_ids), step):
            stmt = select(table.c.id, *flags).where(member_of(table.c.id, unique_ids[start : start + step], dialect), broken)
            for row in conn.execute(stmt):
                found = out.setdefault(int(row[0]), [])
                for i, entries in enumerate(found_by):
                    if row[i + 1]:
                        found += [dict(d) for d in entries]
        return out

    return check


def check_written(conn: Connection, snap: Any, spec: EntitySpec, table: Table, record_id: int, changed: Iterable[str] | None = None) -> None:
    """Raise :class:`ValidationFailed` (422) naming the fields and rules the record just
    written breaks; inside the write's transaction, so nothing of it is kept."""
    chosen = rules_for(spec, changed)
    if not chosen:
        return
    found = violations(conn, snap, spec, table, [record_id], rules=chosen).get(record_id)
    if found:
        names = sorted({d["rule"] for d in found})
        raise ValidationFailed(
            f"{spec.name} breaks data-quality rule{'s' if len(names) > 1 else ''} {', '.join(names)}",
            [{"field": d["field"], "message": d["message"]} for d in found],
        )
