"""RFM + churn over N customers × M transactions: FinCRM's analytics service against the same
answer computed by a hand-written SQL query, by pandas and by DuckDB, on the same data.

    python bench/analytics_bench.py                                   # PostgreSQL + SQLite, 100k customers × 1M transactions
    python bench/analytics_bench.py --customers 1000000 --transactions 10000000 --databases postgresql
    python bench/analytics_bench.py --reuse                           # keep a database already seeded at this size

Data (seeded once per database and size; ``--reuse`` keeps it): the schema is the app's own
(``Runtime.init_schema``: tables, indexes, constraints), then set-wise ``INSERT … SELECT`` in the
database (``generate_series`` on PostgreSQL, a numbers table on SQLite; random draws by the
database; secondary indexes dropped during the load and rebuilt after it; ids bumped past the
loaded ones in the engine's allocator; ``VACUUM ANALYZE`` / ``ANALYZE``):

- customers: owners spread over 200 relationship managers on 20 branches (10 RMs per branch);
- transactions (``--transactions`` in all, ±1%) over the 25 months up to one month after the
  default ``--as-of`` (so the as-of cut-off matters): 8% of the customers have none, 5% are
  heavy (5× the mean count), the rest 1 + ⌊Exp(λ)⌋ — a long tail; 10% of the customers have
  been silent for more than 90 days before the default as-of; amounts log-uniform 100–40,000,
  direction in/out, a quarter of the outflows stored with a negative sign (monetary = Σ|amount|);
- interactions: 0–2 per customer over the same span, satisfaction 1–5 (skewed to 4–5), 20%
  without a score.

Contenders, each computing RFM (per-customer recency/frequency/monetary, 1–5 quintile scores,
segment counts) and churn (count + the top 100 at risk), ``--repeat`` interleaved rounds after a
warm-up (median, min, max):

a. engine — ``AnalyticsService.rfm_summary`` + ``churn_summary`` with an admin principal: what
   ``GET /api/v1/analytics/rfm`` and ``…/churn`` do, minus HTTP;
b. hand — what a DBA would write for the same definitions, run with psycopg / sqlite3: RFM as
   one statement (a CTE aggregate per customer, ``rank()`` windows — ``ntile(5)`` would split
   ties arbitrarily, the definition gives equal values equal scores — and a ``CASE`` for the
   segment); churn in three forms, the last score by ``DISTINCT ON`` (PostgreSQL) /
   ``row_number()`` (SQLite): (0) the at-risk set with ``NOT EXISTS`` in a ``MATERIALIZED`` CTE,
   then ``count(*) OVER ()`` and the top 100; (1) the same with ``ORDER BY … LIMIT`` straight over
   the anti-join; (2) ``max(occurred_at)`` per customer by ``GROUP BY``. Forms 1 and 2 are timed
   alone (their RFM statement is the same) and the fastest form is the baseline;
c. pandas — reads the needed columns from the database (PostgreSQL: ``COPY … TO STDOUT`` into
   ``read_csv``; SQLite: ``read_sql``), computes with groupby / ``rank(method="min")`` / masks;
   read and compute are timed apart;
d. DuckDB — the needed columns exported to CSV (PostgreSQL ``COPY … TO STDOUT``; SQLite: the
   sqlite3 cursor into ``csv``), then the hand-written query in DuckDB over the CSV files
   (export + query) and over Parquet files converted once from them (query alone).

Every contender must give the same answer — customers per segment and Σ monetary per segment,
the churn count, and the top 100 at-risk customers by AUM with their last score and days since
their last transaction (``churn_summary``'s list) — in every round; the run stops otherwise.
Prints a table per database (seconds, ratios to the best hand-written form as medians and paired
per round, the 60 s end-to-end target) and writes bench/results/analytics_bench-<timestamp>.json
(every sample, machine and PostgreSQL settings, load average, the hash of the engine's
analytics module, the SQL, and ``EXPLAIN (ANALYZE, BUFFERS)`` — SQLite: ``EXPLAIN QUERY PLAN`` —
of the engine's heaviest statements and of every hand-written one).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.runtime import Runtime  # noqa: E402
from engine.security.crypto import Keyring  # noqa: E402
from engine.security.org import set_staff  # noqa: E402
from trigger_bench import Dialect, Loader, analyze  # noqa: E402

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_DATABASE = "fincrm_analytics_bench"
SQLITE_PATH = "/tmp/fincrm-analytics-bench-{customers}x{transactions}.db"
SEED_VERSION = 1
DEFAULT_AS_OF = dt.date(2026, 6, 30)
# The data's clock: the newest transaction is just before END; the span covers 24 months before
# the default as-of and one month after it. Fixed, so a seeded database stays valid.
END = dt.datetime(2026, 7, 31, 0, 0, 0)
SPAN_DAYS = 760
AFTER_DAYS = (END.date() - DEFAULT_AS_OF).days  # 31
RMS, RM_BASE, RMS_PER_BRANCH = 200, 1000, 10
BRANCHES = RMS // RMS_PER_BRANCH
ADMIN_ID = 1
TARGET_SECONDS = 60.0
TARGET_RATIO = 1.5


# ---------------------------------------------------------------------- databases


def pg_url(database: str) -> str:
    return f"{PG_SERVER}/{database}"


def pg_exists(database: str) -> bool:
    eng = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first() is not None
    finally:
        eng.dispose()


def pg_recreate(database: str) -> None:
    """DROP and CREATE the bench database through a maintenance connection to ``postgres``."""
    eng = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(database)
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    finally:
        eng.dispose()


def seed_spec(customers: int, transactions: int) -> str:
    return json.dumps({"v": SEED_VERSION, "customers": customers, "transactions": transactions, "end": END.isoformat()}, sort_keys=True)


def seeded_spec(url: str) -> str | None:
    """The spec the database at ``url`` was fully seeded with, or None."""
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            try:
                row = conn.execute(text("SELECT spec FROM analytics_bench_seed WHERE phase = 'analyze'")).first()
            except Exception:  # no marker table: never seeded (or not by this bench)
                return None
            return None if row is None else str(row[0])
    finally:
        eng.dispose()


def open_database(kind: str, args: argparse.Namespace) -> tuple[Runtime, bool]:
    """The bench database of this kind: reused when ``--reuse`` and it holds this size, else made
    afresh. Returns (runtime, reused)."""
    spec = seed_spec(args.customers, args.transactions)
    if kind == "postgresql":
        url = pg_url(args.pg_database)
        reused = bool(args.reuse and pg_exists(args.pg_database) and seeded_spec(url) == spec)
        if not reused:
            pg_recreate(args.pg_database)
    else:
        path = Path(args.sqlite_path.format(customers=args.customers, transactions=args.transactions))
        url = f"sqlite:///{path}"
        reused = bool(args.reuse and path.exists() and seeded_spec(url) == spec)
        if not reused:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    rt = Runtime(url, Keyring(b"a" * 32), b"analytics-bench-secret")
    rt.init_schema()
    return rt, reused


# ---------------------------------------------------------------------- seeding


def phase_sql(d: Dialect, phase: str) -> str:
    """One seeding statement (parameters :n, :lam, :end). Customers are bucketed by a hash of
    their id (``Dialect.seg``, 0..999): < 80 no transactions, 80..129 heavy, 130..229 silent
    for the last 91+ days before the default as-of."""
    u = d.u
    if phase == "customers":
        created = d.ago("(400 + r3 * 3000) * 86400")
        return f"""WITH src AS MATERIALIZED (
              SELECT n.i AS id, {u} AS r1, {u} AS r3, {u} AS r4 FROM bench_nums n WHERE n.i <= :n)
            INSERT INTO e_customer (id, version, created_at, updated_at, ext, name, aum, lifecycle_stage, owner, branch, opened_on)
            SELECT id, 1, {created}, {created}, {d.json_empty}, '客户' || id,
                   {d.money('exp(8 + 8 * r1)')},
                   {d.pick('r4', ['new', 'growing', 'mature', 'declining'])},
                   {RM_BASE} + id % {RMS}, 1 + (id % {RMS}) / {RMS_PER_BRANCH},
                   {"CAST(" + created + " AS date)" if d.pg else "date(" + created + ")"}
            FROM src"""
    if phase == "transactions":
        silent_from = AFTER_DAYS + 91  # days before END
        return f"""WITH plan AS MATERIALIZED (
              SELECT id AS customer, seg,
                     CASE WHEN seg < 80 THEN 0
                          ELSE 1 + {d.least(d.ifloor(f'-ln(1 - {u}) * :lam * (CASE WHEN seg < 130 THEN 5 ELSE 1 END)'), '999')} END AS k
              FROM (SELECT id, {d.seg('id')} AS seg FROM e_customer) c),
            src AS MATERIALIZED (
              SELECT c.customer, c.seg, {u} AS r_ts, {u} AS r_amt, {u} AS r_dir, {u} AS r_sign, {u} AS r_ch
              FROM plan c {d.expand('c.k')})
            INSERT INTO e_transaction (id, version, created_at, updated_at, ext, customer, amount, direction, channel, occurred_at)
            SELECT {d.row_id('ts')}, 1, ts, ts, {d.json_empty}, customer,
                   CASE WHEN direction = 'out' AND r_sign < 0.25 THEN -amt ELSE amt END, direction, channel, ts
            FROM (SELECT customer, r_sign,
                         CASE WHEN seg >= 130 AND seg < 230 THEN {d.ago(f'({silent_from} + r_ts * ({SPAN_DAYS} - {silent_from})) * 86400')}
                              ELSE {d.ago(f'(1 + r_ts * ({SPAN_DAYS} * 86400 - 1))')} END AS ts,
                         {d.money('exp(ln(100) + r_amt * ln(400))')} AS amt,
                         CASE WHEN r_dir < 0.55 THEN 'in' ELSE 'out' END AS direction,
                         {d.pick('r_ch', ['mobile_app', 'online', 'counter', 'atm', 'rm'])} AS channel
                  FROM src) x
            ORDER BY ts"""
    if phase == "interactions":
        return f"""WITH plan AS MATERIALIZED (SELECT id AS customer, owner, {d.ifloor(f'{u} * 3')} AS k FROM e_customer),
            src AS MATERIALIZED (
              SELECT c.customer, c.owner, {u} AS r_ts, {u} AS r_sat, {u} AS r_ch FROM plan c {d.expand('c.k')})
            INSERT INTO e_interaction (id, version, created_at, updated_at, ext, customer, channel, occurred_at, summary, satisfaction, owner)
            SELECT {d.row_id('ts')}, 1, ts, ts, {d.json_empty}, customer, channel, ts, '客户回访', sat, owner
            FROM (SELECT customer, owner, {d.ago(f'(1 + r_ts * ({SPAN_DAYS} * 86400 - 1))')} AS ts,
                         CASE WHEN r_sat < 0.2 THEN NULL WHEN r_sat < 0.48 THEN 5 WHEN r_sat < 0.72 THEN 4
                              WHEN r_sat < 0.84 THEN 3 WHEN r_sat < 0.92 THEN 2 ELSE 1 END AS sat,
                         {d.pick('r_ch', ['phone', 'wechat', 'visit', 'sms', 'email'])} AS channel
                  FROM src) x
            ORDER BY ts"""
    raise ValueError(phase)


PHASES = ("staff", "branches", "customers", "transactions", "interactions")
PHASE_TABLE = {"staff": "fincrm_staff", "branches": "e_branch", "customers": "e_customer", "transactions": "e_transaction",
               "interactions": "e_interaction"}


def seed(rt: Runtime, customers: int, transactions: int) -> dict[str, Any]:
    """Run the seeding phases not yet done (each commits with a marker row in
    ``analytics_bench_seed``); returns {phase: {rows, seconds, skipped}}."""
    d = Dialect(rt.dialect)
    ld = Loader(rt)
    spec = seed_spec(customers, transactions)
    # E[1 + floor(Exp(λ))] ≈ λ + 1/2; 87% regular + 5% heavy (5λ) customers carry the transactions
    lam = max((transactions / max(customers, 1) - 0.46) / 1.12, 0.01)
    params: dict[str, Any] = {"n": customers, "lam": lam, "now": END if d.pg else END.strftime("%Y-%m-%d %H:%M:%S")}
    out: dict[str, Any] = {}
    try:
        ld.create_markers("analytics_bench_seed")
        for phase in (*PHASES, "analyze"):
            earlier = ld.phase_done("analytics_bench_seed", phase, spec, "run without --reuse")
            if earlier is not None:
                out[phase] = earlier
                continue
            started = time.perf_counter()
            rows = 0
            if phase == "staff":
                with rt.begin() as conn:
                    for r in range(RMS):
                        set_staff(conn, RM_BASE + r, branch_id=1 + r // RMS_PER_BRANCH, team=f"T{r // RMS_PER_BRANCH:02d}")
                rows = RMS
            elif phase == "branches":
                with rt.begin() as conn:
                    conn.execute(
                        insert(rt.snapshot().tables["branch"]),
                        [{"id": b, "version": 1, "created_at": END, "updated_at": END, "ext": {}, "code": f"BR{b:02d}",
                          "name": f"第{b}支行", "level": "sub_branch", "city": "上海"} for b in range(1, BRANCHES + 1)],
                    )
                rows = BRANCHES
            elif phase == "analyze":
                for entity, table in (("branch", "e_branch"), ("customer", "e_customer"), ("transaction", "e_transaction"),
                                      ("interaction", "e_interaction")):
                    with ld.atomic():
                        max_id = ld.scalar(f"SELECT max(id) FROM {table}")
                    rt.ids.bump_past(entity, int(max_id or 0))  # the engine's next ids come after the loaded ones
                ld.close()
                analyze(rt)
                ld = Loader(rt)
            else:
                table = PHASE_TABLE[phase]
                with ld.atomic():
                    if phase == "customers":
                        ld.numbers(max(customers, 1000))
                    ld.load(table, [phase_sql(d, phase)], params, "run without --reuse")
                    rows = int(ld.scalar(f"SELECT count(*) FROM {table}"))
            seconds = time.perf_counter() - started
            out[phase] = ld.mark_done("analytics_bench_seed", phase, spec, rows, seconds)
    finally:
        ld.close()
    return out


# ---------------------------------------------------------------------- definitions (docs/analytics.md, engine/insight/analytics.py)

# Business dates are Beijing dates (UTC+8, no daylight saving): "on or before as_of" is before
# local midnight at the end of as_of, a transaction's date is its local calendar date.
LOCAL_OFFSET = dt.timedelta(hours=8)
HIGH = 3  # an R, F or M score of 3-5 is "high"
# code, R high, F high, M high — the 8-segment model, first match wins (the last is the rest)
SEGMENTS = (
    ("important_value", True, True, True),
    ("important_develop", True, False, True),
    ("important_retain", False, True, True),
    ("important_winback", False, False, True),
    ("general_value", True, True, False),
    ("general_develop", True, False, False),
    ("general_retain", False, True, False),
    ("general_winback", False, False, False),
)
TOP = 100  # churn_summary lists the top 100 at-risk customers by AUM


class Params:
    """The bounds every contender uses, derived once from as_of / days / score."""

    def __init__(self, as_of: dt.date, days: int, score: int) -> None:
        self.as_of, self.days, self.score = as_of, days, score
        # local midnight at the end of as_of, as naive UTC
        self.cutoff = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()) - LOCAL_OFFSET
        # "a transaction in the last `days` days": occurred_at BETWEEN since AND cutoff (both ends in)
        self.since = self.cutoff - dt.timedelta(days=days)

    def sql(self, dialect: str) -> dict[str, Any]:
        """Bound parameters of the hand-written SQL, in the dialect's storage format."""
        if dialect == "sqlite":  # SQLAlchemy's DateTime text on SQLite
            return {"as_of": self.as_of.isoformat(), "cutoff": self.cutoff.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "since": self.since.strftime("%Y-%m-%d %H:%M:%S.%f"), "score": self.score, "top": TOP}
        return {"as_of": self.as_of, "cutoff": self.cutoff, "since": self.since, "score": self.score, "top": TOP}


