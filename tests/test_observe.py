"""Observability (issue #9): /healthz, /readyz, /metrics and the JSON logs, as an operator sees
them — including metrics added up over the workers of a real gunicorn in multiprocess mode."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select

from engine.demo import make_id_number, make_mobile
from engine.flows.jobs import JOBS, run_pass
from engine.flows.outbox import enqueue_many
from engine.security.audit import audit_head_table
from engine.security.crypto import DecryptError, Keyring
from engine.web.logs import PLAIN, RedactQuery, configure_logging, is_plain, log_format
from tests.api_helpers import SECRET_KEY, app, client, finished_import, login, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent
ID_NUMBER = "11010519491231002X"
MOBILE = "13800138000"
ROUTE = "/api/v1/records/<entity>/<record_id>"


@pytest.fixture(scope="module", autouse=True)
def json_logs() -> Iterator[None]:
    """This module's app logs JSON, as under ``fincrm serve`` (set before the app is built)."""
    before = os.environ.get("FINCRM_LOG_FORMAT")
    os.environ["FINCRM_LOG_FORMAT"] = "json"
    yield
    if before is None:
        os.environ.pop("FINCRM_LOG_FORMAT", None)
    else:
        os.environ["FINCRM_LOG_FORMAT"] = before
    configure_logging(log_format())


