"""``fincrm import <entity> <file>``: the same import jobs as the API, with a progress bar.

The job reads the file in place (it is not copied), so ``--resume <job id>`` after a crash or a
``kill -9`` continues after the last committed batch of the same file; the file's size and
modification time must be unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from ..errors import FinCRMError
from ..io.importer import DEDUPE, MODES, ON_ERROR, ImportOptions
from ..security.principal import Principal
from .imports_api import importer, load_current_state

__all__ = ["add_commands"]


def _principal(username: str | None, policy_version: int) -> Principal:
    if username is None:
        return Principal.system("import")
    from .auth import principal_for_user_id

    user = current_app.appbuilder.sm.find_user(username=username)  # type: ignore[attr-defined]
    if user is None:
        raise click.ClickException(f"no user {username!r}")
    entry = principal_for_user_id(int(user.id), policy_version)
    if entry is None:
        raise click.ClickException(f"user {username!r} is disabled")
    return entry[0]


def add_commands(group: click.Group) -> None:
    @group.command("import")
    @click.argument("entity", required=False)
    @click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--mode", type=click.Choice(MODES), default="insert", show_default=True)
    @click.option("--dedupe", type=click.Choice(DEDUPE), default="skip", show_default=True, help="what to do with a row whose key exists")
    @click.option("--key", default=None, help="field rows are matched on (id or a unique field)")
    @click.option("--mapping", default=None, help='JSON {"column header": "field name" or null}')
    @click.option("--dry-run", is_flag=True, help="check everything, write nothing")
    @click.option("--on-error", type=click.Choice(ON_ERROR), default="skip_row", show_default=True, help="abort: all rows or none")
    @click.option("--batch-size", type=click.IntRange(1, 50_000), default=1000, show_default=True)
    @click.option("--user", "username", default=None, help="import as this user (their permissions and row scope); default: system")
    @click.option("--resume", "resume", type=int, default=None, help="continue this interrupted job")
    @click.option("--json", "as_json", is_flag=True, help="print the finished job as JSON")
    @with_appcontext
    def import_cmd(
        entity: str | None, file: Path | None, mode: str, dedupe: str, key: str | None, mapping: str | None, dry_run: bool,
        on_error: str, batch_size: int, username: str | None, resume: int | None, as_json: bool,
    ) -> None:
        """Import a CSV or XLSX file into ENTITY (GBK/GB18030 and UTF-8 are recognised)."""
        imp = importer()
        principal = _principal(username, load_current_state())
        try:
            if resume is not None:
                job = imp.job(principal, resume)
                if job["status"] not in ("queued", "running"):
                    raise click.ClickException(f"job {resume} is {job['status']}: nothing to resume")
                job_id = int(job["id"])
            else:
                if entity is None or file is None:
                    raise click.UsageError("give ENTITY and FILE, or --resume JOB")
                options = ImportOptions.parse(
                    {"mode": mode, "dedupe": dedupe, "key": key, "mapping": mapping or {}, "dry_run": dry_run, "on_error": on_error, "batch_size": batch_size}
                )
                job = imp.create(principal, entity, file.resolve(), file.name, options, keep=False)
                job_id = int(job["id"])
                click.echo(f"import job {job_id}: {job['format']} ({job['encoding'] or 'xlsx'}), columns → {json.dumps(job['mapping'], ensure_ascii=False)}", err=True)
            if not imp.claim(job_id, force=resume is not None):
                raise click.ClickException(f"job {job_id} is being run by another process")
            bar: list[Any] = []

            def progress(done: int, total: int | None) -> None:
                if not bar:
                    bar.append(click.progressbar(length=total or 0, label="importing", file=sys.stderr))
                    bar[0].__enter__()
                    bar[0].update(done)
                else:
                    bar[0].update(done - bar[0].pos)

            try:
                job = imp.run(principal, job_id, progress)
            finally:
                if bar:
                    bar[0].__exit__(None, None, None)
        except FinCRMError as exc:
            details = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in exc.details or [])
            raise click.ClickException(exc.message + (f" ({details})" if details else "")) from None
        if as_json:
            click.echo(json.dumps(job, ensure_ascii=False, default=str))
        counts = job["counts"]
        click.echo(
            f"job {job_id} {job['status']}: {counts['rows']} rows, {counts['inserted']} inserted, {counts['updated']} updated, "
            f"{counts['skipped']} skipped, {counts['errors']} with errors" + (" (dry run: nothing written)" if job["options"].get("dry_run") else ""),
            err=True,
        )
        if counts["errors"]:
            out = Path(f"import-{job_id}-errors.csv")
            with open(out, "wb") as fh:
                for chunk in imp.errors_csv(principal, job_id):
                    fh.write(chunk)
            click.echo(f"errors written to {out}", err=True)
        if job["status"] != "done":
            raise click.ClickException(job["message"] or f"job {job_id} {job['status']}")
