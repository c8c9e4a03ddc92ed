"""Page benchmark: server time and SQL statements of the web pages at N customers.

    python bench/page_bench.py --customers 100000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench
    python bench/page_bench.py --customers 100000 --database-url sqlite:////tmp/fincrm-page-bench.db

Seeds N customers as bench/api_bench.py does (PostgreSQL: COPY with real ciphertexts), plus,
for 20 customers of the first relationship manager, 20 holdings and 480 transactions each
(24 months) with interactions, opportunities, tasks and tickets. Then, logged in through the
login form as that relationship manager (a browser session, CSRF and all), requests each page
in-process through the WSGI app and records its server time (the whole request: session,
principal, queries, template) and the SQL statements it ran (counted with SQLAlchemy events on
every engine the app uses). The list page is compared with the same page's query run directly.

Pages: list (default sort), list filtered + sorted, list page 2 (cursor), new form, edit form,
detail, customer-360 (if the view is installed), My work. Prints p50/p95/max ms, statements
per request (min–max) and writes bench/results/pages-<db>-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_bench import PASSWORD, reset, seed, setup_app  # noqa: E402

RICH = 20  # customers with a full 360 (holdings, 24 months of transactions, …)


def seed_related(app: Any, customer_ids: list[int], owner: int) -> None:
    from engine.security.principal import Principal

    records = app.extensions["fincrm"].records
    system = Principal.system("bench")
    products = [
        records.create(system, "product", {"code": f"P{i:03d}", "name": f"理财产品{i}", "type": "wealth", "risk_level": "R2"})["id"]
        for i in range(20)
    ]
    rng = random.Random(7)
    today = dt.date(2026, 11, 28)
    holdings, txns, contacts, opps, tasks, tickets = [], [], [], [], [], []
    for cid in customer_ids:
        for p in products:
            holdings.append({"customer": cid, "product": p, "amount": str(Decimal(rng.randint(10_000, 500_000))), "start_date": "2025-01-01", "maturity_date": "2027-01-01"})
        for m in range(24):
            for k in range(20):
                day = today - dt.timedelta(days=30 * m + k)
                txns.append({
                    "customer": cid, "product": rng.choice(products), "amount": str(Decimal(rng.randint(100, 100_000))),
                    "direction": rng.choice(["in", "out"]), "channel": "mobile_app", "occurred_at": f"{day.isoformat()}T10:00:00Z",
                })
        for k in range(10):
            contacts.append({"customer": cid, "channel": "phone", "summary": f"电话回访{k}", "occurred_at": f"2026-{1 + k:02d}-15T09:00:00Z", "owner": owner})
        opps.append({"customer": cid, "title": "基金配置", "stage": "contacted", "expected_amount": "100000", "due_date": "2026-12-31", "owner": owner})
        tasks.append({"customer": cid, "title": "生日关怀", "status": "open", "due_at": f"{today - dt.timedelta(days=2)}T09:00:00Z", "owner": owner})
        tickets.append({"customer": cid, "subject": "转账咨询", "category": "inquiry", "status": "new", "owner": owner})
    for entity, rows in (("holding", holdings), ("transaction", txns), ("interaction", contacts), ("opportunity", opps), ("task", tasks), ("ticket", tickets)):
        try:
            for i in range(0, len(rows), 2000):
                records.bulk_insert(system, entity, rows[i : i + 2000])
        except Exception as exc:  # a field the entity does not have: report and go on with what loads
            print(f"  ! {entity}: {exc}")


class Counter:
    """SQL statements and their time per request, from cursor events on the app's engines."""

    def __init__(self, engines: list[Any]) -> None:
        from sqlalchemy import event

        self.count = 0
        self.sql_ms = 0.0
        self._t0: list[float] = []
        for eng in engines:
            event.listen(eng, "before_cursor_execute", self._before)
            event.listen(eng, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self.count += 1
        self._t0.append(time.perf_counter())

    def _after(self, *args: Any) -> None:
        if self._t0:
            self.sql_ms += (time.perf_counter() - self._t0.pop()) * 1000

    def reset(self) -> None:
        self.count, self.sql_ms = 0, 0.0


def page_login(client: Any, username: str) -> None:
    form = client.get("/login/").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form) or re.search(r'value="([^"]+)"[^>]*name="csrf_token"', form)
    assert token, "no CSRF token on the login form"
    resp = client.post("/login/", data={"username": username, "password": PASSWORD, "csrf_token": token.group(1)})
    assert resp.status_code in (302, 303), resp.status_code


