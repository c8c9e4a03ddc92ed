"""NPS trend: survey responses per period, split into promoters, passives and detractors, and the
Net Promoter Score of each period, counted in one SQL GROUP BY within the reader's row scope.

Also the calendar periods (weeks, months, quarters in Beijing time) that this trend and the
complaint keywords (:mod:`engine.insight.text`) group by: windows are worked out here and
reach SQL as one ``CASE`` over bound timestamps, so SQLite and PostgreSQL bucket a row the
same way without any dialect's date functions.

    promoters 9–10 · passives 7–8 · detractors 0–6
    NPS = %promoters − %detractors, rounded half up to one decimal (None for a period without
    responses).

The survey kind is the ``survey`` enum of ``survey_response`` (``nps``, ``service_followup``,
or whatever options a template adds); there is no separate survey definition entity.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Integer, and_, case, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest, Forbidden
from ..fieldtypes import LOCAL_TZ
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.query import compile_filter, field_expr

__all__ = [
    "PERIODS",
    "MAX_PERIODS",
    "Window",
    "period_windows",
    "parse_as_of",
    "bucket_expr",
    "timestamp_expr",
    "nps_trend",
    "nps_value",
]

PERIODS = ("week", "month", "quarter")
MAX_PERIODS = 60
PROMOTER_MIN, PASSIVE_MIN = 9, 7  # 9–10 promote, 7–8 are passive, 0–6 detract


@dataclass(frozen=True)
class Window:
    """One calendar period: local dates ``start`` (inclusive) to ``end`` (exclusive)."""

    label: str
    start: dt.date
    end: dt.date

    @property
    def start_utc(self) -> dt.datetime:
        return _utc(self.start)

    @property
    def end_utc(self) -> dt.datetime:
        return _utc(self.end)

    def to_dict(self) -> dict[str, str]:
        return {"period": self.label, "start": self.start.isoformat(), "end": (self.end - dt.timedelta(days=1)).isoformat()}


def _utc(day: dt.date) -> dt.datetime:
    """Local midnight of ``day`` as stored timestamps are: naive UTC."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)


def _period_start(period: str, day: dt.date) -> dt.date:
    if period == "week":
        return day - dt.timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == "month":
        return day.replace(day=1)
    return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)


