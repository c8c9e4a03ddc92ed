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
from typing import Any, Callable, Mapping

from sqlalchemy import Table, case, func, literal, or_, select
from sqlalchemy import exists as sa_exists
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.elements import ColumnElement

from ..errors import InvalidFilter
from ..meta.spec import EntitySpec, FieldSpec
from .query import FilterContext, compile_filter, count_exists_form, field_expr

__all__ = ["AggregateJoins", "AGG_FUNCTIONS"]

AGG_FUNCTIONS = frozenset({"count", "sum", "avg", "min", "max", "last"})
_KEYS = frozenset({"relation", "entity", "match", "fn", "field", "filter", "negate_when", "order"})
MAX_AGGREGATES = 8


@dataclass(frozen=True)
class _Resolved:
    """One checked aggregate, compiled into its parts."""

    key: str
    rel_spec: EntitySpec
    rel_table: Table
    match: tuple[FieldSpec, Any]
    fn: str
    filter: ColumnElement[bool] | None
    expr: ColumnElement[Any] | None
    order: ColumnElement[Any] | None


def _aggregates_in(node: Any, depth: int = 0) -> list[dict[str, Any]]:
    """Every aggregate document in a condition (compared side and value side)."""
    if depth > 20 or not isinstance(node, Mapping):
        return []
    out: list[dict[str, Any]] = []
    if isinstance(node.get("agg"), dict):
        if count_exists_form(node) is not None:
            return out  # compiled as [NOT] EXISTS, no derived table
        out.append(node["agg"])
        value = node.get("value")
        if isinstance(value, dict) and isinstance(value.get("agg"), dict):
            out.append(value["agg"])
        return out
    for key in ("and", "or"):
        if isinstance(node.get(key), list):
            for child in node[key]:
                out += _aggregates_in(child, depth + 1)
    if "not" in node:
        out += _aggregates_in(node["not"], depth + 1)
    return out


