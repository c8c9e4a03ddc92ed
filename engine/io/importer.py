"""Import CSV/XLSX files into any entity: mapped, cleaned, validated, deduplicated, batched.

A job is a row in ``fincrm_import_job``; the file it reads stays on disk beside it. Running a
job reads the file in batches (1,000 rows by default) and commits each batch in one transaction
together with its errors and the job's progress (``rows_done``): a process killed at any moment
leaves whole batches or nothing, and ``run`` on the same job continues after the last committed
batch. With ``on_error=abort`` the whole file is one transaction: all rows or none.

Per row: cells are coerced per field type (full-width → half-width, thousands separators,
``2024/1/2`` and ``2024年1月2日`` dates, enum labels such as 男/女, ``是``/``否``, references by id or
by the target's title, users by username), then validated by the same code the API uses
(:meth:`RecordService._check_payload`), encrypted and blind-indexed by the same code too. A
cell that looks like a spreadsheet formula (``=…``, ``@…``) is refused: import files are data.

Duplicates: the job's key (``key``, default the entity's first unique field, matched through the
blind index when encrypted) is looked up within the file and in the database, in the writer's
update scope. ``mode=insert`` with ``dedupe`` skip | update | error decides what happens to a
row whose key already exists; ``mode=upsert`` updates matches and inserts the rest (``dedupe``
then only governs repeats within the file). Empty cells never clear a stored value on update.
Other unique fields are checked against the file and the database before writing.

After a batch is written, one query finds rows the writer may not hold (owner/branch outside
their create/update scope) and rows breaking the entity's cross-field rules; the batch is
rolled back and written again without them, and they become row errors. On PostgreSQL new rows
stream through ``COPY``; on SQLite they go in one ``executemany``. Errors keep the row number,
the column header, the value masked as the field's mask rule says, and the message; the error
file is a CSV built from them, formula-safe.

Files of 20,000 rows or more (``import_workers``) that only insert have their new rows built by
a worker process — parsed, validated, completed, encrypted, blind-indexed and bound, by the
same functions — while the job's own process reads the file, matches keys within the file and
against the database, writes, and checks scope and rules. Ids are reserved for a whole batch
before the worker seals ciphertexts with them (the id is in the associated data): ids of rows
that are not written (errors, duplicates) stay unused, gaps a surrogate key may have.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import gc
import datetime as dt
import multiprocessing
import io
import json
import os
import queue
import re
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    inspect,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from .. import metrics
from ..errors import BadRequest, FieldError, FinCRMError, NotFound
from ..fieldtypes import FIELD_TYPES
from ..flows.approval import ab_user_table
from ..meta.spec import EntitySpec, FieldSpec
from ..runtime import utcnow
from ..security.authz import effective_mask
from ..security.masking import mask_value
from ..security.principal import Principal
from ..security.crypto import Keyring
from ..services.records import REQUIRED, RecordService, _View, creation_fills, stored_values
from ..sqltypes import JsonDoc
from ..store.query import field_expr
from ..store.sets import member_of
from ..store.tables import system_metadata
from .export import neutralise
from .sources import MAX_CELL, Source, header_text, open_source, split_lines

__all__ = [
    "Importer",
    "ImportOptions",
    "import_job_table",
    "import_error_table",
    "MODES",
    "DEDUPE",
    "ON_ERROR",
]

MODES = ("insert", "upsert")
DEDUPE = ("skip", "update", "error")
ON_ERROR = ("skip_row", "abort")
PREVIEW_ROWS = 20
MAX_ERRORS = 100_000  # kept per job; the count goes on beyond it
STALE_SECONDS = 300  # a running job with no heartbeat for this long was interrupted

import_job_table = Table(
    "fincrm_import_job",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(63), nullable=False),
    Column("status", String(16), nullable=False),  # queued running done failed
    Column("options", JsonDoc, nullable=False),
    Column("mapping", JsonDoc, nullable=False),
    Column("source", Text, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("format", String(8), nullable=False),
    Column("encoding", String(16), nullable=True),
    Column("fingerprint", String(64), nullable=True),  # size:mtime of the file, checked on resume
    Column("total_rows", Integer, nullable=True),
    Column("rows_done", Integer, nullable=False, default=0),
    Column("counts", JsonDoc, nullable=False),
    Column("preview", JsonDoc, nullable=True),
    Column("message", Text, nullable=True),
    Column("created_by", Integer, nullable=True),
    Column("created_by_name", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
    Column("heartbeat", DateTime, nullable=True),
    Column("worker", String(64), nullable=True),
    Index("ix_fincrm_import_job_creator", "created_by", "id"),
)

import_error_table = Table(
    "fincrm_import_error",
    system_metadata,
    Column("job_id", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("row", Integer, nullable=False),
    Column("column", String(255), nullable=True),
    Column("value", Text, nullable=True),
    Column("message", Text, nullable=False),
)

_COUNT_KEYS = ("rows", "inserted", "updated", "skipped", "errors")
_TEXTUAL = frozenset({"string", "text", "email", "url", "enum", "multi_enum"})
_SPLIT = re.compile(r"[,，;；、|]")
_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?", re.ASCII)
_DATETIME = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?", re.ASCII)
_NUMBER_NOISE = str.maketrans("", "", ",，¥￥ \u00a0")


@dataclass(frozen=True)
class ImportOptions:
    mode: str = "insert"
    dedupe: str = "skip"
    key: str | None = None
    dry_run: bool = False
    on_error: str = "skip_row"
    batch_size: int = 1000
    mapping: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> "ImportOptions":
        """Options from a form or a JSON job document; every problem is a 400 naming the option."""
        errors = []
        known = {"mode", "dedupe", "key", "dry_run", "on_error", "batch_size", "mapping"}
        for name in raw:
            if name not in known:
                errors.append({"field": str(name)[:64], "message": "unknown option"})
        mode = raw.get("mode") or "insert"
        dedupe = raw.get("dedupe") or "skip"
        on_error = raw.get("on_error") or "skip_row"
        if mode not in MODES:
            errors.append({"field": "mode", "message": "must be insert or upsert"})
        if dedupe not in DEDUPE:
            errors.append({"field": "dedupe", "message": "must be skip, update or error"})
        if on_error not in ON_ERROR:
            errors.append({"field": "on_error", "message": "must be skip_row or abort"})
        key = raw.get("key") or None
        if key is not None and (not isinstance(key, str) or len(key) > 63):
            errors.append({"field": "key", "message": "must be a field name"})
        dry = raw.get("dry_run", False)
        dry_run = dry if isinstance(dry, bool) else str(dry).strip().lower() in ("1", "true", "yes", "on")
        batch = raw.get("batch_size", 1000)
        try:
            batch_size = int(batch)
            if not 1 <= batch_size <= 50_000:
                raise ValueError
        except (TypeError, ValueError):
            errors.append({"field": "batch_size", "message": "must be an integer from 1 to 50000"})
            batch_size = 1000
        mapping = raw.get("mapping") or {}
        if isinstance(mapping, str):
            try:
                mapping = json.loads(mapping)
            except ValueError:
                errors.append({"field": "mapping", "message": "must be a JSON object {column header: field name or null}"})
                mapping = {}
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in mapping.items()):
            errors.append({"field": "mapping", "message": "must be a JSON object {column header: field name or null}"})
            mapping = {}
        if errors:
            raise BadRequest("invalid import options", errors)
        return cls(mode, dedupe, key, dry_run, on_error, batch_size, {header_text(k): v for k, v in mapping.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "dedupe": self.dedupe, "key": self.key, "dry_run": self.dry_run,
            "on_error": self.on_error, "batch_size": self.batch_size, "mapping": self.mapping,
        }


@dataclass(frozen=True)
class _Column:
    index: int
    header: str
    field: FieldSpec | None  # None: the record id column


@dataclass
class _Plan:
    view: _View
    columns: list[_Column]
    key: FieldSpec | None  # None: match on the record id
    key_column: _Column | None
    uniques: list[FieldSpec]
    users: dict[str, int]
    ref_titles: dict[tuple[str, str], int | None] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # normalised field defaults, once per run
    headers: dict[str, str] = field(default_factory=dict)  # field name → its column's header
    memo: dict[int, dict[Any, Any]] = field(default_factory=dict)  # see _parse_batch
    order: list[str] = field(default_factory=list)  # stored columns of worker-built rows, as sent
    # the run only inserts and its key has a unique constraint: see ``Importer._optimistic``
    optimistic: bool = False
    rule_check: Callable[[Connection, list[int]], dict[int, list[dict[str, str]]]] | None = None  # see ``_rule_checker``
    delimiter: str = ","  # the CSV file's, for its lines (``_Row.source``)


@dataclass(slots=True)
class _Row:
    number: int
    cells: dict[str, Any]  # field name → coerced value (id column under "id")
    values: dict[str, Any] = field(default_factory=dict)  # normalised, validated
    key: Any = None
    target: int | None = None  # existing record to update; -1 skipped; a new id once inserted
    inserted: bool = False
    merged: bool = False  # a later duplicate's cells were merged into this row
    # a new row's stored values (encrypted, with its id ``rid``), once built: a dict, or a tuple
    # of bound values in ``_Plan.order`` when an import worker built it
    record: dict[str, Any] | tuple[Any, ...] | None = None
    rid: int | None = None
    keyed: bool = False  # ``key`` was computed by the worker that built the row
    # a worker-built row's cells as read, or its line (``Source.line_batches``): its values, for the preview
    source: list[Any] | str | None = None
    errors: list[tuple[str | None, Any, str]] = field(default_factory=list)  # (header, raw, message)


@dataclass
class _State:
    """What a run carries from batch to batch."""

    counts: dict[str, int]
    seen: dict[Any, int]  # key → first row number (within-file duplicates)
    seq: int  # last error sequence number written
    preview: list[dict[str, Any]]
    deferred: list[dict[str, Any]] = field(default_factory=list)  # errors of a one-transaction run
    rows_done: int = 0
    rows_ahead: int = 0  # rows of the file not yet given ids: see ``Importer._ids``
    look_up: bool = False  # keys are looked up before writing (set once the constraint refused one)
    batches: "_SqliteBatches | None" = None  # SQLite: the job's write connection


class _Title(str):
    """A reference cell given as the target's title, resolved per batch."""