def segment_case(r: str, f: str, m: str) -> str:
    whens = []
    for code, rh, fh, mh in SEGMENTS[:-1]:
        conds = [f"{col} {'>=' if high else '<'} {HIGH}" for col, high in ((r, rh), (f, fh), (m, mh))]
        whens.append(f"WHEN {' AND '.join(conds)} THEN '{code}'")
    return f"CASE {' '.join(whens)} ELSE '{SEGMENTS[-1][0]}' END"


def money_text(value: Any, cents: bool) -> str:
    """A sum of money as the API prints it ('123.45'); integer cents on SQLite."""
    from decimal import Decimal

    if value is None:
        return "0.00"
    d = Decimal(int(value)) / 100 if cents else Decimal(value)
    return str(d.quantize(Decimal("0.01")))


class Answer:
    """What the contenders must agree on: customers scored; per segment, customers and Σ monetary;
    the churn count; the top-100 at-risk customers by AUM with their last score and days since
    their last transaction."""

    def __init__(self, segments: dict[str, tuple[int, str]] | None, churn: int, top: Sequence[tuple[Any, Any, Any]]) -> None:
        # None: a churn form timed alone (no RFM to compare)
        self.segments = None if segments is None else {code: segments[code] for code, *_ in SEGMENTS if code in segments and segments[code][0]}
        self.scored = None if self.segments is None else sum(n for n, _ in self.segments.values())
        self.churn = churn
        self.top = [(int(i), None if s is None else int(s), None if d is None else int(d)) for i, s, d in top]

    def differences(self, ref: "Answer") -> list[str]:
        out = []
        if self.segments is not None and ref.segments is not None and self.segments != ref.segments:
            out.append(f"segments {self.segments} vs {ref.segments}")
        if self.churn != ref.churn:
            out.append(f"churn count {self.churn} vs {ref.churn}")
        if self.top != ref.top:
            diff = next(((a, b) for a, b in zip(self.top, ref.top) if a != b), (len(self.top), len(ref.top)))
            out.append(f"top-{TOP} at-risk list differs (first difference: {diff[0]} vs {diff[1]})")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "segments": {k: {"count": n, "monetary": m} for k, (n, m) in (self.segments or {}).items()},
                "churn": self.churn, "top_sha256": hashlib.sha256(json.dumps(self.top).encode()).hexdigest()[:16], "top_first": self.top[:3]}