def measure(client: Any, counter: Counter, paths: list[str], runs: int) -> dict[str, Any]:
    samples, counts, sql = [], [], []
    for i in range(runs):
        path = paths[i % len(paths)]
        counter.reset()
        t0 = time.perf_counter()
        resp = client.get(path)
        body = resp.get_data()
        samples.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (path, resp.status_code, body[:300])
        counts.append(counter.count)
        sql.append(counter.sql_ms)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "max_ms": round(samples[-1], 2),
        "statements": [min(counts), max(counts)],
        "sql_ms_median": round(statistics.median(sql), 2),
    }


def raw_list_ms(url: str, owner: int, runs: int) -> float:
    """The list page's own query (scope owner = me, default sort -aum, 51 rows), run directly."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    stmt = text("SELECT * FROM e_customer WHERE retained_at IS NULL AND owner = :o ORDER BY aum DESC, id ASC LIMIT 51")
    samples = []
    with eng.connect() as conn:
        for _ in range(runs):
            t0 = time.perf_counter()
            conn.execute(stmt, {"o": owner}).all()
            samples.append((time.perf_counter() - t0) * 1000)
    eng.dispose()
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/fincrm_bench")
    ap.add_argument("--runs", type=int, default=200, help="requests per page")
    args = ap.parse_args()

    url = args.database_url
    reset(url)
    data_dir = Path(tempfile.mkdtemp(prefix="fincrm-page-bench-"))
    app, rm_ids, _ = setup_app(url, data_dir)
    print(f"seeding {args.customers:,} customers …", flush=True)
    seconds = seed(app, args.customers, rm_ids)
    print(f"  {seconds:.1f} s", flush=True)
    rt = app.extensions["fincrm"].runtime
    from sqlalchemy import select

    t = rt.cached_snapshot().tables["customer"]
    with rt.engine.connect() as conn:
        mine = [r[0] for r in conn.execute(select(t.c.id).where(t.c.owner == rm_ids[0]).order_by(t.c.aum.desc()).limit(RICH))]
    print(f"seeding the 360 of {len(mine)} customers …", flush=True)
    t0 = time.perf_counter()
    seed_related(app, mine, rm_ids[0])
    print(f"  {time.perf_counter() - t0:.1f} s", flush=True)

    with app.app_context():
        fab_engine = app.extensions["sqlalchemy"].engine
    counter = Counter([rt.engine, rt.write_engine, fab_engine])
    client = app.test_client()
    page_login(client, "bench_rm0")
    first = client.get("/e/customer/").get_data(as_text=True)
    cursor = re.search(r'id="next-page" href="\?[^"]*cursor=([^"&]+)', first)
    pages: dict[str, list[str]] = {
        "list": ["/e/customer/"],
        "list filtered+sorted": [
            "/e/customer/?f_field=lifecycle_stage&f_op=eq&f_value=growing&sort=-aum",
            "/e/customer/?f_field=aum&f_op=gt&f_value=100000&sort=name",
        ],
        "new form": ["/e/customer/new"],
        "edit form": [f"/e/customer/{cid}/edit" for cid in mine],
        "detail": [f"/e/customer/{cid}" for cid in mine],
    }
    if cursor:
        pages["list page 2"] = [f"/e/customer/?cursor={cursor.group(1)}"]
    rules = {r.rule for r in app.url_map.iter_rules()}
    if "/c360/<int:customer_id>" in rules:
        pages["customer-360"] = [f"/c360/{cid}" for cid in mine]
    if "/mywork/" in rules:
        pages["my work"] = ["/mywork/"]
    results: dict[str, Any] = {}
    for name, paths in pages.items():
        measure(client, counter, paths, 10)  # warm caches (metadata, policy, templates)
        results[name] = measure(client, counter, paths, args.runs)
    raw = raw_list_ms(url, rm_ids[0], args.runs)
    results["list"]["raw_sql_ms"] = round(raw, 2)
    db = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(f"\n{args.customers:,} customers on {db}; {args.runs} requests per page, server time in-process\n")
    print(f"{'page':24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'SQL stmts':>10} {'SQL ms':>8}")
    for name, r in results.items():
        print(f"{name:24} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} {r['statements'][0]:>4}–{r['statements'][1]:<5} {r['sql_ms_median']:8.2f}")
    print(f"\nlist page query run directly: {raw:.2f} ms median (page p50 / raw = {results['list']['p50_ms'] / raw:.0f}×)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pages-{db}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"customers": args.customers, "database": db, "runs": args.runs, "pages": results}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