def _distinct_on(stmt: Any, key: ColumnElement[Any]) -> Any:
    """PostgreSQL's DISTINCT ON: SQLAlchemy 2.1's extension, or ``distinct(col)`` before it."""
    try:
        from sqlalchemy.dialects.postgresql import distinct_on
    except ImportError:  # SQLAlchemy 2.0
        return stmt.distinct(key)
    return stmt.ext(distinct_on(key))


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
        key = self._key(doc)
        if key not in self._seen:
            self._build([self._resolve(doc)])
        return self._seen[key]

    def prepare(self, condition: Any) -> None:
        """Merge the aggregates of ``condition`` that read the same related table by the same
        key into one derived table: ``SELECT k, sum(…) FILTER (WHERE <30 days>), sum(…) FILTER
        (WHERE <360 days>) … WHERE <30 days> OR <360 days> GROUP BY k`` — one scan of the
        transactions instead of one per aggregate. ``last`` keeps a table of its own."""
        groups: dict[Any, list[_Resolved]] = {}
        for doc in _aggregates_in(condition):
            key = self._key(doc)
            if key in self._seen or any(r.key == key for g in groups.values() for r in g):
                continue
            r = self._resolve(doc)
            group = (r.rel_spec.name, r.match[0].name, r.match[1] if isinstance(r.match[1], str) else r.match[1].name)
            groups.setdefault(group if r.fn != "last" else (key,), []).append(r)
        for members in groups.values():
            self._build(members)

    def exists(self, doc: Any) -> ColumnElement[bool]:
        """EXISTS (related rows meeting the aggregate's filter), correlated to the base row."""
        r = self._resolve(doc)
        rel_key = field_expr(r.rel_table, r.match[0])
        base_key = self.table.c.id if r.match[1] == "id" else field_expr(self.table, r.match[1])
        conds = [rel_key == base_key, r.rel_table.c.retained_at.is_(None)]
        if r.filter is not None:
            conds.append(r.filter)
        return sa_exists().where(*conds)

    def _key(self, doc: Any) -> str:
        if not isinstance(doc, dict):
            raise _bad("an aggregate must be a JSON object")
        unknown = set(doc) - _KEYS
        if unknown:
            raise _bad(f"unknown key {sorted(unknown)[0]!r} in aggregate")
        return json.dumps(doc, sort_keys=True, default=str)

    def _resolve(self, doc: dict[str, Any]) -> "_Resolved":
        """Check one aggregate and compile its parts (filter, value expression)."""
        key = self._key(doc)
        rel_spec, match = self._target(doc)
        rel_table = self.snap.tables[rel_spec.name]
        ctx = self.context(rel_spec, rel_table)
        fn = doc.get("fn", "count")
        if fn not in AGG_FUNCTIONS:
            raise _bad(f"unknown aggregate function {fn!r}; one of {sorted(AGG_FUNCTIONS)}")
        value_field = self._field(rel_spec, ctx, doc.get("field"), required=fn != "count")
        filt = compile_filter(ctx, doc["filter"]) if doc.get("filter") is not None else None
        expr: ColumnElement[Any] | None = None
        order: ColumnElement[Any] | None = None
        if fn == "last":
            order_field = self._field(rel_spec, ctx, doc.get("order"), required=True, what="order")
            assert value_field is not None and order_field is not None
            expr, order = field_expr(rel_table, value_field), field_expr(rel_table, order_field)
        elif fn != "count":
            assert value_field is not None
            expr = field_expr(rel_table, value_field)
            if value_field.type not in ("integer", "decimal") and fn in ("sum", "avg"):
                raise _bad(f"{fn} needs a number field, not {value_field.name!r}", value_field.name)
            if doc.get("negate_when") is not None:
                expr = case((compile_filter(ctx, doc["negate_when"]), -expr), else_=expr)
        return _Resolved(key, rel_spec, rel_table, match, fn, filt, expr, order)

    def _build(self, members: "list[_Resolved]") -> None:
        """One derived table for ``members`` (same related table and key), LEFT JOINed once."""
        if len(self.joins) >= MAX_AGGREGATES:
            raise _bad(f"at most {MAX_AGGREGATES} aggregates in one condition")
        first = members[0]
        rel_table, match = first.rel_table, first.match
        rel_key = field_expr(rel_table, match[0])
        where: list[ColumnElement[bool]] = [rel_table.c.retained_at.is_(None), rel_key.is_not(None)]
        alias = f"agg{len(self.joins)}"
        if first.fn == "last":
            assert first.expr is not None and first.order is not None
            where += [first.filter] if first.filter is not None else []
            newest = (first.order.desc().nulls_last(), rel_table.c.id.desc())
            if self.context(first.rel_spec, rel_table).dialect == "postgresql":
                # DISTINCT ON: one sort of the related rows, the plan a DBA writes by hand
                inner = _distinct_on(select(rel_key.label("k"), first.expr.label("v0")).where(*where), rel_key).order_by(rel_key, *newest)
            else:
                ranked = (
                    select(rel_key.label("k"), first.expr.label("v0"), func.row_number().over(partition_by=rel_key, order_by=newest).label("rn"))
                    .where(*where)
                    .subquery(alias + "r")
                )
                inner = select(ranked.c.k, ranked.c.v0).where(ranked.c.rn == 1)
        else:
            single = len(members) == 1
            if single and first.filter is not None:
                where.append(first.filter)
            else:
                filters = [m.filter for m in members if m.filter is not None]
                if not single and len(filters) == len(members):
                    where.append(or_(*filters))
            columns = []
            for i, m in enumerate(members):
                aggregated: Any = func.count() if m.fn == "count" else getattr(func, m.fn)(m.expr)  # sum | avg | min | max
                if not single and m.filter is not None:
                    aggregated = aggregated.filter(m.filter)
                columns.append(aggregated.label(f"v{i}"))
            inner = select(rel_key.label("k"), *columns).where(*where).group_by(rel_key)
        sub = inner.subquery(alias)
        base_key = self.table.c.id if match[1] == "id" else field_expr(self.table, match[1])
        self.joins.append((sub, base_key == sub.c.k))
        for i, m in enumerate(members):
            v = sub.c[f"v{i}"]
            self._seen[m.key] = func.coalesce(v, literal(0)) if m.fn in ("count", "sum") else v

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
