"""The jobs pass and what runs it: ``fincrm jobs run``, an APScheduler scheduler in-process, and
a real Celery worker (with embedded beat, as ``fincrm worker`` starts it) on the real Redis."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from engine.flows import jobs
from engine.flows.outbox import enqueue_many
from engine.flows.tables import job_run_table, outbox_table
from engine.web.cli import main
from tests.api_helpers import app_config, dispose
from tests.conftest import TEST_MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
JOB_NAMES = [name for name, _, _ in jobs.JOBS]  # every job of the pass, in order


@pytest.fixture
def env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a CLI or worker process gets: this test's database, data dir and keys."""
    values = {
        "FINCRM_DATA_DIR": str(tmp_path / "data"),
        "FINCRM_DATABASE_URL": db_url,
        "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
        "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
        "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FINCRM_BROKER_URL", raising=False)
    return values


@pytest.fixture
def prepared(env: dict[str, str]) -> Iterator[Any]:
    """The schema in place and one inbox notification due, from an app on the test database."""
    from app import create_app

    application = create_app(app_config(env["FINCRM_DATA_DIR"], env["FINCRM_DATABASE_URL"]))
    runtime = application.extensions["fincrm"].runtime
    with runtime.begin() as conn:
        enqueue_many(
            conn,
            [{"channel": "inbox", "recipient_kind": "user", "recipient_id": 1, "subject": "任务即将到期", "body": "", "source": "test",
              "entity": None, "record_id": None, "created_at": dt.datetime(2026, 1, 1, 0, 0)}],
        )
    yield application
    dispose(application)


def _job_runs(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(job_run_table).order_by(job_run_table.c.id)).all())
    finally:
        engine.dispose()


def _outbox_status(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(outbox_table.c.status).order_by(outbox_table.c.id)).scalars())
    finally:
        engine.dispose()


# ------------------------------------------------------------------ one pass