class _Redo(Exception):
    def __init__(self, bad: dict[int, str]) -> None:
        self.bad = bad


class _DryRun(Exception):
    pass


class _Abort(Exception):
    pass


def _sees_every_job(principal: Principal) -> bool:
    """Administrators and the system see every import job; others only their own."""
    return principal.is_system or "admin" in principal.roles


def _key_text(header: str) -> str:
    return re.sub(r"[\s*＊]+", "", unicodedata.normalize("NFKC", header)).casefold()


class Importer:
    """Creates, runs and reports import jobs for the records service's entities."""

    def __init__(self, records: RecordService, data_dir: Path) -> None:
        self.records = records
        self.runtime = records.runtime
        self.dir = data_dir / "imports"

    # ------------------------------------------------------------------ jobs

    def create(
        self,
        principal: Principal,
        entity: str,
        path: Path,
        filename: str,
        options: ImportOptions,
        *,
        keep: bool = True,
    ) -> dict[str, Any]:
        """Check the file and the mapping (400 on anything file-level), then store a queued job.

        ``keep``: the job owns ``path`` (an uploaded file moved into the data dir); otherwise
        the job reads the caller's file in place (the CLI)."""
        self._require(principal, entity, options)
        src = open_source(path)
        v = self.records.view(principal, entity)
        columns, key, unmapped = self._columns(v, src.headers, options)
        mapping: dict[str, str | None] = {c.header: (c.field.name if c.field else "id") for c in columns}
        mapping.update({h: None for h in unmapped})  # shown as ignored; the run ignores them too
        now = utcnow()
        with self.runtime.begin() as conn:
            job_id = conn.execute(
                insert(import_job_table).values(
                    entity=entity, status="queued", options=options.to_dict(), mapping=mapping, source=str(path),
                    filename=filename[:255], format=src.format, encoding=src.encoding, rows_done=0,
                    counts={k: 0 for k in _COUNT_KEYS}, created_by=principal.user_id, created_by_name=principal.username,
                    created_at=now,
                ).returning(import_job_table.c.id)
            ).scalar_one()
            if keep:
                target = self.dir / str(job_id) / ("source." + src.format)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                conn.execute(update(import_job_table).where(import_job_table.c.id == job_id).values(source=str(target), fingerprint=_fingerprint(target)))
            else:
                conn.execute(update(import_job_table).where(import_job_table.c.id == job_id).values(fingerprint=_fingerprint(path)))
            self.records.audit(conn, principal, "import_start", entity, None, {"job": job_id, "file": filename[:255], **options.to_dict()})
        return self.job(principal, job_id)

    def job(self, principal: Principal, job_id: Any) -> dict[str, Any]:
        row = self._job_row(principal, job_id)
        return self._job_dict(row)

    def jobs(self, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
        t = import_job_table
        stmt = select(t).order_by(t.c.id.desc()).limit(limit)
        if not _sees_every_job(principal):
            stmt = stmt.where(t.c.created_by == principal.user_id)
        with self.runtime.engine.connect() as conn:
            return [self._job_dict(r) for r in conn.execute(stmt)]

    def _job_row(self, principal: Principal, job_id: Any) -> Any:
        try:
            jid = int(job_id)
        except (TypeError, ValueError):
            raise NotFound("import job not found") from None
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(import_job_table).where(import_job_table.c.id == jid)).first()
        # another user's job is as absent as a missing one (admins and the system see all)
        if row is None or not (_sees_every_job(principal) or row.created_by == principal.user_id):
            raise NotFound("import job not found")
        return row

    @staticmethod
    def _job_dict(row: Any) -> dict[str, Any]:
        dump = FIELD_TYPES["datetime"].dump
        return {
            "id": row.id,
            "entity": row.entity,
            "status": row.status,
            "filename": row.filename,
            "format": row.format,
            "encoding": row.encoding,
            "options": row.options,
            "mapping": row.mapping,
            "total_rows": row.total_rows,
            "rows_done": row.rows_done,
            "counts": row.counts,
            "preview": row.preview,
            "message": row.message,
            "created_by": row.created_by_name,
            "created_at": dump(row.created_at),
            "started_at": dump(row.started_at) if row.started_at else None,
            "finished_at": dump(row.finished_at) if row.finished_at else None,
            "errors_url": f"/api/v1/import/jobs/{row.id}/errors",
        }

    def errors_csv(self, principal: Principal, job_id: Any) -> Iterator[bytes]:
        """The job's errors as a CSV (UTF-8 with BOM): row, column, value (masked), message."""
        row = self._job_row(principal, job_id)
        t = import_error_table

        def generate() -> Iterator[bytes]:
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["行号 row", "列 column", "值 value", "错误 message"])
            yield b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")
            last = 0
            while True:
                with self.runtime.engine.connect() as conn:
                    rows = conn.execute(select(t).where(t.c.job_id == row.id, t.c.seq > last).order_by(t.c.seq).limit(2000)).all()
                if not rows:
                    return
                buf.seek(0)
                buf.truncate()
                for e in rows:
                    writer.writerow([e.row, neutralise(e.column or ""), neutralise(e.value or ""), neutralise(e.message)])
                last = rows[-1].seq
                yield buf.getvalue().encode("utf-8")

        return generate()

    def claim(self, job_id: int, *, force: bool = False) -> bool:
        """Mark a queued (or interrupted) job running for this process; False if someone else has it."""
        t = import_job_table
        now = utcnow()
        stale = now - dt.timedelta(seconds=STALE_SECONDS)
        cond = or_(t.c.status == "queued", and_(t.c.status == "running", or_(t.c.heartbeat.is_(None), t.c.heartbeat < stale)))
        if force:
            cond = t.c.status.in_(("queued", "running"))
        with self.runtime.begin() as conn:
            res = conn.execute(
                update(t).where(t.c.id == job_id, cond).values(status="running", heartbeat=now, worker=f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
            )
            if res.rowcount != 1:
                return False
            conn.execute(update(t).where(t.c.id == job_id, t.c.started_at.is_(None)).values(started_at=now))
        return True

    def interrupted(self) -> list[tuple[int, int | None]]:
        """(job, creator) of uploaded jobs whose process died: running with a heartbeat older
        than ``STALE_SECONDS``, or queued that long (CLI jobs are resumed with ``--resume``)."""
        t = import_job_table
        stale = utcnow() - dt.timedelta(seconds=STALE_SECONDS)
        owned = t.c.source.startswith(str(self.dir))
        cond = or_(and_(t.c.status == "running", t.c.heartbeat < stale), and_(t.c.status == "queued", t.c.created_at < stale))
        with self.runtime.engine.connect() as conn:
            return [(r.id, r.created_by) for r in conn.execute(select(t.c.id, t.c.created_by).where(cond, owned).order_by(t.c.id))]

    # ------------------------------------------------------------------ running

    def run(self, principal: Principal, job_id: int, progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
        """Run (or resume) a claimed job to the end as ``principal`` (its creator)."""
        t = import_job_table
        with self.runtime.engine.connect() as conn:
            job = conn.execute(select(t).where(t.c.id == job_id)).first()
        if job is None:
            raise NotFound("import job not found")
        options = ImportOptions.parse(dict(job.options))
        try:
            self._require(principal, job.entity, options)
            if not Path(job.source).is_file() or (job.fingerprint and _fingerprint(Path(job.source)) != job.fingerprint):
                raise BadRequest("the import file is gone or changed since the job started", [{"field": "file", "message": "changed"}])
            src = open_source(Path(job.source))
            total = src.count()
            with self.runtime.begin() as conn:
                conn.execute(update(t).where(t.c.id == job_id).values(total_rows=total, heartbeat=utcnow()))
            with _fewer_collections():
                counts = self._execute(principal, job, options, src, total, progress)
        except FinCRMError as exc:
            self._finish(job_id, "failed", None, exc.message)
            self._audit_end(principal, job, "failed", exc.message)
            return self.job(principal, job_id)
        failed = options.on_error == "abort" and counts["errors"] > 0
        status = "failed" if failed else "done"
        message = f"{counts['errors']} rows have errors: nothing was imported" if failed else None
        metrics.count_import_rows(job.entity, counts, dry_run=options.dry_run)
        self._finish(job_id, status, counts, message)
        self._audit_end(principal, job, status, message, counts)
        return self.job(principal, job_id)

    def _finish(self, job_id: int, status: str, counts: dict[str, int] | None, message: str | None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "heartbeat": utcnow(), "message": message}
        if counts is not None:
            values["counts"] = counts
        with self.runtime.begin() as conn:
            conn.execute(update(import_job_table).where(import_job_table.c.id == job_id).values(**values))

    def _audit_end(self, principal: Principal, job: Any, status: str, message: str | None, counts: dict[str, int] | None = None) -> None:
        with self.runtime.begin() as conn:
            self.records.audit(conn, principal, "import_end", job.entity, None, {"job": job.id, "status": status, "message": message, "counts": counts})

    def _require(self, principal: Principal, entity: str, options: ImportOptions) -> None:
        authz = self.records.authz
        authz.require(principal, entity, "import")
        authz.require(principal, entity, "create" if options.mode == "insert" and options.dedupe != "update" else "update")
        if options.mode == "upsert" or options.dedupe == "update":
            authz.require(principal, entity, "create")

    def _columns(self, v: _View, headers: list[str], options: ImportOptions) -> tuple[list[_Column], FieldSpec | None, list[str]]:
        """Map headers to fields: the explicit mapping first, then field name, zh and en labels."""
        spec = v.spec
        by_key: dict[str, str] = {"id": "id", "编号": "id"}
        for f in spec.live_fields:
            for text in (f.name, f.label.zh, f.label.en):
                by_key.setdefault(_key_text(text), f.name)
                # "资产规模(AUM)" is also matched by "资产规模"
                bare = re.sub(r"\(.*?\)", "", unicodedata.normalize("NFKC", text))
                if bare.strip():
                    by_key.setdefault(_key_text(bare), f.name)
        errors: list[dict[str, str]] = []
        for header, target in options.mapping.items():
            if target is not None and target != "id" and spec.live_field(target) is None:
                errors.append({"field": f"mapping.{header[:64]}", "message": f"unknown field {target[:64]!r}"})
            if header not in headers:
                errors.append({"field": f"mapping.{header[:64]}", "message": "no such column in the file"})
        columns: list[_Column] = []
        seen_headers: dict[str, int] = {}
        used: dict[str, str] = {}
        unmapped: list[str] = []
        for i, header in enumerate(headers):
            if not header:
                continue
            if header in options.mapping:
                target = options.mapping[header]
            else:
                target = by_key.get(_key_text(header))
            if header in seen_headers and target is not None:
                errors.append({"field": header[:64], "message": f"duplicate column header (columns {seen_headers[header] + 1} and {i + 1})"})
                continue
            seen_headers[header] = i
            if target is None:
                unmapped.append(header)
                continue
            if target in used:
                errors.append({"field": header[:64], "message": f"maps to {target!r} like column {used[target]!r}"})
                continue
            used[target] = header
            col_field = None if target == "id" else spec.live_field(target)
            if col_field is not None:
                acc = v.access[col_field.name]
                if not acc.write or col_field.readonly:
                    errors.append({"field": header[:64], "message": f"field {col_field.name!r} is read-only for you"})
                    continue
            if target == "id" or col_field is not None:
                columns.append(_Column(i, header, col_field))
        key = self._key(spec, options, used, errors)
        if options.mode == "insert" and options.dedupe != "update":
            for f in spec.live_fields:
                if f.required and f.default is None and f.name not in used and f.name != spec.owner_field:
                    errors.append({"field": f.name, "message": f"required field {f.label.zh} / {f.label.en} has no column"})
        if not columns:
            errors.append({"field": "file", "message": "no column matches a field of " + spec.name})
        if errors:
            raise BadRequest("the file's columns cannot be imported as they are", errors)
        return columns, key, unmapped

    @staticmethod
    def _key(spec: EntitySpec, options: ImportOptions, used: dict[str, str], errors: list[dict[str, str]]) -> FieldSpec | None:
        """The field rows are matched on: ``key``, else the first unique field with a column, else id."""
        if options.key is not None:
            if options.key == "id":
                if "id" not in used:
                    errors.append({"field": "key", "message": "the file has no id column"})
                return None
            f = spec.live_field(options.key)
            if f is None or not f.unique:
                errors.append({"field": "key", "message": "must be id or a unique field"})
                return None
            if f.name not in used:
                errors.append({"field": "key", "message": f"the file has no column for {f.name!r}"})
            return f
        for f in spec.live_fields:
            if f.unique and f.name in used:
                return f
        if options.mode == "upsert" and "id" not in used:
            errors.append({"field": "key", "message": "upsert needs a key: an id column or a unique field"})
        return None

    def _execute(
        self, principal: Principal, job: Any, options: ImportOptions, src: Source, total: int, progress: Callable[[int, int | None], None] | None
    ) -> dict[str, int]:
        v = self.records.view(principal, job.entity)
        columns, key, _ = self._columns(v, src.headers, replace(options, mapping=dict(job.mapping)))
        plan = _Plan(
            view=v, columns=columns, key=key, key_column=next((c for c in columns if (c.field is key if key else c.field is None)), None),
            uniques=[f for f in v.spec.live_fields if f.unique],
            users=self._users() if any(c.field is not None and c.field.type == "user" for c in columns) else {},
        )
        plan.defaults = {f.name: FIELD_TYPES[f.type].normalize(f.default, f) for f in v.spec.live_fields if f.default is not None}
        plan.headers = {c.field.name: c.header for c in columns if c.field is not None}
        plan.optimistic = self._optimistic(plan, options)
        plan.rule_check = _rule_checker(v, self.runtime.dialect)
        atomic = options.on_error == "abort"
        done = 0 if atomic else int(job.rows_done)  # a one-transaction run starts again from the top
        state = _State(
            counts={k: 0 if atomic else int(job.counts.get(k, 0)) for k in _COUNT_KEYS},
            seen={}, seq=self._last_error_seq(job.id), preview=[] if atomic else list(job.preview or []), rows_done=done,
        )
        if atomic:
            with self.runtime.begin() as conn:  # a restarted one-transaction run reports afresh
                conn.execute(delete(import_error_table).where(import_error_table.c.job_id == job.id))
                conn.execute(update(import_job_table).where(import_job_table.c.id == job.id).values(rows_done=0, preview=None))
            state.seq = 0
        plan.delimiter = src.delimiter
        if not atomic:
            self._pipeline(plan, job, options, src, done, state, None, progress, total)
            return state.counts
        try:
            with self.runtime.begin() as conn:  # the whole file: all rows or none
                self._pipeline(plan, job, options, src, done, state, conn, progress, total)
                if state.counts["errors"] or options.dry_run:
                    raise _Abort()
        except _Abort:
            if not options.dry_run:
                state.counts["inserted"] = state.counts["updated"] = 0
        with self.runtime.begin() as conn:  # its errors and counts, kept after the rollback
            for chunk in _chunks(state.deferred, 1000):
                conn.execute(insert(import_error_table), chunk)
            conn.execute(
                update(import_job_table).where(import_job_table.c.id == job.id).values(rows_done=state.rows_done, counts=state.counts, preview=state.preview)
            )
        return state.counts

    # ------------------------------------------------------------------ one batch

    def _pipeline(
        self,
        plan: _Plan,
        job: Any,
        options: ImportOptions,
        src: Source,
        done: int,
        state: "_State",
        outer: Connection | None,
        progress: Callable[[int, int | None], None] | None,
        total: int,
    ) -> None:
        """Prepare batch k+1 in this thread while a writer thread commits batch k (PostgreSQL).

        The database server does its share of the work (COPY, index maintenance, commit) while
        Python parses, validates, encrypts and builds the next rows: the writer thread does
        nothing but database calls, which release the GIL while they wait. One batch is in
        flight at a time, so commits stay in file order and a crash loses at most the batch
        being written (whole, by its transaction). SQLite runs inside this process, so there
        is nothing to overlap: its batches are written in turn, in this thread."""
        inbox: queue.Queue[tuple[list[_Row], int, bool] | None] = queue.Queue(maxsize=1)
        failure: list[BaseException] = []

        def write(rows: list[_Row], raw_count: int, looked_up: bool) -> None:
            self._commit(plan, job, options, rows, raw_count, state, outer, looked_up)
            if progress:
                progress(state.rows_done, total)

        def writer() -> None:
            while True:
                item = inbox.get()
                if item is None:
                    return
                if failure:
                    continue  # drain: the first failure stops the run
                try:
                    write(*item)
                except BaseException as exc:  # handed to the main thread, re-raised there
                    failure.append(exc)

        workers = import_workers(total - state.rows_done)
        recipe = self._recipe(plan, options, outer) if workers else None
        pool = None
        if recipe is not None or workers > 1:
            # forkserver: workers never inherit this process's threads, locks or connections
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])  # each worker forks with this module loaded
            if recipe is not None:
                pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_builder_init, initargs=(recipe, os.getpid()))
            else:
                pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(plan.columns, plan.users, os.getpid()))
        thread = threading.Thread(target=writer, name=f"fincrm-import-{job.id}", daemon=True)
        # The writer mostly waits on the database; after each wait it needs the GIL back from
        # the busy parsing thread, which by default keeps it for up to 5 ms (the "convoy"
        # effect): a batch's dozen round trips would cost 50 µs a row. A 0.1 ms switch interval
        # for the run measured 5,200 → 7,400 rows/s on PostgreSQL (bench/import_bench.py).
        # SQLite works in this process, releasing the GIL for every row it inserts: from a second
        # thread each row would wait for the GIL, so its batches are written in this thread.
        threaded = self.runtime.dialect == "postgresql"
        interval = sys.getswitchinterval()
        if threaded:
            sys.setswitchinterval(min(interval, 0.0001))
            thread.start()
        elif outer is None and self.runtime.dialect == "sqlite":
            state.batches = _SqliteBatches(self.runtime.write_engine)
        try:
            state.rows_ahead = total - state.rows_done
            if recipe is not None and pool is not None:
                # a plain CSV text goes to the workers as its lines, which they split themselves
                batches: Iterator[_Batch] = (_Lines(*b) for b in src.line_batches(options.batch_size, done)) if src.plain else _batches(src.rows(), done, options.batch_size)
                parsed = self._built(plan, recipe, batches, pool, workers, state)
            else:
                parsed = self._parsed(plan, _batches(src.rows(), done, options.batch_size), pool, workers)
            for raw_count, rows in parsed:
                if failure:
                    break
                looked_up = state.look_up or not plan.optimistic
                prepared = self._prepare(plan, options, rows, state, _early(options, outer), looked_up)
                if threaded:
                    inbox.put((prepared, raw_count, looked_up))
                else:
                    write(prepared, raw_count, looked_up)
        finally:
            if threaded:
                inbox.put(None)
                thread.join()
            sys.setswitchinterval(interval)
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            if state.batches is not None:
                writes, state.batches = state.batches, None
                writes.close()  # the last batch's commit (a failure is the job's), then a checkpoint
        if failure:
            raise failure[0]

    def _parsed(
        self, plan: _Plan, batches: Iterator[list[tuple[int, list[Any]]]], pool: ProcessPoolExecutor | None, workers: int
    ) -> Iterator[tuple[int, list[_Row]]]:
        """(rows of the file read, parsed rows) in file order; with a pool, a few batches parse ahead."""
        if pool is None:
            for raw in batches:
                yield len(raw), _parse_batch(plan.columns, plan.users, raw, plan.memo)
            return
        ahead: collections.deque[tuple[list[tuple[int, list[Any]]], Future[list[_Row]]]] = collections.deque()
        for raw in batches:
            ahead.append((raw, pool.submit(_worker_parse, raw)))
            if len(ahead) > workers:
                first, fut = ahead.popleft()
                yield len(first), fut.result()
        while ahead:
            first, fut = ahead.popleft()
            yield len(first), fut.result()

    def _recipe(self, plan: _Plan, options: ImportOptions, outer: Connection | None) -> "_Recipe | None":
        """What a worker process needs to build whole rows, when this run can use them: rows
        that only insert (no merge of duplicates, no update), built before their transaction
        (not a dry run or a one-transaction run), with no other unique field than the key and
        no id column. Everything else a row needs (titles of references, matches, the writer's
        scope, rules) stays in this process."""
        v = plan.view
        if not _early(options, outer) or options.mode != "insert" or options.dedupe == "update":
            return None
        if any(c.field is None for c in plan.columns) or any(f is not plan.key for f in plan.uniques):
            return None
        t = v.table
        fills = creation_fills(v.spec, v.principal.user_id, plan.defaults)
        given = {c.field.name for c in plan.columns if c.field is not None} | {name for name, _ in fills}
        wanted = {"id", "version", "created_at", "updated_at", "created_by", "updated_by", "ext"}
        for name in given:
            f = v.spec.field(name)
            assert f is not None
            if f.storage == "column":
                wanted.add(f.name)
                if f.encrypted and f.searchable:
                    wanted.add(f.blind_index_column)
        names = [c.name for c in t.columns if c.name in wanted]
        dialect = self.runtime.engine.dialect
        plan.order = names if self.runtime.dialect == "postgresql" else list(insert(t).compile(dialect=dialect, column_keys=names).positiontup or names)
        return _Recipe(
            columns=plan.columns, users=plan.users, fields={f.name: f for f in v.spec.live_fields}, entity=v.spec.name, table=t.name, types=[t.c[n].type for n in plan.order],
            dialect=self.runtime.dialect, keyring=self.runtime.keyring, key=plan.key, fills=fills, headers=plan.headers,
            refs=[f.name for f in v.spec.live_fields if f.type == "ref"], order=plan.order, user_id=v.principal.user_id, delimiter=plan.delimiter,
        )

    def _built(
        self, plan: _Plan, recipe: "_Recipe", batches: Iterator["_Batch"], pool: ProcessPoolExecutor, workers: int, state: "_State"
    ) -> Iterator[tuple[int, list[_Row]]]:
        """(rows of the file read, rows) in file order, the new rows built by worker processes
        from batches of file rows or of a plain CSV text's lines (``Source.line_batches``): each batch
        goes out with ids reserved for all its rows (those a row does not use stay unused) and
        the batch's time stamp, and comes back as bound rows ready for the database, their keys,
        and their errors. Rows naming references by title are parsed here, as without workers.

        This process builds batches too, with the workers' own function, whenever it would
        otherwise wait: the first batch while the workers start, and then, each time the next
        batch in file order is not back yet, the last queued batch no worker has taken (its
        future is cancelled). The two processes then share the building by how busy each is
        rather than by a fixed split; the batches are still written in file order."""
        processors = _recipe_processors(recipe)
        ahead: collections.deque[_Ahead] = collections.deque()

        def build_here(item: _Ahead) -> None:
            item.result = _build_batch(recipe, processors, plan.memo, _file_rows(item.batch, recipe.delimiter), item.ids, item.now)

        def done() -> tuple[int, list[_Row]]:
            first = ahead[0]
            while first.result is None and first.future is not None and not first.future.done():
                spare = next((item for item in reversed(ahead) if item.future is not None and item.future.cancel()), None)
                if spare is None:
                    break  # every queued batch is with a worker: wait for the first
                spare.future = None
                build_here(spare)
            if first.result is None:
                if first.future is None:
                    build_here(first)
                else:
                    first.result = first.future.result()
            ahead.popleft()
            assert first.result is not None
            return len(first.result), self._rows_built(plan, first.batch, first.ids, first.result)

        for number, batch in enumerate(batches):
            size = len(batch.lines) if isinstance(batch, _Lines) else len(batch)
            item = _Ahead(batch, self._ids(plan, state, size, size), utcnow())
            if number:  # the first is built here (in ``done``) while the worker starts
                item.future = pool.submit(_worker_build, batch, item.ids, item.now)
            ahead.append(item)
            # a batch with each worker, one waiting for each, one more to share
            if len(ahead) > 2 * workers + 1:
                yield done()
        while ahead:
            yield done()

    def _rows_built(self, plan: _Plan, batch: "_Batch", ids: list[int], results: list[tuple[Any, ...]]) -> list[_Row]:
        """Rows of a built batch; those naming references by title are parsed here. A row's
        ``source`` is its cells, or its line (split only if the preview shows it)."""
        name = plan.key.name if plan.key is not None else None
        rows: list[_Row | None] = []
        append = rows.append
        here: list[tuple[int, list[Any]]] = []
        if isinstance(batch, _Lines):
            lines, first = batch.lines, batch.first
            sources: list[Any] = [lines[r[0] - first] for r in results]
        else:
            sources = [cells for _, cells in batch]
        for rid, source, (number, row_key, key_cell, errors, line, refs) in zip(ids, sources, results):
            if line is None and not errors:
                append(None)
                here.append((number, source.split(plan.delimiter) if isinstance(source, str) else source))
                continue
            # number, cells, values, key, target, inserted, merged, record, rid, keyed, source, errors
            append(_Row(number, {name: key_cell} if name else {}, refs, row_key, None, False, False, line, rid, True, source, list(errors)))
        if here:
            parsed = iter(_parse_batch(plan.columns, plan.users, here, plan.memo))
            rows = [r if r is not None else next(parsed) for r in rows]
        return rows  # type: ignore[return-value]

    def _prepare(self, plan: _Plan, options: ImportOptions, rows: list[_Row], state: "_State", early: bool = False, look_up: bool = True) -> list[_Row]:
        """Everything about a parsed batch that needs no write: references, matches (against
        the database when ``look_up``), conflicts; ``early``: also the new rows' stored values,
        with ids reserved now (not in the write transaction: a batch the database refuses keeps
        them for its retry)."""
        self._resolve_titles(plan, [r for r in rows if not r.keyed])  # a worker builds no row naming a title
        self._match(plan, options, [r for r in rows if not r.errors], state.seen, look_up)
        for row in rows:
            if row.errors or row.target == -1:
                continue
            if row.merged:  # a duplicate's cells were merged in: check the result again
                self._revalidate(plan, row)
            if row.target is None and not row.errors and row.record is None:  # new records get defaults; required fields must be there
                self._complete(plan, row)
        self._unique_conflicts(plan, [r for r in rows if not r.errors and r.target != -1])
        if early:
            new = [r for r in rows if not r.errors and r.target is None and r.record is None]
            if new:
                self._build(plan, new, self._ids(plan, state, len(new), len(rows)))
        return rows

    def _ids(self, plan: _Plan, state: "_State", n: int, rows: int) -> list[int]:
        """``n`` ids for a batch of ``rows`` rows, reserved for up to ``_IDS_AHEAD`` rows of the
        file at a time: one short write transaction per run instead of one per batch (on
        PostgreSQL a round trip and a commit each). Ids a run does not use (bad rows, a crash)
        are a gap, as ids given back by a rollback are."""
        if state.batches is not None and self.runtime.ids.cached(plan.view.spec.name) < n:
            state.batches.settle()  # a reservation is a write: after the last commit, not in SQLite's busy wait
        ids = self.runtime.ids.take(plan.view.spec.name, n, ahead=min(state.rows_ahead, _IDS_AHEAD))
        state.rows_ahead = max(state.rows_ahead - rows, 0)
        return ids

    def _build(self, plan: _Plan, rows: list[_Row], ids: list[int]) -> None:
        """New rows' stored values: encrypted (the id is in the associated data), blind-indexed,
        stamped. Done where the rows are prepared, not by the thread holding the transaction: the
        cipher releases the GIL on every call, and a thread taking it back from a busy parser
        waits up to the switch interval each time."""
        v = plan.view
        now = utcnow()
        user = v.principal.user_id
        # the key's blind index was computed to match the row; an empty ``ext`` is one shared
        # object, so the insert serialises it once per batch (see ``_bound``)
        known = plan.key.name if plan.key is not None and plan.key.encrypted else None
        empty: dict[str, Any] = {}
        stamps = _stamps(now, user)
        for rid, row in zip(ids, rows):
            values = self.records._row_values(v, rid, row.values, None, {known: row.key} if known and row.key else None)
            row.record, row.rid = _stamped(values, rid, stamps, empty), rid

    def _commit(
        self, plan: _Plan, job: Any, options: ImportOptions, rows: list[_Row], raw_count: int, state: "_State", outer: Connection | None, looked_up: bool = True
    ) -> None:
        """Write a prepared batch in one transaction (a savepoint of ``outer``) with its errors
        and the job's progress; rows the post-write checks reject are dropped and it is redone.
        A batch whose keys were not looked up (``looked_up``) that the key's unique constraint
        refuses is redone after the lookup, and so is every later batch of the run."""
        early = _early(options, outer)
        if state.batches is not None:
            state.batches.settle()  # the last batch's commit, and its failure, are not this batch's
        while True:
            todo = [r for r in rows if not r.errors and r.target != -1]
            written: dict[str, list[_Row]] = {"inserted": [], "updated": []}
            try:
                if outer is not None:
                    with outer.begin_nested() as sp:
                        written = self._write(plan, job, options, todo, outer)
                        if options.dry_run:
                            sp.rollback()
                    self._progress(None, job.id, rows, state, written, raw_count, plan)
                else:
                    with self._batch_transaction(state.batches) as conn:
                        written = self._write(plan, job, options, todo, conn)
                        if options.dry_run:
                            raise _DryRun()
                        self._progress(conn, job.id, rows, state, written, raw_count, plan)
            except _Redo as redo:
                for row in rows:
                    if row.number in redo.bad:
                        row.errors.append((None, None, redo.bad[row.number]))
                        row.target = None
                _unwritten(todo, redo.bad, early)
                continue
            except IntegrityError:
                if looked_up:
                    raise
                state.look_up = looked_up = True
                _unwritten(todo, {}, early)
                self._against_stored(plan, options, [r for r in todo if r.key is not None and r.target is None and not r.errors])
                continue
            except _DryRun:
                with self.runtime.begin() as conn:
                    self._progress(conn, job.id, rows, state, written, raw_count, plan)
            return

    @contextlib.contextmanager
    def _batch_transaction(self, batches: "_SqliteBatches | None") -> Iterator[Connection]:
        """A batch's write transaction: on SQLite, through the job's ``_SqliteBatches``."""
        if batches is not None:
            with batches.transaction() as conn:
                yield conn
            return
        with self.runtime.begin() as conn:
            yield conn

    def _resolve_titles(self, plan: _Plan, rows: list[_Row]) -> None:
        """Reference cells given as titles (e.g. a branch name) become ids, within the writer's
        read scope of the target; unknown or ambiguous titles are row errors."""
        wanted: dict[str, set[str]] = {}
        for row in rows:
            for name, value in row.cells.items():
                if isinstance(value, _Title):
                    f = plan.view.spec.field(name)
                    assert f is not None and f.ref is not None
                    if (f.ref, str(value)) not in plan.ref_titles:
                        wanted.setdefault(name, set()).add(str(value))
        for name, titles in wanted.items():
            f = plan.view.spec.field(name)
            assert f is not None and f.ref is not None
            target = self.records.view(plan.view.principal, f.ref)
            title = target.spec.live_field(target.spec.title_field or "")
            found: dict[str, list[int]] = {}
            if title is not None and not title.encrypted and target.clear(title):
                expr = field_expr(target.table, title)
                with self.runtime.engine.connect() as conn:
                    for chunk in _chunks(sorted(titles), 500):
                        stmt = select(target.table.c.id, expr.label("title")).where(member_of(expr, chunk, self.runtime.dialect), target.scope())
                        for r in conn.execute(stmt):
                            found.setdefault(str(r.title), []).append(r.id)
            for text in titles:
                ids = found.get(text, [])
                plan.ref_titles[(f.ref, text)] = ids[0] if len(ids) == 1 else (-len(ids) if ids else None)
        for row in rows:
            for name, value in list(row.cells.items()):
                if not isinstance(value, _Title):
                    continue
                f = plan.view.spec.field(name)
                assert f is not None and f.ref is not None
                rid = plan.ref_titles.get((f.ref, str(value)))
                header = plan.headers[name]
                if rid is None:
                    row.errors.append((header, _shown(f, value), f"no {f.ref} has this name (within what you may read)"))
                elif rid < 0:
                    row.errors.append((header, _shown(f, value), f"{-rid} {f.ref} records have this name: give the id"))
                else:
                    row.cells[name] = row.values[name] = rid

    def _revalidate(self, plan: _Plan, row: _Row) -> None:
        """Values again from the cells (after a later duplicate's cells were merged in)."""
        row.values = {}
        for col in plan.columns:
            f = col.field
            if f is not None and row.cells.get(f.name) is not None:
                out, errors = _validated(col.header, f, row.cells[f.name])
                if out is not _NOTHING:
                    row.values[f.name] = out
                row.errors += errors

    def _complete(self, plan: _Plan, row: _Row) -> None:
        """A new record's defaults and owner; required fields it lacks are errors (the cells
        were validated by ``_parse``, which already reported required fields left empty)."""
        errors: list[dict[str, str]] = []
        self.records.complete_for_create(plan.view, row.values, row.values, errors, plan.defaults)
        for d in errors:
            row.errors.append((plan.headers.get(d["field"], d["field"]), None, d["message"]))

    def _match(self, plan: _Plan, options: ImportOptions, rows: list[_Row], seen: dict[Any, int], look_up: bool = True) -> None:
        """Within-file duplicates of the key, then (``look_up``) the records already stored."""
        key = plan.key
        key_header = plan.key_column.header if plan.key_column else None

        keyed: list[_Row] = []
        by_key: dict[Any, _Row] = {}
        for row in rows:
            if row.keyed:
                pass
            elif key is None:
                row.key = row.cells.get("id")
            else:
                value = row.values.get(key.name)
                row.key = None if value is None else _row_key(key, plan.view.spec.name, self.runtime.keyring, value)
            if row.key is None:
                if options.mode == "upsert" and key is None:
                    row.errors.append((key_header or "id", None, "the key is empty"))
                continue
            first = by_key.get(row.key)
            earlier = seen.get(row.key)
            if first is not None or earlier is not None:
                where = first.number if first is not None else earlier
                if options.dedupe == "error":
                    row.errors.append((*_key_cell(plan, row), f"duplicate of row {where}"))
                    continue
                if options.dedupe == "skip":
                    row.target = -1
                    continue
                if first is not None:  # update: the later row's non-empty cells win, merged into the first
                    first.cells.update({k: val for k, val in row.cells.items() if val is not None})
                    first.merged = True
                    row.target = -1
                    continue
            by_key[row.key] = row
            seen[row.key] = row.number
            keyed.append(row)
        if look_up:
            self._against_stored(plan, options, keyed)

    def _optimistic(self, plan: _Plan, options: ImportOptions) -> bool:
        """Whether the run writes its rows without looking their keys up first: it only inserts
        and the key has a unique constraint in the database, so a key already stored cannot
        slip in. A clean file (a migration's usual case) then skips one indexed query per row
        (5.4 µs a row on SQLite at 100k); a key already stored makes the database refuse the
        batch, which ``_commit`` redoes after the lookup, as it does every later batch."""
        key = plan.key
        return options.mode == "insert" and key is not None and key.unique and key.storage == "column"

    def _against_stored(self, plan: _Plan, options: ImportOptions, rows: list[_Row]) -> None:
        """Rows whose key is already stored: skipped, refused, or (upsert) aimed at that record."""
        existing = self._existing(plan, [r.key for r in rows])
        for row in rows:
            hit = existing.get(row.key)
            if hit is None:
                if options.mode == "upsert" and plan.key is None:
                    row.errors.append(("id", _shown(None, row.key), "no record with this id"))
                continue
            rid, may_update, retained = hit
            if retained:
                # deleted or merged away, its key still held by the constraint: the API's create
                # would be refused as well
                row.errors.append((*_key_cell(plan, row), "is already used by a deleted or merged record"))
            elif options.mode == "insert" and options.dedupe == "skip":
                row.target = -1
            elif not may_update:
                # a record outside the writer's scope: the answer the API's create gives, no more
                row.errors.append((*_key_cell(plan, row), "is already used by another record"))
            elif options.mode == "insert" and options.dedupe == "error":
                row.errors.append((*_key_cell(plan, row), "already exists"))
            else:
                row.target = rid

    def _existing(self, plan: _Plan, keys: list[Any]) -> dict[Any, tuple[int, bool, bool]]:
        """key → (record id, whether the writer may update it, whether it was deleted or merged
        away), for keys already stored. Matching on the record id sees live records only."""
        if not keys:
            return {}
        v = plan.view
        t = v.table
        if plan.key is None:
            expr: Any = t.c.id
        elif plan.key.encrypted:
            expr = t.c[plan.key.blind_index_column]
        else:
            expr = field_expr(t, plan.key)
        may = self.records.authz.scope_clause(v.principal, v.spec, t, "update", strict=True)
        flag = (may if may is not None else true()).label("may")
        out: dict[Any, tuple[int, bool, bool]] = {}
        live = t.c.retained_at.is_(None)
        with self.runtime.engine.connect() as conn:
            for chunk in _chunks(keys, 1000):
                stmt = select(t.c.id, expr.label("k"), flag, live.label("live")).where(member_of(expr, chunk, self.runtime.dialect))
                if plan.key is None:
                    stmt = stmt.where(live)
                for r in conn.execute(stmt):
                    k = r.k if plan.key is None or plan.key.encrypted else FIELD_TYPES[plan.key.type].dump(
                        FIELD_TYPES[plan.key.type].normalize(r.k, replace(plan.key, min=None, max=None, max_length=None, pattern=None))
                    )
                    if k not in out or r.live:  # a live record wins over a retained one (no constraint: json-stored keys)
                        out[k] = (r.id, bool(r.may), not r.live)
        return out

    def _unique_conflicts(self, plan: _Plan, rows: list[_Row]) -> None:
        v = plan.view
        t = v.table
        index = self.records.blind_index_for(v.spec)
        for f in plan.uniques:
            if f is plan.key:
                continue
            values: dict[Any, _Row] = {}
            for row in rows:
                value = row.values.get(f.name)
                if value is None or row.errors:
                    continue
                k = index(f, value) if f.encrypted else value
                if k in values:
                    row.errors.append((plan.headers.get(f.name, f.name), _shown(f, row.cells.get(f.name)), f"duplicate of row {values[k].number}"))
                    continue
                values[k] = row
            if not values:
                continue
            expr = t.c[f.blind_index_column] if f.encrypted else field_expr(t, f)
            with self.runtime.engine.connect() as conn:
                for chunk in _chunks(list(values), 1000):
                    for r in conn.execute(select(t.c.id, expr.label("k")).where(member_of(expr, chunk, self.runtime.dialect))):
                        hit = values.get(r.k)
                        if hit is not None and hit.target != r.id and not hit.errors:
                            hit.errors.append((plan.headers.get(f.name, f.name), _shown(f, hit.cells.get(f.name)), "is already used by another record"))

    def _write(self, plan: _Plan, job: Any, options: ImportOptions, rows: list[_Row], conn: Connection) -> dict[str, list[_Row]]:
        """Insert new rows, update matched ones, then check scope and rules; ``_Redo`` if any fail."""
        v = plan.view
        t = v.table
        new = [r for r in rows if r.target is None]
        old = [r for r in rows if r.target is not None and r.target > 0]
        self._check_refs(conn, plan, rows)
        principal = v.principal
        now = utcnow()
        unbuilt = [r for r in new if r.record is None]
        if unbuilt:  # ids through this transaction: a rollback gives them back
            self._build(plan, unbuilt, self.runtime.ids.take_in(conn, v.spec.name, len(unbuilt)))
        for row in new:
            assert row.record is not None
            row.target, row.inserted = row.rid, True
        if new:
            self._insert(conn, t, plan, [row.record for row in new if row.record is not None])
        changes: list[tuple[int, int, dict[str, Any]]] = []
        if old:
            current = {r.id: r for r in conn.execute(select(t).where(member_of(t.c.id, [int(r.target) for r in old if r.target], self.runtime.dialect)))}
            updates = []
            for row in old:
                cur = current.get(row.target)
                if cur is None:
                    row.errors.append((None, None, "the record was deleted meanwhile"))
                    continue
                values = self.records._row_values(v, cur.id, row.values, cur.ext)
                values.update(version=cur.version + 1, updated_at=now, updated_by=principal.user_id)
                updates.append((cur.id, values))
                before = self.records._stored_values(v, cur._mapping, row.values.keys())
                changes.append((cur.id, cur.version + 1, self.records._changes(v, before, row.values)))
            for rid, values in updates:
                conn.execute(update(t).where(t.c.id == rid).values(**values))
        inserted = [int(r.target) for r in new if r.target]
        updated = [c[0] for c in changes]
        self._post_check(conn, plan, new, old)
        if not options.dry_run:
            for rid, version, diff in changes:
                self.records.audit(conn, principal, "update", v.spec.name, rid, {"version": version, "changes": diff, "import_job": job.id})
            if inserted:
                self.records.audit(conn, principal, "import_batch", v.spec.name, None, {"job": job.id, "rows": len(inserted), "first_id": inserted[0], "last_id": inserted[-1]})
            for hook in self.records.after_write:
                if inserted:
                    hook(conn, v.snap, v.spec.name, inserted, "create", principal)
                if updated:
                    hook(conn, v.snap, v.spec.name, updated, "update", principal)
        done = set(updated)
        return {"inserted": new, "updated": [r for r in old if r.target in done]}

    def _check_refs(self, conn: Connection, plan: _Plan, rows: list[_Row]) -> None:
        bad: dict[int, str] = {}
        for f in plan.view.spec.live_fields:
            if f.type != "ref":
                continue
            wanted = {r.values[f.name] for r in rows if r.values.get(f.name) is not None}
            if not wanted:
                continue
            target = plan.view.snap.tables[f.ref or ""]
            found = set()
            for chunk in _chunks(sorted(wanted), 1000):
                found |= {r.id for r in conn.execute(select(target.c.id).where(member_of(target.c.id, chunk, self.runtime.dialect), target.c.retained_at.is_(None)))}
            for r in rows:
                if r.values.get(f.name) is not None and r.values[f.name] not in found:
                    bad[r.number] = f"{plan.headers.get(f.name, f.name)}: no {f.ref} with this id"
        if bad:
            raise _Redo(bad)

    def _insert(self, conn: Connection, t: Table, plan: _Plan, records: list[dict[str, Any] | tuple[Any, ...]]) -> None:
        """New rows in one ``COPY`` (PostgreSQL) or one ``executemany`` (SQLite) of plain tuples,
        each value through its column type's own bind processor (what SQLAlchemy's insert()
        would do, without its per-row bookkeeping). Rows built by workers come bound, in
        ``plan.order``; the others are bound here."""
        built = [r for r in records if isinstance(r, tuple)]
        dicts = [r for r in records if isinstance(r, dict)]
        if built:
            names = plan.order
            assert all(k in names for r in dicts for k in r), "a row built here has a column workers do not send"
        else:
            keys: set[str] = set().union(*(r.keys() for r in dicts))
            names = [c.name for c in t.columns if c.name in keys]
        postgresql = self.runtime.dialect == "postgresql"
        if postgresql:
            order = names
        else:
            compiled = insert(t).compile(dialect=conn.dialect, column_keys=names)
            order = list(compiled.positiontup or names)
            assert not built or order == names
        rows = built + _bind_rows(_processors([t.c[n].type for n in order], None if postgresql else conn.dialect), order, dicts)
        if not postgresql:
            conn.exec_driver_sql(str(compiled), rows)
            return
        from psycopg import sql

        raw: Any = conn.connection.dbapi_connection
        assert raw is not None
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(t.name), sql.SQL(", ").join(sql.Identifier(n) for n in order))
        from psycopg import errors

        try:
            with raw.cursor() as cur, cur.copy(stmt) as copy:
                for values in rows:
                    copy.write_row(values)
        except errors.IntegrityError as exc:  # as SQLAlchemy reports it for SQLite and statements
            raise IntegrityError("COPY", None, exc) from exc

    def _post_check(self, conn: Connection, plan: _Plan, new: list[_Row], old: list[_Row]) -> None:
        """Rows the writer may not hold, and rows breaking the entity's rules: ``_Redo``."""
        v = plan.view
        t = v.table
        bad: dict[int, str] = {}
        for rows, action in ((new, "create"), (old, "update")):
            ids = [r.target for r in rows if r.target]
            if not ids:
                continue
            clause = self.records.authz.scope_clause(v.principal, v.spec, t, action, strict=True)
            if clause is not None:
                number = {r.target: r.number for r in rows}
                for chunk in _chunks(ids, 1000):
                    for r in conn.execute(select(t.c.id).where(member_of(t.c.id, chunk, self.runtime.dialect), not_(clause))):
                        bad[number[r.id]] = f"this row would put the {v.spec.name} outside what you may {action}"
        if plan.rule_check is not None:
            written = {int(r.target): r.number for r in new + old if r.target}  # record id → row number
            if written:
                for rid, problems in plan.rule_check(conn, list(written)).items():
                    bad.setdefault(written[rid], "; ".join(f"{p['field']}: {p['message']}" for p in problems))
        if bad:
            raise _Redo(bad)

    def _progress(
        self, conn: Connection | None, job_id: int, rows: list[_Row], state: _State, written: dict[str, list[_Row]], raw_count: int, plan: _Plan
    ) -> None:
        """Count a batch, keep its errors and preview rows; with ``conn``, record it in the job."""
        counts = state.counts
        counts["rows"] += raw_count
        counts["inserted"] += len(written["inserted"])
        counts["updated"] += len(written["updated"])
        counts["errors"] += sum(1 for r in rows if r.errors)
        counts["skipped"] += sum(1 for r in rows if r.target == -1 and not r.errors)
        state.rows_done += raw_count
        entries = []
        for row in rows:
            for header, value, message in row.errors:
                if state.seq >= MAX_ERRORS:
                    break
                state.seq += 1
                entries.append(
                    {"job_id": job_id, "seq": state.seq, "row": row.number, "column": (header or "")[:255] or None,
                     "value": None if value is None else str(value)[:200], "message": message[:1000]}
                )
        for action in ("inserted", "updated"):
            for row in written[action]:
                if len(state.preview) >= PREVIEW_ROWS:
                    break
                state.preview.append(self._preview(plan, row, "insert" if action == "inserted" else "update"))
        if conn is None:
            state.deferred += entries
            return
        if entries:
            conn.execute(insert(import_error_table), entries)
        conn.execute(
            update(import_job_table)
            .where(import_job_table.c.id == job_id)
            .values(rows_done=state.rows_done, counts=dict(counts), preview=list(state.preview), heartbeat=utcnow())
        )

    def _preview(self, plan: _Plan, row: _Row, action: str) -> dict[str, Any]:
        """A row as the importer would see it stored: masked as their reads are."""
        v = plan.view
        out: dict[str, Any] = {"_row": row.number, "_action": action}
        values = row.values
        if row.source is not None:  # built by a worker, which sent no values: the same again here
            cells = row.source.split(plan.delimiter) if isinstance(row.source, str) else row.source
            again = _parse_batch(plan.columns, plan.users, [(row.number, cells)])[0]
            self._complete(plan, again)
            values = again.values
        for name, value in values.items():
            f = v.spec.field(name)
            if f is None or v.access[name].view == "hidden":
                continue
            dumped = FIELD_TYPES[f.type].dump(value) if value is not None else None
            out[name] = mask_value(effective_mask(f) or "full", dumped) if v.access[name].view == "masked" and dumped is not None else dumped
        return out

    def _last_error_seq(self, job_id: int) -> int:
        with self.runtime.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(import_error_table.c.seq), 0)).where(import_error_table.c.job_id == job_id)).scalar_one())

    def _users(self) -> dict[str, int]:
        """Usernames → ids, so files can name owners (Flask-AppBuilder's users table)."""
        with self.runtime.engine.connect() as conn:
            if not inspect(conn).has_table(ab_user_table.name):
                return {}
            return {r.username: r.id for r in conn.execute(select(ab_user_table.c.id, ab_user_table.c.username))}


