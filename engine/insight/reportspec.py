"""``report`` metadata: validated against the meta-schema, then frozen against the registry.

A report is columns over one entity's records: plain fields, ``ref.field`` (a field of the
referenced record), bucketed fields (month of a date, AUM tier of a decimal), aggregates
(``count``, ``count_distinct``, ``sum``, ``avg``, ``min``, ``max`` of a field or of the time
between two date-times) and per-row aggregates over related records (``related``: the trigger
aggregate language). When any column aggregates, the other columns are the GROUP BY keys.

Freezing checks everything that does not depend on who runs the report — fields exist, types
fit the aggregate or bucket, encrypted fields are never grouped or aggregated, sort and chart
name columns, the filter compiles — so a broken report is refused when it is published, with
every error's JSON pointer, never discovered by the first reader (STYLE 8).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..errors import FinCRMError, MetadataInvalid
from ..meta.registry import Registry
from ..meta.schema import METADATA_DIR, schema_errors
from ..meta.spec import EntitySpec, FieldSpec, Label, Option

__all__ = [
    "ReportSpec",
    "ColumnSpec",
    "ParamSpec",
    "RangeSpec",
    "build_reports",
    "load_report_documents",
    "column_field",
    "DATE_BUCKETS",
    "sample_params",
]

DATE_BUCKETS = ("day", "week", "month", "quarter", "year")
NUMBER_TYPES = ("integer", "decimal")
TIME_TYPES = ("date", "datetime")
ORDERED_TYPES = NUMBER_TYPES + TIME_TYPES

# (entity spec, the condition or aggregate document) → raises FinCRMError if it does not compile
Checker = Callable[[EntitySpec, Mapping[str, Any], Sequence[Mapping[str, Any]]], None]


@dataclass(frozen=True)
class RangeSpec:
    value: str
    label: Label
    gte: Decimal | None = None
    lt: Decimal | None = None


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    label: Label
    default: Any = None
    options: tuple[Option, ...] = ()


@dataclass(frozen=True)
class ColumnSpec:
    """One output column. ``kind``: field (a value per row or a group key), agg (an aggregate
    over the group) or related (a per-row aggregate over related records)."""

    name: str
    label: Label
    kind: str
    field: str | None = None  # a field name or ref.field path
    agg: str | None = None
    bucket: str | tuple[RangeSpec, ...] | None = None
    duration: tuple[str, str, str] | None = None  # (from field, to field, hours|days)
    related: Mapping[str, Any] | None = None
    type: str = "string"  # what the values are: a field type, "number" or "bucket"


@dataclass(frozen=True)
class ReportSpec:
    name: str
    label: Label
    entity: str
    columns: tuple[ColumnSpec, ...]
    description: Label | None = None
    params: tuple[ParamSpec, ...] = ()
    filter: Mapping[str, Any] | None = field(default=None, compare=False)
    sort: tuple[str, ...] = ()
    limit: int | None = None
    chart: Mapping[str, Any] | None = field(default=None, compare=False)
    dashboard: Mapping[str, Any] | None = field(default=None, compare=False)
    schedule: Mapping[str, Any] | None = field(default=None, compare=False)
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as published

    @property
    def grouped(self) -> bool:
        return any(c.kind == "agg" for c in self.columns)

    def column(self, name: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.name == name), None)


def load_report_documents(root: Path | None = None) -> list[dict[str, Any]]:
    """Core report documents (``metadata/core/reports``), in name order."""
    import json

    root = root or METADATA_DIR / "core" / "reports"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.glob("*.json"))]


def column_field(registry: Registry, spec: EntitySpec, path: str) -> tuple[FieldSpec | None, FieldSpec | None, EntitySpec | None]:
    """``path`` → (base field, target field, target entity); for a plain field the last two are
    None. Unknown names give (None, None, None)."""
    from ..store.query import _SYS

    head, _, rest = path.partition(".")
    base = spec.live_field(head) or (_SYS.get(head) if not rest else None)
    if base is None:
        return None, None, None
    if not rest:
        return base, None, None
    if base.type != "ref" or base.ref is None or base.ref not in registry.entities:
        return None, None, None
    target = registry.entities[base.ref]
    tf = target.live_field(rest) or _SYS.get(rest)
    if tf is None:
        return None, None, None
    return base, tf, target


def sample_params(params: Sequence[ParamSpec]) -> dict[str, Any]:
    """A value of the right type for every parameter, to compile the filter at load time."""
    samples = {"date": "2000-01-01", "integer": 1, "decimal": "1", "string": "x"}
    return {p.name: (p.options[0].value if p.options else samples.get(p.type, "x")) for p in params}


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("not a number") from None
    if not d.is_finite():
        raise ValueError("not a finite number")
    return d


def freeze_report(doc: Mapping[str, Any], registry: Registry, check: Checker | None) -> tuple[ReportSpec | None, list[dict[str, str]]]:
    """A frozen report, or the errors (pointers relative to the document)."""
    errors: list[dict[str, str]] = []

    def err(at: str, message: str) -> None:
        errors.append({"pointer": at, "message": message})

    spec = registry.entities.get(doc["entity"])
    if spec is None:
        return None, [{"pointer": "/entity", "message": f"unknown entity {doc['entity']!r}"}]
    params = []
    for i, p in enumerate(doc.get("params", ())):
        options = tuple(Option(o["value"], Label.of(o["label"], o["value"])) for o in p.get("options", ()))
        if p["type"] == "enum" and not options:
            err(f"/params/{i}/options", "an enum parameter needs options")
        params.append(ParamSpec(p["name"], p["type"], Label.of(p["label"], p["name"]), p.get("default"), options))
    if len({p.name for p in params}) != len(params):
        err("/params", "parameter names must be unique")

    columns: list[ColumnSpec] = []
    grouped = any("agg" in c for c in doc["columns"])
    for i, c in enumerate(doc["columns"]):
        col = _freeze_column(registry, spec, c, f"/columns/{i}", grouped, err)
        if col is not None:
            columns.append(col)
    names = [c["name"] for c in doc["columns"]]
    if len(set(names)) != len(names):
        err("/columns", "column names must be unique")
    for i, s in enumerate(doc.get("sort", ())):
        if s.lstrip("-") not in names:
            err(f"/sort/{i}", f"unknown column {s.lstrip('-')!r}")
    chart = doc.get("chart")
    if chart:
        for key in ("x",):
            if key in chart and chart[key] not in names:
                err(f"/chart/{key}", f"unknown column {chart[key]!r}")
        for i, y in enumerate(chart.get("y", ())):
            if y not in names:
                err(f"/chart/y/{i}", f"unknown column {y!r}")
    schedule = doc.get("schedule")
    if schedule:
        known = {p.name for p in params}
        for k in schedule.get("params", {}):
            if k not in known:
                err(f"/schedule/params/{k}", f"unknown parameter {k!r}")
    if check is not None and not errors:
        from ..flows.spec import resolve_params

        filt = None
        if doc.get("filter") is not None:
            filt = resolve_params(doc["filter"], sample_params(params), "/filter", errors)
        related = [c.related for c in columns if c.related is not None]
        if not errors:
            try:
                check(spec, filt or {}, related)
            except FinCRMError as exc:
                details = exc.details or [{"field": "", "message": str(exc)}]
                where = "/filter" if filt else "/columns"
                errors += [{"pointer": where, "message": d.get("message", str(exc))} for d in details]
    if errors:
        return None, errors
    return (
        ReportSpec(
            name=doc["name"],
            label=Label.of(doc["label"], doc["name"]),
            entity=spec.name,
            columns=tuple(columns),
            description=Label.of(doc["description"]) if doc.get("description") else None,
            params=tuple(params),
            filter=doc.get("filter"),
            sort=tuple(doc.get("sort", ())),
            limit=doc.get("limit"),
            chart=doc.get("chart"),
            dashboard=doc.get("dashboard"),
            schedule=doc.get("schedule"),
            doc=MappingProxyType(dict(doc)),
        ),
        [],
    )


def _freeze_column(
    registry: Registry, spec: EntitySpec, c: Mapping[str, Any], at: str, grouped: bool, err: Callable[[str, str], None]
) -> ColumnSpec | None:
    name = c["name"]
    kinds = [k for k in ("agg", "related") if k in c]
    if len(kinds) > 1:
        err(at, "a column is either an aggregate (agg) or a related aggregate (related), not both")
        return None
    if "related" in c:
        if grouped:
            err(at + "/related", "related aggregates are per record: not in a report that groups")
            return None
        if any(k in c for k in ("field", "bucket", "duration")):
            err(at, "a related column takes only name, label and related")
            return None
        if "label" not in c:
            err(at + "/label", "a related column needs a label")
            return None
        return ColumnSpec(name, Label.of(c["label"], name), "related", related=MappingProxyType(dict(c["related"])), type="number")
    agg = c.get("agg")
    if "duration" in c:
        if agg is None:
            err(at + "/agg", "a duration is aggregated: give agg (avg, min, max or sum)")
            return None
        if agg not in ("avg", "min", "max", "sum") or "field" in c or "bucket" in c:
            err(at + "/duration", "a duration takes agg avg, min, max or sum, and no field or bucket")
            return None
        d = c["duration"]
        for key in ("from", "to"):
            f = spec.live_field(d[key])
            if f is None or f.type not in TIME_TYPES:
                err(f"{at}/duration/{key}", f"{d[key]!r} is not a date or date-time field of {spec.name}")
                return None
        if "label" not in c:
            err(at + "/label", "an aggregate column needs a label")
            return None
        return ColumnSpec(name, Label.of(c["label"], name), "agg", agg=agg, duration=(d["from"], d["to"], d.get("unit", "hours")), type="number")
    path = c.get("field")
    base = target = None
    if path is None:
        if agg != "count":
            err(at + "/field", "this column needs a field")
            return None
    else:
        base, tf, _ = column_field(registry, spec, path)
        if base is None:
            err(at + "/field", f"unknown field {path!r} on {spec.name}")
            return None
        target = tf or base
    f = target
    if agg is not None:
        if "label" not in c:
            err(at + "/label", "an aggregate column needs a label")
            return None
        if "bucket" in c:
            err(at + "/bucket", "an aggregate is not bucketed")
            return None
        if f is not None and f.encrypted:
            err(at + "/field", f"{path!r} is encrypted: it cannot be aggregated")
            return None
        if agg in ("sum", "avg") and (f is None or f.type not in NUMBER_TYPES):
            err(at + "/field", f"{agg} needs a number field")
            return None
        if agg in ("min", "max") and (f is None or f.type not in ORDERED_TYPES):
            err(at + "/field", f"{agg} needs a number, date or date-time field")
            return None
        out_type = "integer" if agg in ("count", "count_distinct") else ("number" if agg == "avg" else f.type if f else "number")
        return ColumnSpec(name, Label.of(c["label"], name), "agg", field=path, agg=agg, type=out_type)
    assert f is not None and path is not None
    label = Label.of(c["label"], name) if "label" in c else f.label
    bucket: str | tuple[RangeSpec, ...] | None = None
    if "bucket" in c:
        b = c["bucket"]
        if isinstance(b, str):
            if f.type not in TIME_TYPES:
                err(at + "/bucket", f"{b} buckets need a date or date-time field")
                return None
            bucket = b
        else:
            if f.type not in NUMBER_TYPES:
                err(at + "/bucket", "ranges need a number field")
                return None
            ranges = []
            for j, r in enumerate(b["ranges"]):
                try:
                    ranges.append(RangeSpec(r["value"], Label.of(r["label"], r["value"]), _decimal(r.get("gte")), _decimal(r.get("lt"))))
                except ValueError as exc:
                    err(f"{at}/bucket/ranges/{j}", str(exc))
                    return None
            bucket = tuple(ranges)
    if f.encrypted and grouped:
        err(at + "/field", f"{path!r} is encrypted: it cannot be a group key")
        return None
    out_type = "bucket" if isinstance(bucket, tuple) else "string" if bucket else f.type
    return ColumnSpec(name, label, "field", field=path, bucket=bucket, type=out_type)


def build_reports(registry: Registry, documents: Sequence[Mapping[str, Any]], check: Checker | None) -> Mapping[str, ReportSpec]:
    """Validate and freeze report documents (later documents of a name replace earlier ones:
    core → package → runtime). Raises MetadataInvalid listing every error."""
    latest: dict[str, Mapping[str, Any]] = {}
    errors: list[dict[str, str]] = []
    for doc in documents:
        if not isinstance(doc, Mapping) or doc.get("kind") != "report":
            continue
        errs = schema_errors("report", doc)
        errors += [{"pointer": f"/report/{doc.get('name')}" + e["pointer"], "message": e["message"]} for e in errs]
        if not errs:
            latest[doc["name"]] = doc
    reports: dict[str, ReportSpec] = {}
    for name, doc in latest.items():
        rep, errs = freeze_report(doc, registry, check)
        errors += [{"pointer": f"/report/{name}" + e["pointer"], "message": e["message"]} for e in errs]
        if rep is not None:
            reports[name] = rep
    if errors:
        raise MetadataInvalid("report metadata is invalid", errors)
    return MappingProxyType(reports)


def relative_date(text: str, today: dt.date) -> dt.date | None:
    """Parameter defaults relative to today: today, month_start, prev_month_start, year_start,
    -<n>d, -<n>m. None if ``text`` is none of them."""
    if text == "today":
        return today
    if text == "month_start":
        return today.replace(day=1)
    if text == "prev_month_start":
        first = today.replace(day=1)
        return (first - dt.timedelta(days=1)).replace(day=1)
    if text == "year_start":
        return today.replace(month=1, day=1)
    if len(text) > 2 and text[0] == "-" and text[-1] in "dm" and text[1:-1].isascii() and text[1:-1].isdigit():
        n = int(text[1:-1])
        if text[-1] == "d":
            return today - dt.timedelta(days=n)
        months = today.year * 12 + today.month - 1 - n
        return dt.date(months // 12, months % 12 + 1, 1)
    return None


def report_checker(snap: Any, dialect: str) -> Checker:
    """A check for load time: compiles a report's filter and related aggregates against the
    snapshot's tables (no database access)."""
    from ..flows.conditions import compiled_condition
    from ..store.aggregates import AggregateJoins

    def no_index(spec: EntitySpec) -> Callable[[FieldSpec, Any], str]:
        return lambda f, v: "0" * 64

    def check(spec: EntitySpec, condition: Mapping[str, Any], related: Sequence[Mapping[str, Any]]) -> None:
        cond = dict(condition) if condition else {"field": "id", "op": "is_null", "value": False}
        _, joins = compiled_condition(snap, spec, cond, dialect=dialect, blind_index=no_index, now=dt.datetime(2000, 1, 1))
        assert isinstance(joins, AggregateJoins)
        for doc in related:
            joins(dict(doc))

    return check
