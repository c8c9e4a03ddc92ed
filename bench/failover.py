"""Failover on real PostgreSQL: the recovery point (acknowledged writes lost) and the recovery time.

    python bench/failover.py                          # 3 rounds each of async and sync replication
    python bench/failover.py --rounds 5 --writers 4 --seconds 3 --modes async

For each mode and round: a throwaway primary and hot standby on loopback (``tests/pgcluster.py``:
``initdb``, ``pg_basebackup -R``, their own ports and data dirs), the app on the primary, and W
writer threads creating customers through the REST API (one Flask test client each) for S
seconds. Then, while they keep writing, the primary is stopped with ``pg_ctl stop -m immediate``
(a lost machine: no checkpoint, no goodbye), the standby is promoted (``pg_ctl promote``), a new
app is started on it (the operator repoints ``FINCRM_DATABASE_URL``) and writes once.

- ``async``: PostgreSQL's default asynchronous streaming. A commit is acknowledged once it is
  durable on the primary; WAL not yet received by the standby when the primary dies is lost.
- ``sync``: ``synchronous_standby_names`` names the standby (``synchronous_commit = on``): a
  commit is acknowledged only after the standby has flushed its WAL, so nothing acknowledged is
  lost — each commit pays a round trip to the standby instead.

Reported per round: writes acknowledged (201) before the primary died, how many of those are
missing on the promoted standby (RPO in rows), the standby's replay lag just before the stop,
the time from the stop to the end of the promotion, and the time from the stop to the first
successful write on the promoted standby (RTO, app start included — failure detection and the
operator's decision are not). Results go to bench/results/failover-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.api_helpers import Logins, add_staff, app_config, dispose  # noqa: E402
from tests.pgcluster import require_binaries, start_primary  # noqa: E402

CUSTOMERS = "/api/v1/records/customer"


def make_app(data_dir: Path, url: str) -> Any:
    from app import create_app

    application = create_app(app_config(str(data_dir), url))
    add_staff(application)
    return application


def writer(application: Any, headers: dict[str, str], stop: threading.Event, acked: list[int], n: int) -> None:
    client = application.test_client()
    i = 0
    while not stop.is_set():
        i += 1
        try:
            resp = client.post(CUSTOMERS, json={"name": f"压测{n}-{i}", "aum": "100"}, headers=headers)
        except Exception:  # noqa: BLE001  (the database went away under the request: not acknowledged)
            continue
        if resp.status_code == 201:
            acked.append(int(resp.json["id"]))


def present_ids(client: Any, headers: dict[str, str]) -> set[int]:
    ids: set[int] = set()
    cursor = None
    while True:
        resp = client.get(f"{CUSTOMERS}?limit=500&fields=name" + (f"&cursor={cursor}" if cursor else ""), headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        ids |= {int(item["id"]) for item in resp.json["items"]}
        cursor = resp.json["next_cursor"]
        if cursor is None:
            return ids


def one_round(mode: str, writers: int, seconds: float) -> dict[str, Any]:
    cluster = start_primary()
    work = Path(tempfile.mkdtemp(prefix="fincrm-failover-"))
    try:
        standby = cluster.add_replica("standby1")
        if mode == "sync":
            cluster.primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
            cluster.primary.sql("SELECT pg_reload_conf()")
            while cluster.primary.sql("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
                time.sleep(0.05)
        app = make_app(work, cluster.primary.url)
        admin = Logins(app.test_client())("admin")
        acked: list[int] = []
        stop = threading.Event()
        threads = [threading.Thread(target=writer, args=(app, admin, stop, acked, n), daemon=True) for n in range(writers)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        lag = cluster.lag_bytes(standby)
        started = time.monotonic()
        cluster.primary.stop("immediate")
        stop.set()
        for t in threads:
            t.join(timeout=30)
        acknowledged = list(acked)
        dispose(app)
        standby.promote()
        promoted = time.monotonic() - started
        after = make_app(work, standby.url)
        client = after.test_client()
        admin = Logins(client)("admin")
        resp = client.post(CUSTOMERS, json={"name": "切换后", "aum": "1"}, headers=admin)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        rto = time.monotonic() - started
        present = present_ids(client, admin)
        verify = client.get("/api/v1/audit/verify", headers=admin).json
        dispose(after)
        return {
            "mode": mode,
            "acknowledged": len(acknowledged),
            "lost": sum(1 for cid in acknowledged if cid not in present),
            "lag_bytes_before_stop": lag,
            "promote_s": round(promoted, 3),
            "rto_s": round(rto, 3),
            "writes_per_s": round(len(acknowledged) / seconds, 1),
            "audit_ok": bool(verify["ok"]),
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--modes", default="async,sync")
    args = parser.parse_args()
    require_binaries_or_exit()
    logging.disable(logging.ERROR)  # the writers' failed requests at the moment of the stop
    results = []
    for mode in args.modes.split(","):
        for r in range(args.rounds):
            res = one_round(mode, args.writers, args.seconds)
            results.append(res)
            print(json.dumps(res, ensure_ascii=False), flush=True)
    summary = {}
    for mode in args.modes.split(","):
        rows = [r for r in results if r["mode"] == mode]
        summary[mode] = {
            "rounds": len(rows),
            "lost_total": sum(r["lost"] for r in rows),
            "acknowledged_total": sum(r["acknowledged"] for r in rows),
            "promote_s_median": statistics.median(r["promote_s"] for r in rows),
            "rto_s_median": statistics.median(r["rto_s"] for r in rows),
            "rto_s_max": max(r["rto_s"] for r in rows),
            "writes_per_s_median": statistics.median(r["writes_per_s"] for r in rows),
        }
    print(json.dumps(summary, indent=1))
    out = ROOT / "bench" / "results" / f"failover-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rounds": results, "summary": summary}, indent=1))
    print(f"results: {out}")


def require_binaries_or_exit() -> None:
    try:
        require_binaries()
    except BaseException as exc:  # pytest.skip outside pytest
        sys.exit(f"cannot run: {exc}")


if __name__ == "__main__":
    main()
