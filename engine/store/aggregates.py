"""Aggregate conditions over related records, compiled to grouped derived tables.

Triggers (and reports) ask questions a plain filter cannot: "net inflow over the last 30 days
above 500,000", "no transaction for 90 days", "last service score below 4". Each aggregate
becomes one ``SELECT key, agg(…) FROM related WHERE … GROUP BY key`` derived table, LEFT
JOINed once to the base table — the shape a hand-written query takes, so the database hashes
or sorts each related table once instead of running a correlated subquery per base row::

    {"agg": {"relation": "transactions", "fn": "sum", "field": "amount",
             "negate_when": {"field": "direction", "op": "eq", "value": "out"},
             "filter": {"field": "occurred_at", "op": "within_last_days", "value": 30}},
     "op": "gt", "value": "500000"}

``relation`` names a relation of the base entity (records of ``entity`` whose ``field`` points
at the base record); alternatively ``entity`` + ``match`` (``{"customer": "customer"}``: the
related record's ``customer`` equals the base record's ``customer``). ``fn`` is count, sum, avg,
min, max or last (the value of ``field`` on the newest related record by ``order``). count and
sum of nothing are 0; the others are NULL, and a comparison with NULL is never true.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Table, and_, case, func, literal, select
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.elements import ColumnElement

from ..errors import InvalidFilter
from ..meta.spec import EntitySpec, FieldSpec
from .query import FilterContext, compile_filter, field_expr

__all__ = ["AggregateJoins", "AGG_FUNCTIONS"]

AGG_FUNCTIONS = frozenset({"count", "sum", "avg", "min", "max", "last"})
_KEYS = frozenset({"relation", "entity", "match", "fn", "field", "filter", "negate_when", "order"})
MAX_AGGREGATES = 8


def _bad(message: str, field_name: str = "agg") -> InvalidFilter:
    return InvalidFilter(message, [{"field": field_name, "message": message}])


@dataclass
class AggregateJoins:
    """Collects the derived tables one condition needs; ``from_clause`` joins them to the base.

    ``context(spec, table)`` gives the filter context for a related entity (same dialect,
    blind index and clock as the base); identical aggregates share one derived table.
    """

    snap: Any
    spec: EntitySpec
    table: Table
    context: Callable[[EntitySpec, Table], FilterContext]
    joins: list[tuple[FromClause, ColumnElement[bool]]] = field(default_factory=list)
    _seen: dict[str, ColumnElement[Any]] = field(default_factory=dict)

    def __call__(self, doc: Any) -> ColumnElement[Any]:
        if not isinstance(doc, dict):
            raise _bad("an aggregate must be a JSON object")
        unknown = set(doc) - _KEYS
        if unknown:
            raise _bad(f"unknown key {sorted(unknown)[0]!r} in aggregate")
        key = json.dumps(doc, sort_keys=True, default=str)
        if key in self._seen:
            return self._seen[key]
        if len(self.joins) >= MAX_AGGREGATES:
            raise _bad(f"at most {MAX_AGGREGATES} aggregates in one condition")
        rel_spec, match = self._target(doc)
        rel_table = self.snap.tables[rel_spec.name]
        ctx = self.context(rel_spec, rel_table)
        fn = doc.get("fn", "count")
        if fn not in AGG_FUNCTIONS:
            raise _bad(f"unknown aggregate function {fn!r}; one of {sorted(AGG_FUNCTIONS)}")
        value_field = self._field(rel_spec, ctx, doc.get("field"), required=fn != "count")
        where: list[ColumnElement[bool]] = [rel_table.c.retained_at.is_(None)]
        if doc.get("filter") is not None:
            where.append(compile_filter(ctx, doc["filter"]))
        rel_key = field_expr(rel_table, match[0])
        where.append(rel_key.is_not(None))
        alias = f"agg{len(self.joins)}"
        value: ColumnElement[Any]
        if fn == "count":
            inner = select(rel_key.label("k"), func.count().label("v")).where(*where).group_by(rel_key)
        elif fn == "last":
            order = self._field(rel_spec, ctx, doc.get("order"), required=True, what="order")
            assert value_field is not None and order is not None
            ranked = (
                select(
                    rel_key.label("k"),
                    field_expr(rel_table, value_field).label("v"),
                    func.row_number().over(partition_by=rel_key, order_by=(field_expr(rel_table, order).desc(), rel_table.c.id.desc())).label("rn"),
                )
                .where(*where)
                .subquery(alias + "r")
            )
            inner = select(ranked.c.k, ranked.c.v).where(ranked.c.rn == 1)
        else:
            assert value_field is not None
            expr = field_expr(rel_table, value_field)
            if value_field.type not in ("integer", "decimal") and fn in ("sum", "avg"):
                raise _bad(f"{fn} needs a number field, not {value_field.name!r}", value_field.name)
            if doc.get("negate_when") is not None:
                expr = case((compile_filter(ctx, doc["negate_when"]), -expr), else_=expr)
            aggregated: ColumnElement[Any] = getattr(func, fn)(expr)  # sum | avg | min | max
            inner = select(rel_key.label("k"), aggregated.label("v")).where(*where).group_by(rel_key)
        sub = inner.subquery(alias)
        base_key = self.table.c.id if match[1] == "id" else field_expr(self.table, match[1])
        self.joins.append((sub, base_key == sub.c.k))
        value = func.coalesce(sub.c.v, literal(0)) if fn in ("count", "sum") else sub.c.v
        self._seen[key] = value
        return value

    def from_clause(self) -> FromClause:
        out: FromClause = self.table
        for sub, on in self.joins:
            out = out.outerjoin(sub, on)
        return out

    # ------------------------------------------------------------------ helpers

    def _target(self, doc: dict[str, Any]) -> tuple[EntitySpec, tuple[FieldSpec, Any]]:
        """The related entity and (its matching field, the base field or "id" it matches)."""
        if "relation" in doc:
            rel = next((r for r in self.spec.relations if r.name == doc["relation"]), None)
            if rel is None:
                raise _bad(f"{self.spec.name} has no relation {str(doc['relation'])[:64]!r}", "relation")
            rel_spec = self.snap.registry.entities.get(rel.entity)
            rf = rel_spec.live_field(rel.field) if rel_spec else None
            if rel_spec is None or rf is None:
                raise _bad(f"relation {rel.name!r} points at nothing", "relation")
            return rel_spec, (rf, "id")
        name, match = doc.get("entity"), doc.get("match")
        rel_spec = self.snap.registry.entities.get(name) if isinstance(name, str) else None
        if rel_spec is None:
            raise _bad("an aggregate needs a relation, or an entity and a match", "entity")
        if not isinstance(match, dict) or len(match) != 1:
            raise _bad("match takes one {related field: base field} pair", "match")
        (rel_name, base_name), = match.items()
        rf = rel_spec.live_field(rel_name)
        if rf is None or rf.type not in ("ref", "user"):
            raise _bad(f"{rel_spec.name} has no reference field {str(rel_name)[:64]!r}", "match")
        if base_name != "id":
            bf = self.spec.live_field(base_name) if isinstance(base_name, str) else None
            if bf is None or bf.type != rf.type or bf.ref != rf.ref:
                raise _bad(f"{self.spec.name}.{str(base_name)[:64]} does not match {rel_spec.name}.{rf.name}", "match")
            return rel_spec, (rf, bf)
        if rf.ref != self.spec.name:
            raise _bad(f"{rel_spec.name}.{rf.name} does not reference {self.spec.name}", "match")
        return rel_spec, (rf, "id")

    @staticmethod
    def _field(spec: EntitySpec, ctx: FilterContext, name: Any, *, required: bool, what: str = "field") -> FieldSpec | None:
        if name is None and not required:
            return None
        f = spec.live_field(name) if isinstance(name, str) else None
        if f is None and name in ("id", "created_at", "updated_at"):
            from .query import _SYS

            f = _SYS[name]
        if f is None or not ctx.readable(f) or f.encrypted:
            raise _bad(f"unknown {what} {str(name)[:64]!r} on {spec.name}", str(name)[:64] if name else what)
        return f
