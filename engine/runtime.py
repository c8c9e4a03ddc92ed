"""The engine's process-wide state: database engine, current metadata snapshot, keys, ids.

Several worker processes run at once. The registry carries a version stamp in
``fincrm_state``; :meth:`Runtime.snapshot` compares it with the cached one (one primary-key
read) and rebuilds the registry and tables when another process moved it. A snapshot is
immutable, so one request sees one consistent version of the metadata from start to end.

Read routing (PostgreSQL streaming replicas, ``FINCRM_DATABASE_REPLICA_URLS``): writes always go
to the primary (:meth:`Runtime.begin`); ``runtime.engine`` is resolved on every use. Outside a
request whose route (:class:`ReadRoute`, handed over by the web layer's route source) allows a
replica it is the primary. Inside one, the first read once the caller is known picks, in one
primary round trip, a replica that has replayed the WAL past

- the caller's last write (its LSN, kept in ``fincrm_state`` under ``rw:<user id>`` so every
  worker process knows it: read-your-writes),
- the metadata this process loaded (so the tables and columns it expects exist there),
- the primary's position about ``replica_max_lag`` seconds ago (a stuck replica is not used),

and that stamps have not moved behind this process's back (else the primary answers and the
usual stale-stamp reload runs). No such replica, or one that fails to connect: the primary.
The choice holds for the rest of the request; after a write in the request, reads go to the
primary.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, Engine, MetaData, Table, bindparam, create_engine, event, func, insert, literal_column, make_url, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError

from . import metrics
from .flows import tables as _flow_tables  # noqa: F401  (system tables of the automation layer)
from .flows.conditions import condition_checker
from .flows.spec import AUTOMATION_KINDS, Automation, build_automation, load_automation_documents
from .insight.reportspec import build_reports, load_report_documents, report_checker
from .meta.packages import dependency_order, documents_of, layer
from .meta.registry import Registry, build_registry, load_core_documents
from .security.audit import ensure_head as ensure_audit_head
from .security.crypto import Keyring
from .store.ids import IdAllocator
from .store.migrate import apply_migration, plan_migration
from .store.tables import build_entity_tables, meta_doc_table, package_table, state_table, system_metadata

__all__ = ["Runtime", "Snapshot", "newest_documents", "StaleStamps", "ReadRoute", "Replica", "make_engine", "META_VERSION", "POLICY_VERSION", "utcnow"]

log = logging.getLogger("fincrm.replica")

META_VERSION = "meta_version"
POLICY_VERSION = "policy_version"

# Optimistic stamps (see Runtime.expect_stamps): the stamps a read assumes, and whether a
# statement of this request has already confirmed them.
_EXPECTED: ContextVar[tuple[int, int] | None] = ContextVar("fincrm_expected_stamps", default=None)
_CONFIRMED: ContextVar[bool] = ContextVar("fincrm_stamps_confirmed", default=False)


# built once: constructing them per request costs more than the subqueries themselves
_STAMP_COLUMNS = [
    select(state_table.c.value).where(state_table.c.key == META_VERSION).scalar_subquery().label("fincrm__meta_v"),
    select(state_table.c.value).where(state_table.c.key == POLICY_VERSION).scalar_subquery().label("fincrm__policy_v"),
]


def _lsn(expr: Any) -> Any:
    """A WAL position (pg_lsn) as a byte count, comparable as an integer."""
    return func.pg_wal_lsn_diff(expr, literal_column("'0/0'::pg_lsn"))


_WRITE_KEY = "rw:{}"  # fincrm_state row holding a user's last write LSN
_PRIMARY_LSN = _lsn(func.pg_current_wal_lsn()).label("lsn")
_REPLICA_STATE = select(func.pg_is_in_recovery().label("standby"), _lsn(func.pg_last_wal_replay_lsn()).label("replayed"))
# one primary round trip per routed request: its WAL position, the caller's last write, the stamps
_ROUTING_STATE = select(
    _PRIMARY_LSN,
    select(state_table.c.value).where(state_table.c.key == bindparam("write_key")).scalar_subquery().label("mine"),
    *_STAMP_COLUMNS,
)
_FALLBACK = "fincrm_primary_fallback"  # a replica pool's connection that went to the primary
_DOWN_SECONDS = 5.0  # a replica that failed is skipped this long
_MARK_EVERY = 0.5  # seconds between samples of the primary's WAL position

# runtime documents frozen against the registry after it is built: flows, triggers, reports
_DERIVED_KINDS = (*AUTOMATION_KINDS, "report")

class StaleStamps(Exception):
    """A read ran on metadata or policy that another process has changed meanwhile: the caller
    reloads and runs it again. Never leaves the web layer."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def make_engine(url: str, *, immediate: bool = False, custom_plans: bool = True, **kw: Any) -> Engine:
    """An engine for ``url``. On SQLite, ``immediate`` makes every transaction BEGIN IMMEDIATE:
    a writer takes the write lock up front and waits for it (busy timeout) instead of failing
    when it upgrades a read snapshot that another writer has moved on from."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)
        if immediate:

            @event.listens_for(engine, "connect")
            def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 20)
    # no pre-ping (a round trip on every checkout); stale connections are recycled instead and
    # a dropped one invalidates the pool on first use
    kw.setdefault("pool_recycle", 1800)
    engine = create_engine(url, **kw)

    @event.listens_for(engine, "connect")
    def _custom_plans(dbapi_conn: Any, _record: Any) -> None:
        # psycopg prepares repeated statements and PostgreSQL may then switch to a generic
        # plan that ignores the values, which hurts keyset pages (aum <= $1 …) on big tables.
        # Keep the parse savings, plan with the actual values. (``custom_plans=False``: reads
        # of one row by primary key, whose plan never depends on the value: see Runtime.point_engine.)
        if engine.dialect.name == "postgresql" and custom_plans:
            dbapi_conn.execute("SET plan_cache_mode = force_custom_plan")
            if not dbapi_conn.autocommit:
                dbapi_conn.commit()

    return engine


def _drop_pools(ref: "weakref.ReferenceType[Runtime]") -> None:
    runtime = ref()
    if runtime is not None:
        for engine in runtime.engines():
            engine.dispose(close=False)


def _no_route() -> None:
    return None


@dataclass
class ReadRoute:
    """One request's read routing: may its reads use a replica, who is calling (known once the
    web layer has resolved the principal), the engine chosen, whether the request wrote, and
    whether a write still has to be remembered (:meth:`Runtime.remember_write`)."""

    user: Callable[[], int | None]
    replica_ok: bool
    chosen: Engine | None = None
    wrote: bool = False
    unrecorded: bool = False


class Replica:
    """A streaming replica: its read pool, the WAL position it is known to have replayed (a lower
    bound: replay only moves forward), and until when it is skipped after a failure.

    A connection the pool cannot open on the replica is opened on the primary instead (and
    dropped once the replica is due to be tried again), so a replica going down fails no read.
    """

    def __init__(self, url: str, primary: Engine) -> None:
        self.name = make_url(url).render_as_string(hide_password=True)
        self.replayed = 0
        self.down_until = 0.0
        self.reads = 0  # requests routed here
        self.failures = 0
        parsed = make_url(url)
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 3}
        # pre-ping: a dead pooled connection is found at checkout and replaced (on the primary
        # if the replica is gone) instead of failing the request's statement
        self.engine = make_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args=connect_args)
        primary_args = primary.dialect.create_connect_args(primary.url)

        @event.listens_for(self.engine, "do_connect")
        def _connect_or_primary(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
            if self.down_until <= time.monotonic():
                try:
                    return dialect.connect(*cargs, **cparams)
                except dialect.loaded_dbapi.Error as exc:
                    self.mark_down(exc)
            record.info[_FALLBACK] = True
            return dialect.connect(*primary_args[0], **primary_args[1])

        @event.listens_for(self.engine, "checkout")
        def _retry_replica(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            if record.info.get(_FALLBACK) and self.down_until <= time.monotonic():
                raise DisconnectionError("replica due to be tried again")  # the pool reconnects

    def mark_down(self, exc: BaseException | str) -> None:
        self.down_until = time.monotonic() + _DOWN_SECONDS
        self.failures += 1
        reason = exc if isinstance(exc, str) else type(exc).__name__
        log.warning("read replica %s skipped for %.1fs: %s; reads go to the primary", self.name, _DOWN_SECONDS, reason)

    def caught_up(self, need: int, now: float) -> bool:
        """Has this replica replayed the WAL up to ``need``? Asks it only if not known yet."""
        if self.down_until > now:
            return False
        if self.replayed >= need:
            return True
        try:
            with self.engine.connect() as conn:
                if conn.connection.info.get(_FALLBACK):
                    return False  # the replica is down: this pool handed out a primary connection
                row = conn.execute(_REPLICA_STATE).one()
        except DBAPIError as exc:
            self.mark_down(exc)
            return False
        if not row.standby or row.replayed is None:
            self.mark_down("not in recovery (promoted, or not a standby)")
            return False
        self.replayed = max(self.replayed, int(row.replayed))
        return self.replayed >= need


@dataclass(frozen=True)
class Snapshot:
    registry: Registry
    metadata: MetaData
    tables: Mapping[str, Table]
    automation: Automation = field(default_factory=Automation)
    reports: Mapping[str, Any] = field(default_factory=dict)  # name → engine.insight.reportspec.ReportSpec
    packages: tuple[Mapping[str, Any], ...] = ()  # the published packages, in dependency order

    @property
    def version(self) -> int:
        return self.registry.version


@dataclass
class Runtime:
    url: str
    keyring: Keyring
    secret: bytes
    core_documents: list[dict[str, Any]] = field(default_factory=load_core_documents)
    core_automation: list[dict[str, Any]] = field(default_factory=load_automation_documents)
    core_reports: list[dict[str, Any]] = field(default_factory=load_report_documents)
    primary_engine: Engine = field(init=False)
    ids: IdAllocator = field(init=False)

    def __post_init__(self) -> None:
        # Reads and writes use separate pools. Reads autocommit on PostgreSQL: a list page or a
        # get is one statement, so no BEGIN/ROLLBACK round trips. Writes are transactions (on
        # SQLite taking the write lock up front with BEGIN IMMEDIATE).
        if self.url.startswith("sqlite"):
            self.primary_engine = make_engine(self.url)
            self.write_engine = make_engine(self.url, immediate=True, pool_size=5)
        else:
            self.primary_engine = make_engine(self.url, isolation_level="AUTOCOMMIT")
            self.write_engine = make_engine(self.url, pool_size=5, max_overflow=10)
        # Reads of one record by its id: on PostgreSQL a pool whose sessions keep the default
        # plan choice, so the prepared statement settles on its generic plan (an index lookup
        # by primary key whatever the id) instead of being planned again on every call: the
        # server's CPU for a get-by-id measured 107-130 µs with custom plans, 43-50 µs without.
        self.point_engine = (
            make_engine(self.url, isolation_level="AUTOCOMMIT", custom_plans=False, pool_size=5, max_overflow=10)
            if self.url.startswith("postgresql") else self.primary_engine
        )
        self.ids = IdAllocator(self.write_engine)
        # Pooled connections must not cross a fork (gunicorn --preload): the child drops them
        # without closing them, as SQLAlchemy recommends, and opens its own.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _drop_pools(ref))
        self.dialect = self.primary_engine.dialect.name
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None
        self.replicas: list[Replica] = []
        self.replica_max_lag = 10.0
        self.primary_reads = 0  # routed requests the primary answered
        self._loaded_lsn = 0  # the primary's WAL position when this process loaded its metadata
        self._marks: deque[tuple[float, int]] = deque()  # (monotonic time, primary WAL position)
        self._marks_lock = threading.Lock()
        self._turn = itertools.count()
        self._route: Callable[[], ReadRoute | None] = _no_route

    # ------------------------------------------------------------------ read routing

    def use_replicas(self, urls: list[str] | tuple[str, ...], *, max_lag: float = 10.0) -> None:
        """Route eligible reads to these streaming replicas of the primary (PostgreSQL only)."""
        if not urls:
            return
        if self.dialect != "postgresql":
            raise ValueError("read replicas need a PostgreSQL primary (FINCRM_DATABASE_URL); SQLite has none")
        self.replicas = [Replica(u, self.primary_engine) for u in urls]
        self.replica_max_lag = max(1.0, max_lag)

        # a statement that changes data or schema (not a commit: reading the policy commits too)
        @event.listens_for(self.write_engine, "after_cursor_execute")
        def _note_write(_conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any, _many: bool) -> None:
            route = self._route()
            if route is not None and context is not None and (context.isinsert or context.isupdate or context.isdelete or context.isddl):
                route.wrote = route.unrecorded = True

        with self.primary_engine.connect() as conn:
            lsn = int(conn.execute(select(_PRIMARY_LSN)).scalar_one())
        self._loaded_lsn = max(self._loaded_lsn, lsn)
        with self._marks_lock:
            self._marks.clear()
            self._marks.append((time.monotonic(), lsn))

    def route_source(self, source: Callable[[], ReadRoute | None]) -> None:
        """Where the current request's route is kept: the web layer keeps it with the request
        (so that a streamed response, read after the view returned, still has it); None
        outside a request means the primary."""
        self._route = source

    def remember_write(self, user_id: int) -> None:
        """After a request of ``user_id`` wrote: keep the primary's WAL position (at or past
        that commit) so this user's reads, in any worker, skip replicas that have not replayed it."""
        if not self.replicas:
            return
        stmt = pg_insert(state_table).values(key=_WRITE_KEY.format(int(user_id)), value=_lsn(func.pg_current_wal_lsn()))
        stmt = stmt.on_conflict_do_update(
            index_elements=[state_table.c.key], set_={"value": func.greatest(state_table.c.value, stmt.excluded.value)}
        )
        with self.write_engine.begin() as conn:
            conn.execute(stmt)

    @property
    def engine(self) -> Engine:
        """The engine for reads: the primary, or the replica chosen for this request."""
        route = self._route()
        if route is None or not route.replica_ok or route.wrote:
            return self.primary_engine
        if route.chosen is None:
            user_id = route.user()
            if user_id is None:
                return self.primary_engine  # the principal's own loading reads the primary
            route.chosen = self._choose(user_id)
        return route.chosen

    @property
    def point_reads(self) -> Engine:
        """The engine for reads whose plan does not hinge on their values (a record by its
        primary key, the first page of a list): ``engine``, but on the primary its pool that
        keeps PostgreSQL's default plan choice (``point_engine``)."""
        engine = self.engine
        return self.point_engine if engine is self.primary_engine else engine

    def _choose(self, user_id: int) -> Engine:
        with self.primary_engine.connect() as conn:
            row = conn.execute(_ROUTING_STATE, {"write_key": _WRITE_KEY.format(user_id)}).one()
        expected = _EXPECTED.get()
        if expected is not None and (int(row.fincrm__meta_v), int(row.fincrm__policy_v)) != expected:
            # this process is behind a metadata or policy change: the primary's statement will
            # carry the new stamps and the request reloads and runs again
            return self._primary()
        now = time.monotonic()
        need = max(int(row.mine or 0), self._loaded_lsn, self._staleness_floor(now, int(row.lsn)))
        first = next(self._turn)
        for i in range(len(self.replicas)):
            n = (first + i) % len(self.replicas)
            replica = self.replicas[n]
            if replica.caught_up(need, now):
                replica.reads += 1
                metrics.count_read_route(f"replica{n + 1}")
                return replica.engine
        return self._primary()

    def _primary(self) -> Engine:
        self.primary_reads += 1
        metrics.count_read_route("primary")
        return self.primary_engine

    def _staleness_floor(self, now: float, current: int) -> int:
        """A WAL position from about ``replica_max_lag`` seconds ago (never older than that plus
        a second): a replica that has not replayed it is too far behind to answer."""
        horizon = now - self.replica_max_lag
        with self._marks_lock:
            marks = self._marks
            if not marks or now - marks[-1][0] >= _MARK_EVERY:
                marks.append((now, current))
            while len(marks) > 1 and marks[1][0] <= horizon:
                marks.popleft()
            # marks[0] is now the newest sample from before the horizon, or the oldest after it
            t, lsn = marks[0]
            if t < horizon - 2 * _MARK_EVERY and len(marks) > 1:
                lsn = marks[1][1]  # no traffic for a while: nothing near the horizon, take the next
            return lsn

    def read_routes(self) -> dict[str, Any]:
        """Routed requests per target and each replica's state (for metrics and readiness)."""
        return {
            "primary": self.primary_reads,
            "replicas": [
                {"name": r.name, "reads": r.reads, "failures": r.failures, "replayed": r.replayed, "skipped": r.down_until > time.monotonic()}
                for r in self.replicas
            ],
        }

    def engines(self) -> list[Engine]:
        point = [self.point_engine] if self.point_engine is not self.primary_engine else []
        return [self.primary_engine, self.write_engine, *point, *(r.engine for r in self.replicas)]

    # ------------------------------------------------------------------ schema and metadata

    def init_schema(self) -> list[dict[str, str]]:
        """Create system tables, then every entity table/column/index the specs need."""
        system_metadata.create_all(self.write_engine)
        with self.begin() as conn:
            for key in (META_VERSION, POLICY_VERSION):
                if conn.execute(select(state_table.c.value).where(state_table.c.key == key)).first() is None:
                    conn.execute(insert(state_table).values(key=key, value=1))
            ensure_audit_head(conn)
        snap = self._load()
        with self.begin() as conn:
            steps = plan_migration(conn, snap.metadata)
            apply_migration(conn, snap.metadata, steps)
        with self._lock:
            self._snapshot = snap
        return [s.to_dict() for s in steps]

    def runtime_documents(self, conn: Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Newest version of each runtime document: (entity docs, entity overlays, flows,
        triggers and reports)."""
        rows = newest_documents(conn)
        entities = [dict(r.doc) for r in rows if r.kind == "entity"]
        overlays = [dict(r.doc) for r in rows if r.kind == "entity_overlay"]
        automation = [dict(r.doc) for r in rows if r.kind in _DERIVED_KINDS]
        return entities, overlays, automation

    def active_packages(self, conn: Connection) -> list[Mapping[str, Any]]:
        """The published version of each package, in dependency order."""
        docs = [r.doc for r in conn.execute(select(package_table.c.doc).where(package_table.c.active.is_(True)).order_by(package_table.c.name))]
        ordered, _errors = dependency_order(docs)  # checked when they were published
        return ordered

    def build(
        self, conn: Connection, version: int, extra: list[dict[str, Any]] | None = None, packages: list[Mapping[str, Any]] | None = None
    ) -> Snapshot:
        """A snapshot of the metadata as stored, plus ``extra`` documents not yet stored;
        ``packages``: the published packages to layer instead of the stored ones (a publish
        or rollback builds its candidate this way before anything is written)."""
        entities, overlays, automation = self.runtime_documents(conn)
        for doc in extra or []:
            stored = entities if doc["kind"] == "entity" else automation if doc["kind"] in _DERIVED_KINDS else overlays
            stored[:] = [d for d in stored if (d["kind"], d["name"]) != (doc["kind"], doc["name"])] + [doc]
        if packages is None:
            packages = self.active_packages(conn)
        package_entities, package_overlays = layer(self.core_documents, packages)
        registry = build_registry(self.core_documents + package_entities + entities, package_overlays + overlays, version)
        md, tables = build_entity_tables(registry, self.dialect)
        partial = Snapshot(registry, md, tables)
        flows_and_triggers = build_automation(
            registry, self.core_automation + documents_of(packages, AUTOMATION_KINDS) + automation, condition_checker(partial, self.dialect)
        )
        reports = build_reports(registry, self.core_reports + documents_of(packages, ("report",)) + automation, report_checker(partial, self.dialect))
        return Snapshot(registry, md, tables, flows_and_triggers, reports, tuple(packages))

    def _load(self) -> Snapshot:
        with self.primary_engine.connect() as conn:
            if self.replicas:
                self._loaded_lsn = max(self._loaded_lsn, int(conn.execute(select(_PRIMARY_LSN)).scalar_one()))
            version = self._stamp(conn, META_VERSION)
            return self.build(conn, version)

    def _stamp(self, conn: Connection, key: str) -> int:
        return int(conn.execute(select(state_table.c.value).where(state_table.c.key == key)).scalar_one())

    def stamps(self) -> tuple[int, int]:
        """(metadata version, policy version), in one primary-key read.

        Read on every request, on purpose: a change committed by any process must be seen by
        every other one on its very next request. (LISTEN/NOTIFY was tried: notifications
        reach other processes asynchronously, so a request right after a change could still
        run on the old metadata.)"""
        with self.primary_engine.connect() as conn:
            rows = dict(
                conn.execute(select(state_table.c.key, state_table.c.value).where(state_table.c.key.in_((META_VERSION, POLICY_VERSION)))).all()
            )
        return int(rows[META_VERSION]), int(rows[POLICY_VERSION])

    # ------------------------------------------------------------------ optimistic stamps
    #
    # A read-only request (get, list, query) need not spend a round trip on the stamps before
    # its one statement: it assumes the stamps it last saw, and that statement carries the
    # current stamps as two scalar subqueries. If they differ, or the statement returned no
    # row to carry them (or the request failed before it ran), the web layer reads the stamps
    # itself and, if they moved, reloads and runs the request again. A change committed by any
    # process is still seen on the very next request; the common case costs one statement.

    def expect_stamps(self, stamps: tuple[int, int] | None) -> None:
        _EXPECTED.set(stamps)
        _CONFIRMED.set(False)

    @staticmethod
    def stamps_confirmed() -> bool:
        return _CONFIRMED.get()

    def stamp_columns(self) -> list[Any]:
        """The current stamps as labelled scalar subqueries, when this read is optimistic."""
        if _EXPECTED.get() is None:
            return []
        return _STAMP_COLUMNS

    def confirm_stamps(self, row: Mapping[Any, Any]) -> None:
        """Compare the stamps a row carried with the assumed ones (no-op for non-optimistic reads)."""
        expected = _EXPECTED.get()
        if expected is None or "fincrm__meta_v" not in row:
            return
        if (int(row["fincrm__meta_v"]), int(row["fincrm__policy_v"])) != expected:
            raise StaleStamps()
        _CONFIRMED.set(True)

    def snapshot(self, meta_version: int | None = None) -> Snapshot:
        """The current snapshot, reloaded first if another process moved the stamp."""
        snap = self._snapshot
        if meta_version is None:
            meta_version = self.stamps()[0]
        if snap is None or snap.version != meta_version:
            with self._lock:
                snap = self._snapshot
                if snap is None or snap.version != meta_version:
                    snap = self._load()
                    self._snapshot = snap
        return snap

    def cached_snapshot(self) -> Snapshot:
        return self._snapshot if self._snapshot is not None else self.snapshot()

    def bump(self, conn: Connection, key: str = META_VERSION) -> int:
        """Move a stamp inside the caller's transaction; returns the new value."""
        return int(
            conn.execute(
                update(state_table).where(state_table.c.key == key).values(value=state_table.c.value + 1).returning(state_table.c.value)
            ).scalar_one()
        )

    def install(self, snap: Snapshot) -> None:
        with self._lock:
            if self._snapshot is None or snap.version >= self._snapshot.version:
                self._snapshot = snap

    def begin(self) -> Any:
        """A write transaction (``with runtime.begin() as conn:``)."""
        return self.write_engine.begin()

    def dispose(self) -> None:
        for engine in self.engines():
            engine.dispose()


def newest_documents(conn: Connection, kinds: tuple[str, ...] | None = None) -> list[Any]:
    """The newest version of each runtime metadata document (of ``kinds``, or all), as rows
    ``(kind, name, doc)`` in the order they were first written."""
    d = meta_doc_table
    newest = select(d.c.kind, d.c.name, func.max(d.c.version).label("v")).group_by(d.c.kind, d.c.name)
    if kinds is not None:
        newest = newest.where(d.c.kind.in_(kinds))
    sub = newest.subquery()
    stmt = select(d.c.kind, d.c.name, d.c.doc).join(sub, (d.c.kind == sub.c.kind) & (d.c.name == sub.c.name) & (d.c.version == sub.c.v))
    return list(conn.execute(stmt.order_by(d.c.id)).all())


def data_dir_key_file(data_dir: Path) -> Path:
    return data_dir / "master.key"
