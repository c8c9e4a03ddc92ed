"""Import of valid customer rows: FinCRM's whole pipeline against loading the same clean rows.

    python bench/import_bench.py                                  # PostgreSQL + SQLite, 100k rows
    python bench/import_bench.py --customers 1000000 --databases postgresql
    python bench/import_bench.py --customers 100000 --xlsx        # also time XLSX parsing
    python bench/import_bench.py --customers 1000000 --databases sqlite --batch-size 10000

For each database: N distinct, valid customers (Faker-free generator shared with the demo: real
GB 11643 ID numbers, assigned mobile ranges, Chinese headers, ``2024/01/02`` dates, 男/女, AUM
with decimals) are written to a UTF-8 CSV. Then, ``--rounds`` times (median reported):

a. FinCRM: ``Importer.run`` on that file as the system principal — encoding sniffing, header
   mapping by zh label, cell cleaning, validation of every field (checksum, birth date, mobile
   range, decimal scale), AES-256-GCM encryption and the HMAC blind index of the ID number,
   deduplication within the file and against the table (blind-index lookups), rule and scope
   checks, batched transactions (``--batch-size``, default 2,000) with job progress, audit — rows into ``e_customer`` through
   ``COPY`` (PostgreSQL) or ``executemany`` (SQLite);
b. the direct load: the very rows a stored (read back from ``e_customer``: already encrypted,
   indexed, with ids) loaded into a twin table with the same columns and indexes — PostgreSQL:
   ``COPY … FROM STDIN`` with psycopg's ``write_row``; SQLite: one ``executemany`` in one
   transaction with the sqlite3 module.

The ratio a/b (rows/s) has a target of ≥ 50%. ``--xlsx`` also writes the same rows as an XLSX and
times parsing alone (openpyxl read-only) against parsing the CSV. Results go to
bench/results/import_bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, delete

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.demo import make_id_number, make_mobile  # noqa: E402
from engine.io.importer import Importer, ImportOptions, import_error_table, import_job_table  # noqa: E402
from engine.io.sources import open_source  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.security.audit import audit_table  # noqa: E402
from engine.security.authz import BasicAuthorizer  # noqa: E402
from engine.security.crypto import Keyring  # noqa: E402
from engine.security.principal import Principal  # noqa: E402
from engine.services.records import RecordService  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "fincrm_import_bench"
HEADERS = ["姓名", "性别", "出生日期", "身份证号", "手机号", "职业", "资产规模", "生命周期"]
STAGES = ["潜在客户", "新客户", "成长期", "成熟期", "衰退期"]
OCCUPATIONS = ["工程师", "教师", "医生", "会计", "销售", "公务员", "个体经营", "律师"]


def people_csv(path: Path, n: int, seed: int = 2026) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    surnames = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
    given = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADERS)
        while len(seen) < n:
            birth = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(0, 20000))
            male = rng.random() < 0.5
            idn = make_id_number(rng, birth, male)
            if idn in seen:
                continue
            seen.add(idn)
            aum = int(rng.lognormvariate(11, 1.6))
            writer.writerow(
                [
                    rng.choice(surnames) + "".join(rng.choice(given) for _ in range(rng.randrange(1, 3))),
                    "男" if male else "女",
                    birth.strftime("%Y/%m/%d"),
                    idn,
                    make_mobile(rng),
                    rng.choice(OCCUPATIONS),
                    f"{aum}.{rng.randrange(100):02d}",
                    rng.choice(STAGES),
                ]
            )


def runtime_for(kind: str, workdir: Path) -> Runtime:
    if kind == "postgresql":
        from tests.conftest import reset_postgres

        url = reset_postgres(PG_URL, SCHEMA)
    else:
        db = workdir / "import-bench.db"
        for f in workdir.glob("import-bench.db*"):
            f.unlink()
        url = f"sqlite:///{db}"
    rt = Runtime(url, Keyring(b"b" * 32), b"bench-cursor-secret")
    rt.init_schema()
    return rt


def clear(rt: Runtime) -> None:
    t = rt.cached_snapshot().tables["customer"]
    with rt.begin() as conn:
        conn.execute(delete(t))
        conn.execute(delete(import_error_table))
        conn.execute(delete(import_job_table))
        conn.execute(delete(audit_table).where(audit_table.c.action.in_(["import_batch", "import_start", "import_end"])))


def fincrm_round(rt: Runtime, records: RecordService, source: Path, workdir: Path, batch_size: int = 2000) -> tuple[float, dict[str, Any]]:
    clear(rt)
    imp = Importer(records, workdir / "data")
    system = Principal.system("bench")
    t0 = time.perf_counter()
    job = imp.create(system, "customer", source, source.name, ImportOptions(batch_size=batch_size), keep=False)
    imp.claim(job["id"])
    job = imp.run(system, job["id"])
    return time.perf_counter() - t0, job


def twin(rt: Runtime) -> Table:
    """A table with e_customer's columns and indexes, under another name."""
    snap = rt.cached_snapshot()
    src = snap.tables["customer"]
    md = MetaData()
    for other in snap.tables.values():  # so foreign keys resolve (same constraints as e_customer)
        if other is not src:
            other.to_metadata(md)
    t = src.to_metadata(md, name="bench_twin")
    for ix in list(t.indexes):
        ix.name = f"bench_twin_{ix.name}"[:63]
    for c in t.constraints:
        if c.name:
            c.name = f"bench_twin_{c.name}"[:63]
    with rt.begin() as conn:
        t.drop(conn, checkfirst=True)
        t.create(conn)
    return t


