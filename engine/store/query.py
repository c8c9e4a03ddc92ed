"""Compile the filter DSL, sorts and keyset cursors into SQLAlchemy Core expressions.

One language for list filters, report filters, auto-tags, triggers and row conditions::

    {"and": [{"field": "aum", "op": "gte", "value": "1000000"},
             {"field": "tags", "op": "has", "value": "vip"}]}

Every field becomes an expression through :func:`field_expr`, wherever it is stored (a column
or the ``ext`` JSON document), and every value is checked by its field type before it is bound
as a parameter. Nothing from the request is ever spliced into SQL text.

A condition may compare two fields of the same record instead of a field and a value::

    {"field": "maturity_date", "op": "gt", "value": {"field": "start_date"}}

Only ``eq ne lt lte gt gte``; both fields must be readable by the caller and neither encrypted;
numbers (integer, decimal), dates and date-times compare in order with their own kind, other
types only for (in)equality with the same type (references: to the same entity). An empty side
makes the comparison unknown (no match), except ``ne``, which means "is distinct from". Values
are brought to one form in SQL when the two fields are stored differently (a column and ``ext``;
decimals of different scales on SQLite), so the comparison never depends on storage.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

from sqlalchemy import BigInteger, Date, DateTime, Integer, Numeric, Table, and_, cast, exists, false, func, literal, literal_column, not_, or_, select, true, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from ..errors import FieldError, InvalidCursor, InvalidFilter, InvalidSort
from ..fieldtypes import ENCRYPTED_OPS, FIELD_TYPES, LOCAL_TZ, normalize_text
from ..meta.spec import EntitySpec, FieldSpec, Label
from .tables import tag_table

__all__ = [
    "field_expr",
    "FilterContext",
    "compile_filter",
    "SortKey",
    "parse_sort",
    "order_by",
    "keyset_clause",
    "encode_cursor",
    "decode_cursor",
    "SYSTEM_SORT",
]

MAX_NODES = 200
MAX_DEPTH = 10
MAX_IN = 1000

_SYS = {
    "id": FieldSpec("id", "integer", Label("编号", "ID")),
    "version": FieldSpec("version", "integer", Label("版本", "Version")),
    "created_at": FieldSpec("created_at", "datetime", Label("创建时间", "Created at")),
    "updated_at": FieldSpec("updated_at", "datetime", Label("更新时间", "Updated at")),
    "created_by": FieldSpec("created_by", "user", Label("创建人", "Created by")),
    "updated_by": FieldSpec("updated_by", "user", Label("更新人", "Updated by")),
}
SYSTEM_SORT = frozenset({"id", "created_at", "updated_at"})


def field_expr(table: Table, f: FieldSpec) -> ColumnElement[Any]:
    """The SQL expression that reads field ``f``, whether it is a column or lives in ``ext``."""
    if f.storage == "column" or f.name in _SYS:
        return table.c[f.name]
    element = table.c.ext[f.name]
    kind = FIELD_TYPES[f.type].json_as
    expr: ColumnElement[Any]
    if kind == "integer":
        expr = element.as_integer()
    elif kind == "numeric":
        expr = element.as_numeric(f.precision, f.scale)
    elif kind == "boolean":
        expr = element.as_boolean()
    elif kind == "json":
        expr = element
    else:
        expr = element.as_string()
    return expr


@dataclass(frozen=True)
class FilterContext:
    """What compiling a filter needs besides the spec: the table and dialect, plus hooks."""

    spec: EntitySpec
    table: Table
    dialect: str
    blind_index: Callable[[FieldSpec, Any], str]
    readable: Callable[[FieldSpec], bool] = lambda f: True  # field-level read permission
    today: Callable[[], dt.date] = lambda: dt.datetime.now(LOCAL_TZ).date()
    # naive UTC "now" for datetime windows; jobs inject their clock through it and ``today``
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    # aggregate conditions over related records ({"agg": …}): only triggers and reports set it
    aggregate: Callable[[Any], ColumnElement[Any]] | None = None
    # ``ref.field`` paths (e.g. ``product.type`` on holdings): the context of a referenced entity
    related: Callable[[str], "FilterContext"] | None = None


def _field(ctx: FilterContext, name: Any, where: str) -> FieldSpec:
    if not isinstance(name, str):
        raise InvalidFilter("a filter condition needs a field name", [{"field": where, "message": "missing field"}])
    f = _SYS.get(name) or ctx.spec.live_field(name)
    if name == "tags":
        return FieldSpec("tags", "multi_enum", Label("标签", "Tags"))
    if f is None or not ctx.readable(f):
        raise InvalidFilter(f"unknown field {name!r}", [{"field": name, "message": "unknown field"}])
    return f


def _value(f: FieldSpec, value: Any) -> Any:
    if f.name == "tags":
        if not isinstance(value, str) or not value.strip():
            raise FieldError("must be a tag name")
        return normalize_text(value)
    if f.type == "multi_enum":
        return FIELD_TYPES["enum"].normalize(value, f)
    v = FIELD_TYPES[f.type].normalize(value, f)
    if v is None:
        raise FieldError("must not be empty")
    return v


def _bindable(f: FieldSpec, v: Any) -> Any:
    """JSON-stored dates are ISO strings: compare them as strings, which sort the same way."""
    if f.storage == "json" and f.name not in _SYS and f.type in ("date", "datetime"):
        return FIELD_TYPES[f.type].dump(v)
    return v


def compile_filter(ctx: FilterContext, node: Any) -> ColumnElement[bool]:
    """The WHERE clause for a filter document; raises :class:`InvalidFilter` naming the field."""
    counter = [0]
    return _compile(ctx, node, 0, counter)


def _compile(ctx: FilterContext, node: Any, depth: int, counter: list[int]) -> ColumnElement[bool]:
    counter[0] += 1
    if counter[0] > MAX_NODES or depth > MAX_DEPTH:
        raise InvalidFilter("filter is too large or too deeply nested")
    if not isinstance(node, dict):
        raise InvalidFilter("a filter must be a JSON object")
    if not node:
        return true()
    if "agg" in node:
        return _aggregate_condition(ctx, node)
    if set(node) & {"and", "or", "not"}:
        if len(node) != 1:
            raise InvalidFilter("'and', 'or' and 'not' must stand alone in their object")
        (key, value), = node.items()
        if key == "not":
            # SQL's NOT of an unknown (NULL) comparison is unknown, which would drop every record
            # with no value; "not X" means "X is not true", as ne/nin do.
            return not_(func.coalesce(_compile(ctx, value, depth + 1, counter), false()))
        if not isinstance(value, list):
            raise InvalidFilter(f"'{key}' takes a list of conditions")
        parts = [_compile(ctx, v, depth + 1, counter) for v in value]
        if not parts:
            return true() if key == "and" else false()
        return and_(*parts) if key == "and" else or_(*parts)
    unknown = set(node) - {"field", "op", "value"}
    if unknown:
        raise InvalidFilter(f"unknown key {sorted(unknown)[0]!r} in filter condition")
    name = node.get("field")
    if isinstance(node.get("value"), dict) and "field" in node["value"]:
        if isinstance(name, str) and "." in name:
            raise InvalidFilter("a field comparison compares two fields of the same record", [{"field": name[:64], "message": "no paths here"}])
        return _field_comparison(ctx, _field(ctx, name, "filter"), node.get("op", "eq"), node["value"])
    if isinstance(name, str) and "." in name and ctx.related is not None:
        return _path_condition(ctx, node, name, depth, counter)
    f = _field(ctx, name, "filter")
    op = node.get("op", "eq")
    try:
        return _condition(ctx, f, op, node.get("value"))
    except FieldError as exc:
        raise InvalidFilter(f"invalid value for {f.name!r}", [{"field": f.name, "message": str(exc)}]) from exc


def _condition(ctx: FilterContext, f: FieldSpec, op: Any, value: Any) -> ColumnElement[bool]:
    allowed = frozenset({"has"}) if f.name == "tags" else FIELD_TYPES[f.type].ops
    if f.encrypted:
        allowed = ENCRYPTED_OPS if f.searchable else frozenset({"is_null"})
    if not isinstance(op, str) or op not in allowed:
        raise InvalidFilter(f"operator {op!r} is not allowed on {f.name!r}", [{"field": f.name, "message": f"allowed: {sorted(allowed)}"}])

    if op == "is_null":
        if not isinstance(value, bool):
            raise FieldError("is_null takes true or false")
        col = ctx.table.c[f.name] if f.encrypted else field_expr(ctx.table, f)
        return col.is_(None) if value else col.is_not(None)
    if f.name == "tags":
        t = tag_table
        return exists().where(t.c.entity == ctx.spec.name, t.c.record_id == ctx.table.c.id, t.c.tag == _value(f, value))
    if op == "has":
        return _json_has(ctx, f, _value(f, value))
    if f.encrypted:
        col = ctx.table.c[f.blind_index_column]
        if op == "eq":
            return col == ctx.blind_index(f, _value(f, value))
        return col.in_([ctx.blind_index(f, _value(f, v)) for v in _list(value)])

    expr = field_expr(ctx.table, f)
    if op in ("contains", "startswith"):
        compat = bool(f.pattern) or f.type not in ("string", "text")
        text = normalize_text(value, compat=compat) if isinstance(value, str) else None
        if not text:
            raise FieldError(f"{op} takes a non-empty string")
        if len(text) > 200:
            raise FieldError("search text is too long")
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%" if op == "contains" else f"{escaped}%"
        return expr.ilike(pattern, escape="\\") if op == "contains" else expr.like(pattern, escape="\\")
    if op in ("in", "nin"):
        values = [_bindable(f, _value(f, v)) for v in _list(value)]
        cond = expr.in_(values)
        return cond if op == "in" else or_(not_(cond), expr.is_(None))
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise FieldError("between takes [low, high]")
        lo, hi = (_bindable(f, _value(f, v)) for v in value)
        return expr.between(lo, hi)
    if op in ("within_next_days", "within_last_days", "older_than_days"):
        days = FIELD_TYPES["integer"].normalize(value, FieldSpec("days", "integer", Label("", ""), min=0, max=36500))
        start, end = _window(ctx, f, "within_last_days" if op == "older_than_days" else op, days)
        if op == "older_than_days":
            before: ColumnElement[bool] = expr < _bindable(f, start)  # strictly before the last-N-days window
            return before
        return expr.between(_bindable(f, start), _bindable(f, end))
    v = _bindable(f, _value(f, value))
    compare: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: expr == v,
        "ne": lambda: or_(expr != v, expr.is_(None)),
        "lt": lambda: expr < v,
        "lte": lambda: expr <= v,
        "gt": lambda: expr > v,
        "gte": lambda: expr >= v,
    }
    return compare[op]()


FIELD_COMPARE_OPS = ("eq", "ne", "lt", "lte", "gt", "gte")
# field types that compare in order, by kind (two fields compare in order only within a kind)
_ORDERED_KIND = {"integer": "number", "decimal": "number", "date": "date", "datetime": "datetime"}
# field types that two fields of the same type may compare for (in)equality
_EQUALITY_TYPES = frozenset({"string", "enum", "email", "cn_mobile", "cn_id", "bank_card", "url", "boolean", "ref", "user"})


def _field_comparison(ctx: FilterContext, f: FieldSpec, op: Any, value: Mapping[str, Any]) -> ColumnElement[bool]:
    """``{"field": a, "op": "gt", "value": {"field": b}}``: two fields of one record compared."""
    extra = set(value) - {"field"}
    if extra:
        raise InvalidFilter(f"unknown key {sorted(extra)[0]!r} in field comparison", [{"field": f.name, "message": "the value takes only 'field'"}])
    other_name = value.get("field")
    if not isinstance(other_name, str) or "." in other_name:
        raise InvalidFilter("a field comparison names a field of the same record", [{"field": f.name, "message": "value.field must be a field name"}])
    other = _field(ctx, other_name, "value")
    if "tags" in (f.name, other.name) or f.encrypted or other.encrypted:
        bad = f if f.name == "tags" or f.encrypted else other
        raise InvalidFilter(f"{bad.name!r} cannot be compared with another field", [{"field": bad.name, "message": "tags and encrypted fields are not comparable"}])
    kind = _ORDERED_KIND.get(f.type)
    if kind is not None and kind == _ORDERED_KIND.get(other.type):
        allowed: tuple[str, ...] = FIELD_COMPARE_OPS
    elif f.type == other.type and f.type in _EQUALITY_TYPES and f.ref == other.ref:
        allowed = ("eq", "ne")
    else:
        raise InvalidFilter(
            f"{f.name!r} ({f.type}) and {other.name!r} ({other.type}) cannot be compared",
            [{"field": f.name, "message": f"not comparable with {other.name!r}"}],
        )
    if not isinstance(op, str) or op not in allowed:
        raise InvalidFilter(f"operator {op!r} cannot compare {f.name!r} with {other.name!r}", [{"field": f.name, "message": f"allowed: {list(allowed)}"}])
    left, right = _comparable(ctx, f, other)
    compare: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: left == right,
        "ne": lambda: left.is_distinct_from(right),
        "lt": lambda: left < right,
        "lte": lambda: left <= right,
        "gt": lambda: left > right,
        "gte": lambda: left >= right,
    }
    return compare[op]()


def _in_column(f: FieldSpec) -> bool:
    return f.storage == "column" or f.name in _SYS


def _comparable(ctx: FilterContext, a: FieldSpec, b: FieldSpec) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """Expressions for two fields that compare correctly whatever their storage: JSON-stored
    dates are ISO text (cast on PostgreSQL; on SQLite column dates are ISO text too, date-times
    differ in form and go through ``datetime()``), and SQLite keeps column decimals as scaled
    integers (brought to one scale)."""
    ea, eb = field_expr(ctx.table, a), field_expr(ctx.table, b)
    if a.type in ("date", "datetime"):
        if _in_column(a) == _in_column(b):
            return ea, eb
        if ctx.dialect == "postgresql":
            sql_type = Date() if a.type == "date" else DateTime()
            return (ea if _in_column(a) else cast(ea, sql_type)), (eb if _in_column(b) else cast(eb, sql_type))
        if a.type == "datetime":
            return func.datetime(ea), func.datetime(eb)
        return ea, eb
    scaled = [f for f in (a, b) if f.type == "decimal" and _in_column(f)]
    if ctx.dialect != "sqlite" or not scaled or (len(scaled) == 2 and a.scale == b.scale):
        return ea, eb
    unit = max(f.scale for f in (a, b) if f.type == "decimal")

    def units(f: FieldSpec, e: ColumnElement[Any]) -> ColumnElement[Any]:
        if not _in_column(f):  # a JSON number: exact after rounding at the finest scale in play
            return func.round(type_coerce(e, Numeric()) * literal(10**unit, BigInteger()))
        shift = unit - (f.scale if f.type == "decimal" else 0)
        return type_coerce(e, BigInteger()) * literal(10**shift, BigInteger())

    return units(a, ea), units(b, eb)


def _path_condition(ctx: FilterContext, node: dict[str, Any], name: str, depth: int, counter: list[int]) -> ColumnElement[bool]:
    """``{"field": "product.type", …}``: the referenced record meets the condition, compiled as
    ``product IN (SELECT id FROM product WHERE type = …)`` (one level of reference)."""
    head, rest = name.split(".", 1)
    f = ctx.spec.live_field(head)
    if f is None or f.type != "ref" or f.ref is None or not ctx.readable(f) or "." in rest:
        raise InvalidFilter(f"unknown field {name[:64]!r}", [{"field": name[:64], "message": "unknown field"}])
    assert ctx.related is not None
    target = replace(ctx.related(f.ref), related=None, aggregate=None)
    inner = _compile(target, {**node, "field": rest}, depth + 1, counter)
    return field_expr(ctx.table, f).in_(select(target.table.c.id).where(inner, target.table.c.retained_at.is_(None)))


AGG_OPS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte"})


def _aggregate_condition(ctx: FilterContext, node: dict[str, Any]) -> ColumnElement[bool]:
    """``{"agg": {...}, "op": "gt", "value": "500000" | {"agg": {...}, "times": "0.25"}}``:
    an aggregate over related records compared with a number or with another aggregate."""
    if ctx.aggregate is None:
        raise InvalidFilter("aggregate conditions are only available in triggers and reports", [{"field": "agg", "message": "not allowed here"}])
    unknown = set(node) - {"agg", "op", "value"}
    if unknown:
        raise InvalidFilter(f"unknown key {sorted(unknown)[0]!r} in aggregate condition")
    op = node.get("op", "eq")
    if op not in AGG_OPS:
        raise InvalidFilter(f"operator {op!r} is not allowed on an aggregate", [{"field": "agg", "message": f"allowed: {sorted(AGG_OPS)}"}])
    form = count_exists_form(node)
    exists_of = getattr(ctx.aggregate, "exists", None)
    if form is not None and exists_of is not None:
        # "no transaction in 90 days": NOT EXISTS, which the database runs as an anti-join
        # probing an index for the candidates only, instead of counting every customer's rows
        some: ColumnElement[bool] = exists_of(node["agg"])
        return some if form else not_(some)
    left = ctx.aggregate(node["agg"])
    value = node.get("value")
    right: Any
    if isinstance(value, dict) and "agg" in value:
        extra = set(value) - {"agg", "times", "divide"}
        if extra:
            raise InvalidFilter(f"unknown key {sorted(extra)[0]!r} in aggregate value")
        right = ctx.aggregate(value["agg"])
        # "k times the monthly average over a year": {"agg": <sum over 360 days>, "times": k, "divide": 12}
        factor = _number(value.get("times", 1), "times") / _number(value.get("divide", 1), "divide") if _number(value.get("divide", 1), "divide") else None
        if factor is None:
            raise InvalidFilter("aggregate divide must not be zero", [{"field": "agg", "message": "divide must not be zero"}])
        if factor != 1:
            # SQLite has no exact decimals: a float factor (e.g. 0.25) there, NUMERIC on PostgreSQL
            right = right * (literal(float(factor)) if ctx.dialect == "sqlite" else literal(factor, Numeric(30, 10)))
    else:
        number = _number(value, "value")
        if isinstance(left.type, Integer):  # counts (and integer fields) compare with integers
            right = literal(int(number), left.type) if number == number.to_integral_value() else literal(float(number))
        else:
            right = literal(number, left.type)  # money binds through its own type (scaled on SQLite)
    compare: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: left == right,
        "ne": lambda: left != right,
        "lt": lambda: left < right,
        "lte": lambda: left <= right,
        "gt": lambda: left > right,
        "gte": lambda: left >= right,
    }
    return compare[op]()


def count_exists_form(node: Mapping[str, Any]) -> bool | None:
    """A count compared with 0 or 1 asks whether related rows exist: True for "some exist"
    (``gt 0``, ``gte 1``, ``ne 0``), False for "none exist" (``eq 0``, ``lte 0``, ``lt 1``),
    None for any other comparison."""
    agg, value, op = node.get("agg"), node.get("value"), node.get("op", "eq")
    if not isinstance(agg, Mapping) or agg.get("fn", "count") != "count" or isinstance(value, (bool, dict)) or value is None:
        return None
    try:
        n = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if (op == "eq" and n == 0) or (op == "lte" and n == 0) or (op == "lt" and n == 1):
        return False
    if (op == "gt" and n == 0) or (op == "gte" and n == 1) or (op == "ne" and n == 0):
        return True
    return None


def _number(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise InvalidFilter(f"aggregate {name} must be a number", [{"field": "agg", "message": f"{name} must be a number"}])
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidFilter(f"aggregate {name} must be a number", [{"field": "agg", "message": f"{name} must be a number"}]) from None
    if not number.is_finite() or abs(number) >= Decimal(10) ** 18:
        raise InvalidFilter(f"aggregate {name} is out of range", [{"field": "agg", "message": f"{name} is out of range"}])
    return number


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise FieldError("takes a non-empty list")
    if len(value) > MAX_IN:
        raise FieldError(f"takes at most {MAX_IN} values")
    return value


def _window(ctx: FilterContext, f: FieldSpec, op: str, days: int) -> tuple[Any, Any]:
    today = ctx.today()
    if f.type == "date":
        delta = dt.timedelta(days=days)
        return (today, today + delta) if op == "within_next_days" else (today - delta, today)
    now = ctx.now()
    delta = dt.timedelta(days=days)
    return (now, now + delta) if op == "within_next_days" else (now - delta, now)


def _json_has(ctx: FilterContext, f: FieldSpec, value: str) -> ColumnElement[bool]:
    expr = ctx.table.c[f.name] if f.storage == "column" else ctx.table.c.ext[f.name]
    if ctx.dialect == "postgresql":
        return type_coerce(expr, JSONB).contains([value])
    each = func.json_each(expr).table_valued("value")
    return exists(select(literal_column("1")).select_from(each).where(each.c.value == value))


# ---------------------------------------------------------------- sorting and keyset paging


@dataclass(frozen=True)
class SortKey:
    field: FieldSpec
    desc: bool


def parse_sort(spec: EntitySpec, text: str | None, readable: Callable[[FieldSpec], bool] = lambda f: True) -> list[SortKey]:
    """``-aum,name`` → sort keys, always ending with ``id`` so the order is total."""
    raw = [p.strip() for p in text.split(",")] if text else list(spec.default_sort)
    if len(raw) > 5:
        raise InvalidSort("at most 5 sort keys")
    keys: list[SortKey] = []
    for part in raw:
        desc = part.startswith("-")
        name = part[1:] if desc else part.lstrip("+")
        f = _SYS.get(name) if name in SYSTEM_SORT else spec.live_field(name)
        if f is None or not readable(f):
            raise InvalidSort(f"unknown sort field {name[:64]!r}", [{"field": name[:64], "message": "unknown field"}])
        if not f.sortable:
            raise InvalidSort(f"field {name!r} cannot be sorted", [{"field": name, "message": "not sortable"}])
        if any(k.field.name == name for k in keys):
            raise InvalidSort(f"field {name!r} is listed twice", [{"field": name, "message": "duplicate"}])
        keys.append(SortKey(f, desc))
    if not any(k.field.name == "id" for k in keys):
        keys.append(SortKey(_SYS["id"], keys[-1].desc if keys and keys[-1].field.name == "id" else False))
    return keys


def order_by(table: Table, keys: list[SortKey]) -> list[Any]:
    """NULLS LAST for fields that can be empty; plain ASC/DESC for required and system fields
    (they hold no NULLs), so any plain or composite index on them can serve the order."""
    out = []
    for k in keys:
        expr = field_expr(table, k.field)
        term = expr.desc() if k.desc else expr.asc()
        out.append(term if k.field.required or k.field.name in _SYS else term.nulls_last())
    return out


def keyset_clause(table: Table, keys: list[SortKey], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (NULLS LAST) order of ``keys``.

    For a required leading key an extra bound (``aum <= v``) lets the database seek the index
    instead of scanning from the start.
    """
    exprs = [field_expr(table, k.field) for k in keys]
    # typed bound parameters: comparisons with True/False (boolean sorts) need them
    params = [None if v is None else literal(v, e.type) for v, e in zip(values, exprs)]
    branches = []
    for i, key in enumerate(keys):
        expr = exprs[i]
        eqs = [pe.is_(None) if pv is None else pe == pv for pe, pv in zip(exprs[:i], params[:i])]
        v = params[i]
        if v is None:
            continue  # nothing sorts after NULL in this key (nulls last)
        after = or_(expr < v, expr.is_(None)) if key.desc else or_(expr > v, expr.is_(None))
        if key.field.required or key.field.name in _SYS:
            after = expr < v if key.desc else expr > v
        branches.append(and_(*eqs, after))
    clause = or_(*branches) if branches else false()
    first, v0 = keys[0], params[0]
    if v0 is not None and (first.field.required or first.field.name in _SYS):
        clause = and_(exprs[0] <= v0 if first.desc else exprs[0] >= v0, clause)
    return clause


