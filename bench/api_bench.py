"""API benchmark: FinCRM under gunicorn vs a bare Flask endpoint vs raw SQL, same work.

    python bench/api_bench.py --customers 100000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench
    python bench/api_bench.py --customers 1000000 --database-url …   # 1M works (COPY seeding)
    python bench/api_bench.py --customers 100000 --database-url sqlite:////tmp/fincrm-bench.db

Steps: reset the database; create the schema, roles and bench users through the app; load N
customers (PostgreSQL: COPY, with real AES-GCM ciphertexts and blind indexes for ID numbers;
SQLite: executemany); start FinCRM and bench/bare_app.py each under gunicorn (2 sync workers)
on loopback; drive each with wrk (fixed duration, a Lua script varying ids/owners and sending
the bearer token) in interleaved rounds after a warm-up — FinCRM and bare alternate, so both see
the same machine state (after VACUUM ANALYZE + CHECKPOINT of the loaded table) — and keep the
median round of each; time the same statements as raw SQL in-process; time adding a field.

Workloads:
- get:  GET one customer by a random id (admin: scope all, masking on)
- list: one page of 50 — filter lifecycle_stage IN (growing, mature), sort -aum, as one of 10
        relationship managers (scope own → owner = me, index (owner, -aum))
- page2: the second page of that list through its keyset cursor (FinCRM only)

Prints a table and writes bench/results/api-<db>-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MASTER = base64.b64encode(b"B" * 32).decode()
INDEX = base64.b64encode(b"I" * 32).decode()
SECRET = "bench-secret-key-0123456789abcdef0123"
PASSWORD = "Bench-Passw0rd!"
RMS = 10  # real relationship-manager accounts; customers are spread over 200 owners
OWNERS = 200
FILTER = {"field": "lifecycle_stage", "op": "in", "value": ["growing", "mature"]}


def env_for(url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FINCRM_DATABASE_URL": url,
        "FINCRM_DATA_DIR": str(data_dir),
        "FINCRM_MASTER_KEY": MASTER,
        "FINCRM_INDEX_KEY": INDEX,
        "FINCRM_SECRET_KEY": SECRET,
        "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
        "FINCRM_LOGIN_RATE_LIMIT": "1000 per second",  # the bench logs in 11 users at once
    }


def reset(url: str) -> None:
    if url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        return
    from sqlalchemy import create_engine, text

    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()


def setup_app(url: str, data_dir: Path) -> tuple[Any, list[int], int]:
    """Schema, roles and users through the real app; returns (app, rm user ids, admin id)."""
    os.environ.update(env_for(url, data_dir))
    from app import create_app

    app = create_app({"RATELIMIT_ENABLED": False})
    with app.app_context():
        sm = app.appbuilder.sm
        admin = sm.add_user("bench_admin", "Bench", "Admin", "a@bench.local", [sm.find_role("admin")], password=PASSWORD)
        rms = [
            sm.add_user(f"bench_rm{i}", "Bench", f"RM{i}", f"rm{i}@bench.local", [sm.find_role("relationship_manager")], password=PASSWORD)
            for i in range(RMS)
        ]
        rm_ids = [int(u.id) for u in rms]
        admin_id = int(admin.id)
    return app, rm_ids, admin_id


def seed(app: Any, n: int, rm_ids: list[int]) -> float:
    """Load n customers; owners: the 10 real RMs plus 190 other ids, round robin."""
    from sqlalchemy import insert, text

    from engine.security.crypto import aad_for

    rt = app.extensions["fincrm"].runtime
    keyring = rt.keyring
    snap = rt.snapshot()
    t = snap.tables["customer"]
    owners = rm_ids + [100_000 + i for i in range(OWNERS - len(rm_ids))]
    rng = random.Random(42)
    started = time.perf_counter()
    branch_ids = []
    records = app.extensions["fincrm"].records
    from engine.security.principal import Principal

    system = Principal.system("bench")
    for code in ("B01", "B02", "B03", "B04"):
        branch_ids.append(records.create(system, "branch", {"code": code, "name": f"网点{code}"})["id"])
    ids = rt.ids.take("customer", n)
    now = dt.datetime(2026, 11, 1)
    stages = ["new", "growing", "mature", "declining"]

    def row(i: int, rid: int) -> dict[str, Any]:
        born = dt.date(1950, 1, 1) + dt.timedelta(days=(i // 1000) * 7 % 18000 + i // (1000 * 2572))
        idn = f"110105{born:%Y%m%d}{i % 1000:03d}"  # unique: (birth date, sequence) never repeats
        from stdnum.cn import ric

        idn += ric.calc_check_digit(idn + "0")  # stdnum expects a placeholder check digit
        return {
            "id": rid,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            "ext": {},
            "name": f"客户{i:07d}",
            "gender": "male" if i % 2 else "female",
            "mobile": f"13{(i * 7919) % 10**9:09d}",
            "aum": Decimal(math.exp(rng.gauss(11.5, 1.4))).quantize(Decimal("0.01")),
            "owner": owners[i % len(owners)],
            "branch": branch_ids[i % len(branch_ids)],
            "lifecycle_stage": stages[(i // OWNERS) % 4],
            "id_number": keyring.encrypt(idn, aad_for(t.name, "id_number", rid)),
            "id_number__bi": keyring.blind_index("customer.id_number", idn),
        }

    if rt.dialect == "postgresql":
        cols = ["id", "version", "created_at", "updated_at", "ext", "name", "gender", "mobile", "aum", "owner", "branch", "lifecycle_stage", "id_number", "id_number__bi"]
        raw = rt.engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY e_customer ({', '.join(cols)}) FROM STDIN") as copy:
                for i, rid in enumerate(ids):
                    r = row(i, rid)
                    r["ext"] = "{}"
                    copy.write_row([r[c] for c in cols])
            raw.commit()
        finally:
            raw.close()
        with rt.engine.connect() as conn:
            conn.execute(text("ANALYZE e_customer"))
            conn.commit()
    else:
        batch = []
        with rt.begin() as conn:
            for i, rid in enumerate(ids):
                batch.append(row(i, rid))
                if len(batch) == 10_000:
                    conn.execute(insert(t), batch)
                    batch.clear()
            if batch:
                conn.execute(insert(t), batch)
    return time.perf_counter() - started


def login(base: str, username: str) -> str:
    req = urllib.request.Request(
        base + "/api/v1/security/login",
        data=json.dumps({"username": username, "password": PASSWORD, "provider": "db"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.load(resp)["access_token"])


def http_json(url: str, token: str | None = None, method: str = "GET", body: Any = None) -> tuple[int, Any, float]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers, method=method)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = json.load(resp)
            return resp.status, data, time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), time.perf_counter() - t0


def start_gunicorn(target: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """gunicorn with 2 sync workers; its stderr (FinCRM's access log: one JSON line per request)
    goes to ``log``, a file, as in production. A pipe nobody reads fills up and stops the workers."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "warning", target],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sink,
        )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=2)
        except urllib.error.HTTPError:
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{target} did not start: {log.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


LUA = r"""
local paths = {PATHS}
local tokens = {TOKENS}
request = function()
  local i = math.random(#paths)
  local hdrs = {}
  if #tokens > 0 then hdrs["Authorization"] = "Bearer " .. tokens[((i - 1) % #tokens) + 1] end
  return wrk.format("GET", paths[i], hdrs)
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format('WRKJSON {"requests": %d, "seconds": %f, "p50_ms": %f, "p95_ms": %f, "p99_ms": %f, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, errors))
end
"""


def run_wrk(base: str, paths: list[str], tokens: list[str], seconds: int, connections: int) -> dict[str, float]:
    lua = LUA.replace("{PATHS}", "{" + ",".join(json.dumps(p) for p in paths) + "}").replace(
        "{TOKENS}", "{" + ",".join(json.dumps(t) for t in tokens) + "}"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(lua)
        script = fh.name
    try:
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "-s", script, base],
            capture_output=True, text=True, timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    data["rps"] = data["requests"] / data["seconds"]
    return data


def raw_sql(url: str, ids: list[int], owners: list[int], runs: int) -> dict[str, float]:
    """The same statements, timed in-process straight on the driver (median ms)."""
    from sqlalchemy import create_engine, text

    cols = (
        "id, version, created_at, updated_at, created_by, updated_by, ext, name, gender, birth_date, id_number, mobile, email, "
        "occupation, risk_preference, aum, lifecycle_stage, acquisition_channel, owner, branch, opened_on"
    )
    eng = create_engine(url)
    get_sql = text(f"SELECT {cols} FROM e_customer WHERE id = :id AND retained_at IS NULL")
    list_sql = text(
        f"SELECT {cols} FROM e_customer WHERE retained_at IS NULL AND owner = :o AND lifecycle_stage IN ('growing', 'mature') "
        "ORDER BY aum DESC, id ASC LIMIT 51"
    )
    out = {}
    with eng.connect() as conn:
        for name, stmt, arg in (("get", get_sql, lambda: {"id": random.choice(ids)}), ("list", list_sql, lambda: {"o": random.choice(owners)})):
            samples = []
            for _ in range(runs):
                params = arg()
                t0 = time.perf_counter()
                conn.execute(stmt, params).all()
                samples.append((time.perf_counter() - t0) * 1000)
            out[name] = statistics.median(samples)
    eng.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench")
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per workload")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round counts")
    args = ap.parse_args()
    url = args.database_url
    data_dir = Path(tempfile.mkdtemp(prefix="fincrm-bench-"))
    reset(url)
    app, rm_ids, admin_id = setup_app(url, data_dir)
    seconds = seed(app, args.customers, rm_ids)
    rt = app.extensions["fincrm"].runtime
    dialect = rt.dialect
    print(f"seeded {args.customers} customers on {dialect} in {seconds:.1f} s ({args.customers / seconds:,.0f} rows/s)")
    with rt.engine.connect() as conn:
        from sqlalchemy import text

        all_ids = [r[0] for r in conn.execute(text("SELECT id FROM e_customer ORDER BY random() LIMIT 2000"))]
    rt.dispose()

    if dialect == "postgresql":
        # settle the database before measuring: without this, autovacuum of the freshly loaded
        # table runs during whichever server is measured first
        from sqlalchemy import create_engine, text as sql_text

        eng = create_engine(url, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(sql_text("VACUUM ANALYZE e_customer"))
            conn.execute(sql_text("CHECKPOINT"))
        eng.dispose()

    env = {**env_for(url, data_dir), "FINCRM_AUTO_INIT": "0"}
    results: dict[str, Any] = {"database": dialect, "customers": args.customers, "seed_seconds": seconds, "rounds": args.rounds}
    fin_port, bare_port = 8111, 8112
    fin = start_gunicorn("app:create_app()", fin_port, env, data_dir / "fincrm.log")
    bare = None
    try:
        base = f"http://127.0.0.1:{fin_port}"
        admin_token = login(base, "bench_admin")
        rm_tokens = [login(base, f"bench_rm{i}") for i in range(RMS)]
        list_path = "/api/v1/records/customer?" + urllib.parse.urlencode({"filter": json.dumps(FILTER), "sort": "-aum", "limit": "50"})
        status, first, _ = http_json(base + list_path, rm_tokens[0])
        assert status == 200 and len(first["items"]) == 50, (status, first)
        cursors = []
        for tok in rm_tokens:
            page = http_json(base + list_path, tok)[1]
            cursors.append(list_path + "&" + urllib.parse.urlencode({"cursor": page["next_cursor"]}))
        get_paths = [f"/api/v1/records/customer/{i}" for i in all_ids[:500]]
        workloads: dict[str, tuple[str, list[str], list[str]]] = {
            "fincrm_get": (base, get_paths, [admin_token]),
            "fincrm_list": (base, [list_path] * RMS, rm_tokens),
            "fincrm_page2": (base, cursors, rm_tokens),
        }
        if dialect == "postgresql":
            bare_env = {**os.environ, "BARE_DSN": url.replace("postgresql+psycopg://", "postgresql://")}
            bare = start_gunicorn("bench.bare_app:app", bare_port, bare_env, data_dir / "bare.log")
            bbase = f"http://127.0.0.1:{bare_port}"
            workloads["bare_get"] = (bbase, [f"/customers/{i}" for i in all_ids[:500]], [])
            workloads["bare_list"] = (bbase, [f"/customers?owner={o}" for o in rm_ids], [])
        order = [k for k in ("fincrm_get", "bare_get", "fincrm_list", "bare_list", "fincrm_page2") if k in workloads]
        for key in order:  # warm both servers (workers, caches, prepared plans)
            run_wrk(*workloads[key], 2, args.connections)
        # interleaved rounds, median per workload: FinCRM and bare see the same machine state
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in order}
        for _ in range(args.rounds):
            for key in order:
                runs[key].append(run_wrk(*workloads[key], args.seconds, args.connections))
        for key, samples in runs.items():
            samples.sort(key=lambda r: r["rps"])
            results[key] = {**samples[len(samples) // 2], "rps_all": [round(r["rps"]) for r in samples]}
        # adding a field at N rows: JSON storage, then a real column; then the first filter on it
        timings = {}
        for storage in ("json", "column"):
            name = f"bench_{storage}_field"
            status, body, took = http_json(
                base + "/api/v1/meta/entities/customer/fields", admin_token, "POST",
                {"name": name, "type": "string", "label": {"zh": "压测字段", "en": "Bench field"}, "storage": storage},
            )
            assert status == 201, body
            q = "/api/v1/records/customer?" + urllib.parse.urlencode({"filter": json.dumps({"field": name, "op": "eq", "value": "x"}), "limit": "50"})
            s2, _, first_filter = http_json(base + q, admin_token)
            assert s2 == 200
            timings[storage] = {"add_field_ms": took * 1000, "first_filter_ms": first_filter * 1000}
        results["add_field"] = timings
    finally:
        stop(fin)
        if bare is not None:
            stop(bare)
    results["raw_ms"] = raw_sql(url, all_ids, rm_ids, 500)
    shutil.rmtree(data_dir, ignore_errors=True)

    print(f"\n{'workload':<16}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'errors':>8}")
    for key in ("fincrm_get", "bare_get", "fincrm_list", "bare_list", "fincrm_page2"):
        if key in results:
            r = results[key]
            print(f"{key:<16}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['errors']:>8d}   rounds: {r['rps_all']}")
    if "bare_get" in results:
        results["ratio_get"] = results["fincrm_get"]["rps"] / results["bare_get"]["rps"]
        results["ratio_list"] = results["fincrm_list"]["rps"] / results["bare_list"]["rps"]
        print(f"\nFinCRM / bare throughput: get {results['ratio_get']:.0%}, list {results['ratio_list']:.0%}  (target ≥ 50%)")
    print(f"raw SQL median: get {results['raw_ms']['get']:.2f} ms, list page {results['raw_ms']['list']:.2f} ms")
    for storage, t in results["add_field"].items():
        print(f"add a {storage} field at {args.customers} rows: {t['add_field_ms']:.0f} ms; first filter on it {t['first_filter_ms']:.0f} ms")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"api-{dialect}-{args.customers}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
