"""``fincrm import`` killed with SIGKILL mid-file: whole batches or nothing, then ``--resume``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

from engine.io.importer import import_job_table
from tests.conftest import TEST_MASTER_KEY
from tests.test_import import _csv, _people, _row

BATCH = 200


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FINCRM_DATA_DIR": str(tmp_path / "data"),
        "FINCRM_DATABASE_URL": db_url,
        "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
        "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


def _processes_of(tmp_path: Path) -> list[str]:
    """Running processes started for this test (multiprocessing passes the job's sys.path, which
    begins with its working directory, on the command line)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in cmdline and "multiprocessing" in cmdline:
            found.append(f"{pid}: {cmdline[:120]}")
    return found


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.web.cli", *args]


def test_kill_9_during_import_leaves_whole_batches_and_the_job_resumes(tmp_path: Path, db_url: str) -> None:
    people = list({p["id"]: p for p in _people(30_500, seed=91)}.values())[:30_000]
    source = tmp_path / "customers.csv"
    source.write_bytes(_csv([_row(p) for p in people], encoding="gbk"))
    env = _env(tmp_path, db_url)
    subprocess.run(_cli("init"), env=env, check=True, capture_output=True, cwd=tmp_path)
    engine = create_engine(db_url)

    def job() -> Any:
        with engine.connect() as conn:
            return conn.execute(select(import_job_table).order_by(import_job_table.c.id.desc())).first()

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(text("e_customer"))).scalar_one())

    proc = subprocess.Popen(_cli("import", "customer", str(source), "--batch-size", str(BATCH)), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            j = job()
            if j is not None and j.rows_done >= 5 * BATCH:
                break
            assert time.monotonic() < deadline, "the import never got going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # its worker process (and the forkserver it came from) end by themselves
    deadline = time.monotonic() + 20
    while _processes_of(tmp_path):
        assert time.monotonic() < deadline, _processes_of(tmp_path)
        time.sleep(0.2)
    j = job()
    assert j.status == "running" and 0 < j.rows_done < len(people), (j.status, j.rows_done)
    count = stored()
    # what is stored is exactly what the job recorded as done: whole batches, nothing half-written
    assert count == j.counts["inserted"] == j.rows_done and count % BATCH == 0, (count, j.counts, j.rows_done)

    done = subprocess.run(_cli("import", "--resume", str(j.id)), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    j = job()
    assert j.status == "done" and j.rows_done == len(people) and j.counts["inserted"] == len(people) and j.counts["errors"] == 0, j.counts
    assert stored() == len(people)
    with engine.connect() as conn:
        distinct = conn.execute(text("SELECT count(DISTINCT id_number__bi) FROM e_customer")).scalar_one()
    assert distinct == len(people)
    # a finished job cannot be resumed again
    again = subprocess.run(_cli("import", "--resume", str(j.id)), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "nothing to resume" in again.stderr
    engine.dispose()
