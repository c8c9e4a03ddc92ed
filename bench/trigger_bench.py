"""One trigger pass over 1M customers × 10M transactions: FinCRM's compiled condition and its
full pass against the same condition written by hand in SQL.

    python bench/trigger_bench.py                                   # PostgreSQL, 1M customers, ~10M transactions
    python bench/trigger_bench.py --customers 100000 --database-url sqlite:////tmp/fincrm-trigger-100k.db
    python bench/trigger_bench.py --customers 1000000 --database-url sqlite:////tmp/fincrm-trigger-1m.db

Seeding is set-wise in the database (INSERT … SELECT over generate_series / a numbers table,
random values drawn by the database, never row by row in Python) and resumable: each phase
(staff, customers, products, consent, interactions, transactions, holdings) commits with a
marker row in ``trigger_bench_seed``, so a re-run skips what is there and measures only
(``--reset`` starts over). The data, relative to the bench's fixed clock ``NOW``:

- customers: owners spread over 200 relationship managers (10 per supervisor), log-normal AUM;
- transactions: per customer 1 + floor(Exp(mean ≈ N−0.5)) (median ≈ 7, a long tail), over 24
  months, stored in time order (as a ledger is); 10% of the customers have been silent for more
  than 90 days, every other customer has at least one transaction in the last 60 days; 3% get a
  large inflow (150k–1.5M, log-uniform) in the last 30 days;
- interactions: 0–5 per customer, satisfaction 1–5 (skewed to 4–5), 20% without a score;
- consent: marketing for ~60% of the customers (5% of those withdrawn), profiling for ~30%;
- holdings: 0–3 per customer over 40 products (a quarter of them wealth products), maturity
  dates from 30 days ago to a year ahead.

Workloads, for ``balance_surge_opportunity``, ``churn_retention_task`` and
``wealth_maturity_task``, each over ``--rounds`` rounds after one warm-up (median and min):

a. the condition as FinCRM compiles it: ``SELECT count(*) FROM (<TriggerEngine.matching()>)``;
b. the same condition written by hand, as a DBA would (text SQL; the first form per trigger is
   the baseline, other natural forms are timed too); every form must return a's count;
c. the full pass ``TriggerEngine.run(name, NOW)``: claim (INSERT … SELECT … ON CONFLICT),
   targets, actions through the records service, audit, commit; between rounds the trigger's
   firings and the records/tags it created are deleted, so every round does the whole work.

Prints a table (a/b is the figure with a target of ≤ 1.5) and writes
bench/results/trigger_bench-<timestamp>.json with the figures and, for PostgreSQL, the
``EXPLAIN (ANALYZE, BUFFERS)`` of a and of every hand-written form (SQLite: EXPLAIN QUERY PLAN).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.flows.conditions import local_today  # noqa: E402
from engine.flows.tables import trigger_fire_table  # noqa: E402
from engine.flows.triggers import TriggerEngine  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.security.authz import BasicAuthorizer  # noqa: E402
from engine.security.crypto import Keyring  # noqa: E402
from engine.security.org import set_staff  # noqa: E402
from engine.services.records import RecordService  # noqa: E402
from api_bench import reset  # noqa: E402  (bench/ is on the path when run as a script)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_trigger_bench"
# The clock every pass runs on (naive UTC, like the engine's): 10:00 in Shanghai on 1 Nov 2026.
# Fixed, so a seeded database stays valid for later runs.
NOW = dt.datetime(2026, 11, 1, 2, 0, 0)
RMS, RM_BASE, SUP_BASE, RMS_PER_SUP = 200, 1000, 900, 10
PRODUCTS = 40  # product id p: type by (p - 1) % 4 → wealth, fund, deposit, bond
SEED_VERSION = 1
TRIGGERS = ("balance_surge_opportunity", "churn_retention_task", "wealth_maturity_task")
# what each trigger's actions create, to undo between full-pass rounds: (table, WHERE)
CREATED = {
    "balance_surge_opportunity": [("e_opportunity", "source = 'balance_surge'")],
    "churn_retention_task": [("e_task", "title LIKE '流失预警%'"), ("fincrm_tag", "entity = 'customer' AND tag = '流失预警' AND source = 'rule'")],
    "wealth_maturity_task": [("e_task", "title LIKE '理财产品即将到期%'")],
}


# ---------------------------------------------------------------------- SQL dialect helpers


class Dialect:
    """The few expressions the seeding SQL writes differently on PostgreSQL and SQLite."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    @property
    def u(self) -> str:
        """A fresh uniform random number in [0, 1) (one draw per occurrence, per row)."""
        return "random()" if self.pg else "(random() / 18446744073709551616.0 + 0.5)"

    def ifloor(self, x: str) -> str:
        return f"CAST(floor({x}) AS integer)" if self.pg else f"CAST({x} AS INTEGER)"

    def least(self, a: str, b: str) -> str:
        return f"least({a}, {b})" if self.pg else f"min({a}, {b})"

    def ago(self, seconds: str) -> str:
        """:now minus a number of seconds, as the column stores timestamps."""
        if self.pg:
            return f"(CAST(:now AS timestamp) - CAST({seconds} AS integer) * interval '1 second')"
        return f"(strftime('%Y-%m-%d %H:%M:%S', :now, '-' || CAST({seconds} AS INTEGER) || ' seconds') || '.000000')"

    def day(self, days: str) -> str:
        """:today plus a (signed, integer) number of days."""
        if self.pg:
            return f"(CAST(:today AS date) + CAST({days} AS integer))"
        return f"date(:today, CAST({days} AS INTEGER) || ' days')"

    def money(self, x: str) -> str:
        """A decimal(18, 2) value: NUMERIC on PostgreSQL, integer cents on SQLite (engine.sqltypes.Money)."""
        return f"round(CAST({x} AS numeric), 2)" if self.pg else f"CAST(round(({x}) * 100) AS INTEGER)"

    @property
    def json_empty(self) -> str:
        return "CAST('{}' AS jsonb)" if self.pg else "'{}'"

    def expand(self, k: str) -> str:
        """FROM-clause tail giving one row per i in 1..k for each row on its left."""
        return f"CROSS JOIN LATERAL generate_series(1, {k}) AS n(i)" if self.pg else f"JOIN bench_nums n ON n.i <= {k}"

    def row_id(self, order: str) -> str:
        """Ids in ``order`` (SQLite: the INTEGER PRIMARY KEY assigns them in insertion order)."""
        return f"row_number() OVER (ORDER BY {order})" if self.pg else "NULL"

    def seg(self, col: str) -> str:
        """A well-mixed 0..999 bucket of a customer id (Knuth's multiplicative hash, high bits):
        the same customers are 'silent' or 'surging' in every phase and in both databases."""
        return f"((({col} * 2654435761) % 4294967296) * 1000 / 4294967296)"

    def pick(self, r: str, values: list[str]) -> str:
        whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values[:-1]))
        return f"CASE {self.ifloor(f'{r} * {len(values)}')} {whens} ELSE '{values[-1]}' END"


