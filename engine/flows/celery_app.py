"""The jobs pass on Celery: broker and result backend from ``FINCRM_BROKER_URL``
(e.g. ``redis://127.0.0.1:6379/0``), one task and a beat schedule.

``fincrm worker`` starts a worker with embedded beat when ``FINCRM_BROKER_URL`` is set; the same
app serves ``celery -A engine.flows.celery_app worker -B`` for setups that run Celery their own
way. Beat sends ``fincrm.jobs.run_pass`` every ``FINCRM_JOBS_INTERVAL`` seconds (default 300) to
the queue ``FINCRM_JOBS_QUEUE`` (default ``fincrm``); each worker process builds the FinCRM app
once (``app.create_app()``: the same settings, database and keys as the web processes) and runs
:func:`engine.flows.jobs.run_pass`. Passes are idempotent, so several workers (or a beat in
each) do no harm; run one beat anyway to avoid needless passes.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from typing import Any

from celery import Celery

from .jobs import default_worker, job_interval, parse_moment, run_pass

__all__ = ["celery", "make_celery", "TASK_NAME", "broker_url", "queue_name", "run_pass_task", "run_import_task", "IMPORT_TASK"]

TASK_NAME = "fincrm.jobs.run_pass"
DEFAULT_QUEUE = "fincrm"


def broker_url() -> str | None:
    return os.environ.get("FINCRM_BROKER_URL") or None


def queue_name() -> str:
    return os.environ.get("FINCRM_JOBS_QUEUE") or DEFAULT_QUEUE


def make_celery(broker: str | None = None, *, interval: float | None = None, queue: str | None = None) -> Celery:
    """A Celery app on ``broker`` (default FINCRM_BROKER_URL) that also keeps results there."""
    broker = broker or broker_url()
    seconds = job_interval(interval)
    queue = queue or queue_name()
    app = Celery("fincrm", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        result_expires=24 * 3600,
        worker_prefetch_multiplier=1,  # a pass can take a while: do not hoard the next ones
        broker_connection_retry_on_startup=True,
        beat_schedule={
            "fincrm-jobs-pass": {
                "task": TASK_NAME,
                "schedule": dt.timedelta(seconds=seconds),
                # a pass nobody picked up before the next is due is dropped, not piled up
                "options": {"queue": queue, "expires": seconds},
            }
        },
    )
    return app


celery = make_celery()

_lock = threading.Lock()
_services: Any = None
_app: Any = None


def _fincrm_services() -> Any:
    """The FinCRM services of this worker process, built on first use (after any fork)."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                # the wiring lives in app.create_app(): settings, runtime, authorizer, services
                from app import create_app

                global _app
                _app = create_app()
                _services = _app.extensions["fincrm"]
    return _services


@celery.task(name=TASK_NAME)  # type: ignore[untyped-decorator]  # celery ships no type information
def run_pass_task(now: str | None = None) -> dict[str, Any]:
    """One jobs pass (``now``: ISO 8601, default the current time); the pass's report."""
    svc = _fincrm_services()
    return run_pass(svc.runtime, svc.records, now=parse_moment(now), worker=f"celery:{default_worker()}")


IMPORT_TASK = "fincrm.import"


@celery.task(name=IMPORT_TASK)  # type: ignore[untyped-decorator]
def run_import_task(job_id: int, user_id: int | None) -> dict[str, Any]:
    """Run an uploaded import job as the user who started it."""
    _fincrm_services()
    from engine.web.imports_api import run_job_in_app

    job = run_job_in_app(_app, job_id, user_id)
    return {"job": job_id, "status": job["status"] if job else "not claimed"}
