"""The background jobs, run as one pass: market quotes, scheduled triggers, SLA escalation, outbox delivery,
plugin actions' deliveries.

:func:`run_pass` runs each job in turn and records each run in ``fincrm_job_run`` (status
``ok`` or ``failed``, and what it did). One failing job does not stop the others; the pass
reports which failed, so the CLI can exit non-zero. Every job is idempotent (trigger claims,
escalation claims, outbox row claims), so overlapping passes from several workers are safe.

What runs the pass is the caller's choice: ``fincrm jobs run`` once, ``fincrm worker`` every
interval on APScheduler in-process (:func:`make_scheduler`) or on Celery beat
(:mod:`engine.flows.celery_app`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import insert, update

from .. import metrics
from ..errors import FieldError
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import FieldSpec, Label
from ..runtime import Runtime, utcnow
from .outbox import deliver_pending
from .tables import job_run_table

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from ..services.records import RecordService

__all__ = ["run_pass", "run_job", "JOBS", "DEFAULT_INTERVAL", "job_interval", "default_worker", "make_scheduler", "parse_moment"]

log = logging.getLogger("fincrm.jobs")

DEFAULT_INTERVAL = 300.0  # seconds between passes (FINCRM_JOBS_INTERVAL)

Job = Callable[[Runtime, "RecordService", dt.datetime], dict[str, Any]]


def _market_quotes(runtime: Runtime, records: "RecordService", now: dt.datetime) -> dict[str, Any]:
    from .quotes import refresh_quotes

    return refresh_quotes(runtime, now)


def _scheduled_triggers(runtime: Runtime, records: "RecordService", now: dt.datetime) -> dict[str, Any]:
    from .triggers import TriggerEngine  # imported when run: the automation modules load lazily

    return TriggerEngine(runtime, records).run_scheduled(now)


def _sla_escalation(runtime: Runtime, records: "RecordService", now: dt.datetime) -> dict[str, Any]:
    from .approval import FlowEngine

    return FlowEngine(runtime, records).escalate_overdue(now)


def _outbox_delivery(runtime: Runtime, records: "RecordService", now: dt.datetime) -> dict[str, Any]:
    return deliver_pending(runtime, records, now)


def _action_delivery(runtime: Runtime, records: "RecordService", now: dt.datetime) -> dict[str, Any]:
    from .actions import deliver_actions

    return deliver_actions(runtime, now)


def _no_failed_triggers(detail: dict[str, Any]) -> bool:
    return not detail.get("failed")  # run_scheduled goes on past a failing trigger and counts it


def _no_failed_packages(detail: dict[str, Any]) -> bool:
    return not detail.get("failed")  # refresh_quotes goes on past a package whose feed failed and counts it


def _done(detail: dict[str, Any]) -> bool:
    return True  # failed deliveries are retried by the outbox itself: the job still did its work


# in this order: quotes first (triggers such as quote_move_alert read them), then triggers and
# escalations, which queue notifications that the delivery sends at once.
# Each job: name, function, and whether its result means success.
JOBS: tuple[tuple[str, Job, Callable[[dict[str, Any]], bool]], ...] = (
    ("market_quotes", _market_quotes, _no_failed_packages),
    ("scheduled_triggers", _scheduled_triggers, _no_failed_triggers),
    ("sla_escalation", _sla_escalation, _done),
    ("outbox_delivery", _outbox_delivery, _done),
    ("action_delivery", _action_delivery, _done),  # plugin actions' deliveries (dead letters are listed for replay)
)


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def job_interval(value: Any = None) -> float:
    """Seconds between passes: ``value``, else FINCRM_JOBS_INTERVAL, else 300 (at least 1)."""
    raw = value if value not in (None, "") else os.environ.get("FINCRM_JOBS_INTERVAL") or DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"the jobs interval (--interval or FINCRM_JOBS_INTERVAL) must be a number of seconds, not {str(raw)[:40]!r}") from None
    if not seconds >= 1:
        raise ValueError("the jobs interval must be at least 1 second")
    return seconds


_MOMENT = FieldSpec("now", "datetime", Label("时间", "now"))


def parse_moment(text: str | None) -> dt.datetime | None:
    """``--now`` and the Celery task's ``now``: ISO 8601, naive read as Beijing time (like every
    datetime input), ``Z`` or an offset as given; returned as naive UTC. None/"" → None."""
    if text is None or text == "":
        return None
    try:
        return FIELD_TYPES["datetime"].normalize(text, _MOMENT)  # type: ignore[no-any-return]
    except FieldError as exc:
        raise ValueError(f"not an ISO date-time: {exc}") from None


def _plain(value: Any) -> Any:
    """Job results as JSON (decimals, datetimes → strings), for the job_run row and the CLI."""
    return json.loads(json.dumps(value, default=str))


def run_job(
    runtime: Runtime, records: "RecordService", name: str, job: Job, now: dt.datetime, worker: str,
    succeeded: Callable[[dict[str, Any]], bool] = _done,
) -> dict[str, Any]:
    """Run one job and record it in ``fincrm_job_run``; never raises for the job's own errors."""
    t = job_run_table
    started = time.perf_counter()
    with runtime.begin() as conn:
        run_id = int(conn.execute(insert(t).values(job=name, worker=worker, started_at=utcnow(), status="running").returning(t.c.id)).scalar_one())
    status = "ok"
    try:
        detail = _plain(job(runtime, records, now))
        if not isinstance(detail, dict):
            detail = {"result": detail}
        if not succeeded(detail):
            status = "failed"
    except Exception as exc:  # recorded and reported; the pass goes on with the next job
        log.exception("job %s failed", name)
        status = "failed"
        detail = {"error": type(exc).__name__, "message": str(exc)[:300]}
    seconds = round(time.perf_counter() - started, 3)
    with runtime.begin() as conn:
        conn.execute(update(t).where(t.c.id == run_id).values(status=status, finished_at=utcnow(), detail={**detail, "seconds": seconds}))
    log.info("job %s %s in %.3fs", name, status, seconds)
    metrics.count_job(name, status, seconds)
    return {"job": name, "run_id": run_id, "status": status, "seconds": seconds, "detail": detail}


