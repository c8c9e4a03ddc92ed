"""Backup bundles: one file holding a consistent dump of the database and a manifest that
describes it, and a restore that checks everything before it replaces anything.

A bundle is a tar archive of two members: ``manifest.json`` (format, time, dialect, the dump's
sha256 and size, row counts of every table, the audit chain's length and last hash, the ids of
the keys the encrypted values need) and the dump — a copy of the SQLite file made with the
online backup API, or ``pg_dump -Fc`` of the app's schema. Everything in the manifest is read
from the same snapshot the dump holds, so the counts are exact while the app keeps running.

Keys are never in a bundle: it names the key ids the data needs (and a check value of the
blind-index key), and a restore is refused when the current keyring lacks any of them.

Restoring a bundle (:func:`verified`, then :func:`replace`) proves first that it opens, that
the manifest parses, that the dump's checksum matches, that it suits the target database and
keyring, and that the dump itself is sound (SQLite: ``PRAGMA integrity_check`` and row counts;
PostgreSQL: ``pg_restore --list``). Only then is the live database replaced, in one step that
leaves the old data as it was when it fails, and the result is checked against the manifest
again (row counts, audit chain).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, MetaData, create_engine, func, inspect, select, table, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from ..errors import BackupError
from ..runtime import META_VERSION, POLICY_VERSION, Runtime, Snapshot
from ..security.audit import audit_head_table
from ..security.audit import verify as verify_audit
from ..security.crypto import Keyring, key_id
from ..store.tables import id_alloc_table, state_table

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Checked",
    "backup",
    "verified",
    "replace",
    "restore",
    "check_restored",
    "keyring_ids",
    "index_key_check",
]

FORMAT = "fincrm-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DUMP_NAMES = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
DUMP_FORMATS = {"sqlite": "sqlite3-backup", "postgresql": "pg_dump-custom"}

_MAX_MANIFEST = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_KEY_ID_LEN = len(key_id(bytes(32)))
_TOKEN_PREFIX_LEN = len("v1.") + _KEY_ID_LEN + 1  # "v1.<key id>."
# A fixed blind index under the index key: equal for equal keys, and as one-way as any index
# value, so the manifest can say which index key the data was indexed with without holding it.
_INDEX_PROBE = ("fincrm.backup", "index-key-check")

# libpq settings a SQLAlchemy URL may carry as query parameters, passed to pg_dump/pg_restore
# through their environment variables (never on the command line).
_LIBPQ_ENV = {
    "host": "PGHOST",
    "options": "PGOPTIONS",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "gssencmode": "PGGSSENCMODE",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
}

# `pg_restore --list` lines: "<id>; <catalog oid> <oid> <description> <schema> <name> <owner>"
_TOC_TABLE = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE\s+(?!DATA\s)(\S+)\s+(\S+)\s")
_TOC_SCHEMA = re.compile(r"^\d+;\s+\d+\s+\d+\s+(?:[A-Z]+ - )?SCHEMA\s")


# ------------------------------------------------------------------ keys


def keyring_ids(keyring: Keyring) -> set[str]:
    """Ids of every data key the keyring can decrypt with (the current one and older ones)."""
    return {key_id(k) for k in [keyring.master, *keyring.previous]}


def index_key_check(keyring: Keyring) -> str:
    return keyring.blind_index(*_INDEX_PROBE)[:16]


def _key_ids(conn: Connection, snap: Snapshot) -> list[str]:
    """The distinct key ids found in stored ciphertexts (columns and ``ext`` documents)."""
    found: set[str] = set()
    for spec in snap.registry.entities.values():
        t = snap.tables[spec.name]
        for f in spec.fields:
            if not f.encrypted:
                continue
            if f.storage == "column":
                col = t.c[f.name]
                prefix = func.substr(col, 1, _TOKEN_PREFIX_LEN)
                for value in conn.execute(select(prefix).where(col.is_not(None)).distinct()).scalars():
                    found.add(_token_key_id(value))
            else:
                last = 0
                while True:
                    rows = conn.execute(
                        select(t.c.id, t.c.ext).where(t.c.ext.is_not(None), t.c.id > last).order_by(t.c.id).limit(2000)
                    ).all()
                    if not rows:
                        break
                    for row in rows:
                        token = (row.ext or {}).get(f.name)
                        if isinstance(token, str):
                            found.add(_token_key_id(token))
                    last = rows[-1].id
    return sorted(found)


def _token_key_id(token: str) -> str:
    parts = token.split(".", 2)
    return parts[1] if len(parts) >= 2 else "?"


# ------------------------------------------------------------------ facts of one snapshot


def _row_counts(conn: Connection) -> dict[str, int]:
    names = sorted(inspect(conn).get_table_names())
    return {n: int(conn.execute(select(func.count()).select_from(table(n))).scalar_one()) for n in names}


def _facts(conn: Connection, runtime: Runtime) -> dict[str, Any]:
    """What the manifest says about the database ``conn`` sees: counts, stamps, audit, keys."""
    counts = _row_counts(conn)
    if state_table.name not in counts or audit_head_table.name not in counts:
        raise BackupError("this database holds no FinCRM tables: run `fincrm init` first")
    stamps = {str(k): int(v) for k, v in conn.execute(select(state_table.c.key, state_table.c.value)).all()}
    head = conn.execute(select(audit_head_table.c.seq, audit_head_table.c.hash)).first()
    snap = runtime.build(conn, stamps.get(META_VERSION, 0))
    return {
        "tables": counts,
        "metadata": {"meta_version": stamps.get(META_VERSION), "policy_version": stamps.get(POLICY_VERSION)},
        "audit": {"length": int(head.seq) if head else 0, "last_hash": head.hash if head else None},
        "key_ids": _key_ids(conn, snap),
    }


# ------------------------------------------------------------------ backup


def backup(runtime: Runtime, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a bundle of the whole database to ``path`` (atomically); returns its manifest."""
    dest = Path(path)
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory: give the bundle's file name")
    if not dest.parent.is_dir():
        raise BackupError(f"directory {dest.parent} does not exist")
    dialect = runtime.dialect
    if dialect not in DUMP_NAMES:
        raise BackupError(f"backups of {dialect} databases are not supported (SQLite and PostgreSQL are)")
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    # the dump is written next to the bundle: same file system, and no large copy in /tmp
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as work:
        dump = Path(work) / DUMP_NAMES[dialect]
        extra: dict[str, Any]
        if dialect == "sqlite":
            facts, extra = _dump_sqlite(runtime, dump)
        else:
            facts, extra = _dump_postgres(runtime, dump)
        digest, size = _sha256_of(dump)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "fincrm_version": _app_version(),
            "dialect": dialect,
            **extra,
            "metadata": facts["metadata"],
            "dump": {"name": dump.name, "format": DUMP_FORMATS[dialect], "size": size, "sha256": digest},
            "tables": facts["tables"],
            "audit": facts["audit"],
            "keys": {"key_ids": facts["key_ids"], "index_key_check": index_key_check(runtime.keyring)},
        }
        _write_bundle(dest, manifest, dump, created)
    return manifest