# ---------------------------------------------------------------------- cells


_MEMO_SIZE = 4096  # distinct cells remembered per column


def _cell_converter(col: _Column, users: dict[str, int]) -> Callable[[Any], tuple[Any, Any, tuple[tuple[str | None, Any, str], ...]]]:
    """A cell of this column → (coerced value, validated value, errors), ``_NOTHING`` for what
    could not be made (access was checked once for the whole file). A pure function of the
    cell for the whole run."""
    f = col.field
    header = col.header

    def convert(cell: Any) -> tuple[Any, Any, tuple[tuple[str | None, Any, str], ...]]:
        try:
            value = _coerce(f, cell, users)
        except FieldError as exc:
            return _NOTHING, _NOTHING, ((header, _shown(f, cell), str(exc)),)
        if f is None or value is None or isinstance(value, _Title):
            return value, _NOTHING, ()
        return (value, *_validated(header, f, value))

    return convert


def _parse_batch(
    columns: list[_Column], users: dict[str, int], raw: list[tuple[int, list[Any]]], memo: dict[int, dict[Any, Any]] | None = None
) -> list[_Row]:
    """File rows → coerced cells and their validated values, a column at a time.

    ``memo`` remembers, per column, what a cell turned into: a file repeats its branch, gender,
    stage, occupation and date cells thousands of times. Column by column, the converter and
    its memo are looked up once per batch instead of once per cell."""
    rows = [_Row(number, {}) for number, _ in raw]
    cells_of = [r.cells for r in rows]
    values_of = [r.values for r in rows]
    for col in columns:
        f = col.field
        name = f.name if f is not None else "id"
        convert = _cell_converter(col, users)
        i = col.index
        column = [cells[i] if i < len(cells) else None for _, cells in raw]
        if memo is not None and f is not None:
            hits = _memoised(convert, memo.setdefault(i, {}), column)
        else:
            hits = [convert(cell) for cell in column]
        copy = f is not None and f.type == "multi_enum"  # a list value must not be shared by rows
        for row, cells, values, (value, out, errors) in zip(rows, cells_of, values_of, hits):
            if value is not _NOTHING:
                cells[name] = value
                if out is not _NOTHING and f is not None:
                    values[name] = list(out) if copy and out is not None else out
            if errors:
                row.errors += errors
    return rows