def _next_start(period: str, start: dt.date) -> dt.date:
    if period == "week":
        return start + dt.timedelta(days=7)
    months = 1 if period == "month" else 3
    month = start.month - 1 + months
    return dt.date(start.year + month // 12, month % 12 + 1, 1)


def _previous_start(period: str, start: dt.date) -> dt.date:
    return _period_start(period, start - dt.timedelta(days=1))


def _label(period: str, start: dt.date) -> str:
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return f"{start:%Y-%m}"
    return f"{start.year}-Q{(start.month - 1) // 3 + 1}"


def period_windows(period: Any, periods: Any, as_of: dt.date, max_periods: int = MAX_PERIODS) -> list[Window]:
    """The ``periods`` calendar periods ending with the one that holds ``as_of``, oldest first."""
    if period not in PERIODS:
        raise BadRequest("period must be week, month or quarter", [{"field": "period", "message": "must be one of week, month, quarter"}])
    if not isinstance(periods, int) or isinstance(periods, bool) or not 1 <= periods <= max_periods:
        raise BadRequest(f"periods must be between 1 and {max_periods}", [{"field": "periods", "message": f"must be between 1 and {max_periods}"}])
    start = _period_start(period, as_of)
    starts = [start]
    for _ in range(periods - 1):
        starts.append(_previous_start(period, starts[-1]))
    starts.reverse()
    return [Window(_label(period, s), s, _next_start(period, s)) for s in starts]


def parse_as_of(value: Any) -> dt.date:
    """``YYYY-MM-DD`` (default: today in Beijing), or a 400 naming ``as_of``."""
    if value is None or value == "":
        return dt.datetime.now(LOCAL_TZ).date()
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        day = dt.date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        day = None
    if day is None or not 1900 <= day.year <= 9998:  # room for a period's end in dt.date
        raise BadRequest("as_of must be a date (YYYY-MM-DD)", [{"field": "as_of", "message": "must be a date YYYY-MM-DD"}])
    return day


def bucket_expr(ts: ColumnElement[Any], windows: list[Window]) -> ColumnElement[int]:
    """The index of the window ``ts`` falls in (rows must already be limited to the windows'
    span): ``CASE WHEN ts < end0 THEN 0 WHEN ts < end1 THEN 1 … ELSE n-1 END``."""
    whens = [(ts < w.end_utc, i) for i, w in enumerate(windows[:-1])]
    if not whens:
        return literal(0, Integer)
    return case(*whens, else_=len(windows) - 1)


def timestamp_expr(v: Any, name: str) -> ColumnElement[Any]:
    """When a record happened: its ``name`` datetime column, or its creation time when that is
    empty (records opened by triggers, imported without it) or not a plain column."""
    t = v.table
    f = v.spec.live_field(name)
    if f is None or f.type != "datetime" or f.storage != "column" or f.encrypted or not v.clear(f):
        return t.c.created_at  # type: ignore[no-any-return]
    return func.coalesce(field_expr(t, f), t.c.created_at)


def nps_value(promoters: int, detractors: int, responses: int) -> float | None:
    """%promoters − %detractors, rounded half up to one decimal."""
    if not responses:
        return None
    value = Decimal(100 * (promoters - detractors)) / Decimal(responses)
    return float(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def nps_trend(
    records: RecordService,
    principal: Principal,
    *,
    period: Any = "month",
    periods: Any = 12,
    survey: Any = "nps",
    as_of: Any = None,
) -> dict[str, Any]:
    """Responses per period of ``survey`` from the reader's customers (row scope of
    ``survey_response``), split by score band, with each period's NPS and the window's total."""
    windows = period_windows(period, periods, parse_as_of(as_of))
    v = records.view(principal, "survey_response")
    records.authz.require(principal, "survey_response", "read")
    spec, t = v.spec, v.table
    score_f = spec.live_field("score")
    survey_f = spec.live_field("survey")
    if score_f is None or survey_f is None:
        raise BadRequest("survey responses have no score or survey field in this metadata")
    if not v.clear(score_f) or score_f.encrypted:
        raise Forbidden("survey scores are not visible to your role")
    if not isinstance(survey, str) or survey not in survey_f.option_values:
        allowed = ", ".join(sorted(survey_f.option_values))
        raise BadRequest(f"survey must be one of: {allowed}", [{"field": "survey", "message": f"must be one of {allowed}"}])
    ts = timestamp_expr(v, "responded_at")
    score = field_expr(t, score_f)
    rows = (
        select(bucket_expr(ts, windows).label("bucket"), score.label("score"))
        .where(
            v.scope(),
            compile_filter(v.filter_context(), {"field": survey_f.name, "op": "eq", "value": survey}),
            score.between(0, 10),
            ts >= windows[0].start_utc,
            ts < windows[-1].end_utc,
        )
        .subquery()
    )
    band = rows.c.score

    def counted(cond: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    stmt = select(
        rows.c.bucket,
        func.count(),
        counted(band >= PROMOTER_MIN),
        counted(and_(band >= PASSIVE_MIN, band < PROMOTER_MIN)),
        counted(band < PASSIVE_MIN),
    ).group_by(rows.c.bucket)
    with records.runtime.engine.connect() as conn:
        counts = {int(r[0]): tuple(int(x) for x in r[1:]) for r in conn.execute(stmt)}
    items = []
    totals = [0, 0, 0, 0]
    for i, w in enumerate(windows):
        n, promoters, passives, detractors = counts.get(i, (0, 0, 0, 0))
        totals = [a + b for a, b in zip(totals, (n, promoters, passives, detractors))]
        items.append(
            {
                **w.to_dict(),
                "responses": n,
                "promoters": promoters,
                "passives": passives,
                "detractors": detractors,
                "nps": nps_value(promoters, detractors, n),
            }
        )
    n, promoters, passives, detractors = totals
    return {
        "survey": survey,
        "period": period,
        "items": items,
        "total": {
            "start": windows[0].start.isoformat(),
            "end": (windows[-1].end - dt.timedelta(days=1)).isoformat(),
            "responses": n,
            "promoters": promoters,
            "passives": passives,
            "detractors": detractors,
            "nps": nps_value(promoters, detractors, n),
        },
        "labels": {
            "nps": {"zh": "净推荐值（NPS）", "en": "Net Promoter Score"},
            "promoters": {"zh": "推荐者（9-10分）", "en": "Promoters (9-10)"},
            "passives": {"zh": "中立者（7-8分）", "en": "Passives (7-8)"},
            "detractors": {"zh": "贬损者（0-6分）", "en": "Detractors (0-6)"},
            "responses": {"zh": "回复数", "en": "Responses"},
        },
    }
