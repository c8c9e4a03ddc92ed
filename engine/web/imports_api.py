"""Import endpoints (DESIGN §3): upload → job; job status; the error file.

``POST /api/v1/import/<entity>`` (multipart: ``file`` plus the options ``mapping``, ``mode``,
``dedupe``, ``key``, ``dry_run``, ``on_error``, ``batch_size``) checks the file and its columns
at once (400 naming the problem), stores a job and runs it in the background: on Celery when
``FINCRM_BROKER_URL`` is set, else on this process's import thread. The answer waits up to
``FINCRM_IMPORT_WAIT`` seconds (default 3): 201 with the finished job, or 202 while it runs —
poll ``GET /api/v1/import/jobs/<id>``. Uploads above ``FINCRM_IMPORT_MAX_BYTES`` (default
100 MiB) are refused with 413 before they are stored.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request, stream_with_context

from ..errors import BadRequest, PayloadTooLarge
from ..io.importer import Importer, ImportOptions
from .api import _json, api
from .auth import current_principal, principal_for_user_id
from .context import services

__all__ = ["importer", "load_current_state", "run_job_in_app", "submit", "resume_interrupted"]

_EXECUTOR: ThreadPoolExecutor | None = None
_CHUNK = 1 << 20


def importer() -> Importer:
    svc = services()
    if svc.importer is None:
        svc.importer = Importer(svc.records, current_app.config["FINCRM_SETTINGS"].data_dir)
    imp: Importer = svc.importer
    return imp


def max_bytes() -> int:
    return int(current_app.config.get("FINCRM_IMPORT_MAX_BYTES") or os.environ.get("FINCRM_IMPORT_MAX_BYTES") or 100 * 1024 * 1024)


def load_current_state() -> int:
    """Outside a request (import thread, Celery, CLI): bring this process's metadata snapshot
    and policy up to the database's stamps; the policy version, for principal lookups."""
    svc = services()
    meta_version, policy_version = svc.runtime.stamps()
    svc.runtime.snapshot(meta_version)
    svc.authz.refresh(policy_version)
    return policy_version


def run_job_in_app(app: Flask, job_id: int, user_id: int | None) -> dict[str, Any] | None:
    """Run a job as its creator inside an app context (the import thread, Celery, the CLI)."""
    from ..security.principal import Principal

    with app.app_context():
        imp = importer()
        policy_version = load_current_state()
        if user_id is None:
            principal = Principal.system("import")
        else:
            entry = principal_for_user_id(user_id, policy_version)
            if entry is None:
                imp._finish(job_id, "failed", None, "the account that started this import is disabled")
                return None
            principal = entry[0]
        if not imp.claim(job_id):
            return None
        return imp.run(principal, job_id)


def resume_interrupted(app: Flask) -> list[dict[str, Any]]:
    """Finish uploaded imports whose process died (run by the jobs pass: ``fincrm jobs run``
    and ``fincrm worker``); each continues after its last committed batch."""
    with app.app_context():
        pending = importer().interrupted()
    done = []
    for job_id, user_id in pending:
        job = run_job_in_app(app, job_id, user_id)
        if job is not None:
            done.append(job)
    return done


def submit(app: Flask, job_id: int, user_id: int | None) -> Future[Any] | None:
    """Hand a job to Celery, or to this process's single import thread."""
    from ..flows.celery_app import broker_url

    if broker_url():
        from ..flows.celery_app import run_import_task

        run_import_task.delay(job_id, user_id)
        return None
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fincrm-import")
    return _EXECUTOR.submit(run_job_in_app, app, job_id, user_id)


def _save_upload(target_dir: Path) -> tuple[Path, str]:
    """Stream the multipart ``file`` to disk, counting bytes: 413 past the limit."""
    limit = max_bytes()
    upload = request.files.get("file")
    if upload is None:
        raise BadRequest("send the file as multipart form field 'file'", [{"field": "file", "message": "is required"}])
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / f"upload-{uuid.uuid4().hex}"
    size = 0
    try:
        with open(path, "wb") as fh:
            while chunk := upload.stream.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the upload is larger than {limit} bytes", [{"field": "file", "message": f"at most {limit} bytes"}])
                fh.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, (upload.filename or "upload")


@api.post("/import/<entity>")
def import_upload(entity: str) -> Response:
    limit = max_bytes()
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes", [{"field": "file", "message": f"at most {limit} bytes"}])
    request.max_content_length = limit + 64 * 1024  # multipart overhead; the file itself is counted on saving
    principal = current_principal()
    imp = importer()
    imp.runtime.cached_snapshot().registry.entity(entity)  # 404 for an unknown entity, before the upload is read
    form = {k: v for k, v in request.form.items() if k != "csrf_token"}
    options = ImportOptions.parse(form)
    imp._require(principal, entity, options)
    path, filename = _save_upload(imp.dir / "incoming")
    try:
        job = imp.create(principal, entity, path, filename, options)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    future = submit(app, job["id"], principal.user_id)
    wait = float(current_app.config.get("FINCRM_IMPORT_WAIT", os.environ.get("FINCRM_IMPORT_WAIT", 3)))
    deadline = time.monotonic() + wait
    if future is not None:
        try:
            future.result(timeout=wait)
        except TimeoutError:
            pass
    else:
        while time.monotonic() < deadline and imp.job(principal, job["id"])["status"] in ("queued", "running"):
            time.sleep(0.2)
    job = imp.job(principal, job["id"])
    return _json(job, 201 if job["status"] in ("done", "failed") else 202, {"Location": f"/api/v1/import/jobs/{job['id']}"})


@api.get("/import/jobs")
def import_jobs() -> Response:
    return _json({"items": importer().jobs(current_principal())})


@api.get("/import/jobs/<job_id>")
def import_job(job_id: str) -> Response:
    return _json(importer().job(current_principal(), job_id))


@api.get("/import/jobs/<job_id>/errors")
def import_job_errors(job_id: str) -> Response:
    chunks = importer().errors_csv(current_principal(), job_id)
    return Response(
        stream_with_context(chunks),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="import-{int(job_id)}-errors.csv"', "Cache-Control": "no-store"},
    )