def _memoised(convert: Callable[[Any], Any], seen: dict[Any, Any], column: list[Any]) -> list[Any]:
    """``convert`` of each cell, remembered in ``seen`` by the cell (and its type: 1, 1.0 and
    True hash alike)."""
    hits: list[Any] = []
    append = hits.append
    get = seen.get
    for cell in column:
        key = cell if type(cell) is str else (type(cell), cell)
        try:
            hit = get(key)
        except TypeError:  # unhashable: no reader gives such cells, but never fail on one
            append(convert(cell))
            continue
        if hit is None:
            hit = convert(cell)
            if len(seen) < _MEMO_SIZE:
                seen[key] = hit
        append(hit)
    return hits


_NOTHING = object()


def _validated(header: str, f: FieldSpec, value: Any) -> tuple[Any, tuple[tuple[str | None, Any, str], ...]]:
    """A coerced cell through the field type's own ``normalize`` (as the API's writes use):
    (value or ``_NOTHING``, errors)."""
    try:
        out = FIELD_TYPES[f.type].normalize(value, f)
    except FieldError as exc:
        return _NOTHING, ((header, _shown(f, value), str(exc)),)
    if out is None and f.required:
        return out, ((header, None, "is required"),)
    return out, ()


class _SqliteBatches:
    """SQLite: the write connection of a job's batches, each batch's commit made by a thread of
    its own while the job's thread prepares the next batch. A commit is one call into SQLite,
    which runs without the GIL (about 12 ms a 2,000-row batch, 50 ms when it checkpoints); the
    next batch's transaction begins once it is done, so batches commit one at a time and in
    file order. A commit that fails fails the job at the next batch (or at the end); the batch's
    progress was in its transaction, so the job resumes at that batch.

    The commits copy the write-ahead log into the database file only once the log holds
    ``_CHECKPOINT_PAGES`` pages (200 MB), not SQLite's default 1,000 (about two batches): a
    checkpoint writes each page the batches since the last one changed, and consecutive batches
    change mostly the same index pages. 10,000 pages against the default: a commit 10.5 → ~4 µs
    a row; 50,000 against 10,000: 100k rows 3.32 → 3.13 s, a million 74 → 62 s (2,000-row
    batches). The log file keeps its largest size on disk (SQLite reuses it). The connection
    gets its own setting back at ``close``, which then checkpoints what the batches left in the log."""

    def __init__(self, engine: Any) -> None:
        self.conn = engine.connect()
        raw: Any = self.conn.connection.dbapi_connection  # pragmas outside any transaction
        self._before = int(raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        raw.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="fincrm-import-commit")
        self._pending: Future[None] | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        self.settle()
        transaction = self.conn.begin()
        try:
            yield self.conn
        except BaseException:
            transaction.rollback()
            raise
        self._pending = self._committer.submit(transaction.commit)

    def settle(self) -> None:
        """Wait for the last batch's commit; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._committer.shutdown()
            try:
                if not self.conn.invalidated:
                    if self.conn.in_transaction():
                        self.conn.rollback()  # a commit that failed
                    raw: Any = self.conn.connection.dbapi_connection  # pragmas outside any transaction
                    raw.execute(f"PRAGMA wal_autocheckpoint={self._before}")
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self.conn.close()


_CHECKPOINT_PAGES = 50_000  # SQLite: write-ahead log pages (4 KiB, 200 MB) the batches let pile up before a checkpoint
_IDS_AHEAD = 100_000  # rows an import reserves ids for in one transaction
_GC_THRESHOLD = 50_000  # allocations between young-generation collections while importing
_GC_LOCK = threading.Lock()
_GC_JOBS: list[Any] = [0, None]  # jobs running in this process, the thresholds before the first


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Fewer garbage collections while a job runs. A batch allocates some 100,000 objects (cells,
    values, rows), nearly none of them in reference cycles; at the default threshold (700) the
    collector runs every few rows and its older generations rescan everything the process
    holds. Measured on the import bench: unpickling a worker's batch 3.2 → 1.0 µs a row and
    making its rows 3.6 → 1.2 µs a row with collection off. The thresholds are the process's;
    the last job to finish puts them back."""
    with _GC_LOCK:
        if _GC_JOBS[0] == 0:
            _GC_JOBS[1] = gc.get_threshold()
            gc.set_threshold(_GC_THRESHOLD, *_GC_JOBS[1][1:])
        _GC_JOBS[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_JOBS[0] -= 1
            if _GC_JOBS[0] == 0:
                gc.set_threshold(*_GC_JOBS[1])


# Worker processes: each gets the columns and users (or a ``_Recipe``) once, then batches of rows.
_WORKER: dict[str, Any] = {}


def _worker_init(columns: list[_Column], users: dict[str, int], importer: int) -> None:
    _WORKER["columns"], _WORKER["users"] = columns, users
    _watch(importer)
    _worker_collections()


def _worker_collections() -> None:
    """A worker does nothing but batches: what it holds now is there for good (``freeze`` keeps
    the collector from rescanning it) and it collects as seldom as a running job does."""
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])


