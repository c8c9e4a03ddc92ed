"""Analytics computed in the database, within the caller's row scope: RFM value segments (and
the rule-based tags made from them), churn risk, cross-sell association rules, acquisition
channel efficiency and management KPIs (docs/analytics.md holds the exact definitions).

Every figure is one SQL statement (CTEs, GROUP BY, window functions) that runs the same on
SQLite and PostgreSQL; Python parses parameters and formats at most one page of rows. The
customer view's scope clause is part of every statement, and transactions, holdings,
interactions and tickets are read through customers in that scope, so a relationship manager's
analytics cover their own customers only. Customer names in result rows are rendered by the
records service, masked exactly as in the reader's customer list.

Dates are business dates in Beijing time: date-times are stored naive UTC, so "on or before
``as_of``" means before local midnight at the end of ``as_of`` and a transaction's date is its
local calendar date (China keeps no daylight saving time: one fixed offset).
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterator, Mapping, Sequence

from sqlalchemy import (
    BigInteger,
    Date,
    Float,
    Integer,
    Numeric,
    String,
    and_,
    case,
    cast,
    delete,
    exists,

    func,
    insert,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from ..errors import BadRequest, Forbidden, InvalidCursor
from ..fieldtypes import FIELD_TYPES, LOCAL_TZ
from ..flows.conditions import compiled_condition
from ..runtime import Snapshot
from ..security.principal import Principal
from ..services.records import RecordService
from ..sqltypes import Money
from ..store.query import field_expr
from ..store.tables import tag_table

__all__ = [
    "AnalyticsService",
    "Segment",
    "SEGMENTS",
    "RFM_TAG_PREFIX",
    "MAX_PAGE",
    "MAX_RULES",
    "segment_of",
    "quintile_score",
]

MAX_PAGE = 200  # rows per analytics page
MAX_RULES = 200  # association rules returned at most (highest lift first)
MAX_ITEMS = 3  # items on one side of a cross-sell targets query
RFM_TAG_PREFIX = "RFM:"
HIGH_SCORE = 3  # an R, F or M score of 3-5 counts as high in the 8-segment model
_MIN_DAY, _MAX_DAY = dt.date(1900, 1, 1), dt.date(2999, 12, 31)
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_SUM = Money(38, 2)  # sums of money amounts: exact, and scaled like the columns on SQLite
_NOT_RECORDED = {"zh": "未填写", "en": "Not recorded"}


@dataclass(frozen=True)
class Segment:
    """One of the 8 RFM segments: high (score ≥ 3) or low in recency, frequency, monetary."""

    code: str
    r_high: bool
    f_high: bool
    m_high: bool
    zh: str
    en: str

    @property
    def tag(self) -> str:
        return RFM_TAG_PREFIX + self.zh

    def label(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}


# The 8-segment RFM model of Chinese banking practice (重要/一般 by M, then R and F).
SEGMENTS: tuple[Segment, ...] = (
    Segment("important_value", True, True, True, "重要价值客户", "High value"),
    Segment("important_develop", True, False, True, "重要发展客户", "High value, to activate"),
    Segment("important_retain", False, True, True, "重要保持客户", "High value, to keep in touch"),
    Segment("important_winback", False, False, True, "重要挽留客户", "High value, to win back"),
    Segment("general_value", True, True, False, "一般价值客户", "Regular, active"),
    Segment("general_develop", True, False, False, "一般发展客户", "Regular, to develop"),
    Segment("general_retain", False, True, False, "一般保持客户", "Regular, to keep in touch"),
    Segment("general_winback", False, False, False, "一般挽留客户", "Regular, at risk of churn"),
)
_SEGMENT = {s.code: s for s in SEGMENTS}


def quintile_score(rank: int, n: int) -> int:
    """The 1-5 score of the value ranked ``rank`` (1 = worst; ties share their lowest rank)
    among ``n``: ``1 + 5 * (rank - 1) // n``. The SQL computes the same integer formula."""
    return 1 + (5 * (rank - 1)) // n


def segment_of(r: int, f: int, m: int) -> Segment:
    """The segment of an (R, F, M) score triple."""
    for s in SEGMENTS:
        if s.r_high == (r >= HIGH_SCORE) and s.f_high == (f >= HIGH_SCORE) and s.m_high == (m >= HIGH_SCORE):
            return s
    raise AssertionError("the 8 segments cover every combination")


# ---------------------------------------------------------------------- parameters


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", [{"field": field, "message": message}])


def _date_param(value: Any, name: str, default: dt.date) -> dt.date:
    if value is None or value == "":
        return default
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        day = value
    elif isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise _bad(name, "must be a date (YYYY-MM-DD)") from None
    else:
        raise _bad(name, "must be a date (YYYY-MM-DD)")
    if not _MIN_DAY <= day <= _MAX_DAY:
        raise _bad(name, f"must be between {_MIN_DAY} and {_MAX_DAY}")
    return day