def test_jobs_run_records_each_job_and_prints_its_counts(prepared: Any, env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["jobs", "run", "--now", "2026-01-01T09:00:00"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in JOB_NAMES:
        assert f"{name}: ok" in result.output
    assert "shown 1" in result.output
    runs = _job_runs(env["FINCRM_DATABASE_URL"])
    assert [r.job for r in runs] == JOB_NAMES
    assert all(r.status == "ok" and r.finished_at and r.worker.startswith("cli:") for r in runs)
    outbox = runs[JOB_NAMES.index("outbox_delivery")]
    assert outbox.detail["shown"] == 1 and outbox.detail["claimed"] == 1
    assert _outbox_status(env["FINCRM_DATABASE_URL"]) == ["shown"]
    # --now is Beijing time (naive), so 09:00 there is 01:00 UTC: a message due later waits
    bad = CliRunner().invoke(main, ["jobs", "run", "--now", "yesterday"])
    assert bad.exit_code == 2 and "--now" in bad.output


def test_one_failing_job_does_not_stop_the_others_and_the_cli_exits_1(prepared: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.flows.triggers import TriggerEngine

    def broken(self: Any, now: Any = None) -> dict[str, Any]:
        raise RuntimeError("trigger store unavailable")

    monkeypatch.setattr(TriggerEngine, "run_scheduled", broken)
    result = CliRunner().invoke(main, ["jobs", "run", "--now", "2026-01-01T09:00:00"])
    assert result.exit_code == 1
    assert "scheduled_triggers: failed" in result.output and "RuntimeError: trigger store unavailable" in result.output
    runs = {r.job: r for r in _job_runs(env["FINCRM_DATABASE_URL"])}
    assert runs["scheduled_triggers"].status == "failed" and runs["scheduled_triggers"].detail["error"] == "RuntimeError"
    assert runs["sla_escalation"].status == "ok" and runs["outbox_delivery"].status == "ok"
    assert _outbox_status(env["FINCRM_DATABASE_URL"]) == ["shown"]


def test_a_trigger_that_fails_inside_the_scheduled_run_fails_the_job(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.flows.triggers import TriggerEngine

    monkeypatch.setattr(TriggerEngine, "run_scheduled", lambda self, now=None: {"triggers": [], "fired": 0, "failed": 1})
    svc = app.extensions["fincrm"]  # type: ignore[attr-defined]
    report = jobs.run_pass(svc.runtime, svc.records, worker="test")
    assert report["ok"] is False and report["failed"] == ["scheduled_triggers"]
    assert {j["job"]: j["status"] for j in report["jobs"]} == {name: "failed" if name == "scheduled_triggers" else "ok" for name in JOB_NAMES}


def test_the_interval_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINCRM_JOBS_INTERVAL", raising=False)
    assert jobs.job_interval() == 300
    monkeypatch.setenv("FINCRM_JOBS_INTERVAL", "60")
    assert jobs.job_interval() == 60 and jobs.job_interval(5) == 5
    monkeypatch.setenv("FINCRM_JOBS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="FINCRM_JOBS_INTERVAL"):
        jobs.job_interval()


# ------------------------------------------------------------------ APScheduler


def test_an_apscheduler_scheduler_runs_a_pass(app: Any, db_url: str) -> None:
    svc = app.extensions["fincrm"]  # type: ignore[attr-defined]
    reports: list[dict[str, Any]] = []
    scheduler = jobs.make_scheduler(lambda: reports.append(jobs.run_pass(svc.runtime, svc.records, worker="apscheduler-test")), 3600, blocking=False)
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while not reports and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        scheduler.shutdown(wait=True)
    assert len(reports) == 1 and reports[0]["ok"], reports  # the first pass runs at once, the next in an hour
    runs = _job_runs(db_url)
    assert [r.job for r in runs] == JOB_NAMES and {r.worker for r in runs} == {"apscheduler-test"}


# ------------------------------------------------------------------ Celery on Redis


def _redis() -> Any:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}")
    return client


def test_a_celery_worker_runs_the_pass_sent_to_its_queue(prepared: Any, env: dict[str, str], tmp_path: Path) -> None:
    from engine.flows.celery_app import TASK_NAME, make_celery

    _redis()
    db = random.randint(1, 15)
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    queue = f"fincrm-test-{uuid.uuid4().hex[:12]}"
    worker_env = {
        **os.environ, **env,
        "FINCRM_BROKER_URL": broker,
        "FINCRM_JOBS_QUEUE": queue,
        "FINCRM_JOBS_INTERVAL": "3600",  # beat's first pass would come in an hour: only ours runs
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        # `fincrm worker` (the console script's module) with FINCRM_BROKER_URL: Celery worker + beat
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.web.cli", "worker"], cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = make_celery(broker, queue=queue)
    result = None
    try:
        result = client.send_task(TASK_NAME, kwargs={"now": "2026-01-01T09:00:00"}, queue=queue)
        try:
            report = result.get(timeout=120)
        except Exception:
            raise AssertionError(f"no result from the worker; its log:\n{log_path.read_text(errors='replace')[-4000:]}") from None
    finally:
        _stop(proc)
        _cleanup_redis(db, queue, result)
    assert report["ok"] is True and report["now"] == "2026-01-01T01:00:00Z"
    assert report["worker"].startswith("celery:")
    runs = _job_runs(env["FINCRM_DATABASE_URL"])
    assert [r.job for r in runs] == JOB_NAMES
    assert all(r.status == "ok" and r.worker == report["worker"] for r in runs)
    assert _outbox_status(env["FINCRM_DATABASE_URL"]) == ["shown"]
    assert "celery" in log_path.read_text(errors="replace").lower()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of the worker we started (its own process group: the pool's children too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _cleanup_redis(db: int, queue: str, result: Any) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
    keys = [queue, f"_kombu.binding.{queue}"]
    if result is not None:
        keys.append(f"celery-task-meta-{result.id}")
    client.delete(*keys)