def _watch(importer: int) -> None:
    """End this worker once the importing process is gone. A worker waits on its task queue,
    whose pipe it holds both ends of, so an importer killed with SIGKILL would leave it (and
    the forkserver, which it keeps alive) waiting for ever."""

    def watch() -> None:
        while True:
            time.sleep(1)
            try:
                os.kill(importer, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # pragma: no cover - another user's process took the pid
                os._exit(0)

    threading.Thread(target=watch, name="fincrm-import-watch", daemon=True).start()


def _worker_parse(raw: list[tuple[int, list[Any]]]) -> list[_Row]:
    columns, users = _WORKER["columns"], _WORKER["users"]
    return _parse_batch(columns, users, raw, _WORKER.setdefault("memo", {}))


@dataclass(slots=True)
class _Ahead:
    """A batch on its way to being built (``Importer._built``)."""

    batch: "_Batch"
    ids: list[int]
    now: dt.datetime
    future: Future[list[tuple[Any, ...]]] | None = None
    result: list[tuple[Any, ...]] | None = None


@dataclass(frozen=True)
class _Recipe:
    """What a worker process needs to turn file rows into bound rows for the database: the
    plan's columns and users, the entity's fields, the table, the keys, what new records get
    when not given (``creation_fills``), and the order of the values it sends back."""

    columns: list[_Column]
    users: dict[str, int]
    fields: dict[str, FieldSpec]
    entity: str
    table: str  # its name (the table itself would pickle the whole schema)
    types: list[TypeEngine[Any]]  # the types of the columns in ``order``
    dialect: str
    keyring: Keyring
    key: FieldSpec | None
    fills: list[tuple[str, Any]]
    headers: dict[str, str]
    refs: list[str]  # reference fields: their values go back for the parent's existence check
    order: list[str]
    user_id: int | None
    delimiter: str  # the CSV file's (``_Lines``)


def _builder_init(recipe: _Recipe, importer: int) -> None:
    _watch(importer)
    _WORKER.clear()
    _WORKER["recipe"], _WORKER["memo"] = recipe, {}
    _WORKER["processors"] = _recipe_processors(recipe)
    _worker_collections()


def _recipe_processors(recipe: _Recipe) -> list[Callable[[Any], Any] | None]:
    dialect: Any = None
    if recipe.dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        dialect = sqlite.dialect()
    return _processors(recipe.types, dialect)


def _worker_build(batch: "_Batch", ids: list[int], now: dt.datetime) -> list[tuple[Any, ...]]:
    recipe = _WORKER["recipe"]
    return _build_batch(recipe, _WORKER["processors"], _WORKER["memo"], _file_rows(batch, recipe.delimiter), ids, now)


@dataclass(slots=True)
class _Lines:
    """Lines of a plain CSV text (``Source.line_batches``), the first being line ``first``."""

    first: int
    lines: list[str]


_Batch = list[tuple[int, list[Any]]] | _Lines  # file rows (number, cells), or lines


def _file_rows(batch: _Batch, delimiter: str) -> list[tuple[int, list[Any]]]:
    return split_lines(batch.first, batch.lines, delimiter) if isinstance(batch, _Lines) else batch


def _build_batch(
    r: _Recipe, processors: list[Callable[[Any], Any] | None], memo: dict[int, dict[Any, Any]], raw: list[tuple[int, list[Any]]], ids: list[int], now: dt.datetime
) -> list[tuple[Any, ...]]:
    """A batch of file rows → per row (row number, key, key cell, errors, bound row or None,
    reference values), as the parent's own steps would make them (``_parse_batch``, ``_complete``,
    ``_build``). A row naming a reference by title comes back as (number, None, None, (), None, None):
    the parent resolves titles against the database and builds that row itself. Run by import
    workers (``_worker_build``) and by the job's process when it would otherwise wait."""
    key = r.key
    rows = _parse_batch(r.columns, r.users, raw, memo)
    stamps = _stamps(now, r.user_id)
    empty: dict[str, Any] = {}
    out: list[tuple[Any, ...]] = []
    records: list[dict[str, Any]] = []
    for rid, row in zip(ids, rows):
        if row.errors:
            out.append((row.number, None, None, tuple(row.errors), None, None))
            continue
        if r.refs and any(isinstance(row.cells.get(name), _Title) for name in r.refs):
            out.append((row.number, None, None, (), None, None))
            continue
        value = row.values.get(key.name) if key is not None else None
        row_key = None if key is None or value is None else _row_key(key, r.entity, r.keyring, value)
        errors = []
        for name, fill in r.fills:
            if name in row.values:
                continue
            if fill is REQUIRED:
                errors.append((r.headers.get(name, name), None, "is required"))
            else:
                row.values[name] = fill
        key_cell = row.cells.get(key.name) if key is not None else None
        if errors:
            out.append((row.number, row_key, key_cell, tuple(errors), None, None))
            continue
        known = {key.name: row_key} if key is not None and key.encrypted and row_key else None
        records.append(_stamped(stored_values(r.fields.get, r.entity, r.table, r.keyring, rid, row.values, None, known), rid, stamps, empty))
        refs = {name: row.values[name] for name in r.refs if row.values.get(name) is not None}
        out.append((row.number, row_key, key_cell, (), len(records) - 1, refs))
    bound = _bind_rows(processors, r.order, records)
    return [(number, k, cell, errors, None if i is None else bound[i], refs) for number, k, cell, errors, i, refs in out]


def _key_cell(plan: _Plan, row: _Row) -> tuple[str | None, str | None]:
    """An error's (column, shown value) for a row's key."""
    key = plan.key
    return (plan.key_column.header if plan.key_column else None), _shown(key, row.cells.get(key.name if key else "id"))


def _unwritten(rows: list[_Row], bad: dict[int, str], early: bool) -> None:
    """Rows a rolled-back attempt had inserted, ready to be inserted again by the retry."""
    for row in rows:
        if row.number not in bad and row.inserted:
            row.target, row.inserted = None, False
            if not early:
                row.record = None  # its id was given back with the rollback


def _row_key(key: FieldSpec, entity: str, keyring: Keyring, value: Any) -> Any:
    """What rows are matched on: the key's blind index (as the records service computes it,
    ``blind_index_for``) when it is encrypted, else its dumped value."""
    return keyring.blind_index(f"{entity}.{key.name}", str(value)) if key.encrypted else FIELD_TYPES[key.type].dump(value)


def _stamps(now: dt.datetime, user: int | None) -> dict[str, Any]:
    return {"version": 1, "created_at": now, "updated_at": now, "created_by": user, "updated_by": user}


def _stamped(values: dict[str, Any], rid: int, stamps: dict[str, Any], empty: dict[str, Any]) -> dict[str, Any]:
    """A new row's stored values with its id and the batch's stamps; an empty ``ext`` becomes
    the batch's one shared object, so the insert serialises it once (see ``_bound``)."""
    if not values.get("ext", True):
        values["ext"] = empty
    values.update(stamps, id=rid)
    return values


def _processors(types: list[TypeEngine[Any]], dialect: Any) -> list[Callable[[Any], Any] | None]:
    """Each column type's bind processor for ``dialect``; ``None``: PostgreSQL's COPY, which
    takes Python values and JSON documents as JSON text (parsed by the column's input function)."""
    if dialect is None:
        return [_json_text if kind is JsonDoc or isinstance(kind, type(JsonDoc)) else None for kind in types]
    return [kind.dialect_impl(dialect).bind_processor(dialect) for kind in types]


def _json_text(value: Any) -> Any:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _bind_rows(processors: list[Callable[[Any], Any] | None], order: list[str], records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Records → tuples of bound values in ``order``, a column at a time (see ``_bound``)."""
    if not records:
        return []
    return list(zip(*(_bound(process, [r.get(n) for r in records]) for process, n in zip(processors, order))))


def import_workers(total: int) -> int:
    """Worker processes for a file of ``total`` rows: ``FINCRM_IMPORT_WORKERS`` (default: one
    when the machine has two cores or more, 0 disables) for files of at least
    ``FINCRM_IMPORT_WORKER_ROWS`` rows (default 20,000; a worker takes a moment to start).

    Workers build whole rows (parse, validate, encrypt, bind) while this process reads the file,
    matches keys and writes: see ``Importer._recipe`` for the runs that can use them. Other runs
    use workers only to parse, and only with two or more of them: one parse-only worker was no
    faster than parsing here (its rows cost as much to pickle as to parse)."""
    default = 1 if (os.cpu_count() or 1) >= 2 else 0
    try:
        configured = max(0, int(os.environ.get("FINCRM_IMPORT_WORKERS", default)))
        least = max(1, int(os.environ.get("FINCRM_IMPORT_WORKER_ROWS", "20000")))
    except ValueError:
        configured, least = default, 20_000
    return configured if total >= least else 0


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _batches(rows: Iterator[tuple[int, list[Any]]], skip: int, size: int) -> Iterator[list[tuple[int, list[Any]]]]:
    """Rows in batches of ``size``, after the first ``skip`` (those a resumed job has done)."""
    batch: list[tuple[int, list[Any]]] = []
    for i, row in enumerate(rows):
        if i < skip:
            continue
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _early(options: ImportOptions, outer: Connection | None) -> bool:
    """Whether new rows are built (and their ids reserved) before their write transaction: not
    in a dry run (which would use up ids) nor in a one-transaction run (whose connection is the
    writer's alone)."""
    return outer is None and not options.dry_run


def _bound(process: Callable[[Any], Any] | None, values: list[Any]) -> list[Any]:
    """A column's values through its bind processor; a value that is the same object as the
    row before's is processed once (a batch's time stamps, creator and empty ``ext`` are one
    object in every row)."""
    if process is None:
        return values
    out: list[Any] = []
    append = out.append
    last: Any = _NOTHING
    done: Any = None
    for value in values:
        if value is not last:
            last, done = value, process(value)
        append(done)
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _shown(f: FieldSpec | None, value: Any) -> str | None:
    """A cell as an error report may show it: masked by the field's rule, cut to 100 characters."""
    if value is None:
        return None
    text = value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)
    text = text[:100]
    rule = effective_mask(f) if f is not None else None
    return str(mask_value(rule, text)) if rule else text


def _coerce(f: FieldSpec | None, cell: Any, users: dict[str, int]) -> Any:
    """A spreadsheet cell → the value the field type's ``normalize`` takes (or None)."""
    if cell is None:
        return None
    if isinstance(cell, str):
        text = (cell if cell.isascii() else unicodedata.normalize("NFKC", cell)).strip()  # NFKC is a no-op on ASCII
        if not text:
            return None
        if len(cell) > MAX_CELL:
            raise FieldError(f"longer than {MAX_CELL} characters")
        if text[0] in "=@" or (text[0] in "+-" and len(text) > 1 and not (text[1].isdigit() or text[1] == ".") and (f is None or f.type in _TEXTUAL)):
            raise FieldError("looks like a spreadsheet formula: import values, not formulas")
        cell = text if (f is None or f.type not in ("text",)) else cell.strip()
    if f is None:  # record id
        return _int_cell(cell)
    kind = f.type
    if isinstance(cell, bool):
        return cell
    if isinstance(cell, float) and kind not in ("decimal",):
        if cell.is_integer():
            cell = int(cell)
    if kind in ("integer", "decimal"):
        if isinstance(cell, (int, float)):
            return str(Decimal(str(cell)))
        return cell.translate(_NUMBER_NOISE)
    if kind == "date":
        if isinstance(cell, (dt.date, dt.datetime)):
            return cell
        m = _DATE.fullmatch(str(cell))
        if m:
            try:
                return dt.date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:  # not a day of the calendar: the field type says so
                return f"{int(m[1]):04d}-{int(m[2]):02d}-{int(m[3]):02d}"
        text = str(cell)
        if re.fullmatch(r"\d{8}", text, re.ASCII):
            return f"{text[:4]}-{text[4:6]}-{text[6:]}"
        return text
    if kind == "datetime":
        if isinstance(cell, dt.datetime):
            return cell
        m = _DATETIME.fullmatch(str(cell))
        if m:
            return f"{int(m[1]):04d}-{int(m[2]):02d}-{int(m[3]):02d}T{int(m[4]):02d}:{m[5]}:{m[6] or '00'}"
        return str(cell)
    if kind in ("enum", "multi_enum"):
        labels = _option_labels(f)
        if kind == "enum":
            text = str(cell)
            return labels.get(text.casefold(), text)
        return [labels.get(p.casefold(), p) for p in (p.strip() for p in _SPLIT.split(str(cell))) if p]
    if kind == "ref":
        if isinstance(cell, int) or (isinstance(cell, str) and cell.isascii() and cell.isdigit()):
            return int(cell)
        return _Title(str(cell))
    if kind == "user":
        if isinstance(cell, int) or (isinstance(cell, str) and cell.isascii() and cell.isdigit()):
            return int(cell)
        uid = users.get(str(cell))
        if uid is None:
            raise FieldError("no user has this username")
        return uid
    if isinstance(cell, (dt.date, dt.datetime)):
        return cell.isoformat()
    return str(cell)


_LABELS: dict[int, tuple[FieldSpec, dict[str, str]]] = {}


def _option_labels(f: FieldSpec) -> dict[str, str]:
    """An option's value, zh label or en label (any case) → its value (cached per spec object:
    hashing a whole field spec costs more than the lookup)."""
    hit = _LABELS.get(id(f))
    if hit is not None and hit[0] is f:
        return hit[1]
    labels: dict[str, str] = {}
    for o in f.options:
        for text in (o.value, o.label.zh, o.label.en):
            labels.setdefault(text.casefold(), o.value)
    if len(_LABELS) > 4096:
        _LABELS.clear()
    _LABELS[id(f)] = (f, labels)
    return labels


def _int_cell(cell: Any) -> int:
    try:
        if isinstance(cell, float) and cell.is_integer():
            return int(cell)
        return int(str(cell))
    except (TypeError, ValueError, InvalidOperation):
        raise FieldError("must be a record id") from None


def _rule_checker(v: _View, dialect: str) -> Callable[[Connection, list[int]], dict[int, list[dict[str, str]]]] | None:
    """The entity's data-quality rules as a batch check, compiled once per run (when that
    module is present)."""
    try:
        from ..quality import rules
    except ImportError:
        return None
    return rules.batch_check(v.snap, v.spec, v.table, dialect)