def _int_param(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _bad(name, "must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,9}", value.strip(), re.ASCII):
        number = int(value.strip())
    else:
        raise _bad(name, "must be an integer")
    if not low <= number <= high:
        raise _bad(name, f"must be between {low} and {high}")
    return number


def _share_param(value: Any, name: str, default: float) -> float:
    """A share in (0, 1]."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _bad(name, "must be a number in (0, 1]")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise _bad(name, "must be a number in (0, 1]") from None
    if not math.isfinite(number) or not 0 < number <= 1:
        raise _bad(name, "must be a number in (0, 1]")
    return number


def _today() -> dt.date:
    return dt.datetime.now(LOCAL_TZ).date()


def _day_start(day: dt.date) -> dt.datetime:
    """Local midnight at the start of ``day`` as naive UTC (how date-times are stored)."""
    return dt.datetime.combine(day, dt.time(), LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    last = (dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last))


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _hours(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds) / 3600, 2)


def _per(total: Decimal | None, n: int) -> str | None:
    if total is None or not n:
        return None
    return str((total / n).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _money_text(value: Any) -> str | None:
    return None if value is None else str(Decimal(value).quantize(Decimal("0.01")))


def _dump_moment(value: Any) -> str | None:
    return None if value is None else str(FIELD_TYPES["datetime"].dump(value))


# ---------------------------------------------------------------------- cursors


def _encode_cursor(secret: bytes, kind: str, params: Sequence[Any], values: Sequence[Any]) -> str:
    body = json.dumps([kind, list(params), list(values)], separators=(",", ":"), default=str, ensure_ascii=True).encode()
    sig = hmac.new(secret, body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")


def _decode_cursor(secret: bytes, kind: str, params: Sequence[Any], cursor: Any) -> list[Any]:
    """The values a cursor carries; a cursor of another query (or other parameters) is refused."""
    if not isinstance(cursor, str) or len(cursor) > 1000:
        raise InvalidCursor("cursor is not valid", [{"field": "cursor", "message": "not valid"}])
    try:
        body_b64, sig_b64 = cursor.split(".", 1)
        body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
        sig = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    except (ValueError, UnicodeError):
        raise InvalidCursor("cursor is not valid", [{"field": "cursor", "message": "not valid"}]) from None
    if not hmac.compare_digest(sig, hmac.new(secret, body, hashlib.sha256).digest()[:12]):
        raise InvalidCursor("cursor is not valid", [{"field": "cursor", "message": "not valid"}])
    got_kind, got_params, values = json.loads(body)
    if got_kind != kind or got_params != json.loads(json.dumps(list(params), default=str)):
        raise InvalidCursor("cursor belongs to another query: start again without it", [{"field": "cursor", "message": "other query"}])
    return list(values)


# ---------------------------------------------------------------------- the service


class AnalyticsService:
    """RFM, churn, cross-sell, channels and KPIs for one principal at a time."""

    def __init__(self, records: RecordService) -> None:
        self.records = records
        self.runtime = records.runtime

    # ------------------------------------------------------------------ shared pieces

    def _view(self, principal: Principal, entity: str, snap: Snapshot, *fields: str) -> Any:
        """The reader's view of ``entity`` after checking ``read`` on it and that none of
        ``fields`` is hidden from them (a figure computed from a hidden field would reveal it)."""
        self.records.authz.require(principal, entity, "read")
        view = self.records.view(principal, entity, snap)
        hidden = [n for n in fields if view.spec.live_field(n) is None or view.access[n].view == "hidden"]
        if hidden:
            raise Forbidden(f"your role may not read {entity}.{hidden[0]}, which this analysis needs")
        return view

    @staticmethod
    def _col(view: Any, name: str) -> ColumnElement[Any]:
        f = view.spec.live_field(name)
        assert f is not None
        return field_expr(view.table, f)

    def _local_days(self, as_of: dt.date, moment: ColumnElement[Any]) -> ColumnElement[Any]:
        """``as_of`` minus the local calendar date of a stored (naive UTC) moment, in days."""
        offset = LOCAL_TZ.utcoffset(dt.datetime.combine(as_of, dt.time())) or dt.timedelta(0)
        if self.runtime.dialect == "postgresql":
            local_day = cast(moment + literal(offset), Date)
            return type_coerce(literal(as_of, Date) - local_day, Integer())
        local = func.date(moment, f"{int(offset.total_seconds()):+d} seconds")
        return cast(func.julianday(literal(as_of.isoformat(), String())) - func.julianday(local), Integer())

    def _seconds_between(self, start: ColumnElement[Any], end: ColumnElement[Any]) -> ColumnElement[Any]:
        """Whole seconds from ``start`` to ``end`` (stored to the second), exact on both databases."""
        if self.runtime.dialect == "postgresql":
            return cast(func.extract("epoch", end - start), BigInteger())
        return cast(func.strftime("%s", end), Integer()) - cast(func.strftime("%s", start), Integer())

    def _names(self, principal: Principal, ids: Sequence[int]) -> dict[int, Any]:
        """Customer titles as the reader's customer list shows them (masked per role); nothing
        when the title field is hidden from them."""
        snap = self.runtime.cached_snapshot()
        spec = snap.registry.entity("customer")
        title = spec.title_field or "name"
        view = self.records.view(principal, "customer", snap)
        if not ids or title not in view.access or view.access[title].view == "hidden":
            return {}
        page = self.records.list(principal, "customer", filter={"field": "id", "op": "in", "value": list(ids)}, limit=len(ids), fields=[title], sort="id")
        return {int(r["id"]): r.get(title) for r in page.items}

    def _value_order(self, cv: Any) -> ColumnElement[Any] | None:
        """AUM (0 when empty) to rank lists by, if the reader sees it in clear (sorting by a
        value the reader may not see would reveal it)."""
        f = cv.spec.live_field("aum")
        if f is None or f.type != "decimal" or not cv.clear(f):
            return None
        expr = field_expr(cv.table, f)
        return func.coalesce(expr, literal(Decimal(0), expr.type))

    def _keyset(
        self, value: ColumnElement[Any] | None, cid: ColumnElement[Any], after: list[Any] | None
    ) -> ColumnElement[bool]:
        """Rows after the cursor in the order (value DESC, id ASC) — or id ASC without a value."""
        if after is None:
            return true()
        try:
            last_id = int(after[-1])
            last_value = Decimal(str(after[0])) if value is not None else None
        except (ArithmeticError, ValueError, TypeError, IndexError):
            raise InvalidCursor("cursor is not valid", [{"field": "cursor", "message": "not valid"}]) from None
        if value is None or last_value is None:
            return cid > last_id
        bound = literal(last_value, value.type)
        return or_(value < bound, and_(value == bound, cid > last_id))

    # ------------------------------------------------------------------ RFM

    def _rfm(self, principal: Principal, as_of: dt.date, snap: Snapshot) -> Any:
        """The RFM CTE (cid, recency_days, frequency, monetary, r, f, m, segment) of
        every customer in scope with at least one transaction on or before ``as_of``.

        Transactions are aggregated once per customer (one GROUP BY over the table), the scope
        is joined to the aggregated rows, then window functions rank the rows and a CASE names
        the segment: one statement, whatever uses it."""
        cv = self._view(principal, "customer", snap)
        tv = self._view(principal, "transaction", snap, "customer", "amount", "occurred_at")
        c = cv.table
        cust, amount, moment = self._col(tv, "customer"), self._col(tv, "amount"), self._col(tv, "occurred_at")
        money: TypeEngine[Any] = amount.type if isinstance(amount.type, Money) else Numeric(38, 2)
        agg = (
            select(
                cust.label("cid"),
                func.max(moment).label("last_at"),
                func.count().label("frequency"),
                func.sum(type_coerce(func.abs(amount), money)).label("monetary"),
            )
            .where(tv.scope(), moment < _day_start(as_of + dt.timedelta(days=1)))
            .group_by(cust)
            .cte("rfm_agg")
        )
        base = (
            select(agg.c.cid, self._local_days(as_of, agg.c.last_at).label("recency_days"), agg.c.frequency, agg.c.monetary)
            .select_from(agg.join(c, c.c.id == agg.c.cid))
            .where(cv.scope())
            .cte("rfm_base")
        )
        n = func.count().over()

        def score(order: Any) -> ColumnElement[Any]:
            # 1 + 5·(rank−1) div n: ties share a rank (the lowest), so equal values score equally
            return literal(1) + (literal(5) * (func.rank().over(order_by=order) - literal(1))) // n

        scored = select(
            base.c.cid,
            base.c.recency_days,
            base.c.frequency,
            base.c.monetary,
            score(base.c.recency_days.desc()).label("r"),
            score(base.c.frequency.asc()).label("f"),
            score(base.c.monetary.asc()).label("m"),
        ).cte("rfm_scored")
        high = [scored.c.r >= HIGH_SCORE, scored.c.f >= HIGH_SCORE, scored.c.m >= HIGH_SCORE]
        whens = [
            (and_(*(h if on else not_(h) for h, on in zip(high, (s.r_high, s.f_high, s.m_high)))), literal(s.code, String()))
            for s in SEGMENTS[:-1]
        ]
        segment = case(*whens, else_=literal(SEGMENTS[-1].code, String()))
        return select(*scored.c, segment.label("segment")).cte("rfm")

    def _segment_param(self, segment: Any, name: str = "segment") -> str | None:
        if segment is None or segment == "":
            return None
        if not isinstance(segment, str) or segment not in _SEGMENT:
            raise _bad(name, f"one of {', '.join(_SEGMENT)}")
        return segment

    def rfm(self, principal: Principal, *, as_of: Any = None, segment: Any = None, limit: Any = 50, cursor: Any = None) -> dict[str, Any]:
        """Segment counts of every scored customer, and one page of customers (monetary desc,
        id) — optionally of one segment. One statement: the page and the summary both read
        the same RFM CTE."""
        day = _date_param(as_of, "as_of", _today())
        seg = self._segment_param(segment)
        size = _int_param(limit, "limit", 50, 1, MAX_PAGE)
        snap = self.runtime.cached_snapshot()
        rfm = self._rfm(principal, day, snap)
        params = [day.isoformat(), seg]
        after = _decode_cursor(self.runtime.secret, "rfm", params, cursor) if cursor else None
        where = [self._keyset(rfm.c.monetary, rfm.c.cid, after)]
        if seg is not None:
            where.append(rfm.c.segment == seg)
        page = (
            select(rfm.c.cid, rfm.c.recency_days, rfm.c.frequency, rfm.c.monetary, rfm.c.r, rfm.c.f, rfm.c.m, rfm.c.segment)
            .where(*where)
            .order_by(rfm.c.monetary.desc(), rfm.c.cid)
            .limit(size + 1)
            .subquery("rfm_page")
        )
        none_int = cast(null(), Integer())
        summary = select(
            literal("s", String()).label("kind"),
            none_int.label("cid"),
            none_int.label("recency_days"),
            func.count().label("frequency"),
            func.sum(rfm.c.monetary).label("monetary"),
            none_int.label("r"),
            none_int.label("f"),
            none_int.label("m"),
            rfm.c.segment,
        ).group_by(rfm.c.segment)
        rows = select(literal("i", String()).label("kind"), *page.c)
        stmt = union_all(rows, summary)
        with self.runtime.engine.connect() as conn:
            result = conn.execute(stmt).all()
        items_raw = sorted((r for r in result if r.kind == "i"), key=lambda r: (-Decimal(r.monetary), r.cid))
        counts = {r.segment: (int(r.frequency), r.monetary) for r in result if r.kind == "s"}
        next_cursor = None
        if len(items_raw) > size:
            items_raw = items_raw[:size]
            last = items_raw[-1]
            next_cursor = _encode_cursor(self.runtime.secret, "rfm", params, [_money_text(last.monetary), int(last.cid)])
        names = self._names(principal, [int(r.cid) for r in items_raw])
        items = [
            {
                "customer": int(r.cid),
                "name": names.get(int(r.cid)),
                "recency_days": int(r.recency_days),
                "frequency": int(r.frequency),
                "monetary": _money_text(r.monetary),
                "r": int(r.r),
                "f": int(r.f),
                "m": int(r.m),
                "segment": r.segment,
            }
            for r in items_raw
        ]
        return {
            "as_of": day.isoformat(),
            "total": sum(n for n, _ in counts.values()),
            "segments": self._segment_list(counts),
            "items": items,
            "next_cursor": next_cursor,
        }

    @staticmethod
    def _segment_list(counts: Mapping[str, tuple[int, Any]]) -> list[dict[str, Any]]:
        out = []
        for s in SEGMENTS:
            n, money = counts.get(s.code, (0, None))
            out.append({"segment": s.code, "label": s.label(), "tag": s.tag, "count": n, "monetary": _money_text(money) or "0.00"})
        return out

    def rfm_summary(self, principal: Principal, as_of: Any = None) -> dict[str, Any]:
        """Every customer's scores and segment computed in the database, counted per segment
        (the whole computation and the counting in one statement)."""
        day = _date_param(as_of, "as_of", _today())
        snap = self.runtime.cached_snapshot()
        rfm = self._rfm(principal, day, snap)
        stmt = select(rfm.c.segment, func.count().label("n"), func.sum(rfm.c.monetary).label("monetary")).group_by(rfm.c.segment)
        with self.runtime.engine.connect() as conn:
            counts = {r.segment: (int(r.n), r.monetary) for r in conn.execute(stmt)}
        return {"as_of": day.isoformat(), "total": sum(n for n, _ in counts.values()), "segments": self._segment_list(counts)}

    def rfm_rows(self, principal: Principal, as_of: Any = None, *, segment: Any = None, batch: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every scored customer (id order), streamed from the database in batches."""
        day = _date_param(as_of, "as_of", _today())
        seg = self._segment_param(segment)
        snap = self.runtime.cached_snapshot()
        rfm = self._rfm(principal, day, snap)
        stmt = select(rfm.c.cid, rfm.c.recency_days, rfm.c.frequency, rfm.c.monetary, rfm.c.r, rfm.c.f, rfm.c.m, rfm.c.segment)
        if seg is not None:
            stmt = stmt.where(rfm.c.segment == seg)
        for r in self._stream(stmt.order_by(rfm.c.cid), batch):
            yield {
                "customer": int(r.cid),
                "recency_days": int(r.recency_days),
                "frequency": int(r.frequency),
                "monetary": r.monetary,
                "r": int(r.r),
                "f": int(r.f),
                "m": int(r.m),
                "segment": r.segment,
            }

    def _stream(self, stmt: Any, batch: int) -> Iterator[Any]:
        """Rows of ``stmt`` through a server-side cursor (PostgreSQL needs a transaction for
        one; the read pool autocommits)."""
        with self.runtime.engine.connect() as conn:
            if self.runtime.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield from conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
                return
            yield from conn.execute(stmt)

    def rfm_tags(self, principal: Principal, *, as_of: Any = None, segments: Any = None) -> dict[str, Any]:
        """Tag customers with their RFM segment (``RFM:<segment>``, source ``rule``), set-wise.

        The customers re-tagged are those in the caller's update scope — all of them, or with
        ``segments`` only those now in one of these segments: their earlier rule-made RFM tags
        are deleted, then each scored one gets the tag of its segment (INSERT … SELECT). One
        transaction, one audit entry with the counts."""
        self.records.authz.require(principal, "customer", "update")
        day = _date_param(as_of, "as_of", _today())
        chosen: list[str] | None = None
        if segments is not None:
            if not isinstance(segments, list) or not segments or len(segments) > len(SEGMENTS):
                raise _bad("segments", "must be a non-empty list of segment codes")
            chosen = sorted({self._segment_param(s, "segments") or "" for s in segments})
        snap = self.runtime.cached_snapshot()
        rfm = self._rfm(principal, day, snap)
        cv = self.records.view(principal, "customer", snap)
        c = cv.table
        in_update_scope = cv.scope("update")
        t = tag_table
        picked = rfm.c.segment.in_(chosen) if chosen is not None else true()
        if chosen is None:
            targets = select(c.c.id).where(in_update_scope)
        else:
            targets = select(rfm.c.cid).select_from(rfm.join(c, c.c.id == rfm.c.cid)).where(in_update_scope, picked)
        tag_expr = case(*[(rfm.c.segment == s.code, literal(s.tag, String())) for s in SEGMENTS], else_=cast(null(), String()))
        rfm_tag = and_(t.c.entity == "customer", t.c.source == "rule", t.c.tag.startswith(RFM_TAG_PREFIX, autoescape=True))
        stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # marks this run's rows
        held = tag_table.alias("held_tag")
        already = exists().where(held.c.entity == "customer", held.c.record_id == rfm.c.cid, held.c.tag == tag_expr)  # e.g. a manual tag of that name
        source = (
            select(
                literal("customer", String()),
                rfm.c.cid,
                tag_expr,
                literal("rule", String()),
                literal(stamp),
                literal(principal.user_id, Integer()),
            )
            .select_from(rfm.join(c, c.c.id == rfm.c.cid))
            .where(in_update_scope, picked, not_(already))
        )
        with self.runtime.begin() as conn:
            removed = conn.execute(delete(t).where(rfm_tag, t.c.record_id.in_(targets))).rowcount
            if removed is None or removed < 0:  # pysqlite reports no count for a DELETE that starts WITH …
                removed = int(conn.execute(select(func.changes())).scalar_one())
            conn.execute(insert(t).from_select(["entity", "record_id", "tag", "source", "created_at", "created_by"], source))
            added = {
                r.tag: int(r.n)
                for r in conn.execute(
                    select(t.c.tag, func.count().label("n")).where(rfm_tag, t.c.created_at == stamp).group_by(t.c.tag)
                )
            }
            counts = {s.tag: added.get(s.tag, 0) for s in SEGMENTS if chosen is None or s.code in chosen}
            self.records.audit(
                conn, principal, "rfm_tags", "customer", None,
                {"as_of": day.isoformat(), "segments": chosen or "all", "tagged": sum(counts.values()), "removed": int(removed), "counts": counts},
            )
        return {
            "as_of": day.isoformat(),
            "tagged": sum(counts.values()),
            "removed": int(removed),
            "tags": [{"tag": s.tag, "segment": s.code, "label": s.label(), "count": counts[s.tag]} for s in SEGMENTS if s.tag in counts],
        }

    # ------------------------------------------------------------------ churn

    def _churn(self, principal: Principal, snap: Snapshot, as_of: dt.date, days: int, score: int) -> tuple[Any, Any, Any, list[ColumnElement[bool]]]:
        """(customer view, FROM clause, last-score column, WHERE clauses) of the churn rule:
        the same aggregate conditions as the core ``churn_retention_task`` trigger, compiled by
        the same code, with the clock set to the end of ``as_of``."""
        cv = self._view(principal, "customer", snap)
        self._view(principal, "transaction", snap, "customer", "occurred_at")
        self._view(principal, "interaction", snap, "customer", "occurred_at", "satisfaction")
        end = _day_start(as_of + dt.timedelta(days=1))
        last_score = {
            "relation": "interactions", "fn": "last", "field": "satisfaction", "order": "occurred_at",
            "filter": {"and": [
                {"field": "satisfaction", "op": "is_null", "value": False},
                {"field": "occurred_at", "op": "lt", "value": FIELD_TYPES["datetime"].dump(end)},
            ]},
        }
        condition = {"and": [
            {"agg": {"relation": "transactions", "fn": "count",
                     "filter": {"field": "occurred_at", "op": "within_last_days", "value": days}},
             "op": "eq", "value": 0},
            {"agg": last_score, "op": "lt", "value": score},
        ]}
        clause, joins = compiled_condition(
            snap, cv.spec, condition, dialect=self.runtime.dialect, blind_index=self.records.blind_index_for, now=end
        )
        score_col = joins(last_score)  # the derived table the condition already joins
        return cv, joins.from_clause(), score_col, [cv.scope(), clause]

    def _churn_params(self, as_of: Any, days: Any, score: Any) -> tuple[dt.date, int, int]:
        return _date_param(as_of, "as_of", _today()), _int_param(days, "days", 90, 1, 3650), _int_param(score, "score", 4, 1, 5)

    def churn(self, principal: Principal, *, as_of: Any = None, days: Any = None, score: Any = None, limit: Any = 50, cursor: Any = None) -> dict[str, Any]:
        """Customers at churn risk: no transaction in the ``days`` days up to ``as_of`` and a
        last service score below ``score``; count, count per lifecycle stage, one page (most
        AUM first)."""
        day, n_days, min_score = self._churn_params(as_of, days, score)
        size = _int_param(limit, "limit", 50, 1, MAX_PAGE)
        snap = self.runtime.cached_snapshot()
        cv, from_, score_col, where = self._churn(principal, snap, day, n_days, min_score)
        c = cv.table
        stage_f = cv.spec.live_field("lifecycle_stage")
        with_stage = stage_f is not None and cv.access["lifecycle_stage"].view != "hidden"
        params = [day.isoformat(), n_days, min_score]
        after = _decode_cursor(self.runtime.secret, "churn", params, cursor) if cursor else None
        value = self._value_order(cv)
        with self.runtime.engine.connect() as conn:
            stage = field_expr(c, stage_f) if with_stage and stage_f is not None else cast(null(), String())
            by_stage = {r.stage: int(r.n) for r in conn.execute(select(stage.label("stage"), func.count().label("n")).select_from(from_).where(*where).group_by(stage))}
            rows = conn.execute(self._churn_page(snap, cv, from_, score_col, where, day, value, after, size + 1)).all()
        next_cursor = None
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_cursor = _encode_cursor(self.runtime.secret, "churn", params, [_money_text(last.value), int(last.cid)])
        names = self._names(principal, [int(r.cid) for r in rows])
        items = [self._churn_item(r, names, value is not None) for r in rows]
        out: dict[str, Any] = {
            "params": {"as_of": day.isoformat(), "days": n_days, "score": min_score},
            "count": sum(by_stage.values()),
            "items": items,
            "next_cursor": next_cursor,
        }
        if with_stage and stage_f is not None:
            labels = {o.value: o.label.to_dict() for o in stage_f.options}
            keys = [k for k in labels if k in by_stage] + [k for k in by_stage if k not in labels and k is not None] + ([None] if None in by_stage else [])
            out["by_stage"] = [{"stage": k, "label": labels.get(k or "", _NOT_RECORDED), "count": by_stage[k]} for k in keys]
        return out

    def _churn_page(
        self, snap: Snapshot, cv: Any, from_: Any, score_col: Any, where: list[ColumnElement[bool]], day: dt.date,
        value: ColumnElement[Any] | None, after: list[Any] | None, limit: int | None,
    ) -> Any:
        """The at-risk customers (``limit`` of them, or all) with how many there are in all
        (``count(*) OVER ()``, evaluated before the LIMIT) and their last transaction on or
        before ``as_of``, looked up for these customers only: one statement."""
        c = cv.table
        tv = self.records.view(cv.principal, "transaction", snap)
        cust, moment = self._col(tv, "customer"), self._col(tv, "occurred_at")
        value_col = value if value is not None else cast(null(), _SUM)
        # The at-risk set first, materialised: PostgreSQL then runs the "no recent transaction"
        # test as one (parallel) hash anti-join, instead of an index probe per customer that a
        # LIMIT directly over the join invites (bench/README: 2.2 s instead of 4.0 s at 1M × 10M).
        risk = (
            select(c.c.id.label("cid"), value_col.label("value"), score_col.label("last_score"))
            .select_from(from_)
            .where(*where)
            .cte("churn_risk")
        )
        if self.runtime.dialect == "postgresql":
            risk = risk.prefix_with("MATERIALIZED")
        risk_value = risk.c.value if value is not None else None
        order = [risk.c.value.desc(), risk.c.cid] if value is not None else [risk.c.cid]
        page_q = (
            select(risk.c.cid, risk.c.value, risk.c.last_score, func.count().over().label("total"))
            .where(self._keyset(risk_value, risk.c.cid, after))
            .order_by(*order)
        )
        if limit is not None:
            page_q = page_q.limit(limit)
        page = page_q.cte("churn_page")
        last = (
            select(cust.label("cid"), func.max(moment).label("last_at"))
            .where(cust.in_(select(page.c.cid)), tv.scope(), moment < _day_start(day + dt.timedelta(days=1)))
            .group_by(cust)
            .subquery("churn_last")
        )
        return (
            select(page.c.cid, page.c.value, page.c.last_score, page.c.total, last.c.last_at, self._local_days(day, last.c.last_at).label("days_since"))
            .select_from(page.outerjoin(last, last.c.cid == page.c.cid))
            .order_by(*([page.c.value.desc(), page.c.cid] if value is not None else [page.c.cid]))
        )

    @staticmethod
    def _churn_item(r: Any, names: Mapping[int, Any], with_value: bool) -> dict[str, Any]:
        item = {
            "customer": int(r.cid),
            "name": names.get(int(r.cid)),
            "last_transaction_at": _dump_moment(r.last_at),
            "days_since": None if r.days_since is None else int(r.days_since),
            "last_score": None if r.last_score is None else int(r.last_score),
        }
        if with_value:
            item["aum"] = _money_text(r.value)
        return item

    def churn_summary(self, principal: Principal, *, as_of: Any = None, days: Any = None, score: Any = None, top: int = 100) -> dict[str, Any]:
        """How many customers are at churn risk, and the ``top`` of them by AUM with their last
        transaction and score: one statement (just a count when ``top`` is 0)."""
        day, n_days, min_score = self._churn_params(as_of, days, score)
        snap = self.runtime.cached_snapshot()
        cv, from_, score_col, where = self._churn(principal, snap, day, n_days, min_score)
        value = self._value_order(cv)
        with self.runtime.engine.connect() as conn:
            if top > 0:
                rows = conn.execute(self._churn_page(snap, cv, from_, score_col, where, day, value, None, top)).all()
                count = int(rows[0].total) if rows else 0
            else:
                rows, count = [], int(conn.execute(select(func.count()).select_from(from_).where(*where)).scalar_one())
        return {
            "params": {"as_of": day.isoformat(), "days": n_days, "score": min_score},
            "count": count,
            "top": [self._churn_item(r, {}, value is not None) for r in rows[:top]],
        }

    # ------------------------------------------------------------------ cross-sell

    def _level(self, level: Any) -> str:
        if level is None or level == "":
            return "type"
        if level not in ("type", "product"):
            raise _bad("level", "must be type or product")
        return str(level)

    def _basket(self, principal: Principal, snap: Snapshot, level: str) -> tuple[Any, Any, Any, ColumnElement[Any]]:
        """(customer view, product view, FROM holdings ⋈ products ⋈ customers in scope, item):
        a customer's basket is the distinct product types (or product codes) they hold."""
        cv = self._view(principal, "customer", snap)
        hv = self._view(principal, "holding", snap, "customer", "product")
        pv = self._view(principal, "product", snap, "type" if level == "type" else "code")
        h, p, c = hv.table, pv.table, cv.table
        hcust = self._col(hv, "customer")
        item = self._col(pv, "type" if level == "type" else "code")
        from_ = h.join(p, p.c.id == self._col(hv, "product")).join(c, c.c.id == hcust)
        return cv, pv, from_, item

    def cross_sell(
        self, principal: Principal, *, min_support: Any = None, min_confidence: Any = None, level: Any = None, max_len: Any = None
    ) -> dict[str, Any]:
        """Association rules over product holdings, as apriori + association_rules define them:
        support = baskets holding antecedent ∪ consequent / baskets, confidence = that count /
        baskets holding the antecedent, lift = confidence / support of the consequent. Item
        and pair (and triple) supports come from GROUP BYs over a self-joined basket table."""
        ms = _share_param(min_support, "min_support", 0.05)
        mc = _share_param(min_confidence, "min_confidence", 0.3)
        lvl = self._level(level)
        size = _int_param(max_len, "max_len", 2, 2, 3)
        snap = self.runtime.cached_snapshot()
        cv, pv, from_, item = self._basket(principal, snap, lvl)
        hv = self.records.view(principal, "holding", snap)
        basket = (
            select(self._col(hv, "customer").label("cid"), item.label("item"))
            .select_from(from_)
            .where(hv.scope(), pv.scope(), cv.scope(), item.is_not(None))
            .distinct()
            .cte("xs_basket")
        )
        n = select(func.count(func.distinct(basket.c.cid))).scalar_subquery()
        fn = cast(n, Float())

        def frequent(count: ColumnElement[Any]) -> ColumnElement[bool]:
            # the same float comparison as mlxtend's apriori: count / n >= min_support
            return cast(count, Float()) / fn >= literal(ms, Float())

        f1 = select(basket.c.item, func.count().label("cnt")).group_by(basket.c.item).having(frequent(func.count())).cte("xs_f1")
        frequent_items = select(f1.c.item)
        a, b = basket.alias("xs_a"), basket.alias("xs_b")
        f2 = (
            select(a.c.item.label("i1"), b.c.item.label("i2"), func.count().label("cnt"))
            .select_from(a.join(b, and_(a.c.cid == b.c.cid, a.c.item < b.c.item)))
            .where(a.c.item.in_(frequent_items), b.c.item.in_(frequent_items))
            .group_by(a.c.item, b.c.item)
            .having(frequent(func.count()))
            .cte("xs_f2")
        )
        none = cast(null(), String())
        parts: list[Any] = []
        s1, s2 = f1.alias("xs_s1"), f1.alias("xs_s2")
        for ante, cons, ante_cnt, cons_cnt in ((f2.c.i1, f2.c.i2, s1.c.cnt, s2.c.cnt), (f2.c.i2, f2.c.i1, s2.c.cnt, s1.c.cnt)):
            parts.append(
                select(ante.label("a1"), none.label("a2"), cons.label("c1"), none.label("c2"), f2.c.cnt.label("n_ac"), ante_cnt.label("n_a"), cons_cnt.label("n_c"))
                .select_from(f2.join(s1, s1.c.item == f2.c.i1).join(s2, s2.c.item == f2.c.i2))
            )
        if size == 3:
            x = basket.alias("xs_c")
            f3 = (
                select(a.c.item.label("i1"), b.c.item.label("i2"), x.c.item.label("i3"), func.count().label("cnt"))
                .select_from(a.join(b, and_(a.c.cid == b.c.cid, a.c.item < b.c.item)).join(x, and_(x.c.cid == a.c.cid, b.c.item < x.c.item)))
                .where(a.c.item.in_(frequent_items), b.c.item.in_(frequent_items), x.c.item.in_(frequent_items))
                .group_by(a.c.item, b.c.item, x.c.item)
                .having(frequent(func.count()))
                .cte("xs_f3")
            )
            items3 = (f3.c.i1, f3.c.i2, f3.c.i3)
            for k in range(3):
                single = items3[k]
                pair = [items3[j] for j in range(3) if j != k]
                one, two = f1.alias(f"xs_one{k}"), f2.alias(f"xs_two{k}")
                joined = f3.join(one, one.c.item == single).join(two, and_(two.c.i1 == pair[0], two.c.i2 == pair[1]))
                # {x} → {y, z} and {y, z} → {x}
                parts.append(
                    select(single.label("a1"), none.label("a2"), pair[0].label("c1"), pair[1].label("c2"), f3.c.cnt.label("n_ac"), one.c.cnt.label("n_a"), two.c.cnt.label("n_c"))
                    .select_from(joined)
                )
                parts.append(
                    select(pair[0].label("a1"), pair[1].label("a2"), single.label("c1"), none.label("c2"), f3.c.cnt.label("n_ac"), two.c.cnt.label("n_a"), one.c.cnt.label("n_c"))
                    .select_from(joined)
                )
        rules = union_all(*parts).subquery("xs_rules")
        support = cast(rules.c.n_ac, Float()) / fn
        confidence = cast(rules.c.n_ac, Float()) / cast(rules.c.n_a, Float())
        lift = confidence / (cast(rules.c.n_c, Float()) / fn)
        stmt = (
            select(rules.c.a1, rules.c.a2, rules.c.c1, rules.c.c2, rules.c.n_ac, rules.c.n_a, support.label("support"), confidence.label("confidence"), lift.label("lift"), n.label("baskets"))
            .where(confidence >= literal(mc, Float()))
            .order_by(lift.desc(), confidence.desc(), support.desc(), rules.c.a1, func.coalesce(rules.c.a2, ""), rules.c.c1, func.coalesce(rules.c.c2, ""))
            .limit(MAX_RULES + 1)
        )
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            baskets = int(rows[0].baskets) if rows else int(conn.execute(select(n)).scalar_one() or 0)
        labels = self._item_labels(principal, snap, lvl, {i for r in rows for i in (r.a1, r.a2, r.c1, r.c2) if i is not None})
        out_rules = []
        for r in rows[:MAX_RULES]:
            lhs = [str(i) for i in (r.a1, r.a2) if i is not None]
            rhs = [str(i) for i in (r.c1, r.c2) if i is not None]
            out_rules.append(
                {
                    "antecedent": lhs,
                    "consequent": rhs,
                    "antecedent_label": _joined(labels, lhs),
                    "consequent_label": _joined(labels, rhs),
                    "support": float(r.support),
                    "confidence": float(r.confidence),
                    "lift": float(r.lift),
                    "count": int(r.n_ac),
                    "targets": int(r.n_a) - int(r.n_ac),
                }
            )
        return {
            "params": {"min_support": ms, "min_confidence": mc, "level": lvl, "max_len": size},
            "baskets": baskets,
            "rules": out_rules,
            "truncated": len(rows) > MAX_RULES,
        }

    def _item_labels(self, principal: Principal, snap: Snapshot, level: str, items: set[str]) -> dict[str, dict[str, str]]:
        spec = snap.registry.entity("product")
        if level == "type":
            f = spec.live_field("type")
            return {o.value: o.label.to_dict() for o in (f.options if f else ())}
        if not items:
            return {}
        pv = self.records.view(principal, "product", snap)
        title = spec.title_field or "code"
        if title not in pv.access or pv.access[title].view != "clear":
            return {}
        code, name = self._col(pv, "code"), self._col(pv, title)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(code, name).where(pv.scope(), code.in_(sorted(items)))).all()
        return {str(r[0]): {"zh": str(r[1]), "en": str(r[1])} for r in rows}

    def _items_param(self, principal: Principal, snap: Snapshot, level: str, raw: Any, name: str) -> list[str]:
        if isinstance(raw, str):
            values = [p.strip() for p in raw.split(",") if p.strip()]
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            values = [p.strip() for p in raw if p.strip()]
        else:
            values = []
        if not values:
            raise _bad(name, "is required: one or more product types (or product codes), comma-separated")
        if len(set(values)) > MAX_ITEMS:
            raise _bad(name, f"at most {MAX_ITEMS} items")
        known = set(self._item_labels(principal, snap, level, set(values)))
        unknown = [v for v in values if v not in known]
        if unknown:
            raise _bad(name, "unknown product type" if level == "type" else "unknown product code")
        return sorted(set(values))

    def cross_sell_targets(
        self, principal: Principal, *, antecedent: Any = None, consequent: Any = None, level: Any = None, limit: Any = 50, cursor: Any = None
    ) -> dict[str, Any]:
        """Customers holding every antecedent item but not every consequent item (e.g. a loan
        but no wealth product), most AUM first."""
        lvl = self._level(level)
        size = _int_param(limit, "limit", 50, 1, MAX_PAGE)
        snap = self.runtime.cached_snapshot()
        ante = self._items_param(principal, snap, lvl, antecedent, "antecedent")
        cons = self._items_param(principal, snap, lvl, consequent, "consequent")
        if set(ante) & set(cons):
            raise _bad("consequent", "must not repeat an antecedent item")
        cv, pv, from_, item = self._basket(principal, snap, lvl)
        hv = self.records.view(principal, "holding", snap)
        c = cv.table
        hcust = self._col(hv, "customer")
        held = (
            select(
                hcust.label("cid"),
                func.count(func.distinct(case((item.in_(ante), item)))).label("n_a"),
                func.count(func.distinct(case((item.in_(cons), item)))).label("n_c"),
            )
            .select_from(from_)
            .where(hv.scope(), pv.scope(), cv.scope(), item.in_(ante + cons))
            .group_by(hcust)
            .cte("xs_held")
        )
        value = self._value_order(cv)
        params = [lvl, ante, cons]
        after = _decode_cursor(self.runtime.secret, "xs_targets", params, cursor) if cursor else None
        matches = held.c.n_a == len(ante)
        lacking = held.c.n_c < len(cons)
        base = select(c.c.id.label("cid")).select_from(held.join(c, c.c.id == held.c.cid)).where(matches, lacking)
        order = [value.desc(), c.c.id] if value is not None else [c.c.id]
        value_col = value if value is not None else cast(null(), _SUM)
        page = (
            select(c.c.id.label("cid"), value_col.label("value"))
            .select_from(held.join(c, c.c.id == held.c.cid))
            .where(matches, lacking, self._keyset(value, c.c.id, after))
            .order_by(*order)
            .limit(size + 1)
        )
        with self.runtime.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(base.subquery())).scalar_one())
            rows = conn.execute(page).all()
        next_cursor = None
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_cursor = _encode_cursor(self.runtime.secret, "xs_targets", params, [_money_text(last.value), int(last.cid)])
        names = self._names(principal, [int(r.cid) for r in rows])
        labels = self._item_labels(principal, snap, lvl, set(ante + cons))
        items = []
        for r in rows:
            entry: dict[str, Any] = {"customer": int(r.cid), "name": names.get(int(r.cid))}
            if value is not None:
                entry["aum"] = _money_text(r.value)
            items.append(entry)
        return {
            "params": {"level": lvl, "antecedent": ante, "consequent": cons},
            "antecedent_label": _joined(labels, ante),
            "consequent_label": _joined(labels, cons),
            "count": total,
            "items": items,
            "next_cursor": next_cursor,
        }

    # ------------------------------------------------------------------ channels

    def channels(self, principal: Principal, *, date_from: Any = None, date_to: Any = None) -> dict[str, Any]:
        """Per acquisition channel: customers opened in the period, how many converted (hold a
        product or made a transaction), and — for readers of the whole book who may read
        channel costs — the period's cost per acquired and per converted customer."""
        to = _date_param(date_to, "to", _today())
        start = _date_param(date_from, "from", _add_months(to.replace(day=1), -11))
        if start > to:
            raise _bad("from", "must not be after to")
        snap = self.runtime.cached_snapshot()
        cv = self._view(principal, "customer", snap, "acquisition_channel", "opened_on")
        hv = self._view(principal, "holding", snap, "customer")
        tv = self._view(principal, "transaction", snap, "customer")
        c = cv.table
        channel, opened = self._col(cv, "acquisition_channel"), self._col(cv, "opened_on")
        converted = or_(
            exists().where(self._col(hv, "customer") == c.c.id, hv.scope()),
            exists().where(self._col(tv, "customer") == c.c.id, tv.scope()),
        )
        zero = literal(0, Integer())
        parts: list[Any] = [
            select(
                channel.label("channel"),
                func.count().label("acquired"),
                func.sum(case((converted, 1), else_=0)).label("converted"),
                cast(null(), _SUM).label("cost"),
            )
            .where(cv.scope(), opened >= start, opened <= to)
            .group_by(channel)
        ]
        cost_note = self._cost_access(principal, snap, cv)
        if cost_note is None:
            kv = self._view(principal, "channel_cost", snap, "channel", "month", "cost")
            k_channel, month, cost = self._col(kv, "channel"), self._col(kv, "month"), self._col(kv, "cost")
            parts.append(
                select(k_channel.label("channel"), zero.label("acquired"), zero.label("converted"), func.sum(type_coerce(cost, _SUM)).label("cost"))
                .where(kv.scope(), month >= start.replace(day=1), month <= to)
                .group_by(k_channel)
            )
        both = union_all(*parts).subquery("ch")
        stmt = select(
            both.c.channel, func.sum(both.c.acquired).label("acquired"), func.sum(both.c.converted).label("converted"), func.sum(both.c.cost).label("cost")
        ).group_by(both.c.channel)
        with self.runtime.engine.connect() as conn:
            rows = {r.channel: r for r in conn.execute(stmt)}
        f = cv.spec.live_field("acquisition_channel")
        assert f is not None
        order = [o.value for o in f.options]
        labels = {o.value: o.label.to_dict() for o in f.options}
        keys = [k for k in order if k in rows] + sorted((k for k in rows if k not in labels and k is not None), key=str) + ([None] if None in rows else [])
        with_cost = cost_note is None
        out_rows = [self._channel_row(k, labels, rows[k], with_cost) for k in keys]
        totals = self._channel_row("total", {"total": {"zh": "合计", "en": "Total"}}, _Totals.of(rows.values()), with_cost)
        out: dict[str, Any] = {
            "params": {"from": start.isoformat(), "to": to.isoformat()},
            "cost_available": with_cost,
            "channels": out_rows,
            "total": totals,
        }
        if cost_note is not None:
            out["cost_note"] = cost_note
        return out

    def _cost_access(self, principal: Principal, snap: Snapshot, cv: Any) -> dict[str, str] | None:
        """Why costs are left out for this reader (None: they are shown). Costs are booked
        for the whole bank: per-customer costs only mean something over the whole book."""
        if "channel_cost" not in snap.registry.entities:
            return {"zh": "未配置获客成本", "en": "No acquisition cost entity is configured"}
        try:
            self._view(principal, "channel_cost", snap, "channel", "month", "cost")
        except Forbidden:
            return {"zh": "无权查看获客成本", "en": "Your role may not read acquisition costs"}
        if not principal.is_system and self.records.authz.scope_clause(principal, cv.spec, cv.table, "read") is not None:
            return {"zh": "获客成本按全行统计，仅对查看全部客户的角色显示", "en": "Costs are bank-wide: shown to roles that see every customer"}
        return None

    @staticmethod
    def _channel_row(key: Any, labels: Mapping[Any, dict[str, str]], r: Any, with_cost: bool) -> dict[str, Any]:
        acquired, converted = int(r.acquired or 0), int(r.converted or 0)
        cost = Decimal(r.cost) if with_cost and r.cost is not None else None  # no cost booked: unknown, not free
        return {
            "channel": key,
            "label": labels.get(key, _NOT_RECORDED if key is None else {"zh": str(key), "en": str(key)}),
            "acquired": acquired,
            "converted": converted,
            "conversion_rate": _ratio(converted, acquired),
            "cost": _money_text(cost),
            "cost_per_acquired": _per(cost, acquired),
            "cost_per_converted": _per(cost, converted),
        }

    # ------------------------------------------------------------------ KPIs

    def kpis(self, principal: Principal, *, as_of: Any = None, months: Any = None) -> dict[str, Any]:
        """Retention, cross-sell rate, complaint handling time, and a monthly series of active
        customers (with month-on-month retention) and complaint handling."""
        day = _date_param(as_of, "as_of", _today())
        span = _int_param(months, "months", 12, 1, 36)
        snap = self.runtime.cached_snapshot()
        cv = self._view(principal, "customer", snap)
        tv = self._view(principal, "transaction", snap, "customer", "occurred_at")
        hv = self._view(principal, "holding", snap, "customer", "product")
        pv = self._view(principal, "product", snap, "type")
        kv = self._view(principal, "ticket", snap, "customer", "category", "opened_at", "resolved_at")
        c = cv.table
        end_day = day + dt.timedelta(days=1)
        end = _day_start(end_day)
        cur_start_day, prev_start_day = _add_months(end_day, -span), _add_months(end_day, -2 * span)
        cur_start, prev_start = _day_start(cur_start_day), _day_start(prev_start_day)
        first_month = _add_months(day.replace(day=1), -(span - 1))
        month_days = [_add_months(first_month, k) for k in range(-1, span)]  # the month before the series first
        bounds = [_day_start(m) for m in month_days]

        def bucket(moment: ColumnElement[Any]) -> ColumnElement[Any]:
            """Index of the local calendar month a moment falls in (0 = first of the series,
            -1 = the month before), by comparing with the months' UTC boundaries."""
            return case(*[(moment >= bounds[k + 1], literal(k)) for k in range(span - 1, -1, -1)], else_=literal(-1))

        tcust, moment = self._col(tv, "customer"), self._col(tv, "occurred_at")
        scoped_tx = and_(tv.scope(), tcust.in_(select(c.c.id).where(cv.scope())))
        # retention: active (≥ 1 transaction) in the previous period and again in the current one
        per = (
            select(
                tcust.label("cid"),
                func.max(case((moment >= cur_start, 1), else_=0)).label("cur"),
                func.max(case((moment < cur_start, 1), else_=0)).label("prev"),
            )
            .where(scoped_tx, moment >= prev_start, moment < end)
            .group_by(tcust)
            .subquery("kpi_per")
        )
        retention_q = select(
            func.coalesce(func.sum(per.c.prev), 0).label("prev"),
            func.coalesce(func.sum(case((and_(per.c.prev == 1, per.c.cur == 1), 1), else_=0)), 0).label("kept"),
            func.coalesce(func.sum(per.c.cur), 0).label("cur"),
        )
        # monthly active customers and who of them was active the month before
        act = select(tcust.label("cid"), bucket(moment).label("b")).where(scoped_tx, moment >= bounds[0], moment < end).distinct().cte("kpi_act")
        before = act.alias("kpi_before")
        monthly_q = (
            select(act.c.b, func.count().label("active"), func.count(before.c.cid).label("kept"))
            .select_from(act.outerjoin(before, and_(before.c.cid == act.c.cid, before.c.b == act.c.b - 1)))
            .group_by(act.c.b)
        )
        # cross-sell rate: customers holding two or more product types
        types = (
            select(self._col(hv, "customer").label("cid"), func.count(func.distinct(self._col(pv, "type"))).label("n"))
            .select_from(hv.table.join(pv.table, pv.table.c.id == self._col(hv, "product")))
            .where(hv.scope(), pv.scope())
            .group_by(self._col(hv, "customer"))
            .subquery("kpi_types")
        )
        cross_q = (
            select(
                func.count().label("customers"),
                func.coalesce(func.sum(case((types.c.n >= 1, 1), else_=0)), 0).label("holding"),
                func.coalesce(func.sum(case((types.c.n >= 2, 1), else_=0)), 0).label("multi"),
            )
            .select_from(c.outerjoin(types, types.c.cid == c.c.id))
            .where(cv.scope())
        )
        complaints = self._complaints(kv, cv, cur_start, bounds, end, bucket)
        with self.runtime.engine.connect() as conn:
            ret = conn.execute(retention_q).one()
            monthly = {int(r.b): r for r in conn.execute(monthly_q)}
            cross = conn.execute(cross_q).one()
            handled = conn.execute(complaints).all()
        handled_months = {int(r.b): r for r in handled if r.kind == "m"}
        period = next((r for r in handled if r.kind == "p"), None)
        series = []
        for k in range(span):
            m = monthly.get(k)
            prev_active = int(monthly[k - 1].active) if (k - 1) in monthly else 0
            h = handled_months.get(k)
            series.append(
                {
                    "month": month_days[k + 1].strftime("%Y-%m"),
                    "active_customers": int(m.active) if m else 0,
                    "retention_rate": _ratio(int(m.kept) if m else 0, prev_active),
                    "complaints_resolved": int(h.n) if h else 0,
                    "complaint_avg_hours": _hours(h.avg_s) if h else None,
                    "complaint_median_hours": _hours(h.median_s) if h else None,
                }
            )
        prev_n, kept_n = int(ret.prev), int(ret.kept)
        customers, holding, multi = int(cross.customers), int(cross.holding), int(cross.multi)
        return {
            "params": {"as_of": day.isoformat(), "months": span},
            "period": {"from": cur_start_day.isoformat(), "to": day.isoformat()},
            "previous_period": {"from": prev_start_day.isoformat(), "to": (cur_start_day - dt.timedelta(days=1)).isoformat()},
            "retention": {
                "label": {"zh": "客户留存率", "en": "Retention rate"},
                "rate": _ratio(kept_n, prev_n),
                "previous_active": prev_n,
                "retained": kept_n,
                "current_active": int(ret.cur),
            },
            "cross_sell": {
                "label": {"zh": "交叉销售率", "en": "Cross-sell rate"},
                "rate": _ratio(multi, customers),
                "customers": customers,
                "with_holdings": holding,
                "multi_product": multi,
            },
            "complaints": {
                "label": {"zh": "投诉处理时长(小时)", "en": "Complaint handling time (hours)"},
                "resolved": int(period.n) if period else 0,
                "avg_hours": _hours(period.avg_s) if period else None,
                "median_hours": _hours(period.median_s) if period else None,
            },
            "monthly": series,
        }

    def _complaints(self, kv: Any, cv: Any, cur_start: dt.datetime, bounds: list[dt.datetime], end: dt.datetime, bucket: Any) -> Any:
        """Complaints resolved in the period and per month: count, mean and median seconds
        from opened to resolved; the median from ROW_NUMBER over the sorted durations (the
        middle row, or the mean of the two middle rows)."""
        k, c = kv.table, cv.table
        opened, resolved = self._col(kv, "opened_at"), self._col(kv, "resolved_at")
        since = min(cur_start, bounds[1])
        base = (
            select(
                self._seconds_between(opened, resolved).label("s"),
                bucket(resolved).label("b"),
                case((resolved >= cur_start, 1), else_=0).label("in_period"),
            )
            .select_from(k.join(c, c.c.id == self._col(kv, "customer")))
            .where(
                kv.scope(), cv.scope(), self._col(kv, "category") == "complaint",
                opened.is_not(None), resolved.is_not(None), resolved >= opened, resolved >= since, resolved < end,
            )
            .cte("kpi_complaints")
        )
        ranked = select(
            base.c.s,
            base.c.b,
            base.c.in_period,
            func.row_number().over(partition_by=base.c.b, order_by=base.c.s).label("rn_b"),
            func.count().over(partition_by=base.c.b).label("n_b"),
            func.row_number().over(partition_by=base.c.in_period, order_by=base.c.s).label("rn_p"),
            func.count().over(partition_by=base.c.in_period).label("n_p"),
        ).cte("kpi_ranked")

        def median(rn: Any, n: Any) -> ColumnElement[Any]:
            middle = or_(rn == (n + 1) // 2, rn == (n + 2) // 2)
            return func.avg(case((middle, ranked.c.s)))

        monthly = (
            select(literal("m", String()).label("kind"), ranked.c.b, func.count().label("n"), func.avg(ranked.c.s).label("avg_s"), median(ranked.c.rn_b, ranked.c.n_b).label("median_s"))
            .where(ranked.c.b >= 0)
            .group_by(ranked.c.b)
        )
        period = select(
            literal("p", String()).label("kind"), literal(-2).label("b"), func.count().label("n"), func.avg(ranked.c.s).label("avg_s"), median(ranked.c.rn_p, ranked.c.n_p).label("median_s")
        ).where(ranked.c.in_period == 1)
        return union_all(monthly, period)


@dataclass(frozen=True)
class _Totals:
    acquired: int
    converted: int
    cost: Decimal | None

    @classmethod
    def of(cls, rows: Any) -> "_Totals":
        rows = builtins.list(rows)
        costs = [Decimal(r.cost) for r in rows if r.cost is not None]
        return cls(sum(int(r.acquired or 0) for r in rows), sum(int(r.converted or 0) for r in rows), sum(costs, Decimal(0)) if costs else None)


def _joined(labels: Mapping[str, dict[str, str]], items: Sequence[str]) -> dict[str, str]:
    zh = "、".join(labels.get(i, {}).get("zh", i) for i in items)
    en = " + ".join(labels.get(i, {}).get("en", i) for i in items)
    return {"zh": zh, "en": en}