def scrape(client: Any, **kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    resp = client.get("/metrics", **kw)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return parse(resp.get_data(as_text=True))


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------ health and readiness


def test_healthz_and_readyz_answer_without_a_login(client: Any) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    body = ready.get_json()
    assert body["status"] == "ready" and body["failed"] == []
    assert {name: c["ok"] for name, c in body["checks"].items()} == {"database": True, "master_key": True, "metadata": True, "stored_data_key": True}
    assert isinstance(body["checks"]["metadata"]["version"], int)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readyz_is_503_naming_the_database_when_it_does_not_answer(app: Any, client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    runtime = app.extensions["fincrm"].runtime
    good = runtime.primary_engine, runtime.write_engine
    port = _closed_port()
    bad = create_engine(f"postgresql+psycopg://fincrm:s3cret-pw@127.0.0.1:{port}/fincrm", connect_args={"connect_timeout": 2})
    runtime.primary_engine = runtime.write_engine = bad
    try:
        ready = client.get("/readyz")
        health = client.get("/healthz")
        scraped = scrape(client)
    finally:
        runtime.primary_engine, runtime.write_engine = good
        bad.dispose()
    # metrics still answer: counters from memory, the database-derived gauges flagged as missing
    assert sample(scraped, "fincrm_scrape_database_ok") == 0
    assert ("fincrm_audit_chain_length", ()) not in scraped
    assert sample(scraped, "fincrm_http_requests_total", method="GET", route="/readyz", status="503") >= 1
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "unavailable" and body["failed"] == ["database"], body
    assert body["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert body["checks"]["master_key"]["ok"] and body["checks"]["metadata"]["ok"]  # the snapshot stays loaded
    text = ready.get_data(as_text=True)
    assert "s3cret" not in text and str(port) not in text and "postgresql" not in text
    assert health.status_code == 200  # the process is up: no database behind /healthz
    # the operator finds the cause in the log, without the password
    logged = [line for line in json_lines(capsys.readouterr().err) if line["logger"] == "fincrm.observe"]
    assert any("database failed" in line["message"] and "OperationalError" in line.get("exception", "") for line in logged), logged
    assert all("s3cret" not in json.dumps(line) for line in logged)
    assert client.get("/readyz").status_code == 200  # and it recovers with the database


def test_readyz_answers_in_time_when_the_database_hangs(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database host that accepts connections and never answers: the probe says so within its
    timeout instead of hanging the load balancer's check (and a worker with it)."""
    from engine.web import observe

    monkeypatch.setattr(observe, "CHECK_TIMEOUT", 0.5)
    runtime = app.extensions["fincrm"].runtime
    good = runtime.primary_engine, runtime.write_engine
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel and are never answered
    bad = create_engine(f"postgresql+psycopg://fincrm@127.0.0.1:{silent.getsockname()[1]}/fincrm", connect_args={"connect_timeout": 30})
    runtime.primary_engine = runtime.write_engine = bad
    try:
        started = time.monotonic()
        first = client.get("/readyz")
        second = client.get("/readyz")  # joins the check still waiting, starts no other
        took = time.monotonic() - started
    finally:
        runtime.primary_engine, runtime.write_engine = good
        silent.close()  # the waiting connection is reset: the check thread ends
    assert first.status_code == second.status_code == 503
    assert first.get_json()["checks"]["database"] == {"ok": False, "error": "TimeoutError (no answer within 0.5s)"}
    assert took < 5, took
    deadline = time.monotonic() + 15
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readiness did not recover"
        time.sleep(0.2)
    bad.dispose()


class _BrokenKeyring(Keyring):
    """A keyring whose key no longer opens what it sealed (a wrong or damaged key)."""

    def decrypt(self, token: str, aad: bytes) -> str:
        raise DecryptError("stored value failed authentication (tampered or moved)")


def test_readyz_is_503_naming_the_master_key_when_it_cannot_decrypt(app: Any, client: Any) -> None:
    runtime = app.extensions["fincrm"].runtime
    good = runtime.keyring
    runtime.keyring = _BrokenKeyring(b"z" * 32)
    try:
        resp = client.get("/readyz")
    finally:
        runtime.keyring = good
    assert resp.status_code == 503
    assert resp.get_json()["failed"] == ["master_key"]
    assert resp.get_json()["checks"]["master_key"] == {"ok": False, "error": "DecryptError"}


def test_readyz_is_503_when_the_loaded_key_does_not_open_the_stored_data(app: Any, client: Any, login: Any) -> None:
    from engine.web import observe

    resp = client.post("/api/v1/records/customer", json={"name": "王小明", "id_number": "11010519491231002X"}, headers=login("admin"))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    runtime = app.extensions["fincrm"].runtime
    good = runtime.keyring
    observe._STORED_KEY_OK.clear()
    runtime.keyring = Keyring(b"w" * 32)  # a valid key, but not the one the data was sealed with
    try:
        resp = client.get("/readyz")
    finally:
        runtime.keyring = good
        observe._STORED_KEY_OK.clear()
    assert resp.status_code == 503
    assert resp.get_json()["failed"] == ["stored_data_key"]
    assert "11010519491231002X" not in resp.get_data(as_text=True)
    ok = client.get("/readyz")
    assert ok.status_code == 200 and ok.get_json()["checks"]["stored_data_key"]["sampled"] >= 1


# ------------------------------------------------------------------ metrics


def test_a_request_shows_up_in_metrics_by_its_route_template_not_its_path(client: Any, login: Any) -> None:
    admin = login("admin")
    before = scrape(client)
    resp = client.get("/api/v1/records/customer/987654321", headers=admin)
    assert resp.status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    after = parse(text)
    labels = {"method": "GET", "route": ROUTE, "status": "404"}
    assert sample(after, "fincrm_http_requests_total", **labels) == sample(before, "fincrm_http_requests_total", **labels) + 1
    assert sample(after, "fincrm_http_request_duration_seconds_count", **labels) == sample(before, "fincrm_http_request_duration_seconds_count", **labels) + 1
    assert sample(after, "fincrm_http_request_duration_seconds_bucket", le="+Inf", **labels) >= 1
    assert "987654321" not in text
    # a path that matches no route is counted without its path
    client.get(f"/no/such/page/{MOBILE}")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'route="<unmatched>"' in text and MOBILE not in text


def test_metrics_are_refused_from_elsewhere_unless_the_bearer_token_matches(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = {"REMOTE_ADDR": "10.0.0.5"}
    monkeypatch.delenv("FINCRM_METRICS_TOKEN", raising=False)
    refused = client.get("/metrics", environ_base=remote)
    assert refused.status_code == 403 and "FINCRM_METRICS_TOKEN" in refused.get_json()["error"]["message"]
    assert "fincrm_http_requests_total" not in refused.get_data(as_text=True)
    # loopback, but relayed by a proxy on the same host: the client is elsewhere
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403

    monkeypatch.setenv("FINCRM_METRICS_TOKEN", "scrape-token-0123456789")
    missing = client.get("/metrics", environ_base=remote)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", environ_base=remote, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    allowed = client.get("/metrics", environ_base=remote, headers={"Authorization": "Bearer scrape-token-0123456789"})
    assert allowed.status_code == 200 and "fincrm_http_requests_total" in allowed.get_data(as_text=True)
    assert allowed.mimetype == "text/plain"
    assert client.get("/metrics").status_code == 200  # loopback still needs no token


def test_audit_chain_length_and_pool_use_are_read_at_scrape_time(app: Any, client: Any, login: Any) -> None:
    runtime = app.extensions["fincrm"].runtime
    login("rm2")  # a login is audited: the chain grows
    with runtime.engine.connect() as conn:
        head = int(conn.execute(select(audit_head_table.c.seq)).scalar_one())
        held = scrape(client)  # this connection is checked out while the scrape runs
    assert sample(held, "fincrm_audit_chain_length") == head > 0
    assert sample(held, "fincrm_scrape_database_ok") == 1
    assert sample(held, "fincrm_db_pool_checked_out", pool="read") == 1
    assert sample(held, "fincrm_db_pool_size", pool="write") >= 1
    released = scrape(client)
    assert sample(released, "fincrm_db_pool_checked_out", pool="read") == 0
    assert sample(released, "fincrm_db_pool_checked_out", pool="write") == 0


def test_a_jobs_pass_moves_the_job_counters_and_the_last_run_gauges(app: Any, client: Any) -> None:
    svc = app.extensions["fincrm"]
    with svc.runtime.begin() as conn:
        enqueue_many(
            conn,
            [{"channel": "inbox", "recipient_kind": "user", "recipient_id": 1, "subject": "任务即将到期", "body": "", "source": "test",
              "entity": None, "record_id": None, "created_at": dt.datetime(2026, 1, 1, 0, 0)}],
        )
    before = scrape(client)
    report = run_pass(svc.runtime, svc.records, worker="test-observe")
    assert report["ok"], report
    after = scrape(client)
    for name, *_ in JOBS:
        assert sample(after, "fincrm_job_runs_total", job=name, status="ok") == sample(before, "fincrm_job_runs_total", job=name, status="ok") + 1
        assert sample(after, "fincrm_job_duration_seconds_count", job=name) == sample(before, "fincrm_job_duration_seconds_count", job=name) + 1
        finished = sample(after, "fincrm_job_last_run_timestamp_seconds", job=name, status="ok")
        assert abs(finished - time.time()) < 120, (name, finished)
    shown = {"channel": "inbox", "outcome": "shown"}
    assert sample(after, "fincrm_outbox_deliveries_total", **shown) == sample(before, "fincrm_outbox_deliveries_total", **shown) + 1


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["姓名", "身份证号", "手机号"])
    writer.writerows(rows)
    return buf.getvalue().encode()


def _import(client: Any, headers: dict[str, str], data: bytes, **options: str) -> dict[str, Any]:
    form: dict[str, Any] = {**options, "file": (io.BytesIO(data), "customers.csv")}
    resp = client.post("/api/v1/import/customer", headers=headers, data=form, content_type="multipart/form-data")
    return finished_import(client, headers, resp)


def test_an_import_moves_the_row_counters_and_logs_no_id_number(client: Any, login: Any, capsys: pytest.CaptureFixture[str]) -> None:
    admin = login("admin")
    rng = random.Random(9)
    people = [(make_id_number(rng, dt.date(1980 + i, 3, 9), i % 2 == 0), make_mobile(rng)) for i in range(3)]
    rows = [["导入甲", *people[0]], ["导入乙", *people[1]], ["导入丙", people[2][0], "12345"]]  # the last mobile is invalid
    before = scrape(client)
    dry = _import(client, admin, _csv(rows), dry_run="1")
    assert dry["status"] == "done" and dry["counts"]["inserted"] == 2
    middle = scrape(client)
    job = _import(client, admin, _csv(rows))
    assert job["status"] == "done" and job["counts"]["inserted"] == 2 and job["counts"]["errors"] == 1, job
    after = scrape(client)

    def moved(a: Any, b: Any, outcome: str) -> float:
        return sample(b, "fincrm_import_rows_total", entity="customer", outcome=outcome) - sample(a, "fincrm_import_rows_total", entity="customer", outcome=outcome)

    assert moved(before, middle, "inserted") == 0  # a dry run imports nothing
    assert moved(middle, after, "inserted") == 2 and moved(middle, after, "error") == 1
    err = capsys.readouterr().err
    assert all(number not in err for person in people for number in person)


# ------------------------------------------------------------------ logs


def test_a_log_line_has_the_request_id_user_and_route_and_no_id_number(app: Any, client: Any, login: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rm1 = login("rm1")
    capsys.readouterr()
    created = client.post("/api/v1/records/customer", json={"name": "日志", "mobile": MOBILE, "id_number": ID_NUMBER}, headers=rm1)
    assert created.status_code == 201, created.get_json()
    resp = client.get(f"/api/v1/records/customer?q={ID_NUMBER}", headers=rm1)
    assert resp.status_code == 200
    client.get(f"/api/v1/records/customer/{ID_NUMBER}", headers=rm1)  # the id in the path itself
    # code that logs a value by mistake, while a request runs
    with app.test_request_context(f"/api/v1/records/customer/{ID_NUMBER}", headers={"X-Request-ID": "probe-42"}):
        app.preprocess_request()
        logging.getLogger("fincrm.test").warning("lookup of %s failed (mobile %s)", ID_NUMBER, MOBILE)
    err = capsys.readouterr().err
    lines = json_lines(err)
    request_id = resp.headers["X-Request-ID"]
    access = [line for line in lines if line["logger"] == "fincrm.access" and line["request_id"] == request_id]
    assert len(access) == 1, lines
    line = access[0]
    assert line["user"] == "rm1" and line["route"] == "/api/v1/records/<entity>" and line["method"] == "GET" and line["status"] == 200
    assert line["level"] == "INFO" and isinstance(line["duration_ms"], float) and line["timestamp"].endswith("Z")
    assert line["message"] == "GET /api/v1/records/<entity> 200"
    mistaken = next(line for line in lines if line["logger"] == "fincrm.test")
    assert mistaken["request_id"] == "probe-42" and mistaken["route"] == ROUTE
    assert mistaken["message"] == "lookup of 110***********002X failed (mobile 138****8000)"
    assert ID_NUMBER not in err and MOBILE not in err and "19491231" not in err


def test_only_lines_that_masking_would_leave_unchanged_skip_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Access lines (method, route template, status) are checked once and then skip the masking
    regex; a line holding anything shaped like an ID number or a mobile is never let through."""
    assert is_plain("GET /api/v1/records/<entity>/<record_id> 200")
    assert not is_plain(f"GET /x/{ID_NUMBER} 404") and not is_plain(f"GET /x/{MOBILE} 200")
    capsys.readouterr()
    for fmt in ("text", "json"):
        configure_logging(fmt)
        try:
            message = f"GET /x/{MOBILE} 200"
            logging.getLogger("fincrm.access").info("%s %s %s", "GET", f"/x/{MOBILE}", 200, extra={PLAIN: is_plain(message)})
        finally:
            configure_logging("json")
        err = capsys.readouterr().err
        assert "GET /x/138****8000 200" in err and MOBILE not in err


def test_a_sane_request_id_is_kept_and_anything_else_replaced(client: Any) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.01_x"}).headers["X-Request-ID"] == "lb-7f3a.01_x"
    for bad in ("x" * 65, "has space", "semi;colon", MOBILE, f"req-{ID_NUMBER}"):
        given = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert given != bad and len(given) == 32 and int(given, 16) >= 0
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32


def test_text_logs_stay_available_with_the_request_id(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text")
    try:
        capsys.readouterr()
        resp = client.get(f"/no/such/page?q={ID_NUMBER}", headers={"X-Request-ID": "text-1"})
        logging.getLogger("fincrm.test").warning("card 6222021234567890123 and 身份证%s", ID_NUMBER)
    finally:
        configure_logging("json")
    assert resp.status_code == 404
    err = capsys.readouterr().err
    assert " INFO fincrm.access [text-1] GET <unmatched> 404" in err
    assert "WARNING fincrm.test [-] card 尾号0123 and 身份证110***********002X" in err
    assert ID_NUMBER not in err and "?q=" not in err


def test_the_development_server_lines_lose_their_query_strings() -> None:
    record = logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1, '127.0.0.1 - - [05/Jan/2026 09:30:01] "%s" %s %s',
        (f"GET /api/v1/records/customer?q={MOBILE} HTTP/1.1", "200", "-"), None,
    )
    RedactQuery().filter(record)
    assert record.getMessage() == '127.0.0.1 - - [05/Jan/2026 09:30:01] "GET /api/v1/records/customer?… HTTP/1.1" 200 -'


# ------------------------------------------------------------------ several gunicorn workers


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _pids(directory: Path, prefix: str) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob(f"{prefix}_*.db")}


def test_metrics_add_up_over_gunicorn_workers_in_multiprocess_mode(shared_app: Any, tmp_path: Path) -> None:
    """What ``fincrm serve`` does: PROMETHEUS_MULTIPROC_DIR set and emptied before the app is
    imported, gunicorn preloads and forks two workers, ``child_exit`` marks dead workers, and
    gunicorn's own log goes through FinCRM's JSON handler (its access lines off)."""
    from engine.metrics import prepare_multiprocess_dir

    settings = shared_app.config["FINCRM_SETTINGS"]
    multiproc = prepare_multiprocess_dir(tmp_path / "prometheus")
    port = _closed_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from engine.metrics import mark_worker_dead\n"
        "from engine.web.logs import gunicorn_logconfig\n"
        f"bind = '127.0.0.1:{port}'\nworkers = 2\npreload_app = True\ntimeout = 60\n"
        "accesslog = None\nlogconfig_dict = gunicorn_logconfig('json')\n"
        "def child_exit(server, worker):\n    mark_worker_dead(worker.pid)\n"
        "def pre_fork(server, worker):\n    import gc\n    gc.freeze()  # as fincrm serve: a worker's exit does not copy the heap\n"
    )
    env = {
        **os.environ,
        "FINCRM_DATA_DIR": str(settings.data_dir),
        "FINCRM_DATABASE_URL": str(shared_app.extensions["fincrm"].runtime.url),
        "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
        "FINCRM_SECRET_KEY": SECRET_KEY,
        "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
        "FINCRM_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    env.pop("FINCRM_METRICS_TOKEN", None)
    log_file = tmp_path / "gunicorn.log"
    with log_file.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(conf), "app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_file.read_text()[-3000:]
            try:
                if _get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_file.read_text()[-3000:]
            time.sleep(0.3)

        n = 40
        ids: list[str] = []

        def hit(i: int) -> None:
            status, _, headers = _get(f"{base}/api/v1/records/customer/{1000 + i}", {"X-Request-ID": f"gunicorn-{i}"})
            assert status == 401
            ids.append(headers["X-Request-ID"])

        threads = [threading.Thread(target=lambda k=k: [hit(k * 10 + j) for j in range(10)]) for k in range(n // 10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(ids) == sorted(f"gunicorn-{i}" for i in range(n))

        workers = _pids(multiproc, "counter")
        assert len(workers) >= 2, workers  # both workers answered some of them
        labels = {"method": "GET", "route": ROUTE, "status": "401"}
        for _ in range(4):  # whichever worker answers the scrape, it reports all of them
            status, text, _ = _get(base + "/metrics")
            assert status == 200
            assert sample(parse(text), "fincrm_http_requests_total", **labels) == n
            assert "/records/customer/10" not in text

        # a worker dies: its live gauges go, its counts stay in the totals
        victim = min(workers)
        assert victim in _pids(multiproc, "gauge_livesum")
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in _pids(multiproc, "gauge_livesum"):
            assert time.monotonic() < deadline, "child_exit did not mark the dead worker"
            time.sleep(0.2)
        status, text, _ = _get(base + "/metrics")
        assert sample(parse(text), "fincrm_http_requests_total", **labels) == n
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    lines = json_lines(log_file.read_text())
    access = [line for line in lines if line["logger"] == "fincrm.access" and line["route"] == ROUTE]
    assert sorted(line["request_id"] for line in access) == sorted(f"gunicorn-{i}" for i in range(n))  # once each
    assert len({line["pid"] for line in access}) >= 2
    assert any(line["logger"] == "gunicorn.error" and line["message"].startswith("Booting worker") for line in lines)
    assert not any(line["logger"] == "gunicorn.access" for line in lines)
