"""What row scope and masking cost on a list query, in-process (no HTTP).

Seeds N customers spread over 200 relationship managers, then times the same page query three
ways, each as a median over many runs:

- ``raw``: a hand-written SQLAlchemy Core statement (filter + sort + LIMIT 50), rows fetched;
- ``off``: the records service as the system principal (no scope clause, no masking);
- ``on``: the records service as a relationship manager (scope ``own`` compiled into the SQL,
  masking of name/mobile/ID, decryption skipped for masked values);
- ``on_team``: a supervisor whose team has 10 relationship managers (``owner IN (…)``).

    python bench/scope_bench.py --customers 100000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench
    python bench/scope_bench.py --customers 100000 --database-url sqlite:////tmp/fincrm-scope.db
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.runtime import Runtime  # noqa: E402
from engine.security.crypto import Keyring, aad_for  # noqa: E402
from engine.security.policy import CasbinAuthorizer  # noqa: E402
from engine.security.principal import Principal  # noqa: E402
from engine.services.records import RecordService  # noqa: E402
from engine.services.roles import RoleService  # noqa: E402
from api_bench import reset  # noqa: E402  (bench/ is on the path when run as a script)

RMS = 200


def seed(rt: Runtime, n: int) -> float:
    started = time.perf_counter()
    snap = rt.snapshot()
    t = snap.tables["customer"]
    rng = random.Random(7)
    ids = rt.ids.take("customer", n)
    now = datetime.datetime(2026, 11, 1)
    batch = []
    with rt.begin() as conn:
        for i, rid in enumerate(ids):
            aum = Decimal(math.exp(rng.gauss(11.5, 1.4))).quantize(Decimal("0.01"))
            mobile = f"13{rng.randrange(10**9):09d}"
            batch.append(
                {
                    "id": rid, "version": 1, "created_at": now, "updated_at": now, "created_by": None, "updated_by": None,
                    "ext": {}, "name": f"客户{i:07d}", "mobile": mobile, "aum": aum, "owner": 1000 + (i % RMS),
                    "lifecycle_stage": rng.choice(["new", "growing", "mature", "declining"]),
                    "id_number": rt.keyring.encrypt(f"1101051949123{i % 10000:04d}X", aad_for(t.name, "id_number", rid)),
                }
            )
            if len(batch) == 5000:
                conn.execute(insert(t), batch)
                batch.clear()
        if batch:
            conn.execute(insert(t), batch)
    if rt.dialect == "postgresql":
        with rt.engine.connect() as conn:
            conn.execute(text("ANALYZE e_customer"))
            conn.commit()
    return time.perf_counter() - started


def median_ms(fn, runs: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--database-url", default="sqlite:////tmp/fincrm-scope.db")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--no-seed", action="store_true", help="reuse an already seeded database")
    args = ap.parse_args()
    if not args.no_seed:
        reset(args.database_url)
    rt = Runtime(args.database_url, Keyring(b"b" * 32), b"bench-cursor-secret")
    rt.init_schema()
    authz = CasbinAuthorizer(rt)
    RoleService(rt, authz).sync()
    authz.refresh(rt.stamps()[1])
    seconds = 0.0 if args.no_seed else seed(rt, args.customers)
    svc = RecordService(rt, authz)
    snap = rt.snapshot()
    t = snap.tables["customer"]
    owner = 1000 + 17
    rm = Principal(owner, "rm-bench", frozenset({"relationship_manager"}), team_ids=frozenset({owner}))
    sup = Principal(5000, "sup-bench", frozenset({"supervisor"}), team_ids=frozenset(range(1000, 1010)) | {5000})
    system = Principal.system("bench")
    flt = {"field": "lifecycle_stage", "op": "in", "value": ["growing", "mature"]}

    def raw() -> None:
        with rt.engine.connect() as conn:
            conn.execute(
                select(t.c.id, t.c.version, t.c.name, t.c.mobile, t.c.aum, t.c.owner, t.c.lifecycle_stage)
                .where(t.c.owner == owner, t.c.lifecycle_stage.in_(["growing", "mature"]))
                .order_by(t.c.aum.desc(), t.c.id)
                .limit(51)
            ).all()

    def off() -> None:
        svc.list(system, "customer", filter={"and": [flt, {"field": "owner", "op": "eq", "value": owner}]}, sort="-aum", limit=50)

    def on() -> None:
        svc.list(rm, "customer", filter=flt, sort="-aum", limit=50)

    def on_team() -> None:
        svc.list(sup, "customer", filter=flt, sort="-aum", limit=50)

    assert len(svc.list(rm, "customer", filter=flt, sort="-aum", limit=50).items) == len(
        svc.list(system, "customer", filter={"and": [flt, {"field": "owner", "op": "eq", "value": owner}]}, sort="-aum", limit=50).items
    )
    results = {name: median_ms(fn, args.runs) for name, fn in (("raw", raw), ("off", off), ("on", on), ("on_team", on_team))}
    print(f"database: {rt.dialect}; customers: {args.customers}; seeding {seconds:.1f} s")
    print(f"{'query':<10}{'median ms':>12}{'p95 ms':>10}{'vs raw':>9}")
    for name, (med, p95) in results.items():
        print(f"{name:<10}{med:>12.2f}{p95:>10.2f}{med / results['raw'][0]:>8.2f}x")
    print(f"scope+masking on/off ratio: {results['on'][0] / results['off'][0]:.2f}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"scope-{rt.dialect}-{stamp}.json").write_text(
        json.dumps({"database": rt.dialect, "customers": args.customers, "ms": results}, indent=2)
    )
    rt.dispose()


if __name__ == "__main__":
    main()