def phase_sql(d: Dialect, phase: str) -> list[str]:
    """The statements of one seeding phase (parameters :n, :mean, :now, :today)."""
    u = d.u
    if phase == "customers":
        return [
            f"""WITH src AS MATERIALIZED (
                  SELECT n.i AS id, {u} AS r1, {u} AS r2, {u} AS r3, {u} AS r4 FROM bench_nums n WHERE n.i <= :n)
                INSERT INTO e_customer (id, version, created_at, updated_at, ext, name, aum, lifecycle_stage, owner, opened_on)
                SELECT id, 1, {d.ago('(30 + r3 * 3000) * 86400')}, {d.ago('(30 + r3 * 3000) * 86400')}, {d.json_empty},
                       '客户' || id,
                       {d.money(d.least('exp(11.5 + 1.4 * sqrt(-2 * ln(1 - r1)) * cos(2 * pi() * r2))', '500000000'))},
                       {d.pick('r4', ['new', 'growing', 'mature', 'declining'])},
                       {RM_BASE} + id % {RMS},
                       {"CAST(" + d.ago('(30 + r3 * 3000) * 86400') + " AS date)" if d.pg else "date(" + d.ago('(30 + r3 * 3000) * 86400') + ")"}
                FROM src"""
        ]
    if phase == "consent":
        return [
            f"""WITH src AS MATERIALIZED (
                  SELECT id AS customer, 'marketing' AS purpose, {u} AS r_g, {u} AS r_w, {u} AS r_ch FROM e_customer WHERE {u} < 0.6
                  UNION ALL
                  SELECT id, 'profiling', {u}, 1.0, {u} FROM e_customer WHERE {u} < 0.3)
                INSERT INTO e_consent (id, version, created_at, updated_at, ext, customer, purpose, granted_at, withdrawn_at, channel, evidence)
                SELECT {d.row_id('granted')}, 1, granted, coalesce(withdrawn, granted), {d.json_empty}, customer, purpose, granted, withdrawn, channel, 'APP-勾选'
                FROM (SELECT customer, purpose,
                             {d.ago('(5 + r_g * 700) * 86400')} AS granted,
                             CASE WHEN r_w < 0.05 THEN {d.ago('r_w * 20 * 4 * 86400')} END AS withdrawn,
                             {d.pick('r_ch', ['app', 'online', 'counter', 'paper'])} AS channel
                      FROM src) x
                ORDER BY granted"""
        ]
    if phase == "interactions":
        return [
            f"""WITH plan AS MATERIALIZED (SELECT id AS customer, owner, {d.ifloor(f'{u} * 6')} AS k FROM e_customer),
                src AS MATERIALIZED (
                  SELECT c.customer, c.owner, {u} AS r_ts, {u} AS r_sat, {u} AS r_ch FROM plan c {d.expand('c.k')})
                INSERT INTO e_interaction (id, version, created_at, updated_at, ext, customer, channel, occurred_at, summary, satisfaction, owner)
                SELECT {d.row_id('ts')}, 1, ts, ts, {d.json_empty}, customer, channel, ts, '客户回访', sat, owner
                FROM (SELECT customer, owner, {d.ago('r_ts * 730 * 86400')} AS ts,
                             CASE WHEN r_sat < 0.2 THEN NULL WHEN r_sat < 0.48 THEN 5 WHEN r_sat < 0.72 THEN 4
                                  WHEN r_sat < 0.84 THEN 3 WHEN r_sat < 0.92 THEN 2 ELSE 1 END AS sat,
                             {d.pick('r_ch', ['phone', 'wechat', 'visit', 'sms', 'email'])} AS channel
                      FROM src) x
                ORDER BY ts"""
        ]
    if phase == "transactions":
        return [
            f"""WITH plan AS MATERIALIZED (
                  SELECT id AS customer, {d.seg('id')} AS seg, 1 + {d.least(d.ifloor(f'-ln(1 - {u}) * :mean'), '999')} AS k FROM e_customer),
                src AS MATERIALIZED (
                  SELECT c.customer, c.seg, n.i, {u} AS r_ts, {u} AS r_amt, {u} AS r_dir, {u} AS r_ch FROM plan c {d.expand('c.k')}
                  UNION ALL
                  SELECT customer, seg, 0, {u}, {u}, 0.0, {u} FROM plan WHERE seg >= 100 AND seg < 130)
                INSERT INTO e_transaction (id, version, created_at, updated_at, ext, customer, amount, direction, channel, occurred_at)
                SELECT {d.row_id('ts')}, 1, ts, ts, {d.json_empty}, customer, amount, direction, channel, ts
                FROM (SELECT customer,
                             CASE WHEN i = 0 THEN {d.ago('r_ts * 29 * 86400')}
                                  WHEN seg < 100 THEN {d.ago('(91 + r_ts * 639) * 86400')}
                                  WHEN i = 1 THEN {d.ago('r_ts * 60 * 86400')}
                                  ELSE {d.ago('r_ts * 730 * 86400')} END AS ts,
                             CASE WHEN i = 0 THEN {d.money('exp(ln(150000) + r_amt * ln(10))')}
                                  ELSE {d.money('exp(5.3 + 5.5 * r_amt)')} END AS amount,
                             CASE WHEN r_dir < 0.55 THEN 'in' ELSE 'out' END AS direction,
                             {d.pick('r_ch', ['mobile_app', 'online', 'counter', 'atm', 'rm'])} AS channel
                      FROM src) x
                ORDER BY ts"""
        ]
    if phase == "holdings":
        return [
            f"""WITH plan AS MATERIALIZED (SELECT id AS customer, {d.ifloor(f'{u} * 4')} AS k FROM e_customer),
                src AS MATERIALIZED (
                  SELECT c.customer, 1 + {d.ifloor(f'{u} * {PRODUCTS}')} AS product, {u} AS r_amt, {u} AS r_start, {u} AS r_mat
                  FROM plan c {d.expand('c.k')})
                INSERT INTO e_holding (id, version, created_at, updated_at, ext, customer, product, amount, start_date, maturity_date)
                SELECT {d.row_id('customer')}, 1, {d.ago('0')}, {d.ago('0')}, {d.json_empty}, customer, product,
                       {d.money('exp(9 + 4 * r_amt)')}, {d.day(f'-1 - {d.ifloor("r_start * 700")}')},
                       CASE WHEN (product - 1) % 4 <> 1 THEN {d.day(f'{d.ifloor("r_mat * 395")} - 30')} END
                FROM src
                ORDER BY customer"""
        ]
    raise ValueError(phase)