def direct_round(rt: Runtime, rows: list[tuple[Any, ...]], names: list[str], twin_table: Table) -> float:
    with rt.begin() as conn:
        conn.execute(delete(twin_table))
    raw = rt.write_engine.raw_connection()
    try:
        t0 = time.perf_counter()
        if rt.dialect == "postgresql":
            from psycopg import sql

            cur = raw.cursor()
            stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(twin_table.name), sql.SQL(", ").join(map(sql.Identifier, names)))
            with cur.copy(stmt) as copy:  # type: ignore[attr-defined]
                for r in rows:
                    copy.write_row(r)
            raw.commit()
        else:
            cur = raw.cursor()
            cur.execute("BEGIN")
            cur.executemany(f"INSERT INTO bench_twin ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
            cur.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        raw.close()


def stored_rows(rt: Runtime) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The rows as FinCRM stored them, in the driver's own types (ready for COPY / executemany)."""
    t = rt.cached_snapshot().tables["customer"]
    names = [c.name for c in t.columns]
    raw = rt.write_engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT {', '.join(names)} FROM e_customer ORDER BY id")
        rows = [tuple(r) for r in cur.fetchall()]
    finally:
        raw.close()
    if rt.dialect == "postgresql":
        from psycopg.types.json import Jsonb

        ext = names.index("ext")
        rows = [r[:ext] + (Jsonb(r[ext]) if r[ext] is not None else None,) + r[ext + 1 :] for r in rows]
    return names, rows


def xlsx_parse(source: Path, workdir: Path) -> dict[str, float]:
    from openpyxl import Workbook

    target = workdir / "import-bench.xlsx"
    wb = Workbook(write_only=True)
    ws = wb.create_sheet()
    with open(source, encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh):
            ws.append(row)
    wb.save(target)
    out = {}
    for label, path in (("csv", source), ("xlsx", target)):
        t0 = time.perf_counter()
        n = sum(1 for _ in open_source(path).rows())
        out[label] = time.perf_counter() - t0
        out[f"{label}_rows"] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--databases", default="postgresql,sqlite")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--xlsx", action="store_true")
    ap.add_argument("--batch-size", type=int, default=2000, help="rows per transaction of the import (its batch_size option)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fincrm-import-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"customers-{args.customers}.csv"
    if not source.exists():
        print(f"writing {args.customers} rows to {source} …", file=sys.stderr)
        people_csv(source, args.customers)
    results: dict[str, Any] = {"customers": args.customers, "rounds": args.rounds, "batch_size": args.batch_size, "databases": {}}
    for kind in [k.strip() for k in args.databases.split(",") if k.strip()]:
        rt = runtime_for(kind, workdir)
        records = RecordService(rt, BasicAuthorizer())
        ours, theirs = [], []
        job: dict[str, Any] = {}
        for i in range(args.rounds):
            seconds, job = fincrm_round(rt, records, source, workdir, args.batch_size)
            assert job["status"] == "done" and job["counts"]["inserted"] == args.customers, job
            ours.append(seconds)
            if i == 0:
                names, rows = stored_rows(rt)
                twin_table = twin(rt)
            theirs.append(direct_round(rt, rows, names, twin_table))
            print(f"{kind} round {i + 1}: FinCRM {seconds:.2f} s, direct {theirs[-1]:.2f} s", file=sys.stderr)
        a, b = statistics.median(ours), statistics.median(theirs)
        results["databases"][kind] = {
            "fincrm_seconds": ours, "direct_seconds": theirs, "fincrm_median_s": a, "direct_median_s": b,
            "fincrm_rows_per_s": args.customers / a, "direct_rows_per_s": args.customers / b, "ratio": b / a,
            "direct": "COPY FROM STDIN (psycopg write_row)" if kind == "postgresql" else "sqlite3 executemany, one transaction",
        }
        rt.dispose()
    if args.xlsx:
        results["parse_only"] = xlsx_parse(source, workdir)
    print(f"\n{'database':<12} {'FinCRM rows/s':>14} {'direct rows/s':>14} {'ratio':>7}   (median of {args.rounds}, {args.customers} rows, batches of {args.batch_size})")
    for kind, r in results["databases"].items():
        print(f"{kind:<12} {r['fincrm_rows_per_s']:>14,.0f} {r['direct_rows_per_s']:>14,.0f} {r['ratio']:>7.0%}   direct = {r['direct']}")
    if "parse_only" in results:
        p = results["parse_only"]
        print(f"parse only: CSV {p['csv']:.2f} s ({p['csv_rows'] / p['csv']:,.0f} rows/s), XLSX {p['xlsx']:.2f} s ({p['xlsx_rows'] / p['xlsx']:,.0f} rows/s)")
    out = ROOT / "bench" / "results" / f"import_bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"written {out}")


if __name__ == "__main__":
    main()