# ---------------------------------------------------------------------- b. hand-written SQL


def hand_rfm_sql(dialect: str) -> str:
    """Aggregate per customer, keep customers in scope, rank, score 1 + 5·(rank−1) div n (ties
    share their lowest rank), name the segment, count. Parameters :as_of :cutoff."""
    if dialect == "postgresql":
        recency = "CAST(:as_of AS date) - CAST(a.last_at + interval '8 hours' AS date)"
    else:
        recency = "CAST(julianday(:as_of) - julianday(date(a.last_at, '+8 hours')) AS INTEGER)"
    return f"""
        WITH agg AS (
          SELECT customer, max(occurred_at) AS last_at, count(*) AS frequency, sum(abs(amount)) AS monetary
          FROM e_transaction
          WHERE retained_at IS NULL AND occurred_at < :cutoff
          GROUP BY customer),
        base AS (
          SELECT a.customer, {recency} AS recency_days, a.frequency, a.monetary
          FROM agg a JOIN e_customer c ON c.id = a.customer
          WHERE c.retained_at IS NULL),
        scored AS (
          SELECT monetary,
                 1 + 5 * (rank() OVER (ORDER BY recency_days DESC) - 1) / count(*) OVER () AS r,
                 1 + 5 * (rank() OVER (ORDER BY frequency) - 1) / count(*) OVER () AS f,
                 1 + 5 * (rank() OVER (ORDER BY monetary) - 1) / count(*) OVER () AS m
          FROM base)
        SELECT {segment_case('r', 'f', 'm')} AS segment, count(*) AS n, sum(monetary) AS monetary
        FROM scored
        GROUP BY 1"""


