"""The data-quality report of one entity, within the reader's row scope: how many records
break each logic rule (with sample ids) and how complete each field is.

Two statements whatever the number of rules and fields: one counts records, rule violations
and filled values (``count(column)`` per field) over the scoped table, one picks up to
:data:`SAMPLES` ids per rule.

Which rules a reader gets counted: those whose fields they can see, in clear or masked. A rule
reading a field hidden from them is listed as unavailable, with the reason (its count would say
something about values they may not see at all). Masked fields do count: unlike a filter, a
rule is fixed metadata an administrator wrote, not a predicate the reader can vary to probe a
value (the oracle DESIGN §4 guards filters against), and telling a relationship manager that
three of their customers are under 16 but not students is the point of the report.
Completeness covers the same fields: whether a field is empty shows in every list anyway.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Table, case, func, literal, select, union_all
from sqlalchemy.sql.elements import ColumnElement

from ..errors import FinCRMError
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import FieldSpec, RuleSpec
from ..runtime import utcnow
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.query import FilterContext
from .rules import rule_violation

__all__ = ["quality_report", "filled", "SAMPLES"]

SAMPLES = 20
# types whose empty string (legacy or imported data) counts as empty, like NULL
_TEXT_TYPES = frozenset({"string", "text", "email", "url", "cn_mobile", "cn_id", "bank_card", "enum"})


def filled(table: Table, f: FieldSpec, dialect: str) -> ColumnElement[Any]:
    """An aggregate: how many rows hold a value in ``f`` (an empty list or text is no value)."""
    in_column = f.storage == "column"
    if f.type == "multi_enum":
        doc = table.c[f.name] if in_column else table.c.ext[f.name]
        some: ColumnElement[bool]
        if dialect == "postgresql":
            some = case((func.jsonb_typeof(doc) == "array", func.jsonb_array_length(doc)), else_=0) > 0
        else:
            some = func.json_extract(doc, "$[0]").is_not(None)  # a first element: a non-empty list
        return func.coalesce(func.sum(case((some, 1), else_=0)), 0)
    expr: ColumnElement[Any] = table.c[f.name] if in_column else table.c.ext[f.name].as_string()
    if f.type in _TEXT_TYPES and not f.encrypted:
        expr = func.nullif(expr, "")
    return func.count(expr)


def quality_report(records: RecordService, principal: Principal, entity: str) -> dict[str, Any]:
    v = records.view(principal, entity)
    records.authz.require(principal, entity, "read")
    t = v.table
    scope = v.scope()
    ctx = _reader_context(records, principal, v)
    rules: list[tuple[RuleSpec, ColumnElement[bool]]] = []
    unavailable: dict[str, str] = {}
    for rule in v.spec.rules:
        try:
            rules.append((rule, rule_violation(ctx, rule)))
        except FinCRMError as exc:  # a field the reader may not read in clear, or a referenced entity they may not read
            unavailable[rule.name] = exc.message
    fields = v.visible()
    dialect = records.runtime.dialect
    cols: list[Any] = [func.count().label("total")]
    cols += [func.coalesce(func.sum(case((clause, 1), else_=0)), 0) for _, clause in rules]
    cols += [filled(t, f, dialect) for f in fields]
    samples: dict[str, list[int]] = {rule.name: [] for rule, _ in rules}
    with records.runtime.engine.connect() as conn:
        row = conn.execute(select(*cols).select_from(t).where(scope)).one()
        counts = [int(x or 0) for x in row[1 : 1 + len(rules)]]
        broken = [i for i, n in enumerate(counts) if n]
        if broken:
            parts = [
                select(sub.c.rule, sub.c.id)
                for sub in (
                    select(literal(i).label("rule"), t.c.id).where(scope, rules[i][1]).order_by(t.c.id).limit(SAMPLES).subquery()
                    for i in broken
                )
            ]
            for rule_index, rid in conn.execute(union_all(*parts) if len(parts) > 1 else parts[0]):
                samples[rules[int(rule_index)][0].name].append(int(rid))
    total = int(row[0])
    out_rules: list[dict[str, Any]] = []
    counted = dict(zip((r.name for r, _ in rules), counts))
    for rule in v.spec.rules:
        entry: dict[str, Any] = {
            "name": rule.name,
            "label": rule.label.to_dict(),
            "message": rule.message.to_dict(),
            "fields": list(rule.fields),
        }
        if rule.name in counted:
            entry.update(available=True, violations=counted[rule.name], sample_ids=sorted(samples[rule.name]))
        else:
            entry.update(available=False, reason=unavailable[rule.name])
        out_rules.append(entry)
    completeness = []
    for f, n in zip(fields, row[1 + len(rules) :]):
        n = int(n or 0)
        completeness.append(
            {
                "field": f.name,
                "label": f.label.to_dict(),
                "required": f.required,
                "filled": n,
                "ratio": round(n / total, 4) if total else None,
            }
        )
    return {
        "entity": entity,
        "total": total,
        "rules": out_rules,
        "completeness": completeness,
        "generated_at": FIELD_TYPES["datetime"].dump(utcnow()),
    }


def _reader_context(records: RecordService, principal: Principal, v: Any) -> FilterContext:
    """Rules compiled for the reader: fields they see (clear or masked), references followed
    into entities they may read (with that entity's field policy for them)."""

    def visible(view: Any) -> FilterContext:
        def readable(f: FieldSpec) -> bool:
            return bool(view.clear(f)) or (f.name in view.access and view.access[f.name].view == "masked")

        ctx: FilterContext = view.filter_context()
        return replace(ctx, readable=readable)

    def related(name: str) -> FilterContext:
        records.authz.require(principal, name, "read")
        return visible(records.view(principal, name, v.snap))

    return replace(visible(v), related=related)
