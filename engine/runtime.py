"""The engine's process-wide state: database engine, current metadata snapshot, keys, ids.

Several worker processes run at once. The registry carries a version stamp in
``fincrm_state``; :meth:`Runtime.snapshot` compares it with the cached one (one primary-key
read) and rebuilds the registry and tables when another process moved it. A snapshot is
immutable, so one request sees one consistent version of the metadata from start to end.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, func, insert, select, update

from .flows import tables as _flow_tables  # noqa: F401  (system tables of the automation layer)
from .flows.conditions import condition_checker
from .flows.spec import AUTOMATION_KINDS, Automation, build_automation, load_automation_documents
from .insight.reportspec import build_reports, load_report_documents, report_checker
from .meta.registry import Registry, build_registry, load_core_documents
from .security.audit import ensure_head as ensure_audit_head
from .security.crypto import Keyring
from .store.ids import IdAllocator
from .store.migrate import apply_migration, plan_migration
from .store.tables import build_entity_tables, meta_doc_table, state_table, system_metadata

__all__ = ["Runtime", "Snapshot", "StaleStamps", "make_engine", "META_VERSION", "POLICY_VERSION", "utcnow"]

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


# runtime documents frozen against the registry after it is built: flows, triggers, reports
_DERIVED_KINDS = (*AUTOMATION_KINDS, "report")

class StaleStamps(Exception):
    """A read ran on metadata or policy that another process has changed meanwhile: the caller
    reloads and runs it again. Never leaves the web layer."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def make_engine(url: str, *, immediate: bool = False, **kw: Any) -> Engine:
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
        # Keep the parse savings, plan with the actual values.
        if engine.dialect.name == "postgresql":
            dbapi_conn.execute("SET plan_cache_mode = force_custom_plan")
            if not dbapi_conn.autocommit:
                dbapi_conn.commit()

    return engine


def _drop_pools(ref: "weakref.ReferenceType[Runtime]") -> None:
    runtime = ref()
    if runtime is not None:
        runtime.engine.dispose(close=False)
        if runtime.write_engine is not runtime.engine:
            runtime.write_engine.dispose(close=False)


@dataclass(frozen=True)
class Snapshot:
    registry: Registry
    metadata: MetaData
    tables: Mapping[str, Table]
    automation: Automation = field(default_factory=Automation)
    reports: Mapping[str, Any] = field(default_factory=dict)  # name → engine.insight.reportspec.ReportSpec

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
    engine: Engine = field(init=False)
    ids: IdAllocator = field(init=False)

    def __post_init__(self) -> None:
        # Reads and writes use separate pools. Reads autocommit on PostgreSQL: a list page or a
        # get is one statement, so no BEGIN/ROLLBACK round trips. Writes are transactions (on
        # SQLite taking the write lock up front with BEGIN IMMEDIATE).
        if self.url.startswith("sqlite"):
            self.engine = make_engine(self.url)
            self.write_engine = make_engine(self.url, immediate=True, pool_size=5)
        else:
            self.engine = make_engine(self.url, isolation_level="AUTOCOMMIT")
            self.write_engine = make_engine(self.url, pool_size=5, max_overflow=10)
        self.ids = IdAllocator(self.write_engine)
        # Pooled connections must not cross a fork (gunicorn --preload): the child drops them
        # without closing them, as SQLAlchemy recommends, and opens its own.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _drop_pools(ref))
        self.dialect = self.engine.dialect.name
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None

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
        d = meta_doc_table
        newest = (
            select(d.c.kind, d.c.name, func.max(d.c.version).label("v")).group_by(d.c.kind, d.c.name).subquery()
        )
        rows = conn.execute(
            select(d.c.kind, d.c.doc)
            .join(newest, (d.c.kind == newest.c.kind) & (d.c.name == newest.c.name) & (d.c.version == newest.c.v))
            .order_by(d.c.id)
        ).all()
        entities = [dict(r.doc) for r in rows if r.kind == "entity"]
        overlays = [dict(r.doc) for r in rows if r.kind == "entity_overlay"]
        automation = [dict(r.doc) for r in rows if r.kind in _DERIVED_KINDS]
        return entities, overlays, automation

    def build(self, conn: Connection, version: int, extra: list[dict[str, Any]] | None = None) -> Snapshot:
        """A snapshot of the metadata as stored, plus ``extra`` documents not yet stored."""
        entities, overlays, automation = self.runtime_documents(conn)
        for doc in extra or []:
            stored = entities if doc["kind"] == "entity" else automation if doc["kind"] in _DERIVED_KINDS else overlays
            stored[:] = [d for d in stored if (d["kind"], d["name"]) != (doc["kind"], doc["name"])] + [doc]
        docs = self.core_documents + entities
        registry = build_registry(docs, overlays, version)
        md, tables = build_entity_tables(registry, self.dialect)
        partial = Snapshot(registry, md, tables)
        flows_and_triggers = build_automation(registry, self.core_automation + automation, condition_checker(partial, self.dialect))
        reports = build_reports(registry, self.core_reports + automation, report_checker(partial, self.dialect))
        return Snapshot(registry, md, tables, flows_and_triggers, reports)

    def _load(self) -> Snapshot:
        with self.engine.connect() as conn:
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
        with self.engine.connect() as conn:
            rows = dict(conn.execute(select(state_table.c.key, state_table.c.value)).all())
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
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


def data_dir_key_file(data_dir: Path) -> Path:
    return data_dir / "master.key"