def _app_version() -> str | None:
    try:
        return importlib_metadata.version("fincrm")
    except importlib_metadata.PackageNotFoundError:
        return None


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError("only a file-backed SQLite database can be backed up or restored")
    return Path(database)


def _sqlite_engine(path: Path) -> Any:
    return create_engine(URL.create("sqlite", database=str(path)), poolclass=NullPool)


def _dump_sqlite(runtime: Runtime, dump: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    live = _sqlite_path(runtime.url)
    if not live.is_file():
        raise BackupError(f"the database file {live} does not exist")
    try:
        # the online backup API copies a consistent snapshot while other connections write
        with contextlib.closing(sqlite3.connect(live, timeout=30)) as src, contextlib.closing(sqlite3.connect(dump)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    except sqlite3.Error as exc:
        raise BackupError(f"could not copy the SQLite database: {exc}") from exc
    engine = _sqlite_engine(dump)
    try:
        with engine.connect() as conn:
            facts = _facts(conn, runtime)
    finally:
        engine.dispose()
    return facts, {"database": live.name}


def _dump_postgres(runtime: Runtime, dump: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    pg_dump = _binary("pg_dump")
    args, env = _libpq(runtime.url)
    with runtime.write_engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            # pg_dump reads the very snapshot this transaction sees, so the counts, the audit
            # head and the key ids below describe exactly what the dump holds
            snapshot_id = str(conn.execute(select(func.pg_export_snapshot())).scalar_one())
            schema = str(conn.execute(select(func.current_schema())).scalar_one())
            server = str(conn.execute(select(func.current_setting("server_version"))).scalar_one())
            facts = _facts(conn, runtime)
            _run(
                [
                    pg_dump,
                    "--format=custom",
                    f"--schema={_pattern_literal(schema)}",
                    f"--snapshot={snapshot_id}",
                    "--no-password",
                    f"--file={dump}",
                    *args,
                ],
                env,
                "pg_dump",
            )
    return facts, {"schema": schema, "server_version": server, "pg_dump": _tool_version(pg_dump)}


def _write_bundle(dest: Path, manifest: Mapping[str, Any], dump: Path, created: dt.datetime) -> None:
    """Write the tar to a temporary file beside ``dest`` and rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                body = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=False).encode("utf-8")
                _add_member(tar, MANIFEST_NAME, len(body), created, _BytesReader(body))
                with dump.open("rb") as src:
                    _add_member(tar, dump.name, dump.stat().st_size, created, src)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out = bytes(self._data[self._pos : end])
        self._pos += len(out)
        return out


def _add_member(tar: tarfile.TarFile, name: str, size: int, mtime: dt.datetime, src: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime.timestamp())
    info.mode = 0o600
    tar.addfile(info, src)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover  (platforms without directory handles)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# ------------------------------------------------------------------ PostgreSQL tools


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} was not found on PATH: install the PostgreSQL client tools (the server's major version or newer)")
    return found


def _tool_version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def _libpq(url: str) -> tuple[list[str], dict[str, str]]:
    """Connection arguments and environment for pg_dump/pg_restore from a SQLAlchemy URL.

    The password travels in ``PGPASSWORD`` (never in argv, which other users can read); the
    database name is passed as a quoted conninfo so no name is taken for a connection string.
    """
    u = make_url(url)
    env = dict(os.environ)
    for key, var in _LIBPQ_ENV.items():
        value = u.query.get(key)
        if isinstance(value, tuple):
            value = value[-1] if value else None
        if value:
            env[var] = str(value)
    if u.host:
        env["PGHOST"] = u.host
    if u.port:
        env["PGPORT"] = str(u.port)
    if u.username:
        env["PGUSER"] = u.username
    if u.password is not None:
        env["PGPASSWORD"] = str(u.password)
    args = [f"--dbname=dbname={_conninfo_quote(u.database)}"] if u.database else []
    return args, env


def _conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pattern_literal(name: str) -> str:
    """A pg_dump ``--schema`` pattern that matches exactly ``name`` (no wildcards)."""
    return '"' + name.replace('"', '""') + '"'


def _run(cmd: Sequence[str], env: Mapping[str, str], what: str) -> str:
    try:
        done = subprocess.run(list(cmd), env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(f"could not run {what}: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise BackupError(f"{what} failed (exit {done.returncode}): {said[-2000:] or 'no message'}")
    return done.stdout


def _current_schema(runtime: Runtime) -> str:
    with runtime.engine.connect() as conn:
        return str(conn.execute(select(func.current_schema())).scalar_one())


# ------------------------------------------------------------------ reading a bundle


@dataclass(frozen=True)
class Checked:
    """A bundle that passed every check: its manifest, the extracted dump (valid while the
    :func:`verified` block lasts) and what a restore will also do to the target."""

    bundle: Path
    manifest: Mapping[str, Any]
    dump: Path
    extra_tables: tuple[str, ...]  # in the target but not in the backup: dropped by the restore
    toc: tuple[str, ...] = ()  # PostgreSQL: the archive's entries to restore (schema entries left out)


@contextlib.contextmanager
def verified(runtime: Runtime, path: str | os.PathLike[str], workdir: str | os.PathLike[str] | None = None) -> Iterator[Checked]:
    """Open and check a bundle against the target ``runtime`` without changing anything.

    Raises :class:`BackupError` naming the first check that failed. The dump is extracted into
    a temporary directory (in ``workdir`` or the system's) that is removed when the block ends.
    """
    src = Path(path)
    if not src.exists():
        raise BackupError(f"{src}: no such file")
    if not src.is_file():
        raise BackupError(f"{src} is not a file")
    with tempfile.TemporaryDirectory(prefix="fincrm-restore-", dir=workdir) as work:
        manifest, dump = _extract(src, Path(work))
        _check_target(runtime, manifest)
        toc: tuple[str, ...] = ()
        if manifest["dialect"] == "sqlite":
            _check_sqlite_copy(dump, manifest)
        else:
            toc = _check_pg_archive(dump, manifest)
        extra = _extra_tables(runtime, manifest)
        yield Checked(src, manifest, dump, extra, toc)


def _extract(src: Path, work: Path) -> tuple[dict[str, Any], Path]:
    """The manifest, and the dump copied out of the bundle with its checksum checked."""
    not_a_bundle = f"{src.name} is not a FinCRM backup bundle"
    try:
        with tarfile.open(src, "r:*") as tar:
            names = {m.name: m for m in tar.getmembers()}
            member = names.get(MANIFEST_NAME)
            if member is None or not member.isfile():
                raise BackupError(f"{not_a_bundle}: it has no {MANIFEST_NAME}")
            if member.size > _MAX_MANIFEST:
                raise BackupError(f"{not_a_bundle}: its {MANIFEST_NAME} is implausibly large")
            manifest = _parse_manifest(_read_member(tar, member).read())
            spec = manifest["dump"]
            dump_member = names.get(spec["name"])
            if dump_member is None or not dump_member.isfile():
                raise BackupError(f"{not_a_bundle} or is incomplete: the dump {spec['name']} is missing")
            dump = work / spec["name"]  # a name from DUMP_NAMES (checked), never a path from the archive
            h = hashlib.sha256()
            size = 0
            with _read_member(tar, dump_member) as fh, dump.open("wb") as out:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BackupError(f"{not_a_bundle} or is damaged ({exc})") from None
    except OSError as exc:
        raise BackupError(f"could not read {src}: {exc.strerror or exc}") from None
    if size != spec["size"] or h.hexdigest() != spec["sha256"]:
        raise BackupError(
            f"checksum mismatch: the dump in {src.name} is not the one the manifest describes "
            f"(sha256 {h.hexdigest()[:16]}…, {size} bytes; expected {spec['sha256'][:16]}…, {spec['size']} bytes). "
            "The bundle was damaged or altered; nothing was changed."
        )
    return manifest, dump


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    fh = tar.extractfile(member)
    if fh is None:  # pragma: no cover  (isfile() was checked)
        raise BackupError(f"{member.name} in the bundle is not a file")
    return fh


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    def bad(what: str) -> BackupError:
        return BackupError(f"not a FinCRM backup bundle: {MANIFEST_NAME} {what}")

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"does not declare format {FORMAT!r}")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise bad("has no valid format_version")
    if version > FORMAT_VERSION:
        raise BackupError(f"this bundle has format version {version}; this FinCRM reads up to {FORMAT_VERSION}: upgrade FinCRM to restore it")
    dialect = doc.get("dialect")
    if dialect not in DUMP_NAMES:
        raise bad(f"names an unknown dialect {str(dialect)[:32]!r}")
    dump = doc.get("dump")
    if (
        not isinstance(dump, dict)
        or dump.get("name") != DUMP_NAMES[dialect]
        or not isinstance(dump.get("size"), int)
        or not isinstance(dump.get("sha256"), str)
        or not re.fullmatch(r"[0-9a-f]{64}", dump["sha256"], re.ASCII)
    ):
        raise bad("does not describe its dump (name, size, sha256)")
    tables = doc.get("tables")
    if not isinstance(tables, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in tables.items()):
        raise bad("has no row counts per table")
    audit = doc.get("audit")
    if not isinstance(audit, dict) or not isinstance(audit.get("length"), int):
        raise bad("has no audit chain length")
    keys = doc.get("keys")
    if not isinstance(keys, dict) or not isinstance(keys.get("key_ids"), list) or not all(isinstance(k, str) for k in keys["key_ids"]):
        raise bad("does not list the key ids the data needs")
    if dialect == "postgresql" and not isinstance(doc.get("schema"), str):
        raise bad("does not name the PostgreSQL schema it holds")
    return doc


def _check_target(runtime: Runtime, manifest: Mapping[str, Any]) -> None:
    dialect = manifest["dialect"]
    if dialect != runtime.dialect:
        raise BackupError(
            f"wrong dialect: this bundle holds a {dialect} database and the target is {runtime.dialect}; "
            f"restore it into a {dialect} database (FINCRM_DATABASE_URL)"
        )
    missing = sorted(set(manifest["keys"]["key_ids"]) - keyring_ids(runtime.keyring))
    if missing:
        raise BackupError(
            f"missing key: encrypted values in this backup need key id(s) {', '.join(missing)}, which the current keyring "
            "does not hold. Put the master key back (FINCRM_MASTER_KEY or the key file, older keys in "
            "FINCRM_PREVIOUS_MASTER_KEYS or <key file>.old-<id>) and run the restore again."
        )
    check = manifest["keys"].get("index_key_check")
    if check is not None and check != index_key_check(runtime.keyring):
        raise BackupError(
            "missing key: this backup was indexed with another blind-index key than the current one "
            "(FINCRM_INDEX_KEY or index.key); restore that key first, or searches and duplicate checks on "
            "encrypted fields would silently find nothing."
        )
    if dialect == "postgresql":
        schema = _current_schema(runtime)
        if schema != manifest["schema"]:
            raise BackupError(
                f"this bundle holds schema {manifest['schema']!r} and the target uses schema {schema!r}: "
                "restore it through a URL whose search_path is that schema"
            )


def _check_sqlite_copy(dump: Path, manifest: Mapping[str, Any]) -> None:
    try:
        with contextlib.closing(sqlite3.connect(dump)) as db:
            result = [str(r[0]) for r in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.Error as exc:
        raise BackupError(f"the dump is not a sound SQLite database: {exc}") from None
    if result != ["ok"]:
        raise BackupError(f"the dump failed SQLite's integrity check: {'; '.join(result[:5])}")
    engine = _sqlite_engine(dump)
    try:
        with engine.connect() as conn:
            counts = _row_counts(conn)
    except SQLAlchemyError as exc:
        raise BackupError(f"could not count the rows of the dump: {exc}") from None
    finally:
        engine.dispose()
    differ = _count_mismatches(manifest["tables"], counts)
    if differ:
        raise BackupError("the dump's row counts differ from its manifest: " + _describe(differ))


def _check_pg_archive(dump: Path, manifest: Mapping[str, Any]) -> tuple[str, ...]:
    listing = _run([_binary("pg_restore"), "--list", str(dump)], os.environ, "pg_restore --list")
    tables: set[str] = set()
    schemas: set[str] = set()
    keep: list[str] = []
    for line in listing.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        m = _TOC_TABLE.match(line)
        if m:
            schemas.add(m.group(1))
            tables.add(m.group(2))
        # the schema itself is the target's: restoring its entry would DROP SCHEMA (with
        # everything else in it) and recreate it, so only the objects in it are restored
        if not _TOC_SCHEMA.match(line):
            keep.append(line)
    if schemas - {manifest["schema"]}:
        raise BackupError(f"the dump holds tables of schema(s) {', '.join(sorted(schemas))}, not {manifest['schema']!r} as its manifest says")
    if tables != set(manifest["tables"]):
        raise BackupError("the dump's tables differ from its manifest: " + ", ".join(sorted(tables ^ set(manifest["tables"]))[:10]))
    return tuple(keep)


def _extra_tables(runtime: Runtime, manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """Tables of the target that the backup does not hold (made after it): a restore drops them."""
    with runtime.engine.connect() as conn:
        insp = inspect(conn)
        extra = tuple(sorted(set(insp.get_table_names()) - set(manifest["tables"])))
        if runtime.dialect == "postgresql":
            # pg_restore --clean drops the backup's tables without CASCADE: a newer table that
            # references one of them would make it fail (safely) half-way; say so up front
            for name in extra:
                for fk in insp.get_foreign_keys(name):
                    if fk["referred_table"] in manifest["tables"]:
                        raise BackupError(
                            f"table {name} was created after this backup and references {fk['referred_table']}, which the "
                            f"restore replaces: drop {name} first (it is not in the backup), then restore"
                        )
    return extra


def _count_mismatches(expected: Mapping[str, int], found: Mapping[str, int]) -> list[dict[str, Any]]:
    return [
        {"table": t, "expected": expected.get(t), "found": found.get(t)}
        for t in sorted(set(expected) | set(found))
        if expected.get(t) != found.get(t)
    ]


def _describe(mismatches: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['table']} {m['found']} (expected {m['expected']})" for m in mismatches[:10]) + (
        f" and {len(mismatches) - 10} more" if len(mismatches) > 10 else ""
    )


# ------------------------------------------------------------------ replacing the database


def replace(runtime: Runtime, checked: Checked) -> dict[str, Any]:
    """Replace the target database with a checked bundle's dump; returns :func:`check_restored`.

    The replacement is one step (SQLite backup API into the live file; PostgreSQL
    ``pg_restore --single-transaction``): when it fails the old data is left as it was.
    """
    before = _live_counters(runtime)
    runtime.dispose()  # no pooled connection may hold a lock the restore waits for
    if checked.manifest["dialect"] == "sqlite":
        _replace_sqlite(runtime, checked.dump)
    else:
        _replace_postgres(runtime, checked)
    runtime.dispose()  # connections opened meanwhile may carry plans of the dropped tables
    _settle(runtime, before)
    return check_restored(runtime, checked.manifest)


def restore(runtime: Runtime, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify the bundle at ``path``, then replace the target with it (no questions asked)."""
    with verified(runtime, path) as checked:
        return replace(runtime, checked)


def _replace_sqlite(runtime: Runtime, dump: Path) -> None:
    live = _sqlite_path(runtime.url)
    try:
        # one write transaction on the live file: readers see the old or the new database
        with contextlib.closing(sqlite3.connect(dump)) as src, contextlib.closing(sqlite3.connect(live, timeout=30)) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"could not write the live database (it was left as it was): {exc}") from None


def _replace_postgres(runtime: Runtime, checked: Checked) -> None:
    args, env = _libpq(runtime.url)
    toc = checked.dump.parent / "restore.list"
    toc.write_text("\n".join(checked.toc) + "\n", encoding="utf-8")
    _run(
        [
            _binary("pg_restore"),
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-password",
            f"--use-list={toc}",
            *args,
            str(checked.dump),
        ],
        env,
        "pg_restore (the database was left as it was)",
    )
    if checked.extra_tables:
        with runtime.begin() as conn:
            newer = MetaData()
            newer.reflect(conn, only=list(checked.extra_tables))
            newer.drop_all(conn)


def _live_counters(runtime: Runtime) -> dict[str, dict[str, int]]:
    """The version stamps and id counters of the target before it is replaced."""
    out: dict[str, dict[str, int]] = {"stamps": {}, "ids": {}}
    with runtime.engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        if state_table.name in names:
            out["stamps"] = {str(k): int(v) for k, v in conn.execute(select(state_table.c.key, state_table.c.value)).all()}
        if id_alloc_table.name in names:
            out["ids"] = {str(k): int(v) for k, v in conn.execute(select(id_alloc_table.c.name, id_alloc_table.c.next_id)).all()}
    return out


def _settle(runtime: Runtime, before: Mapping[str, Mapping[str, int]]) -> None:
    """Make running processes notice the restore, and never hand out an id twice.

    Version stamps move past both the restored and the replaced values, so every process reloads
    its metadata and policy on its next request; id counters stay at least where they were, as
    ids given out after the backup may live on in exports, notifications or other processes'
    reserved blocks. Both only update rows the restore brought back."""
    with runtime.begin() as conn:
        restored = {str(k): int(v) for k, v in conn.execute(select(state_table.c.key, state_table.c.value)).all()}
        for key, value in restored.items():
            moved = max(value, before["stamps"].get(key, 0)) + 1
            conn.execute(update(state_table).where(state_table.c.key == key).values(value=moved))
        present = set(conn.execute(select(id_alloc_table.c.name)).scalars())
    for name, next_id in before["ids"].items():
        if name in present:
            runtime.ids.bump_past(name, next_id - 1)


def check_restored(runtime: Runtime, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Compare the target with a manifest: row counts per table and the audit chain."""
    with runtime.engine.connect() as conn:
        counts = _row_counts(conn)
        head = conn.execute(select(audit_head_table.c.seq, audit_head_table.c.hash)).first() if audit_head_table.name in counts else None
    mismatches = _count_mismatches(manifest["tables"], counts)
    chain = verify_audit(runtime.engine) if head is not None else {"ok": False, "checked": 0, "first_bad": None, "reason": "no audit trail"}
    expected = manifest["audit"]
    same_chain = head is not None and int(head.seq) == expected["length"] and head.hash == expected.get("last_hash")
    return {
        "ok": not mismatches and bool(chain["ok"]) and same_chain,
        "tables": len(counts),
        "rows": sum(counts.values()),
        "mismatches": mismatches,
        "audit": {**chain, "length": int(head.seq) if head is not None else 0, "matches_backup": same_chain},
    }
