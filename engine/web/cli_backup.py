"""``fincrm backup <file>`` and ``fincrm restore <file>``: the console face of
:mod:`engine.io.backup`. Both are audited; every refusal is one clear line, never a traceback."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

import click
from flask import current_app
from flask.cli import with_appcontext

from ..errors import FinCRMError
from ..io import backup as bundles
from ..security import audit
from .context import services

__all__ = ["add_commands"]

ACTOR = "system:cli"


def add_commands(group: click.Group) -> None:
    group.add_command(backup_command)
    group.add_command(restore_command)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _describe(manifest: Mapping[str, Any]) -> list[str]:
    tables = manifest["tables"]
    dump = manifest["dump"]
    where = f" (schema {manifest['schema']})" if manifest.get("schema") else ""
    chain = manifest["audit"]
    keys = manifest["keys"]["key_ids"]
    return [
        f"  made {manifest['created_at']} from a {manifest['dialect']} database{where}",
        f"  {len(tables)} tables, {sum(tables.values()):,} rows; dump {_size(dump['size'])}, sha256 {dump['sha256'][:16]}…",
        f"  audit chain: {chain['length']:,} entries, last hash {(chain.get('last_hash') or '-')[:16]}…",
        f"  key ids the data needs: {', '.join(keys) or 'none'} (keys are NOT in the bundle: back them up separately)",
    ]


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
@with_appcontext
def backup_command(file: str) -> None:
    """Write the whole database (a consistent dump plus a manifest) to FILE, atomically.

    Safe while the app runs. The bundle holds no keys: keep the master and index keys
    (FINCRM_MASTER_KEY / master.key, FINCRM_INDEX_KEY / index.key) backed up separately."""
    runtime = services().runtime
    started = time.monotonic()
    try:
        manifest = bundles.backup(runtime, file)
    except FinCRMError as exc:
        raise click.ClickException(exc.message) from None
    elapsed = time.monotonic() - started
    _audit(runtime, "backup", {"file": Path(file).name, "sha256": manifest["dump"]["sha256"], "rows": sum(manifest["tables"].values())})
    click.echo(f"backup written to {file} in {elapsed:.1f}s")
    for line in _describe(manifest):
        click.echo(line)


def _audit(runtime: Any, action: str, detail: dict[str, Any]) -> None:
    with runtime.begin() as conn:
        audit.append(conn, audit.AuditEntry(actor=ACTOR, action=action, detail=detail))


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", is_flag=True, help="replace the database without asking")
@with_appcontext
def restore_command(file: str, yes: bool) -> None:
    """Check the bundle FILE, then replace the whole database with it.

    Nothing is replaced unless the bundle opens, its checksum matches, it was made from the
    same kind of database, the current keyring holds every key its data needs and the dump
    itself is sound. Afterwards row counts and the audit chain are checked against the
    manifest; the exit status is 1 if anything differs. Stop the app and its workers first."""
    runtime = services().runtime
    started = time.monotonic()
    try:
        with bundles.verified(runtime, file) as checked:
            click.echo(f"{file}: every check passed in {time.monotonic() - started:.1f}s")
            for line in _describe(checked.manifest):
                click.echo(line)
            if checked.extra_tables:
                click.echo(f"  tables not in the backup, dropped by the restore: {', '.join(checked.extra_tables)}")
            if not yes and not click.confirm("Replace the current database with this backup?", default=False):
                click.echo("nothing was changed", err=True)
                raise click.Abort()
            _release_flask_connections()
            started = time.monotonic()
            report = bundles.replace(runtime, checked)
    except FinCRMError as exc:
        raise click.ClickException(exc.message) from None
    elapsed = time.monotonic() - started
    manifest = checked.manifest
    _audit(runtime, "restore", {"file": Path(file).name, "backup_created_at": manifest["created_at"], "sha256": manifest["dump"]["sha256"], "ok": report["ok"]})
    click.echo(f"restored in {elapsed:.1f}s: {report['tables']} tables, {report['rows']:,} rows")
    for m in report["mismatches"]:
        click.echo(f"  row count of {m['table']}: {m['found']} (backup: {m['expected']})", err=True)
    chain = report["audit"]
    if chain["ok"] and chain["matches_backup"]:
        click.echo(f"audit chain OK ({chain['checked']:,} entries, as in the backup)")
    elif chain["ok"]:
        click.echo(f"audit chain verifies but is not the backup's ({chain['length']} entries, backup: {manifest['audit']['length']})", err=True)
    else:
        click.echo(f"audit chain BROKEN at entry {chain['first_bad']}: {chain['reason']}", err=True)
    if not report["ok"]:
        click.echo("the restored database differs from the backup's manifest", err=True)
        sys.exit(1)


def _release_flask_connections() -> None:
    """Flask-AppBuilder's own pool: an idle transaction there would hold locks the restore needs."""
    db = current_app.extensions.get("sqlalchemy")
    if db is not None:
        db.session.remove()
        db.engine.dispose()