def hand_churn_forms(dialect: str) -> list[tuple[str, str]]:
    """(label, SQL) of natural hand-written forms of churn, each one statement giving the count
    and the top 100 by AUM with the last score and the days since the last transaction.
    Parameters :as_of :cutoff :since :score :top.

    0. the at-risk set (last score by DISTINCT ON / row_number(), "no recent transaction" as NOT
       EXISTS) in a MATERIALIZED CTE, then count(*) OVER () and the top 100 over it;
    1. the same without MATERIALIZED: ORDER BY … LIMIT straight over the anti-join;
    2. "no recent transaction" as max(occurred_at) per customer from a GROUP BY of all
       transactions up to as_of."""
    pg = dialect == "postgresql"
    if pg:
        last_score = """SELECT DISTINCT ON (customer) customer, satisfaction FROM e_interaction
              WHERE retained_at IS NULL AND satisfaction IS NOT NULL AND occurred_at < :cutoff
              ORDER BY customer, occurred_at DESC, id DESC"""
        days_since = "CAST(:as_of AS date) - CAST(last_at + interval '8 hours' AS date)"
    else:
        last_score = """SELECT customer, satisfaction FROM (
                SELECT customer, satisfaction, row_number() OVER (PARTITION BY customer ORDER BY occurred_at DESC, id DESC) AS rn
                FROM e_interaction WHERE retained_at IS NULL AND satisfaction IS NOT NULL AND occurred_at < :cutoff) x
              WHERE rn = 1"""
        days_since = "CAST(julianday(:as_of) - julianday(date(last_at, '+8 hours')) AS INTEGER)"

    def not_exists(materialized: bool) -> str:
        return f"""
        WITH last_score AS ({last_score}),
        at_risk AS {"MATERIALIZED " if materialized else ""}(
          SELECT c.id, coalesce(c.aum, 0) AS aum, s.satisfaction
          FROM e_customer c JOIN last_score s ON s.customer = c.id
          WHERE c.retained_at IS NULL AND s.satisfaction < :score
            AND NOT EXISTS (SELECT 1 FROM e_transaction t WHERE t.customer = c.id AND t.retained_at IS NULL
                              AND t.occurred_at BETWEEN :since AND :cutoff)),
        top AS (SELECT id, aum, satisfaction, count(*) OVER () AS n FROM at_risk ORDER BY aum DESC, id LIMIT :top),
        top_last AS (
          SELECT top.*, (SELECT max(t.occurred_at) FROM e_transaction t
                         WHERE t.customer = top.id AND t.retained_at IS NULL AND t.occurred_at < :cutoff) AS last_at
          FROM top)
        SELECT id, satisfaction, {days_since} AS days_since, n FROM top_last ORDER BY aum DESC, id"""

    grouped = f"""
        WITH last_tx AS (
          SELECT customer, max(occurred_at) AS last_at FROM e_transaction
          WHERE retained_at IS NULL AND occurred_at <= :cutoff
          GROUP BY customer),
        last_score AS ({last_score}),
        at_risk AS (
          SELECT c.id, coalesce(c.aum, 0) AS aum, s.satisfaction, t.last_at
          FROM e_customer c JOIN last_score s ON s.customer = c.id LEFT JOIN last_tx t ON t.customer = c.id
          WHERE c.retained_at IS NULL AND s.satisfaction < :score AND (t.last_at IS NULL OR t.last_at < :since))
        SELECT id, satisfaction, {days_since} AS days_since, count(*) OVER () AS n
        FROM at_risk ORDER BY aum DESC, id LIMIT :top"""
    return [
        ("NOT EXISTS, MATERIALIZED CTE", not_exists(True)),
        ("NOT EXISTS, LIMIT over anti-join", not_exists(False)),
        ("max(occurred_at) GROUP BY", grouped),
    ]


def driver_sql(dialect: str, sql: str) -> str:
    """``:name`` placeholders in the driver's style (psycopg: ``%(name)s``; sqlite3 takes ``:name``)."""
    import re

    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql) if dialect == "postgresql" else sql


def run_hand(conn: Any, dialect: str, rfm_sql: str | None, churn_sql: str, params: dict[str, Any]) -> tuple[Answer, dict[str, float]]:
    """The hand-written RFM statement (unless None: a churn form alone) and a churn form."""
    cur = conn.cursor()
    t0 = time.perf_counter()
    segs = None
    if rfm_sql is not None:
        cur.execute(driver_sql(dialect, rfm_sql), params)
        segs = {str(code): (int(n), money_text(m, dialect == "sqlite")) for code, n, m in cur.fetchall()}
    t1 = time.perf_counter()
    cur.execute(driver_sql(dialect, churn_sql), params)
    rows = cur.fetchall()
    t2 = time.perf_counter()
    cur.close()
    answer = Answer(segs, int(rows[0][3]) if rows else 0, [(r[0], r[1], r[2]) for r in rows])
    return answer, {"rfm": t1 - t0, "churn": t2 - t1}


# ---------------------------------------------------------------------- c. pandas

# (name, SELECT of the needed columns): rows in the admin's scope only (never retained ones).
# PostgreSQL money is read as integer cents (how SQLite stores it) so that equal sums stay equal.
COLUMNS = {
    "customers": ("id", "aum"),
    "transactions": ("customer", "occurred_at", "amount"),
    "interactions": ("id", "customer", "occurred_at", "satisfaction"),
}
TABLES = {"customers": "e_customer", "transactions": "e_transaction", "interactions": "e_interaction"}


def select_needed(name: str, cents: bool) -> str:
    cols = [f"CAST({c} * 100 AS bigint)" if cents and c in ("aum", "amount") else c for c in COLUMNS[name]]
    return f"SELECT {', '.join(cols)} FROM {TABLES[name]} WHERE retained_at IS NULL"


def raw_connect(rt: Runtime) -> Any:
    """A plain driver connection (psycopg, autocommit / sqlite3), outside SQLAlchemy."""
    if rt.dialect == "postgresql":
        import psycopg

        url = rt.engine.url
        return psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database, autocommit=True)
    import sqlite3

    return sqlite3.connect(str(rt.engine.url.database))


def pg_copy_out(conn: Any, select_sql: str, sink: Any) -> None:
    with conn.cursor() as cur:
        with cur.copy(f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv)") as copy:
            for chunk in copy:
                sink.write(chunk)


def pandas_read(rt: Runtime) -> dict[str, Any]:
    """The needed columns as DataFrames: PostgreSQL ``COPY … TO STDOUT`` into ``read_csv``,
    SQLite ``read_sql_query`` on a sqlite3 connection; date-times parsed to datetime64."""
    import pandas as pd

    frames: dict[str, Any] = {}
    conn = raw_connect(rt)
    try:
        for name, cols in COLUMNS.items():
            dtypes = {c: ("Int64" if c in ("satisfaction", "aum") else "int64") for c in cols if c != "occurred_at"}
            if rt.dialect == "postgresql":
                buf = io.BytesIO()
                pg_copy_out(conn, select_needed(name, cents=True), buf)
                buf.seek(0)
                df = pd.read_csv(buf, names=list(cols), header=None, dtype=dtypes)
            else:
                df = pd.read_sql_query(select_needed(name, cents=False), conn, dtype=dtypes)
            if "occurred_at" in df:
                df["occurred_at"] = pd.to_datetime(df["occurred_at"], format="ISO8601")
            frames[name] = df
    finally:
        conn.close()
    return frames