# ---------------------------------------------------------------------- database plumbing


class Loader:
    """One connection for seeding, with an explicit transaction per phase. PostgreSQL: foreign-key
    triggers off for the session (session_replication_role = replica; the data is consistent by
    construction), a large work_mem. SQLite: a plain sqlite3 connection, foreign keys off."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pg = rt.dialect == "postgresql"
        if self.pg:
            self.sa = rt.write_engine.connect()
            self.sa.exec_driver_sql("SET statement_timeout = 0")
            self.sa.exec_driver_sql("SET work_mem = '512MB'")
            self.sa.exec_driver_sql("SET maintenance_work_mem = '1GB'")
            try:
                self.sa.exec_driver_sql("SET session_replication_role = replica")
            except Exception:  # not a superuser: foreign keys are checked row by row (slower)
                self.sa.rollback()
            self.sa.commit()
        else:
            import sqlite3

            self.db = sqlite3.connect(str(rt.engine.url.database), isolation_level=None)
            for pragma in ("journal_mode=WAL", "foreign_keys=OFF", "synchronous=OFF", "cache_size=-1000000", "temp_store=FILE"):
                self.db.execute(f"PRAGMA {pragma}")

    def exec(self, sql: str, params: dict[str, Any] | None = None) -> None:
        if self.pg:
            self.sa.execute(text(sql), params or {})
        else:
            self.db.execute(sql, params or {})

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        if self.pg:
            return self.sa.execute(text(sql), params or {}).scalar()
        row = self.db.execute(sql, params or {}).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self.pg:
            try:
                yield
                self.sa.commit()
            except BaseException:
                self.sa.rollback()
                raise
        else:
            self.db.execute("BEGIN")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def secondary_indexes(self, table: str) -> list[tuple[str, str]]:
        """(name, CREATE statement) of the table's indexes that are not constraints."""
        if self.pg:
            rows = self.sa.execute(
                text(
                    "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() AND i.tablename = :t "
                    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
                ),
                {"t": table},
            ).all()
        else:
            rows = self.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def close(self) -> None:
        if self.pg:
            self.sa.close()
        else:
            self.db.close()

    # resumable seeding: one marker row per finished phase, in a marker table of the bench's own

    def create_markers(self, marker: str) -> None:
        with self.atomic():
            self.exec(
                f"CREATE TABLE IF NOT EXISTS {marker} (phase VARCHAR(32) PRIMARY KEY, spec TEXT NOT NULL, "
                "row_count BIGINT NOT NULL, seconds FLOAT NOT NULL, done_at VARCHAR(32) NOT NULL)"
            )

    def phase_done(self, marker: str, phase: str, spec: str, hint: str) -> dict[str, Any] | None:
        """The earlier run of ``phase`` ({rows, seconds, skipped}) or None; a database seeded
        with another spec is refused (``hint`` says what to pass instead)."""
        with self.atomic():
            done = self.scalar(f"SELECT spec FROM {marker} WHERE phase = :p", {"p": phase})
            if done is None:
                return None
            if done != spec:
                raise SystemExit(f"this database was seeded with {done}, not {spec}: {hint}")
            rows = self.scalar(f"SELECT row_count FROM {marker} WHERE phase = :p", {"p": phase})
            secs = self.scalar(f"SELECT seconds FROM {marker} WHERE phase = :p", {"p": phase})
        return {"rows": int(rows), "seconds": round(float(secs), 1), "skipped": True}

    def mark_done(self, marker: str, phase: str, spec: str, rows: int, seconds: float) -> dict[str, Any]:
        with self.atomic():
            self.exec(
                f"INSERT INTO {marker} (phase, spec, row_count, seconds, done_at) VALUES (:p, :s, :r, :sec, :at)",
                {"p": phase, "s": spec, "r": rows, "sec": seconds, "at": dt.datetime.now().isoformat(timespec="seconds")},
            )
        print(f"  seeded {phase}: {rows:,} rows in {seconds:.1f} s", flush=True)
        return {"rows": rows, "seconds": round(seconds, 1), "skipped": False}

    def numbers(self, n: int) -> None:
        """``bench_nums(i)`` holding 1..n: customer ids, and per-customer expansions on SQLite."""
        self.exec("DROP TABLE IF EXISTS bench_nums")
        if self.pg:
            self.exec("CREATE TABLE bench_nums AS SELECT generate_series(1, :m) AS i", {"m": n})
            self.exec("ALTER TABLE bench_nums ADD PRIMARY KEY (i)")
        else:
            self.exec("CREATE TABLE bench_nums (i INTEGER PRIMARY KEY)")
            self.exec("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :m) INSERT INTO bench_nums SELECT i FROM s", {"m": n})

    def load(self, table: str, statements: Sequence[str], params: dict[str, Any], hint: str) -> None:
        """Run ``statements`` filling the empty ``table``, its secondary indexes built once after
        the load, not row by row (the caller holds the transaction)."""
        if self.scalar(f"SELECT count(*) FROM {table}"):
            raise SystemExit(f"{table} has rows but no seeding marker: {hint}")
        indexes = self.secondary_indexes(table)
        for name, _ in indexes:
            self.exec(f'DROP INDEX "{name}"')
        for sql in statements:
            self.exec(sql, params)
        for _, create in indexes:
            self.exec(create)