def run_pass(runtime: Runtime, records: "RecordService", *, now: dt.datetime | None = None, worker: str | None = None) -> dict[str, Any]:
    """One pass of every job at ``now`` (default: the current time, naive UTC); returns
    ``{"ok", "now", "worker", "jobs": [{"job", "run_id", "status", "seconds", "detail"}], "failed"}``."""
    now = now or utcnow()
    worker = (worker or default_worker())[:100]
    # a long-lived worker sees metadata and role changes made since its last pass
    meta_version, policy_version = runtime.stamps()
    runtime.snapshot(meta_version)
    refresh = getattr(records.authz, "refresh", None)
    if callable(refresh):
        refresh(policy_version)
    results = [run_job(runtime, records, name, job, now, worker, succeeded) for name, job, succeeded in JOBS]
    failed = [r["job"] for r in results if r["status"] != "ok"]
    return {"ok": not failed, "now": now.isoformat() + "Z", "worker": worker, "jobs": results, "failed": failed}


def make_scheduler(run: Callable[[], Any], interval: float, *, blocking: bool = True) -> "BaseScheduler":
    """An APScheduler scheduler that calls ``run`` now and then every ``interval`` seconds; a
    pass still running when the next is due is not doubled (one instance, missed runs merged)."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    scheduler: BaseScheduler = BlockingScheduler(timezone="UTC") if blocking else BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        run,
        IntervalTrigger(seconds=interval, timezone="UTC"),
        id="fincrm-jobs",
        name="fincrm jobs pass",
        next_run_time=dt.datetime.now(dt.timezone.utc),
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(int(interval), 1),
    )
    return scheduler