def pandas_compute(frames: dict[str, Any], p: Params) -> tuple[Answer, dict[str, float]]:
    """The same definitions in pandas: groupby, rank(method='min'), boolean masks."""
    import numpy as np
    import pandas as pd

    cust, tx, ia = frames["customers"], frames["transactions"], frames["interactions"]
    cutoff, since = pd.Timestamp(p.cutoff), pd.Timestamp(p.since)
    t0 = time.perf_counter()
    before = tx[tx["occurred_at"].to_numpy() < cutoff.to_datetime64()]
    agg = before.assign(abs_amount=before["amount"].abs()).groupby("customer", sort=False).agg(
        last_at=("occurred_at", "max"), frequency=("occurred_at", "size"), monetary=("abs_amount", "sum"))
    agg = agg[agg.index.isin(cust["id"].to_numpy())]
    n = len(agg)
    local_day = (agg["last_at"] + LOCAL_OFFSET).dt.floor("D")
    recency = (pd.Timestamp(p.as_of) - local_day).dt.days

    def score(values: Any, ascending: bool) -> Any:
        rank = values.rank(method="min", ascending=ascending).to_numpy(dtype=np.int64)
        return 1 + (5 * (rank - 1)) // n

    r, f, m = score(recency, False), score(agg["frequency"], True), score(agg["monetary"], True)
    code = np.full(n, SEGMENTS[-1][0], dtype=object)
    for seg, rh, fh, mh in reversed(SEGMENTS[:-1]):  # first match wins: apply in reverse
        code[((r >= HIGH) == rh) & ((f >= HIGH) == fh) & ((m >= HIGH) == mh)] = seg
    seg_df = pd.DataFrame({"segment": code, "monetary": agg["monetary"].to_numpy()})
    grouped = seg_df.groupby("segment")["monetary"].agg(["size", "sum"])
    segments = {str(k): (int(v["size"]), money_text(v["sum"], True)) for k, v in grouped.iterrows()}
    t1 = time.perf_counter()

    # churn: in scope, no transaction in [since, cutoff], last score (newest scored interaction before cutoff) < score
    occurred = tx["occurred_at"].to_numpy()
    recent = np.unique(tx["customer"].to_numpy()[(occurred >= since.to_datetime64()) & (occurred <= cutoff.to_datetime64())])
    scored = ia[ia["satisfaction"].notna() & (ia["occurred_at"] < cutoff)].sort_values(["customer", "occurred_at", "id"])
    last_score = scored.drop_duplicates("customer", keep="last").set_index("customer")["satisfaction"]
    c = cust.set_index("id")
    at_risk = c.index.intersection(last_score.index[last_score.to_numpy(dtype="float64") < p.score]).difference(pd.Index(recent))
    risk = pd.DataFrame({"id": at_risk, "aum": c.loc[at_risk, "aum"].fillna(0).to_numpy()})
    top = risk.sort_values(["aum", "id"], ascending=[False, True]).head(TOP)
    last_tx = before[before["customer"].isin(top["id"])].groupby("customer")["occurred_at"].max()
    rows = []
    for cid in top["id"]:
        last = last_tx.get(cid)
        days = None if last is None else (pd.Timestamp(p.as_of) - (last + LOCAL_OFFSET).floor("D")).days
        rows.append((int(cid), int(last_score[cid]), days))
    t2 = time.perf_counter()
    return Answer(segments, len(at_risk), rows), {"rfm": t1 - t0, "churn": t2 - t1}


# ---------------------------------------------------------------------- d. DuckDB over an export

DUCK_TYPES = {  # column types of the exported files (PostgreSQL NUMERIC, SQLite integer cents)
    "postgresql": {"id": "BIGINT", "aum": "DECIMAL(18,2)", "customer": "BIGINT", "occurred_at": "TIMESTAMP",
                   "amount": "DECIMAL(18,2)", "satisfaction": "INTEGER"},
    "sqlite": {"id": "BIGINT", "aum": "BIGINT", "customer": "BIGINT", "occurred_at": "TIMESTAMP", "amount": "BIGINT",
               "satisfaction": "INTEGER"},
}


def export_csv(rt: Runtime, directory: Path) -> dict[str, Path]:
    """The needed columns as CSV files: PostgreSQL ``COPY … TO STDOUT``; SQLite a cursor into csv."""
    paths = {}
    conn = raw_connect(rt)
    try:
        for name in COLUMNS:
            path = directory / f"{name}.csv"
            if rt.dialect == "postgresql":
                with open(path, "wb") as fh:
                    pg_copy_out(conn, select_needed(name, cents=False), fh)
            else:
                with open(path, "w", newline="") as fh:
                    cur = conn.execute(select_needed(name, cents=False))
                    writer = csv.writer(fh)
                    while rows := cur.fetchmany(50_000):
                        writer.writerows(rows)
            paths[name] = path
    finally:
        conn.close()
    return paths


def duck_sources(dialect: str, paths: dict[str, Path], fmt: str) -> dict[str, str]:
    """FROM-clause expressions over the exported files: CSV read with explicit types, or Parquet."""
    out = {}
    for name, cols in COLUMNS.items():
        if fmt == "csv":
            types = ", ".join(f"'{c}': '{DUCK_TYPES[dialect][c]}'" for c in cols)
            out[name] = f"read_csv('{paths[name]}', header = false, columns = {{{types}}})"
        else:
            out[name] = f"read_parquet('{paths[name].with_suffix('.parquet')}')"
    return out


def duck_to_parquet(con: Any, dialect: str, paths: dict[str, Path]) -> None:
    for name, src in duck_sources(dialect, paths, "csv").items():
        con.execute(f"COPY (SELECT * FROM {src}) TO '{paths[name].with_suffix('.parquet')}' (FORMAT parquet)")