PHASES = ("staff", "customers", "products", "consent", "interactions", "transactions", "holdings")
PHASE_TABLE = {"customers": "e_customer", "products": "e_product", "consent": "e_consent", "interactions": "e_interaction",
               "transactions": "e_transaction", "holdings": "e_holding", "staff": "fincrm_staff"}


def seed(rt: Runtime, customers: int, tpc: float) -> dict[str, Any]:
    """Run the phases not yet done; returns {phase: {rows, seconds, skipped}}."""
    d = Dialect(rt.dialect)
    ld = Loader(rt)
    spec = json.dumps({"v": SEED_VERSION, "customers": customers, "tpc": tpc, "now": NOW.isoformat()}, sort_keys=True)
    params: dict[str, Any] = {
        "n": customers,
        "mean": max(tpc - 0.5, 0.0),
        "now": NOW if d.pg else NOW.strftime("%Y-%m-%d %H:%M:%S"),
        "today": local_today(NOW) if d.pg else local_today(NOW).isoformat(),
    }
    out: dict[str, Any] = {}
    try:
        ld.create_markers("trigger_bench_seed")
        for phase in PHASES:
            earlier = ld.phase_done("trigger_bench_seed", phase, spec, "pass --reset (or another --database-url)")
            if earlier is not None:
                out[phase] = earlier
                continue
            started = time.perf_counter()
            table = PHASE_TABLE[phase]
            if phase == "staff":
                with rt.begin() as conn:
                    for s in range(RMS // RMS_PER_SUP):
                        set_staff(conn, SUP_BASE + s, team=f"T{s:02d}")
                    for r in range(RMS):
                        set_staff(conn, RM_BASE + r, team=f"T{r // RMS_PER_SUP:02d}", supervisor_id=SUP_BASE + r // RMS_PER_SUP)
            elif phase == "products":
                kinds = ["wealth", "fund", "deposit", "bond"]
                rows_: list[dict[str, Any]] = [
                    {"id": p, "version": 1, "created_at": NOW, "updated_at": NOW, "ext": {}, "code": f"P{p:03d}",
                     "name": f"{['稳健理财', '精选基金', '定期存款', '国债'][(p - 1) % 4]}{p:03d}", "type": kinds[(p - 1) % 4],
                     "risk_level": f"R{1 + p % 5}", "term_days": [90, None, 365, 1095][(p - 1) % 4], "on_sale": True}
                    for p in range(1, PRODUCTS + 1)
                ]
                with rt.begin() as conn:
                    conn.execute(insert(rt.snapshot().tables["product"]), rows_)
            else:
                with ld.atomic():
                    if phase == "customers":
                        ld.numbers(max(customers, 1000))
                    ld.load(table, phase_sql(d, phase), params, "pass --reset")
            seconds = time.perf_counter() - started
            with ld.atomic():
                rows = int(ld.scalar(f"SELECT count(*) FROM {table}"))
            out[phase] = ld.mark_done("trigger_bench_seed", phase, spec, rows, seconds)
        with ld.atomic():
            analyzed = ld.scalar("SELECT seconds FROM trigger_bench_seed WHERE phase = 'analyze'")
        if analyzed is not None:
            out["vacuum_analyze"] = {"seconds": round(float(analyzed), 1), "skipped": True}
        else:
            started = time.perf_counter()
            for entity, table in (("customer", "e_customer"), ("product", "e_product"), ("consent", "e_consent"),
                                  ("interaction", "e_interaction"), ("transaction", "e_transaction"), ("holding", "e_holding")):
                with ld.atomic():
                    max_id = ld.scalar(f"SELECT max(id) FROM {table}")
                rt.ids.bump_past(entity, int(max_id or 0))
            analyze(rt)
            seconds = time.perf_counter() - started
            with ld.atomic():
                ld.exec(
                    "INSERT INTO trigger_bench_seed (phase, spec, row_count, seconds, done_at) VALUES ('analyze', :s, 0, :sec, :at)",
                    {"s": spec, "sec": seconds, "at": dt.datetime.now().isoformat(timespec="seconds")},
                )
            out["vacuum_analyze"] = {"seconds": round(seconds, 1), "skipped": False}
            print(f"  ids bumped, VACUUM ANALYZE + CHECKPOINT in {seconds:.1f} s", flush=True)
    finally:
        ld.close()
    return out


def analyze(rt: Runtime) -> None:
    if rt.dialect == "postgresql":
        with rt.engine.connect() as conn:  # AUTOCOMMIT: VACUUM cannot run in a transaction
            conn.exec_driver_sql("SET statement_timeout = 0")
            conn.exec_driver_sql("VACUUM ANALYZE")
            conn.exec_driver_sql("CHECKPOINT")
    else:
        import sqlite3

        db = sqlite3.connect(str(rt.engine.url.database), isolation_level=None)
        try:
            db.execute("ANALYZE")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()


# ---------------------------------------------------------------------- the hand-written baselines


def hand_written(dialect: str, name: str) -> list[tuple[str, str]]:
    """(label, SQL) of the natural hand-written forms of each trigger's condition; the first is
    the baseline. Parameters: :now :t30 :t90 :t360 :today :today15, amounts in storage units."""
    consent = """EXISTS (SELECT 1 FROM e_consent k WHERE k.customer = c.id AND k.purpose = 'marketing' AND k.granted_at <= :now
                    AND (k.expires_at IS NULL OR k.expires_at > :now) AND k.withdrawn_at IS NULL)"""
    signed = "CASE WHEN direction = 'out' THEN -amount ELSE amount END"
    if name == "balance_surge_opportunity":  # k = 3 × the monthly average over 12 months: s360 / 4
        return [
            (
                "one pass over 360 days, 30-day sum as a FILTER",
                f"""WITH t AS (
                      SELECT customer, sum({signed}) FILTER (WHERE occurred_at >= :t30) AS s30, sum({signed}) AS s360
                      FROM e_transaction
                      WHERE occurred_at BETWEEN :t360 AND :now AND retained_at IS NULL
                      GROUP BY customer)
                    SELECT count(*) FROM t JOIN e_customer c ON c.id = t.customer
                    WHERE c.retained_at IS NULL
                      AND (t.s30 > :surge OR (t.s30 > :min_amount AND t.s30 > t.s360 / 4.0))
                      AND {consent}""",
            ),
            (
                "two CTEs t30, t360 (the engine's shape, inner join on t30)",
                f"""WITH t30 AS (SELECT customer, sum({signed}) AS s FROM e_transaction
                                 WHERE occurred_at BETWEEN :t30 AND :now AND retained_at IS NULL GROUP BY customer),
                         t360 AS (SELECT customer, sum({signed}) AS s FROM e_transaction
                                  WHERE occurred_at BETWEEN :t360 AND :now AND retained_at IS NULL GROUP BY customer)
                    SELECT count(*) FROM e_customer c JOIN t30 ON t30.customer = c.id LEFT JOIN t360 ON t360.customer = c.id
                    WHERE c.retained_at IS NULL
                      AND (t30.s > :surge OR (t30.s > :min_amount AND t30.s > coalesce(t360.s, 0) / 4.0))
                      AND {consent}""",
            ),
        ]
    if name == "churn_retention_task":
        no_recent = """NOT EXISTS (SELECT 1 FROM e_transaction t WHERE t.customer = c.id
                          AND t.occurred_at BETWEEN :t90 AND :now AND t.retained_at IS NULL)"""
        correlated = (
            "correlated: NOT EXISTS + last score by ORDER BY … LIMIT 1",
            f"""SELECT count(*) FROM e_customer c
                WHERE c.retained_at IS NULL AND {no_recent}
                  AND (SELECT i.satisfaction FROM e_interaction i
                       WHERE i.customer = c.id AND i.satisfaction IS NOT NULL AND i.retained_at IS NULL
                       ORDER BY i.occurred_at DESC, i.id DESC LIMIT 1) < 4""",
        )
        if dialect != "postgresql":
            return [correlated]
        return [
            (
                "DISTINCT ON (last score) + NOT EXISTS",
                f"""WITH last_score AS (
                      SELECT DISTINCT ON (customer) customer, satisfaction FROM e_interaction
                      WHERE satisfaction IS NOT NULL AND retained_at IS NULL
                      ORDER BY customer, occurred_at DESC, id DESC)
                    SELECT count(*) FROM e_customer c JOIN last_score l ON l.customer = c.id
                    WHERE c.retained_at IS NULL AND l.satisfaction < 4 AND {no_recent}""",
            ),
            correlated,
        ]
    if name == "wealth_maturity_task":
        return [
            (
                "join holding → product",
                """SELECT count(*) FROM e_holding h JOIN e_product p ON p.id = h.product
                   WHERE h.retained_at IS NULL AND p.retained_at IS NULL AND p.type = 'wealth'
                     AND h.maturity_date BETWEEN :today AND :today15""",
            )
        ]
    raise ValueError(name)


def hand_params(dialect: str) -> dict[str, Any]:
    """The bounds the engine derives from NOW (within_last_days: BETWEEN now − N days AND now;
    within_next_days on a date: BETWEEN today AND today + N, today in Asia/Shanghai)."""
    today = local_today(NOW)
    p: dict[str, Any] = {
        "now": NOW, "t30": NOW - dt.timedelta(days=30), "t90": NOW - dt.timedelta(days=90), "t360": NOW - dt.timedelta(days=360),
        "today": today, "today15": today + dt.timedelta(days=15), "surge": 500000, "min_amount": 100000,
    }
    if dialect == "sqlite":  # stored as text (SQLAlchemy's format) and integer cents
        p = {k: (v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v.isoformat() if isinstance(v, dt.date) else v * 100)
             for k, v in p.items()}
    return p


# ---------------------------------------------------------------------- measuring


class Explain(Executable, ClauseElement):
    """``EXPLAIN … <statement>`` executed with the statement's own bound parameters."""

    inherit_cache = False

    def __init__(self, stmt: Any, prefix: str) -> None:
        self.stmt = stmt
        self.prefix = prefix


@compiles(Explain)
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return f"{element.prefix} {compiler.process(element.stmt, **kw)}"


class TimedEngine(TriggerEngine):
    """The engine as shipped, with the claim and the targets query timed (actions are the rest)."""

    phases: dict[str, float]

    def _claim(self, *a: Any, **kw: Any) -> int:
        t0 = time.perf_counter()
        try:
            return super()._claim(*a, **kw)
        finally:
            self.phases["claim"] = time.perf_counter() - t0

    def _claimed_targets(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super()._claimed_targets(*a, **kw)
        finally:
            self.phases["targets"] = time.perf_counter() - t0


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3), "samples": [round(s, 3) for s in samples]}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def plan_text(rows: Sequence[Any]) -> str:
    return "\n".join(" | ".join(str(c) for c in r) if len(r) > 1 else str(r[0]) for r in rows)


def undo(rt: Runtime, name: str) -> None:
    """Delete a trigger's firings and what its actions created; tidy the tables for the next round."""
    tables = ["fincrm_trigger_fire"]
    with rt.begin() as conn:
        conn.execute(trigger_fire_table.delete().where(trigger_fire_table.c.trigger == name))
        for table, where in CREATED[name]:
            conn.execute(text(f"DELETE FROM {table} WHERE {where}"))
            tables.append(table)
    if rt.dialect == "postgresql":
        with rt.engine.connect() as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {', '.join(sorted(set(tables)))}")


def pg_settings(rt: Runtime) -> dict[str, str]:
    names = ("server_version", "work_mem", "hash_mem_multiplier", "shared_buffers", "effective_cache_size", "max_parallel_workers_per_gather",
             "jit", "random_page_cost")
    with rt.engine.connect() as conn:
        return {n: str(conn.execute(text("SELECT current_setting(:n)"), {"n": n}).scalar_one()) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--transactions-per-customer", type=float, default=10)
    ap.add_argument("--database-url", default=DEFAULT_URL)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--triggers", default=",".join(TRIGGERS), help="comma-separated subset of " + ", ".join(TRIGGERS))
    ap.add_argument("--no-full-pass", action="store_true", help="time the conditions only")
    ap.add_argument("--no-explain", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800, help="PostgreSQL statement_timeout for measured statements, seconds")
    ap.add_argument("--reset", action="store_true", help="drop everything and seed again")
    args = ap.parse_args()
    names = [n.strip() for n in args.triggers.split(",") if n.strip()]
    assert all(n in TRIGGERS for n in names), names

    if args.reset:
        reset(args.database_url)
    rt = Runtime(args.database_url, Keyring(b"k" * 32), b"secret")
    pg = rt.dialect == "postgresql"
    if pg:
        for eng in {rt.engine, rt.write_engine}:
            event.listen(eng, "connect", lambda dbapi, _rec: _set_timeout(dbapi, args.timeout))
    started = time.perf_counter()
    rt.init_schema()
    print(f"database: {rt.dialect}  ({rt.engine.url.render_as_string(hide_password=True)})", flush=True)
    seeding = seed(rt, args.customers, args.transactions_per_customer)
    seeding_wall = time.perf_counter() - started
    seed_total = sum(v.get("seconds", 0) for v in seeding.values())
    counts = {}
    with rt.engine.connect() as conn:
        for t in ("e_customer", "e_transaction", "e_interaction", "e_consent", "e_holding"):
            counts[t] = int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one())
    print("rows: " + ", ".join(f"{t.removeprefix('e_')} {n:,}" for t, n in counts.items()))
    print(f"seeding: {seed_total:.1f} s in all" + ("" if any(not v.get("skipped", True) for v in seeding.values()) else " (earlier run; skipped now)"), flush=True)

    records = RecordService(rt, BasicAuthorizer())
    engine = TimedEngine(rt, records)
    engine.phases = {}
    snap = rt.snapshot()
    hp = hand_params(rt.dialect)
    results: dict[str, Any] = {}
    for name in names:
        trig = snap.automation.triggers[name]

        def fincrm() -> int:
            stmt = select(func.count()).select_from(engine.matching(snap, trig, NOW).subquery())
            with rt.engine.connect() as conn:
                return int(conn.execute(stmt).scalar_one())

        def by_hand(sql: str) -> Callable[[], int]:
            def run() -> int:
                with rt.engine.connect() as conn:
                    return int(conn.execute(text(sql), hp).scalar_one())

            return run

        forms = hand_written(rt.dialect, name)
        print(f"\n{name}: warm-up", flush=True)
        warm_a, n_a = timed(fincrm)
        warm = {"fincrm": round(warm_a, 3)}
        for label, sql in forms:
            secs, n_b = timed(by_hand(sql))
            warm[label] = round(secs, 3)
            assert n_b == n_a, f"{name}: hand-written form {label!r} counts {n_b}, FinCRM counts {n_a}"
        print(f"  matched {n_a:,}; warm-up seconds {warm}", flush=True)
        a: list[float] = []
        b: dict[str, list[float]] = {label: [] for label, _ in forms}
        for r in range(args.rounds):  # interleaved, alternating which goes first
            order = ["fincrm"] + [label for label, _ in forms]
            if r % 2:
                order.reverse()
            for which in order:
                if which == "fincrm":
                    secs, n = timed(fincrm)
                    a.append(secs)
                else:
                    secs, n = timed(by_hand(dict(forms)[which]))
                    b[which].append(secs)
                assert n == n_a, (which, n, n_a)
            print(f"  round {r + 1}: FinCRM {a[-1]:.2f} s; " + "; ".join(f"{lbl[:40]} {v[-1]:.2f} s" for lbl, v in b.items()), flush=True)
        entry: dict[str, Any] = {
            "matched": n_a,
            "warm_up": warm,
            "condition_fincrm": summary(a),
            "condition_hand": {label: summary(v) for label, v in b.items()},
            "baseline": forms[0][0],
        }
        base = statistics.median(b[forms[0][0]])
        entry["ratio_a_b"] = round(statistics.median(a) / base, 2)
        entry["ratio_a_each"] = {label: round(statistics.median(a) / statistics.median(v), 2) for label, v in b.items()}
        if not args.no_explain:
            prefix = "EXPLAIN (ANALYZE, BUFFERS)" if pg else "EXPLAIN QUERY PLAN"
            with rt.engine.connect() as conn:
                stmt = select(func.count()).select_from(engine.matching(snap, trig, NOW).subquery())
                entry["plan_fincrm"] = plan_text(conn.execute(Explain(stmt, prefix)).all())
                entry["sql_fincrm"] = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                entry["plan_hand"] = {label: plan_text(conn.execute(text(f"{prefix} {sql}"), hp).all()) for label, sql in forms}
                entry["sql_hand"] = {label: " ".join(sql.split()) for label, sql in forms}
            print("  plans saved", flush=True)
        if not args.no_full_pass:
            c: list[float] = []
            runs = []
            for r in range(args.rounds):
                undo(rt, name)
                engine.phases = {}
                secs, res = timed(lambda: engine.run(name, NOW))
                assert res["fired"] == n_a, (name, res, n_a)
                c.append(secs)
                runs.append({"seconds": round(secs, 3), "fired": res["fired"], "actions": res["actions"], "claim": round(engine.phases.get("claim", 0), 3),
                             "targets": round(engine.phases.get("targets", 0), 3), "fire_seconds": res["seconds"]})
                print(f"  full pass {r + 1}: {secs:.2f} s, fired {res['fired']:,} (claim {runs[-1]['claim']:.2f} s, "
                      f"targets {runs[-1]['targets']:.2f} s, actions {res['actions']})", flush=True)
            undo(rt, name)
            entry["full_pass"] = {**summary(c), "fired": runs[0]["fired"], "actions": runs[0]["actions"], "rounds": runs}
            entry["ratio_c_b"] = round(statistics.median(c) / base, 2)
        results[name] = entry

    # ------------------------------------------------------------------ report
    print(f"\n{rt.dialect}: {counts['e_customer']:,} customers, {counts['e_transaction']:,} transactions; NOW = {NOW:%Y-%m-%d %H:%M} UTC; "
          f"{args.rounds} rounds, seconds as median (min)")
    head = f"{'trigger':<28}{'a FinCRM cond':>16}{'b hand SQL':>16}{'a/b':>7}{'c full pass':>16}{'c/b':>7}{'fired':>10}"
    print(head)
    print("-" * len(head))

    def fmt(s: dict[str, Any]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f})"

    for name, e in results.items():
        base = e["condition_hand"][e["baseline"]]
        fp = e.get("full_pass")
        print(f"{name:<28}{fmt(e['condition_fincrm']):>16}{fmt(base):>16}{e['ratio_a_b']:>7.2f}"
              f"{fmt(fp) if fp else '—':>16}{e.get('ratio_c_b', float('nan')):>7.2f}{(fp['fired'] if fp else e['matched']):>10,}")
    for name, e in results.items():
        for label, s in e["condition_hand"].items():
            if label != e["baseline"]:
                print(f"  {name}: other hand-written form — {label}: {fmt(s)} s; a/this {e['ratio_a_each'][label]:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {
        "database": rt.dialect,
        "settings": pg_settings(rt) if pg else {"sqlite_version": __import__("sqlite3").sqlite_version},
        "customers": args.customers,
        "transactions_per_customer": args.transactions_per_customer,
        "rows": counts,
        "now": NOW.isoformat(),
        "rounds": args.rounds,
        "seeding": seeding,
        "seeding_seconds": round(seed_total, 1),
        "seeding_wall_this_run": round(seeding_wall, 1),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "triggers": results,
    }
    path = out / f"trigger_bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    print(f"\nwritten {path.relative_to(ROOT)}")
    rt.dispose()


def _set_timeout(dbapi_conn: Any, seconds: int) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"SET statement_timeout = {int(seconds) * 1000}")
    cur.close()
    dbapi_conn.commit()


if __name__ == "__main__":
    main()
