"""Running reports: one SQL statement in the reader's row scope, masked, exported, scheduled.

``ReportService.run(principal, name, args)`` compiles the frozen report for this reader:

- the base entity's scope clause (own / team / branch / all, never retained rows) and the
  report filter (parameters substituted, typed) go into the WHERE; an extra ``filter`` from the
  reader is AND-ed, so a reader narrows a report and never widens it;
- ``ref.field`` columns LEFT JOIN the referenced table *with that entity's scope in the join
  condition*: a referenced record outside the reader's scope reads as empty;
- aggregates and buckets run in SQL (GROUP BY), per-row related aggregates through the same
  derived tables triggers use (:class:`engine.store.aggregates.AggregateJoins`);
- field policy: a hidden field's column is left out; a masked field is masked like in lists
  (decrypted first if encrypted). Grouping by, aggregating or filtering on a field the reader
  cannot read in clear is refused (403/400): counts per masked value would be an oracle.

The result is ``{"columns": [{"name", "label", "type", "options"?}], "rows": [[…], …]}``.
Exports (CSV/XLSX) write the same rows with labels, formula-neutralised, audited.
Scheduled reports are run as each recipient (their own scope and masking) once per period and
delivered to the recipient's notifications through the outbox, with the file kept for download.
"""

from __future__ import annotations

import builtins
import csv
import datetime as dt
import io
import logging
import tempfile
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Callable, Mapping, Sequence

from openpyxl import Workbook
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    and_,
    case,
    cast,
    distinct,
    func,
    insert,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from ..errors import BadRequest, FieldError, Forbidden, NotFound
from ..fieldtypes import FIELD_TYPES, LOCAL_TZ
from ..flows.approval import ab_user_table
from ..flows.conditions import local_today
from ..flows.outbox import enqueue_many
from ..flows.spec import resolve_params
from ..io.export import FORMATS, neutralise
from ..meta.spec import EntitySpec, FieldSpec
from ..runtime import Snapshot, utcnow
from ..security.authz import effective_mask, permits
from ..security.crypto import aad_for
from ..security.masking import mask_value
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.aggregates import AggregateJoins
from ..store.query import FilterContext, compile_filter, field_expr
from ..store.tables import system_metadata
from .reportspec import ColumnSpec, ParamSpec, ReportSpec, column_field, relative_date

__all__ = ["ReportService", "report_run_table", "DEFAULT_LIMIT", "EXPORT_LIMIT"]

log = logging.getLogger("fincrm.reports")

DEFAULT_LIMIT = 1000  # rows a report returns when its metadata sets no limit
EXPORT_LIMIT = 100_000  # rows an export or a scheduled delivery holds at most
RESERVED_ARGS = frozenset({"format", "lang", "limit", "filter"})