def duck_sql(src: dict[str, str]) -> tuple[str, str]:
    """The hand-written PostgreSQL queries in DuckDB's dialect, over the exported files (already
    limited to rows in scope). Parameters $as_of $cutoff $since $score."""
    rfm = f"""
        WITH agg AS (
          SELECT customer, max(occurred_at) AS last_at, count(*) AS frequency, sum(abs(amount)) AS monetary
          FROM {src['transactions']} WHERE occurred_at < $cutoff GROUP BY customer),
        base AS (
          SELECT a.customer, CAST($as_of AS DATE) - CAST(a.last_at + INTERVAL 8 HOUR AS DATE) AS recency_days, a.frequency, a.monetary
          FROM agg a JOIN {src['customers']} c ON c.id = a.customer),
        scored AS (
          SELECT monetary,
                 1 + 5 * (rank() OVER (ORDER BY recency_days DESC) - 1) // count(*) OVER () AS r,
                 1 + 5 * (rank() OVER (ORDER BY frequency) - 1) // count(*) OVER () AS f,
                 1 + 5 * (rank() OVER (ORDER BY monetary) - 1) // count(*) OVER () AS m
          FROM base)
        SELECT {segment_case('r', 'f', 'm')} AS segment, count(*) AS n, sum(monetary) AS monetary FROM scored GROUP BY 1"""
    churn = f"""
        WITH last_tx AS (
          SELECT customer, max(occurred_at) AS last_at FROM {src['transactions']} WHERE occurred_at <= $cutoff GROUP BY customer),
        last_score AS (
          SELECT DISTINCT ON (customer) customer, satisfaction FROM {src['interactions']}
          WHERE satisfaction IS NOT NULL AND occurred_at < $cutoff ORDER BY customer, occurred_at DESC, id DESC),
        at_risk AS (
          SELECT c.id, coalesce(c.aum, 0) AS aum, s.satisfaction, t.last_at
          FROM {src['customers']} c JOIN last_score s ON s.customer = c.id LEFT JOIN last_tx t ON t.customer = c.id
          WHERE s.satisfaction < $score AND (t.last_at IS NULL OR t.last_at < $since))
        SELECT id, satisfaction, CAST($as_of AS DATE) - CAST(last_at + INTERVAL 8 HOUR AS DATE) AS days_since, count(*) OVER () AS n
        FROM at_risk ORDER BY aum DESC, id LIMIT {TOP}"""
    return rfm, churn


def duck_answer(con: Any, dialect: str, src: dict[str, str], p: Params) -> tuple[Answer, dict[str, float]]:
    rfm_sql, churn_sql = duck_sql(src)
    t0 = time.perf_counter()
    segs = {str(code): (int(n), money_text(m, dialect == "sqlite"))
            for code, n, m in con.execute(rfm_sql, {"as_of": p.as_of, "cutoff": p.cutoff}).fetchall()}
    t1 = time.perf_counter()
    rows = con.execute(churn_sql, {"as_of": p.as_of, "cutoff": p.cutoff, "since": p.since, "score": p.score}).fetchall()
    t2 = time.perf_counter()
    return Answer(segs, int(rows[0][3]) if rows else 0, [(r[0], r[1], r[2]) for r in rows]), {"rfm": t1 - t0, "churn": t2 - t1}


# ---------------------------------------------------------------------- a. the engine


class EngineContender:
    """``AnalyticsService`` as the API calls it, with an admin principal (scope all), and every
    statement it sends captured with its parameters and duration (for EXPLAIN afterwards)."""

    def __init__(self, rt: Runtime) -> None:
        from sqlalchemy import event

        from engine.insight.analytics import AnalyticsService
        from engine.security.policy import CasbinAuthorizer
        from engine.security.principal import Principal
        from engine.services.records import RecordService
        from engine.services.roles import RoleService

        authz = CasbinAuthorizer(rt)
        RoleService(rt, authz).sync()
        authz.refresh(rt.stamps()[1])
        self.rt = rt
        self.svc = AnalyticsService(RecordService(rt, authz))
        self.admin = Principal(ADMIN_ID, "bench_admin", frozenset({"admin"}))
        self.statements: list[dict[str, Any]] = []
        self.capture = False

        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            conn.info["bench_t0"] = time.perf_counter()

        def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if self.capture:
                self.statements.append({"sql": statement, "params": parameters, "seconds": time.perf_counter() - conn.info.pop("bench_t0", 0.0)})

        for eng in {rt.engine, rt.write_engine}:
            event.listen(eng, "before_cursor_execute", before)
            event.listen(eng, "after_cursor_execute", after)

    def run(self, p: Params) -> tuple[Answer, dict[str, float]]:
        self.statements = []
        self.capture = True
        try:
            t0 = time.perf_counter()
            rfm = self.svc.rfm_summary(self.admin, p.as_of.isoformat())
            t1 = time.perf_counter()
            churn = self.svc.churn_summary(self.admin, as_of=p.as_of.isoformat(), days=p.days, score=p.score, top=TOP)
            t2 = time.perf_counter()
        finally:
            self.capture = False
        segs = {s["segment"]: (int(s["count"]), str(s["monetary"])) for s in rfm["segments"]}
        top = [(i["customer"], i["last_score"], i["days_since"]) for i in churn["top"]]
        parts = {"rfm": t1 - t0, "churn": t2 - t1}
        heavy = sorted(self.statements, key=lambda s: -s["seconds"])
        parts["statements"] = len(self.statements)
        parts["sql_seconds"] = sum(s["seconds"] for s in self.statements)
        self.heavy = heavy[:3]
        return Answer(segs, int(churn["count"]), top), parts


# ---------------------------------------------------------------------- measuring


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3), "max": round(max(samples), 3),
            "samples": [round(s, 3) for s in samples]}


