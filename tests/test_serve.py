"""``fincrm serve`` for real: gunicorn with two preloaded workers on a free port, a field added
through one request and served by every worker, a dead worker's live metrics cleaned up, no query
string in the access log, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from engine.web.cli import main
from engine.web.cli_serve import MAX_AUTO_WORKERS, default_workers
from engine.web.logs import GUNICORN_ACCESS_FORMAT
from tests.conftest import TEST_MASTER_KEY

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Serve-test-pw-1"
# the documented access format plus the user agent and the worker's pid, so each probe can be
# traced to the worker that answered it
ACCESS_FORMAT = GUNICORN_ACCESS_FORMAT + " ua=%(a)s pid=%(p)s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINCRM_", "PROMETHEUS_"))}
    return {
        **env,
        "FINCRM_DATA_DIR": str(tmp_path / "data"),
        "FINCRM_DATABASE_URL": db_url,
        "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
        "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
        "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.web.cli", *args]


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, access: Path, errors: Path, metrics: Path) -> None:
        self.proc, self.base, self.access, self.errors, self.metrics = proc, base, access, errors, metrics

    def access_lines(self) -> list[str]:
        return self.access.read_text(encoding="utf-8").splitlines() if self.access.exists() else []

    def error_text(self) -> str:
        return self.errors.read_text(encoding="utf-8") if self.errors.exists() else ""


def _wait(predicate: Any, what: str, proc: subprocess.Popen[bytes], server: Server, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, f"fincrm serve exited ({proc.returncode}) while waiting for {what}:\n{server.error_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{server.error_text()[-3000:]}"
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[Server]:
    """``fincrm init`` then ``fincrm serve`` with 2 workers × 2 threads on a free port."""
    env = _env(tmp_path, db_url, FINCRM_ACCESS_LOG_FORMAT=ACCESS_FORMAT, FINCRM_WORKERS="2", FINCRM_THREADS="2")
    init = subprocess.run(_cli("init", "--admin-password", PASSWORD), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    metrics = tmp_path / "data" / "prometheus"
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / "counter_999999.db").write_bytes(b"left by an earlier run")
    port = _free_port()
    access, errors = tmp_path / "access.log", tmp_path / "stderr.log"
    with errors.open("wb") as stderr:
        # the default log format (FinCRM's JSON lines on stderr) plus gunicorn's classic access log
        # in a file, with the worker pid in each line
        proc = subprocess.Popen(
            _cli("serve", "--bind", f"127.0.0.1:{port}", "--access-log", str(access)), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr
        )
    server = Server(proc, f"http://127.0.0.1:{port}", access, errors, metrics)
    try:
        _wait(lambda: "Booting worker" in server.error_text() and _up(server.base), "the server to answer", proc, server)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()  # only if the test failed before its own SIGTERM
            proc.wait(timeout=30)


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _pids_by_agent(server: Server) -> dict[str, int]:
    found = {}
    for line in server.access_lines():
        m = re.search(r"ua=(probe-\d+) pid=<(\d+)>", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def test_a_field_added_through_one_worker_is_served_by_every_worker_and_sigterm_stops_cleanly(served: Server) -> None:
    base = served.base
    # the master emptied the metrics directory and says what it runs, in FinCRM's JSON lines
    assert not (served.metrics / "counter_999999.db").exists()
    ready = [json.loads(line) for line in served.error_text().splitlines() if "FinCRM serving on" in line]
    assert ready and ready[0]["logger"] == "gunicorn.error" and "2 workers × 2 threads (gthread)" in ready[0]["message"]

    status, tokens = _http("POST", f"{base}/api/v1/security/login", {"username": "admin", "password": PASSWORD, "provider": "db"})
    assert status == 200, tokens
    admin = {"Authorization": f"Bearer {tokens['access_token']}"}
    # both workers were forked from the preloaded app: each holds the metadata as it was before
    # the change, and must notice the change on its own
    field = {"name": "wechat_id", "type": "string", "label": {"zh": "微信号", "en": "WeChat ID"}}
    status, added = _http("POST", f"{base}/api/v1/meta/entities/customer/fields", field, admin)
    assert status == 201, added

    # every response after the change has the field, whichever worker answered; keep asking
    # until at least two different workers have answered (the kernel picks the worker)
    i = 0
    while True:
        status, schema = _http("GET", f"{base}/api/v1/meta/entities/customer/schema", headers={**admin, "User-Agent": f"probe-{i}"})
        assert status == 200 and "wechat_id" in schema["properties"], (i, status)
        i += 1
        if i >= 20 and len(set(_pids_by_agent(served).values())) >= 2:
            break
        assert i < 400, f"all {i} requests went to one worker: {set(_pids_by_agent(served).values())}"
    # a worker writes its access-log line just after the response: give the last one a moment
    _wait(lambda: len(_pids_by_agent(served)) == i, "every probe in the access log with its worker's pid", served.proc, served, 10)
    answered = _pids_by_agent(served)
    workers = set(answered.values())
    assert len(workers) == 2 and os.getpid() not in workers and served.proc.pid not in workers
    # and a write through any worker accepts the new field
    for n in range(4):
        status, made = _http("POST", f"{base}/api/v1/records/customer", {"name": f"服务测试{n}", "wechat_id": f"wx_{n}"}, admin)
        assert status == 201 and made["wechat_id"] == f"wx_{n}", made

    # the access log carries no query string (a search can hold a mobile number)
    status, found = _http("GET", f"{base}/api/v1/records/customer?q=13800138000", headers={**admin, "User-Agent": "search"})
    assert status == 200 and found["items"] == []
    _wait(lambda: "ua=search" in served.access.read_text(encoding="utf-8"), "the search in the access log", served.proc, served, 10)
    for log_text in (served.access.read_text(encoding="utf-8"), served.error_text()):
        assert "13800138000" not in log_text and "q=" not in log_text

    # a worker that goes away: the master replaces it and drops its live gauges (child_exit)
    gone = sorted(workers)[0]
    live = served.metrics / f"gauge_livesum_{gone}.db"
    live.write_bytes(b"")
    os.kill(gone, signal.SIGTERM)
    _wait(lambda: not live.exists(), "the dead worker's live gauges to be removed", served.proc, served)
    _wait(lambda: served.error_text().count("Booting worker") >= 3, "a replacement worker", served.proc, served)
    assert _http("GET", f"{base}/api/v1/meta/entities/customer/schema", headers=admin)[1]["properties"]["wechat_id"]

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    assert "Shutting down: Master" in served.error_text()


def test_serve_defaults_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith(("FINCRM_", "PROMETHEUS_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("FINCRM_DATA_DIR", str(tmp_path / "data"))
    assert default_workers(1) == 3 and default_workers(2) == 5 and default_workers(64) == MAX_AUTO_WORKERS
    runner = CliRunner()
    shown = runner.invoke(main, ["serve", "--print-config"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "bind: 127.0.0.1:5000" in shown.output
    assert f"workers: {default_workers()} (gthread) × threads: 4" in shown.output
    assert "timeout: 30s, graceful timeout: 30s, keep-alive: 5s" in shown.output
    assert "max requests: 2000 (+ up to 200 jitter)" in shown.output and "preload: yes" in shown.output
    assert "log format: json" in shown.output and "access log: off" in shown.output
    assert f"PROMETHEUS_MULTIPROC_DIR: {tmp_path / 'data' / 'prometheus'}" in shown.output

    monkeypatch.setenv("FINCRM_WORKERS", "3")
    monkeypatch.setenv("FINCRM_THREADS", "8")
    monkeypatch.setenv("FINCRM_TIMEOUT", "90")
    monkeypatch.setenv("FINCRM_BIND", "0.0.0.0:8000")
    by_env = runner.invoke(main, ["serve", "--print-config"], catch_exceptions=False)
    assert "bind: 0.0.0.0:8000" in by_env.output and "workers: 3 (gthread) × threads: 8" in by_env.output and "timeout: 90s" in by_env.output
    by_flag = runner.invoke(main, ["serve", "--print-config", "--workers", "2", "--bind", "127.0.0.1:9001"], catch_exceptions=False)
    assert "bind: 127.0.0.1:9001" in by_flag.output and "workers: 2 (gthread)" in by_flag.output
    # `fincrm run` keeps its spelling
    alias = runner.invoke(main, ["run", "--print-config", "--host", "127.0.0.1", "--port", "5001", "--workers", "2"], catch_exceptions=False)
    assert alias.exit_code == 0 and "bind: 127.0.0.1:5001" in alias.output and "workers: 2 (gthread)" in alias.output


@pytest.mark.parametrize("atom", ["%(r)s", "%(q)s", "%(f)s", "%({Authorization}i)s"])
def test_serve_refuses_an_access_log_format_that_would_log_query_strings_or_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atom: str) -> None:
    monkeypatch.setenv("FINCRM_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(main, ["serve", "--print-config", "--access-log-format", f"%(h)s {atom}"])
    assert result.exit_code == 2
    assert "may log customers' data or credentials" in result.output