# A scheduled report's file, made as its recipient: downloaded from the notification's link.
report_run_table = Table(
    "fincrm_report_run",
    system_metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("report", String(64), nullable=False),
    Column("period", String(16), nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("format", String(8), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("report", "period", "user_id", name="uq_fincrm_report_run"),
)


_AGGREGATE: dict[str, Callable[[Any], Any]] = {"avg": func.avg, "min": func.min, "max": func.max, "sum": func.sum}


@dataclass
class _Out:
    """How one selected column becomes output: position, field policy, conversion."""

    col: ColumnSpec
    f: FieldSpec | None
    mask: str | None = None  # rule when the reader sees the field masked
    encrypted: tuple[str, int] | None = None  # (table, index of the row id) to decrypt with
    units: int = 0  # avg of a scaled Money column on SQLite: divide by 10**units


def _local(expr: ColumnElement[Any], f: FieldSpec, dialect: str) -> ColumnElement[Any]:
    """A date-time read as Beijing time (stored naive UTC); dates as they are."""
    if f.type != "datetime":
        return expr if dialect == "sqlite" or f.storage == "column" else cast(expr, DateTime)
    offset = LOCAL_TZ.utcoffset(dt.datetime(2000, 1, 1)) or dt.timedelta(0)  # China keeps no DST
    hours = int(offset.total_seconds() // 3600)
    if dialect == "sqlite":
        return func.datetime(expr, f"{hours:+d} hours")
    base = expr if f.storage == "column" else cast(func.replace(expr, "Z", ""), DateTime)
    return base + literal(offset)


def _date_bucket(expr: ColumnElement[Any], bucket: str, dialect: str) -> ColumnElement[Any]:
    """The period a date falls in, as text that sorts in time order (same on both databases)."""
    if dialect == "sqlite":
        if bucket == "quarter":
            return func.strftime("%Y", expr).concat("-Q").concat(cast((cast(func.strftime("%m", expr), Integer) + 2) / 3, String))
        if bucket == "week":  # the Monday the week starts on
            return func.date(expr, "weekday 0", "-6 days")
        return func.strftime({"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[bucket], expr)
    if bucket == "week":
        return func.to_char(func.date_trunc("week", expr), "YYYY-MM-DD")
    return func.to_char(expr, {"day": "YYYY-MM-DD", "month": "YYYY-MM", "quarter": 'YYYY-"Q"Q', "year": "YYYY"}[bucket])


def _duration(frm: ColumnElement[Any], to: ColumnElement[Any], types: tuple[str, str], unit: str, dialect: str) -> ColumnElement[Any]:
    per_day = 24.0 if unit == "hours" else 1.0
    if dialect == "sqlite":
        return type_coerce((func.julianday(to) - func.julianday(frm)) * per_day, Float())
    if "date" in types:  # a date minus a date is an integer in PostgreSQL: compare as timestamps
        frm, to = cast(frm, DateTime), cast(to, DateTime)
    return type_coerce(func.extract("epoch", to - frm) / (86400.0 / per_day), Float())


class ReportService:
    def __init__(self, records: RecordService) -> None:
        self.records = records
        self.runtime = records.runtime
        self.authz = records.authz

    # ------------------------------------------------------------------ metadata

    def spec(self, name: str, snap: Snapshot | None = None) -> ReportSpec:
        snap = snap or self.runtime.cached_snapshot()
        rep = snap.reports.get(name)
        if rep is None:
            raise NotFound(f"unknown report {name[:64]!r}")
        assert isinstance(rep, ReportSpec)
        return rep

    def list(self, principal: Principal, lang: str = "zh") -> builtins.list[dict[str, Any]]:
        """The reports this principal may run (read on their entity), dashboard ones first."""
        out = []
        for rep in self.runtime.cached_snapshot().reports.values():
            if not permits(self.authz, principal, rep.entity, "read"):
                continue
            out.append(self.describe(rep, principal))
        out.sort(key=lambda r: ((r["dashboard"] or {}).get("order", 10_000), r["name"]))
        return out

    def describe(self, rep: ReportSpec, principal: Principal) -> dict[str, Any]:
        return {
            "name": rep.name,
            "label": rep.label.to_dict(),
            "description": rep.description.to_dict() if rep.description else None,
            "entity": rep.entity,
            "params": [_param_info(p) for p in rep.params],
            "chart": dict(rep.chart) if rep.chart else None,
            "dashboard": dict(rep.dashboard) if rep.dashboard else None,
            "schedule": {"every": rep.schedule["every"], "format": rep.schedule.get("format", "xlsx")} if rep.schedule else None,
            "grouped": rep.grouped,
            "may_configure": permits(self.authz, principal, rep.entity, "configure"),
            "may_export": permits(self.authz, principal, rep.entity, "export"),
        }

    # ------------------------------------------------------------------ running

    def run(
        self, principal: Principal, name: str, args: Mapping[str, str] | None = None, *, limit: int | None = None, filter: Any = None, now: dt.datetime | None = None
    ) -> dict[str, Any]:
        """``{"report", "label", "params", "columns", "rows", "truncated"}`` for this reader."""
        rep = self.spec(name)
        self.authz.require(principal, rep.entity, "read")
        cap = rep.limit or DEFAULT_LIMIT
        if limit is not None:
            if limit < 1:
                raise BadRequest("limit must be at least 1", [{"field": "limit", "message": "must be at least 1"}])
            cap = min(limit, EXPORT_LIMIT)
        params = self.params(rep, args or {}, now=now)
        stmt, outs = self._statement(principal, rep, params, filter, now=now)
        # a report's own limit (top 100) is its definition; any other cap is reported as a cut
        probe = cap if rep.limit is not None and cap >= rep.limit else cap + 1
        with self.runtime.engine.connect() as conn:
            raw = conn.execute(stmt.limit(probe)).all()
        truncated = len(raw) > cap
        rows = self._convert(outs, raw[:cap])
        return {
            "report": rep.name,
            "label": rep.label.to_dict(),
            "params": {k: _plain(val) for k, val in params.items()},
            "columns": [_column_info(o) for o in outs],
            "rows": rows,
            "truncated": truncated,
            "chart": dict(rep.chart) if rep.chart else None,
        }

    def params(self, rep: ReportSpec, args: Mapping[str, str], *, now: dt.datetime | None = None) -> dict[str, Any]:
        """Parameter values from the query (or their defaults), typed and checked."""
        known = {p.name: p for p in rep.params}
        for key in args:
            if key not in known and key not in RESERVED_ARGS:
                raise BadRequest(f"unknown parameter {key[:64]!r}", [{"field": key[:64], "message": "unknown parameter"}])
        today = local_today(now or utcnow())
        out: dict[str, Any] = {}
        for p in rep.params:
            raw: Any = args.get(p.name)
            if raw in (None, ""):
                raw = p.default
            if raw is None:
                out[p.name] = None
                continue
            out[p.name] = _param_value(p, raw, today)
        return out

    def _statement(
        self, principal: Principal, rep: ReportSpec, params: Mapping[str, Any], extra_filter: Any, *, now: dt.datetime | None = None
    ) -> tuple[Any, builtins.list[_Out]]:
        records = self.records
        snap = self.runtime.cached_snapshot()
        dialect = self.runtime.dialect
        v = records.view(principal, rep.entity, snap)
        spec, table = v.spec, v.table
        moment = now or utcnow()

        def context_for(s: EntitySpec, t: Table) -> FilterContext:
            if s.name != spec.name:
                self.authz.require(principal, s.name, "read")
            view = v if s.name == spec.name else records.view(principal, s.name, snap)
            return replace(
                view.filter_context(),
                today=lambda: local_today(moment),
                now=lambda: moment,
                related=lambda n: context_for(snap.registry.entity(n), snap.tables[n]),
            )

        ctx = context_for(spec, table)
        joins = AggregateJoins(snap=snap, spec=spec, table=table, context=context_for)
        ctx = replace(ctx, aggregate=joins)
        where: builtins.list[ColumnElement[bool]] = [v.scope()]
        if rep.filter is not None:
            errors: builtins.list[dict[str, str]] = []
            resolved = _drop_unset(resolve_params(dict(rep.filter), params, "/filter", errors))
            if resolved:
                where.append(compile_filter(ctx, resolved))
        if extra_filter is not None:
            where.append(compile_filter(ctx, extra_filter))

        selected: builtins.list[Any] = []
        outs: builtins.list[_Out] = []
        refs: dict[str, Any] = {}  # ref field → (alias, target view)
        grouped = rep.grouped
        group_by: builtins.list[Any] = []
        by_name: dict[str, Any] = {}
        user_joins: builtins.list[tuple[Any, Any]] = []

        def ref_join(base: FieldSpec) -> tuple[Any, Any]:
            if base.name not in refs:
                assert base.ref is not None
                tv = records.view(principal, base.ref, snap)
                alias = snap.tables[base.ref].alias(f"ref_{base.name}")
                scope = ClauseAdapter(alias).traverse(tv.scope())
                refs[base.name] = (alias, tv, and_(field_expr(table, base) == alias.c.id, scope))
            alias, tv, _ = refs[base.name]
            return alias, tv

        for c in rep.columns:
            if c.kind == "related":
                assert c.related is not None
                outs.append(_Out(c, None))
                selected.append(joins(dict(c.related)).label(c.name))
                by_name[c.name] = selected[-1]
                continue
            if c.duration is not None:
                frm, to = spec.live_field(c.duration[0]), spec.live_field(c.duration[1])
                assert frm is not None and to is not None
                for end in (frm, to):
                    self._require_clear(v, end, "aggregated")
                d = _duration(field_expr(table, frm), field_expr(table, to), (frm.type, to.type), c.duration[2], dialect)
                agg = _AGGREGATE[c.agg or "avg"](d)
                outs.append(_Out(c, None))
                selected.append(type_coerce(agg, Float()).label(c.name))
                by_name[c.name] = selected[-1]
                continue
            f: FieldSpec | None = None
            expr: Any = None
            view = v
            tab: Any = table
            if c.field is not None:
                base, target, _ = column_field(snap.registry, spec, c.field)
                if base is None:
                    raise NotFound(f"report {rep.name!r} reads a field that no longer exists: {c.field!r}")
                if base.name in v.access and v.access[base.name].view == "hidden":
                    if grouped:
                        raise Forbidden(f"you may not read {c.field}, which this report groups or aggregates")
                    continue  # a hidden field's column is left out
                if target is not None:
                    tab, view = ref_join(base)
                    f = target
                else:
                    f = base
                if f.name in view.access and view.access[f.name].view == "hidden":
                    if grouped:
                        raise Forbidden(f"you may not read {c.field}, which this report groups or aggregates")
                    continue
                expr = field_expr(tab, f)
            if c.kind == "agg":
                if f is not None and c.agg != "count":
                    self._require_clear(view, f, "aggregated")
                out = _Out(c, f)
                if c.agg == "count":
                    agg = func.count() if expr is None else func.count(expr)
                elif c.agg == "count_distinct":
                    agg = func.count(distinct(expr))
                elif c.agg == "avg":
                    assert f is not None and expr is not None
                    agg = type_coerce(func.avg(expr), Float())
                    if dialect == "sqlite" and f.type == "decimal" and f.storage == "column":
                        out.units = f.scale
                else:
                    agg = _AGGREGATE[c.agg or "sum"](expr)
                outs.append(out)
                selected.append(agg.label(c.name))
                by_name[c.name] = selected[-1]
                continue
            assert f is not None and expr is not None
            if grouped:
                self._require_clear(view, f, "grouped")
            if isinstance(c.bucket, str):
                expr = _date_bucket(_local(expr, f, dialect), c.bucket, dialect)
                outs.append(_Out(c, f))
            elif isinstance(c.bucket, tuple):
                whens = []
                for r in c.bucket:
                    conds = []
                    if r.gte is not None:
                        conds.append(expr >= r.gte)
                    if r.lt is not None:
                        conds.append(expr < r.lt)
                    whens.append((and_(*conds) if conds else literal(True), literal(r.value)))
                expr = case(*whens, else_=None)
                outs.append(_Out(c, f))
            elif f.type == "user":
                # staff are shown by user name: one LEFT JOIN to the account table per column
                users = ab_user_table.alias(f"user_{c.name}")
                user_joins.append((users, expr == users.c.id))
                expr = users.c.username
                outs.append(_Out(c, f))
            else:
                out = _Out(c, f)
                if not view.clear(f):
                    out.mask = effective_mask(f)
                if f.encrypted:
                    selected.append(tab.c.id.label(f"_id_{c.name}"))
                    out.encrypted = (tab.name if not hasattr(tab, "element") else tab.element.name, len(selected) - 1)
                outs.append(out)
            selected.append(expr.label(c.name))
            by_name[c.name] = selected[-1]
            if grouped:
                group_by.append(expr)

        if not outs:
            raise Forbidden("you may read none of this report's columns")
        src: Any = joins.from_clause()
        for _, (alias, _tv, on) in refs.items():
            src = src.outerjoin(alias, on)
        for users, on in user_joins:
            src = src.outerjoin(users, on)
        stmt = select(*selected).select_from(src).where(*where)
        if grouped and group_by:
            stmt = stmt.group_by(*group_by)
        order = []
        for s in rep.sort:
            name = s.lstrip("-")
            if name in by_name:
                order.append(by_name[name].desc() if s.startswith("-") else by_name[name].asc())
        if not order:
            order = [g.asc() for g in group_by] if grouped else []
        if not grouped:
            order.append(table.c.id.desc())
        return stmt.order_by(*order), outs

    def _require_clear(self, view: Any, f: FieldSpec, how: str) -> None:
        if f.encrypted or not view.clear(f):
            raise Forbidden(f"{f.name} is masked for your role: it cannot be {how} in a report")

    def _convert(self, outs: builtins.list[_Out], raw: Sequence[Any]) -> builtins.list[builtins.list[Any]]:
        decrypt = self.runtime.keyring.decrypt
        rows = []
        for r in raw:
            row = []
            for o in outs:
                value = getattr(r, o.col.name)
                c = o.col
                if value is not None:
                    if o.encrypted is not None:
                        value = decrypt(value, aad_for(o.encrypted[0], o.f.name if o.f else c.name, r[o.encrypted[1]]))
                    if c.kind == "agg" or c.kind == "related":
                        value = _number(value, o)
                    elif c.bucket is None and o.f is not None:
                        value = _dump(o.f, value)
                    if o.mask is not None:
                        value = mask_value(o.mask, value)
                row.append(value)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ export

    def export(
        self, principal: Principal, name: str, fmt: str, args: Mapping[str, str] | None = None, *, lang: str = "zh", filter: Any = None
    ) -> tuple[bytes, int]:
        """The report as a CSV or XLSX file (labels in ``lang``, formula-safe), and its row count;
        audited as an export."""
        if fmt not in FORMATS:
            raise BadRequest("format must be csv or xlsx", [{"field": "format", "message": "one of csv, xlsx"}])
        rep = self.spec(name)
        self.authz.require(principal, rep.entity, "export")
        result = self.run(principal, name, args, limit=EXPORT_LIMIT, filter=filter)
        content = render_file(result, fmt, lang, rep)
        with self.runtime.begin() as conn:
            self.records.audit(
                conn, principal, "export", rep.entity, None,
                {"report": rep.name, "format": fmt, "rows": len(result["rows"]), "params": result["params"], "filter": filter},
            )
        return content, len(result["rows"])

    # ------------------------------------------------------------------ schedules

    def deliver_scheduled(
        self, now: dt.datetime, principal_for: Callable[[str], Principal | None], lang: str = "zh"
    ) -> dict[str, Any]:
        """Run every scheduled report due in ``now``'s period, once per recipient and period, as
        the recipient, and queue a notification linking to the stored file."""
        today = local_today(now)
        sent = skipped = failed = 0
        for rep in self.runtime.cached_snapshot().reports.values():
            if not rep.schedule:
                continue
            period = _period(rep.schedule["every"], today)
            fmt = rep.schedule.get("format", "xlsx")
            for username in rep.schedule["recipients"]:
                principal = principal_for(username)
                if principal is None or principal.user_id is None:
                    skipped += 1
                    continue
                with self.runtime.engine.connect() as conn:
                    t = report_run_table
                    done = conn.execute(
                        select(t.c.id).where(t.c.report == rep.name, t.c.period == period, t.c.user_id == principal.user_id)
                    ).first()
                if done is not None:
                    continue
                try:
                    args = {k: str(val) for k, val in (rep.schedule.get("params") or {}).items()}
                    result = self.run(principal, rep.name, args, limit=EXPORT_LIMIT, now=now)
                    content = render_file(result, fmt, lang, rep)
                except (Forbidden, NotFound, BadRequest) as exc:
                    log.warning("scheduled report %s for user %s not made: %s", rep.name, principal.user_id, exc)
                    failed += 1
                    continue
                try:
                    with self.runtime.begin() as conn:
                        run_id = conn.execute(
                            insert(report_run_table)
                            .values(report=rep.name, period=period, user_id=principal.user_id, format=fmt, rows=len(result["rows"]), content=content, created_at=utcnow())
                            .returning(report_run_table.c.id)
                        ).scalar_one()
                        title = f"{rep.label.zh} {period}" if lang != "en" else f"{rep.label.en} {period}"
                        enqueue_many(
                            conn,
                            [
                                {
                                    "channel": "inbox",
                                    "recipient_kind": "user",
                                    "recipient_id": principal.user_id,
                                    "subject": title[:200],
                                    "body": (
                                        f"报表已生成：{len(result['rows'])} 行。下载：/api/v1/reports/runs/{run_id}"
                                        f" · Report ready: {len(result['rows'])} rows. Download: /api/v1/reports/runs/{run_id}"
                                    ),
                                    "source": f"report:{rep.name}"[:100],
                                    "entity": None,
                                    "record_id": None,
                                    "created_at": utcnow(),
                                }
                            ],
                        )
                        self.records.audit(
                            conn, Principal.system("reports"), "export", rep.entity, None,
                            {"report": rep.name, "format": fmt, "rows": len(result["rows"]), "period": period, "recipient": principal.username, "run": run_id},
                        )
                    sent += 1
                except IntegrityError:
                    continue  # another worker delivered this period to this recipient first
        return {"delivered": sent, "skipped_recipients": skipped, "failed": failed}

    def stored_run(self, principal: Principal, run_id: int) -> tuple[bytes, str, str]:
        """A delivered report file: (content, format, file name) — to its recipient only."""
        t = report_run_table
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == run_id)).first()
        if row is None or row.user_id != principal.user_id:
            raise NotFound(f"no report file {run_id}")
        return row.content, row.format, f"{row.report}-{row.period}.{row.format}"


# ---------------------------------------------------------------------- helpers


def _period(every: str, today: dt.date) -> str:
    if every == "day":
        return today.isoformat()
    if every == "week":
        year, week, _ = today.isocalendar()
        return f"{year}-W{week:02d}"
    return today.strftime("%Y-%m")


def _drop_unset(node: Any) -> Any:
    """A filter with every condition whose parameter was left empty removed."""
    if isinstance(node, dict):
        if "value" in node and node["value"] is None and node.get("op") not in ("is_null",):
            return None
        for key in ("and", "or"):
            if isinstance(node.get(key), list):
                kept = [c for c in (_drop_unset(x) for x in node[key]) if c is not None]
                return {key: kept} if kept else None
        if "not" in node:
            inner = _drop_unset(node["not"])
            return {"not": inner} if inner is not None else None
    return node


def _param_value(p: ParamSpec, raw: Any, today: dt.date) -> Any:
    problem = None
    if p.type == "date":
        if isinstance(raw, str):
            rel = relative_date(raw, today)
            if rel is not None:
                return rel.isoformat()
        try:
            return FIELD_TYPES["date"].normalize(raw, FieldSpec(p.name, "date", p.label)).isoformat()
        except FieldError as exc:
            problem = str(exc)
    elif p.type == "integer":
        try:
            return FIELD_TYPES["integer"].normalize(raw, FieldSpec(p.name, "integer", p.label))
        except FieldError as exc:
            problem = str(exc)
    elif p.type == "decimal":
        try:
            return str(FIELD_TYPES["decimal"].normalize(raw, FieldSpec(p.name, "decimal", p.label, precision=18, scale=4)))
        except FieldError as exc:
            problem = str(exc)
    elif p.type == "enum":
        if str(raw) in {o.value for o in p.options}:
            return str(raw)
        problem = "not one of the options"
    else:
        text = str(raw)
        if len(text) > 200:
            problem = "at most 200 characters"
        else:
            return text
    raise BadRequest(f"invalid parameter {p.name}: {problem}", [{"field": p.name, "message": problem or "invalid"}])


def _number(value: Any, o: _Out) -> Any:
    if isinstance(value, float):
        if o.units:
            value = value / 10**o.units
        return round(value, 2)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)) and o.f is not None:
        return _dump(o.f, value)
    return value


def _dump(f: FieldSpec, value: Any) -> Any:
    if f.storage != "column":
        if f.type == "decimal":
            return str(Decimal(str(value)).quantize(Decimal(1).scaleb(-f.scale)))
        return value
    return FIELD_TYPES[f.type].dump(value)


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


def _param_info(p: ParamSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "type": p.type, "label": p.label.to_dict(), "default": p.default}
    if p.options:
        out["options"] = [{"value": o.value, "label": o.label.to_dict()} for o in p.options]
    return out


def _column_info(o: _Out) -> dict[str, Any]:
    c = o.col
    out: dict[str, Any] = {"name": c.name, "label": c.label.to_dict(), "type": c.type}
    if isinstance(c.bucket, tuple):
        out["options"] = [{"value": r.value, "label": r.label.to_dict()} for r in c.bucket]
    elif c.kind == "field" and c.bucket is None and o.f is not None and o.f.options:
        out["type"] = o.f.type
        out["options"] = [{"value": opt.value, "label": opt.label.to_dict()} for opt in o.f.options]
    if o.mask is not None:
        out["masked"] = True
    return out


def _display(col: Mapping[str, Any], value: Any, lang: str) -> Any:
    """A cell as a reader sees it: option labels instead of codes, lists joined, formula-safe."""
    if value is None:
        return None
    labels = {o["value"]: o["label"] for o in col.get("options", ())}
    if isinstance(value, list):
        return neutralise(",".join(str(labels.get(x, {}).get(lang, x)) if x in labels else str(x) for x in value))
    if value in labels:
        return neutralise(labels[value].get(lang, value))
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, (int, float)):
        return value
    if col["type"] in ("decimal",) and isinstance(value, str) and "*" not in value:
        return Decimal(value)
    return neutralise(str(value))


def render_file(result: Mapping[str, Any], fmt: str, lang: str, rep: ReportSpec) -> bytes:
    """CSV (UTF-8 with BOM for Excel) or XLSX of a report result."""
    cols = result["columns"]
    header = [neutralise(c["label"].get(lang) or c["name"]) for c in cols]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        for row in result["rows"]:
            w.writerow([_display(c, v, lang) for c, v in zip(cols, row)])
        return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")
    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title=(rep.label.get(lang)[:31] or rep.name))
    ws.append(header)
    for row in result["rows"]:
        ws.append([_display(c, v, lang) for c, v in zip(cols, row)])
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as fh:
        wb.save(fh)
        fh.seek(0)
        return fh.read()