def explain(rt: Runtime, sql: str, params: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY PLAN on SQLite, of a statement in
    the driver's own parameter style."""
    conn = raw_connect(rt)
    try:
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if rt.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
        cur = conn.cursor()
        cur.execute(prefix + sql, params)
        rows = cur.fetchall()
        cur.close()
        return "\n".join(" | ".join(str(c) for c in r) if len(r) > 1 else str(r[0]) for r in rows)
    finally:
        conn.close()


def pg_settings(rt: Runtime) -> dict[str, str]:
    names = ("server_version", "work_mem", "hash_mem_multiplier", "shared_buffers", "effective_cache_size",
             "max_parallel_workers_per_gather", "jit", "random_page_cost")
    with rt.engine.connect() as conn:
        return {n: str(conn.execute(text("SELECT current_setting(:n)"), {"n": n}).scalar_one()) for n in names}


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def bench_database(kind: str, args: argparse.Namespace, p: Params, workdir: Path) -> dict[str, Any]:
    import duckdb

    print(f"\n=== {kind} ===", flush=True)
    started = time.perf_counter()
    rt, reused = open_database(kind, args)
    seeding = seed(rt, args.customers, args.transactions)
    seed_seconds = time.perf_counter() - started
    counts = {}
    with rt.engine.connect() as conn:
        for t in ("e_customer", "e_transaction", "e_interaction"):
            counts[t.removeprefix("e_")] = int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one())
    print(f"database: {rt.engine.url.render_as_string(hide_password=True)} ({'reused' if reused else 'seeded'} in {seed_seconds:.1f} s); "
          + ", ".join(f"{t} {n:,}" for t, n in counts.items()), flush=True)

    engine = EngineContender(rt)
    params = p.sql(rt.dialect)
    rfm_sql = hand_rfm_sql(rt.dialect)
    churn_forms = hand_churn_forms(rt.dialect)
    files = workdir / kind
    files.mkdir(exist_ok=True)
    hand_conn = raw_connect(rt)
    duck = duckdb.connect()
    frames: dict[str, Any] = {}

    def run_engine() -> tuple[Answer, dict[str, float]]:
        answer, parts = engine.run(p)
        return answer, {**parts, "total": parts["rfm"] + parts["churn"]}

    def run_hand_sql() -> tuple[Answer, dict[str, float]]:
        answer, parts = run_hand(hand_conn, rt.dialect, rfm_sql, churn_forms[0][1], params)
        return answer, {**parts, "total": parts["rfm"] + parts["churn"]}

    def hand_churn(i: int) -> Callable[[], tuple[Answer, dict[str, float]]]:
        """Another hand-written churn form, timed alone (its RFM would be the same statement)."""

        def run() -> tuple[Answer, dict[str, float]]:
            answer, parts = run_hand(hand_conn, rt.dialect, None, churn_forms[i][1], params)
            return answer, {"churn": parts["churn"], "total": parts["churn"]}

        return run

    def run_pandas() -> tuple[Answer, dict[str, float]]:
        frames.clear()
        t0 = time.perf_counter()
        frames.update(pandas_read(rt))
        read = time.perf_counter() - t0
        answer, parts = pandas_compute(frames, p)
        frames.clear()
        return answer, {"read": read, **parts, "compute": parts["rfm"] + parts["churn"], "total": read + parts["rfm"] + parts["churn"]}

    def run_duck() -> tuple[Answer, dict[str, float]]:
        t0 = time.perf_counter()
        paths = export_csv(rt, files)
        export = time.perf_counter() - t0
        answer, on_csv = duck_answer(duck, rt.dialect, duck_sources(rt.dialect, paths, "csv"), p)
        t1 = time.perf_counter()
        duck_to_parquet(duck, rt.dialect, paths)
        convert = time.perf_counter() - t1
        answer2, on_parquet = duck_answer(duck, rt.dialect, duck_sources(rt.dialect, paths, "parquet"), p)
        diff = answer2.differences(answer)
        if diff:
            raise SystemExit(f"DuckDB over Parquet disagrees with DuckDB over CSV: {diff}")
        return answer, {"export": export, "csv_query": on_csv["rfm"] + on_csv["churn"], "export_plus_csv_query": export + on_csv["rfm"] + on_csv["churn"],
                        "parquet_convert": convert, "parquet_query": on_parquet["rfm"] + on_parquet["churn"],
                        "parquet_rfm": on_parquet["rfm"], "parquet_churn": on_parquet["churn"], "total": export + on_csv["rfm"] + on_csv["churn"]}

    contenders: dict[str, Callable[[], tuple[Answer, dict[str, float]]]] = {"engine": run_engine, "hand": run_hand_sql}
    for i in range(1, len(churn_forms)):
        contenders[f"hand_churn[{i}]"] = hand_churn(i)
    if not args.no_pandas:
        contenders["pandas"] = run_pandas
    if not args.no_duckdb:
        contenders["duckdb"] = run_duck

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    answers: dict[str, Answer] = {}  # each contender's first answer; later rounds must repeat it
    load = [loadavg()]
    rounds = args.repeat + (0 if args.no_warmup else 1)
    for r in range(rounds):
        order = list(contenders)
        if r % 2:
            order.reverse()  # interleaved: each contender sees the same machine state on average
        line = []
        for name in order:
            answer, parts = contenders[name]()
            for other in {name, "hand"}:
                if other in answers and answer.differences(answers[other]):
                    raise SystemExit(f"{kind}: {name} (round {r}) disagrees with {other}: {'; '.join(answer.differences(answers[other]))}")
            answers.setdefault(name, answer)
            if r or args.no_warmup:
                samples[name].append(parts)
            line.append(f"{name} {parts['total']:.2f} s")
        label = "warm-up" if r == 0 and not args.no_warmup else f"round {r + (1 if args.no_warmup else 0)}"
        print(f"  {label}: " + "; ".join(line) + f"  (load {loadavg()})", flush=True)
        load.append(loadavg())
    ref = answers["hand"]
    assert ref.segments is not None
    for name, answer in answers.items():
        if answer.differences(ref):
            raise SystemExit(f"{kind}: {name} disagrees with the hand-written SQL: {'; '.join(answer.differences(ref))}")
    print(f"  all {len(answers)} contenders agree: {ref.scored:,} customers scored; segments "
          + ", ".join(f"{k} {n:,}" for k, (n, _) in ref.segments.items())
          + f"; Σ monetary per segment equal; churn {ref.churn:,}, the top {len(ref.top)} by AUM identical", flush=True)

    # hand[i]: the hand-written RFM and churn form i, per round (form i ≥ 1 timed alone, the RFM
    # statement being the same): the forms compare as whole answers
    hand_rounds = samples.pop("hand")
    samples["hand[0]"] = hand_rounds
    for i in range(1, len(churn_forms)):
        alone = samples.pop(f"hand_churn[{i}]")
        samples[f"hand[{i}]"] = [{"rfm": h["rfm"], "churn": a["churn"], "total": h["rfm"] + a["churn"]} for h, a in zip(hand_rounds, alone)]

    plans: dict[str, Any] = {}
    if not args.no_explain:
        engine.run(p)
        plans["engine"] = [{"sql": s["sql"], "seconds": round(s["seconds"], 3), "plan": explain(rt, s["sql"], s["params"])} for s in engine.heavy]
        plans["hand_rfm"] = {"sql": " ".join(rfm_sql.split()), "plan": explain(rt, driver_sql(rt.dialect, rfm_sql), params)}
        for i, (label, sql) in enumerate(churn_forms):
            plans[f"hand[{i}]_churn"] = {"label": label, "sql": " ".join(sql.split()), "plan": explain(rt, driver_sql(rt.dialect, sql), params)}
    hand_conn.close()
    duck.close()
    result = {
        "database": kind,
        "settings": pg_settings(rt) if rt.dialect == "postgresql" else {"sqlite_version": __import__("sqlite3").sqlite_version},
        "rows": counts,
        "seeding": seeding,
        "reused": reused,
        "answer": ref.as_dict(),
        "hand_forms": {f"hand[{i}]": label for i, (label, _) in enumerate(churn_forms)},
        "load": load,
        "figures": {name: {part: summary([s[part] for s in runs]) for part in runs[0]} for name, runs in samples.items() if runs},
        "rounds": samples,
        "plans": plans,
    }
    rt.dispose()
    for f in files.iterdir():
        f.unlink()
    return result


# ---------------------------------------------------------------------- report


