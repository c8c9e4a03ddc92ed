"""Package benchmark: publishing a vertical template on a database that already holds customers.

    python bench/package_bench.py --customers 100000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench
    python bench/package_bench.py --customers 100000 --database-url sqlite:////tmp/fincrm-bench.db
    python bench/package_bench.py --package securities --rounds 3

Each round: reset the database, create the schema through the app, load N customers (COPY on
PostgreSQL, executemany on SQLite — bench/api_bench.py's loader), then time

- ``dry_run``: the publish plan (the whole publish executed and rolled back);
- ``publish``: the publish itself — candidate metadata built and checked, the schema steps,
  package row, role policy, seed records, audit entry, one transaction;
- ``noop``: publishing the same content again;
- ``rollback``: back to no package (metadata only).

"The same work done directly" is the schema change alone: on a second freshly loaded database,
the same schema steps (CREATE TABLE / ALTER TABLE ADD COLUMN / CREATE INDEX, compiled from the
same table definitions) run in one transaction with nothing else. The ratio publish / direct
shows what the metadata engine adds on top of the DDL it cannot avoid.

Prints medians and writes bench/results/package-<db>-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_bench import reset, seed, setup_app  # noqa: E402


def fresh(url: str, data_dir: Path, customers: int) -> tuple[Any, float]:
    reset(url)
    app, rm_ids, _admin = setup_app(url, data_dir)
    return app, seed(app, customers, rm_ids)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def close(app: Any) -> None:
    app.extensions["fincrm"].runtime.dispose()
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def one_round(url: str, data_dir: Path, customers: int, package: str) -> dict[str, Any]:
    from engine.security.principal import Principal
    from engine.store.migrate import apply_migration, plan_migration

    system = Principal.system("bench")
    app, seeded = fresh(url, data_dir, customers)
    svc = app.extensions["fincrm"]
    with app.app_context():
        t_dry, plan = timed(lambda: svc.packages.publish(system, package, dry_run=True))
        t_pub, published = timed(lambda: svc.packages.publish(system, package))
        t_noop, again = timed(lambda: svc.packages.publish(system, package))
        t_back, _ = timed(lambda: svc.packages.rollback(system, package))
        assert not published["noop"] and again["noop"], "publish twice must be a no-op"
        assert published["migration"] == plan["migration"], "the dry run's plan is what publish applied"
    close(app)

    app2, _ = fresh(url, data_dir, customers)
    rt = app2.extensions["fincrm"].runtime
    with app2.app_context():
        from engine.meta.packages import check_package, load_package_dir, shipped_packages

        # the metadata the publish produced, to replay its schema steps alone
        pkg = check_package(load_package_dir(shipped_packages()[package]))
        with rt.begin() as conn:
            snap = rt.build(conn, rt.cached_snapshot().version, packages=[pkg])
            steps = plan_migration(conn, snap.metadata)

        def direct() -> None:
            with rt.begin() as conn:
                apply_migration(conn, snap.metadata, steps)

        t_direct, _ = timed(direct)
    close(app2)
    return {
        "seed_s": seeded, "dry_run_s": t_dry, "publish_s": t_pub, "noop_s": t_noop, "rollback_s": t_back, "direct_ddl_s": t_direct,
        "steps": len(steps), "changes": published["changes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench")
    ap.add_argument("--package", default="bank")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="fincrm-pkg-bench-") as tmp:
        for i in range(args.rounds):
            r = one_round(args.database_url, Path(tmp), args.customers, args.package)
            rounds.append(r)
            print(
                f"round {i + 1}: seed {r['seed_s']:.1f}s | dry run {r['dry_run_s']:.2f}s | publish {r['publish_s']:.2f}s | "
                f"no-op {r['noop_s'] * 1000:.0f}ms | rollback {r['rollback_s']:.2f}s | same DDL directly {r['direct_ddl_s']:.2f}s ({r['steps']} steps)",
                flush=True,
            )
    med = {k: statistics.median(r[k] for r in rounds) for k in ("dry_run_s", "publish_s", "noop_s", "rollback_s", "direct_ddl_s")}
    db = "postgresql" if args.database_url.startswith("postgresql") else "sqlite"
    print(f"\n{args.package} on {db}, {args.customers:,} customers, median of {len(rounds)}:")
    print(f"  publish {med['publish_s']:.2f} s, dry run {med['dry_run_s']:.2f} s, republish (no-op) {med['noop_s'] * 1000:.0f} ms, rollback {med['rollback_s']:.2f} s")
    print(f"  the same schema steps directly: {med['direct_ddl_s']:.2f} s → publish / direct = {med['publish_s'] / max(med['direct_ddl_s'], 1e-9):.1f}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"package-{db}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "rounds": rounds, "median": med}, indent=1, default=str))
    print(f"  written to {path.relative_to(ROOT)}")
    os._exit(0)  # pools of the two apps are disposed; skip interpreter teardown of FAB globals


if __name__ == "__main__":
    main()