def _signature(keys: list[SortKey]) -> str:
    return ",".join(("-" if k.desc else "") + k.field.name for k in keys)


def encode_cursor(secret: bytes, keys: list[SortKey], values: list[Any]) -> str:
    dumped = [FIELD_TYPES[k.field.type].dump(v) if v is not None else None for k, v in zip(keys, values)]
    body = json.dumps([_signature(keys), dumped], separators=(",", ":"), default=str).encode()
    sig = hmac.new(secret, body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")


def decode_cursor(secret: bytes, keys: list[SortKey], cursor: str) -> list[Any]:
    if not isinstance(cursor, str):
        raise InvalidCursor("cursor must be a string")
    try:
        body_b64, sig_b64 = cursor.split(".", 1)
        body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
        sig = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    except (ValueError, UnicodeError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
    if not hmac.compare_digest(sig, hmac.new(secret, body, hashlib.sha256).digest()[:12]):
        raise InvalidCursor("cursor is not valid")
    signature, dumped = json.loads(body)
    if signature != _signature(keys) or len(dumped) != len(keys):
        raise InvalidCursor("cursor belongs to a different sort order")
    values: list[Any] = []
    for k, v in zip(keys, dumped):
        if v is None:
            values.append(None)
            continue
        typed = FIELD_TYPES[k.field.type].normalize(v, replace(k.field, min=None, max=None))
        values.append(_bindable(k.field, typed))
    return values