def report(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The table of one database and the verdicts, as printed lines."""
    fig, rounds, rows = result["figures"], result["rounds"], result["rows"]
    hands = [k for k in fig if k.startswith("hand[")]
    best = min(hands, key=lambda k: fig[k]["total"]["median"])
    base = fig[best]["total"]["median"]
    lines = [f"\n{result['database']}: {rows['customer']:,} customers, {rows['transaction']:,} transactions, {rows['interaction']:,} interactions; "
             f"as_of {args.as_of}, churn {args.days} days / score < {args.score}; seconds, median (min–max) of {args.repeat} rounds"]
    head = f"{'contender':<52}{'RFM':>8}{'churn':>8}{'total':>22}{'× hand':>8}"
    lines += [head, "-" * len(head)]

    def med(name: str, part: str) -> str:
        return f"{fig[name][part]['median']:.2f}" if part in fig[name] else ""

    def row(label: str, name: str, part: str = "total", rfm: str = "rfm", churn: str = "churn", ratio: bool = True) -> str:
        s = fig[name][part]
        x = f"{s['median'] / base:.2f}" if ratio else ""
        return f"{label:<52}{med(name, rfm):>8}{med(name, churn):>8}{s['median']:>9.2f} ({s['min']:.2f}–{s['max']:.2f}){x:>8}"

    lines.append(row("a. engine: AnalyticsService, admin principal", "engine"))
    for h in hands:
        lines.append(row(f"b. hand SQL, churn: {result['hand_forms'][h]}", h))
    if "pandas" in fig:
        lines.append(row("c. pandas: read the columns", "pandas", "read", "", "", ratio=False))
        lines.append(row("   pandas: compute", "pandas", "compute"))
        lines.append(row("   pandas: read + compute", "pandas", "total", "", ""))
    if "duckdb" in fig:
        lines.append(row("d. DuckDB: export the columns to CSV", "duckdb", "export", "", "", ratio=False))
        lines.append(row("   DuckDB: query over the CSV files", "duckdb", "csv_query", "", "", ratio=False))
        lines.append(row("   DuckDB: export + query over CSV", "duckdb", "export_plus_csv_query", "", ""))
        lines.append(row("   DuckDB: CSV → Parquet", "duckdb", "parquet_convert", "", "", ratio=False))
        lines.append(row("   DuckDB: query over Parquet (alone)", "duckdb", "parquet_query", "parquet_rfm", "parquet_churn"))

    def paired(a: str, b: str, part_a: str = "total", part_b: str = "total") -> tuple[float, float, float]:
        """Median (min, max) over rounds of a/b measured in the same round."""
        ratios = [ra[part_a] / rb[part_b] for ra, rb in zip(rounds[a], rounds[b])]
        return statistics.median(ratios), min(ratios), max(ratios)

    eng = fig["engine"]["total"]
    ratio = eng["median"] / base
    pr = paired("engine", best)
    rfm_r = paired("engine", best, "rfm", "rfm")
    best_churn = min(hands, key=lambda k: fig[k]["churn"]["median"])
    churn_r = paired("engine", best_churn, "churn", "churn")
    lines.append(f"engine / best hand-written ({best}): {ratio:.2f} as medians, {pr[0]:.2f} ({pr[1]:.2f}–{pr[2]:.2f}) paired per round "
                 f"— target ≤ {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}; "
                 f"RFM alone {rfm_r[0]:.2f} ({rfm_r[1]:.2f}–{rfm_r[2]:.2f}), churn alone vs {best_churn} {churn_r[0]:.2f} ({churn_r[1]:.2f}–{churn_r[2]:.2f})")
    lines.append(f"engine end to end: {eng['median']:.2f} s, slowest round {eng['max']:.2f} s — target ≤ {TARGET_SECONDS:.0f} s: "
                 f"{'met' if eng['max'] <= TARGET_SECONDS else 'NOT met'}; {fig['engine']['statements']['median']:.0f} SQL statements per RFM + churn, "
                 f"{fig['engine']['sql_seconds']['median']:.2f} s in the database")
    if "duckdb" in fig:
        q = fig["duckdb"]["parquet_query"]["median"]
        e2e = fig["duckdb"]["export_plus_csv_query"]["median"]
        lines.append(f"DuckDB over Parquet, query alone: {q:.2f} s = {eng['median'] / q:.1f}× faster than the engine; "
                     f"with the export, DuckDB over CSV: {e2e:.2f} s = {e2e / eng['median']:.2f}× the engine's time")
    lines.append(f"load average (1/5/15 min) at the start and after each round: {' → '.join(result['load'])}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--transactions", type=int, default=1_000_000)
    ap.add_argument("--databases", default="postgresql,sqlite")
    ap.add_argument("--repeat", type=int, default=3, help="measured rounds per contender (after one warm-up)")
    ap.add_argument("--as-of", default=DEFAULT_AS_OF.isoformat())
    ap.add_argument("--days", type=int, default=90, help="churn: no transaction for this many days")
    ap.add_argument("--score", type=int, default=4, help="churn: last service score below this")
    ap.add_argument("--reuse", action="store_true", help="keep a database already seeded at this size (else drop and seed)")
    ap.add_argument("--pg-database", default=PG_DATABASE)
    ap.add_argument("--sqlite-path", default=SQLITE_PATH, help="may contain {customers} and {transactions}")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--no-pandas", action="store_true")
    ap.add_argument("--no-duckdb", action="store_true")
    ap.add_argument("--no-explain", action="store_true")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    if not kinds or any(k not in ("postgresql", "sqlite") for k in kinds):
        ap.error("--databases: a comma-separated subset of postgresql,sqlite")
    if args.customers < 1 or args.transactions < 0 or args.repeat < 1:
        ap.error("--customers and --repeat must be positive, --transactions not negative")
    try:
        as_of = dt.date.fromisoformat(args.as_of)
    except ValueError:
        ap.error("--as-of: a date, YYYY-MM-DD")
    p = Params(as_of, args.days, args.score)

    import duckdb
    import pandas

    analytics_py = ROOT / "engine" / "insight" / "analytics.py"
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "pandas": pandas.__version__, "duckdb": duckdb.__version__, "load_at_start": loadavg(),
               # the engine version measured (the file may be uncommitted): its hash and mtime
               "analytics_py_sha256": hashlib.sha256(analytics_py.read_bytes()).hexdigest()[:12],
               "analytics_py_mtime": dt.datetime.fromtimestamp(analytics_py.stat().st_mtime).isoformat(timespec="seconds")}
    print(f"machine: {machine['cpus']} cores, {machine['platform']}; load {machine['load_at_start']}; "
          f"pandas {machine['pandas']}, DuckDB {machine['duckdb']}; engine/insight/analytics.py {machine['analytics_py_sha256']} "
          f"({machine['analytics_py_mtime']})", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="fincrm-analytics-bench-") as tmp:
        for kind in kinds:
            results.append(bench_database(kind, args, p, Path(tmp)))
    lines: list[str] = []
    for result in results:
        if result["database"] == "postgresql":
            s = result["settings"]
            lines.append(f"\nPostgreSQL {s['server_version']}: work_mem {s['work_mem']}, shared_buffers {s['shared_buffers']}, "
                         f"jit {s['jit']}, {s['max_parallel_workers_per_gather']} parallel workers per gather")
        lines += report(result, args)
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"analytics_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine, "args": vars(args),
                                "params": {"as_of": p.as_of.isoformat(), "cutoff_utc": p.cutoff.isoformat(), "since_utc": p.since.isoformat(),
                                           "days": p.days, "score": p.score},
                                "results": results, "summary": lines}, indent=2, ensure_ascii=False, default=str))
    print(f"\nwritten {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
