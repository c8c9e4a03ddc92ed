"""Reports (issue #7): metadata computed in SQL, row scope, masking, exports, edits, schedules."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from decimal import Decimal
from typing import Any

from openpyxl import load_workbook

from engine.security.principal import Principal
from tests.api_helpers import app, assert_error, client, login, shared_app  # noqa: F401  (module-wide app)

SYSTEM = Principal.system("test")
TIERS = (("mass", None, Decimal("50000")), ("gold", Decimal("50000"), Decimal("500000")),
         ("platinum", Decimal("500000"), Decimal("1000000")), ("diamond", Decimal("1000000"), Decimal("6000000")),
         ("private", Decimal("6000000"), None))


def _uid(app: Any, username: str) -> int:
    with app.app_context():
        return int(app.appbuilder.sm.find_user(username=username).id)


def _insert(app: Any, entity: str, rows: list[dict[str, Any]]) -> list[int]:
    with app.app_context():
        return app.extensions["fincrm"].records.bulk_insert(SYSTEM, entity, rows)


def _customers(app: Any, n: int = 60, seed: int = 7) -> list[dict[str, Any]]:
    """Customers of rm1 and rm2 with AUMs on and around every tier boundary."""
    rnd = random.Random(seed)
    owners = {"rm1": _uid(app, "rm1"), "rm2": _uid(app, "rm2")}
    edges = [Decimal("0"), Decimal("49999.99"), Decimal("50000"), Decimal("499999.99"), Decimal("500000"), Decimal("999999.99"),
             Decimal("1000000"), Decimal("6000000"), Decimal("12000000.5")]
    rows = []
    for i in range(n):
        aum = edges[i] if i < len(edges) else Decimal(rnd.randint(0, 900_000_000)) / 100
        rows.append({"name": f"客户{i:03d}", "owner": owners["rm1" if i % 3 else "rm2"], "aum": str(aum),
                     "acquisition_channel": rnd.choice(["outlet", "online", "mobile_app"]), "opened_on": "2026-03-01"})
    ids = _insert(app, "customer", rows)
    for r, rid in zip(rows, ids):
        r["id"] = rid
        r["rm"] = "rm1" if r["owner"] == owners["rm1"] else "rm2"
    return rows


def _tier(aum: Decimal) -> str:
    return next(name for name, lo, hi in TIERS if (lo is None or aum >= lo) and (hi is None or aum < hi))


def _expected_tiers(rows: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    out: dict[str, tuple[int, Decimal]] = {}
    for r in rows:
        n, total = out.get(_tier(Decimal(r["aum"])), (0, Decimal(0)))
        out[_tier(Decimal(r["aum"]))] = (n + 1, total + Decimal(r["aum"]))
    return out


def _table(result: dict[str, Any]) -> list[dict[str, Any]]:
    names = [c["name"] for c in result["columns"]]
    return [dict(zip(names, row)) for row in result["rows"]]


def test_aum_tiers_are_computed_in_sql_and_kept_in_each_readers_scope(app: Any, client: Any, login: Any) -> None:
    rows = _customers(app)
    for user, subset in (("admin", rows), ("rm1", [r for r in rows if r["rm"] == "rm1"]), ("rm2", [r for r in rows if r["rm"] == "rm2"])):
        resp = client.get("/api/v1/reports/aum_tiers", headers=login(user))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        got = {r["tier"]: (r["customers"], Decimal(r["total_aum"])) for r in _table(resp.json)}
        assert got == _expected_tiers(subset), user
        for r in _table(resp.json):
            expected_avg = got[r["tier"]][1] / got[r["tier"]][0]
            assert abs(Decimal(str(r["average_aum"])) - expected_avg) < Decimal("0.01")
    cols = {c["name"]: c for c in resp.json["columns"]}
    assert [o["label"]["zh"] for o in cols["tier"]["options"]] == ["普通", "金卡", "白金", "钻石", "私行"]


def test_value_top100_sorts_by_aum_with_related_counts_and_the_readers_masking(app: Any, client: Any, login: Any) -> None:
    rows = _customers(app, 130)
    richest = max(rows, key=lambda r: Decimal(r["aum"]))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    _insert(app, "transaction", [
        {"customer": richest["id"], "amount": "100.00", "direction": "in", "channel": "online", "occurred_at": (now - dt.timedelta(days=d)).isoformat() + "Z"}
        for d in (1, 10, 89, 120)
    ])
    result = client.get("/api/v1/reports/value_top100", headers=login("admin")).json
    table = _table(result)
    assert len(table) == 100 and result["truncated"] is False
    aums = [Decimal(r["aum"]) for r in table]
    assert aums == sorted((Decimal(r["aum"]) for r in rows), reverse=True)[:100]
    shown = client.get(f"/api/v1/records/customer/{richest['id']}", headers=login("admin")).json["name"]
    assert table[0]["name"] == shown and table[0]["transactions_90d"] == 3 and table[0]["products_held"] == 0
    assert table[0]["owner"] == richest["rm"]
    # rm1: only rm1's customers, names as rm1's own list shows them
    mine = _table(client.get("/api/v1/reports/value_top100", headers=login("rm1")).json)
    listed = client.get("/api/v1/records/customer?limit=200&fields=name", headers=login("rm1")).json["items"]
    assert {r["name"] for r in mine} == {i["name"] for i in listed}
    assert len(mine) == len([r for r in rows if r["rm"] == "rm1"])


def test_masked_fields_are_masked_in_rows_and_cannot_be_grouped(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    _insert(app, "customer", [{"name": "欧阳娜娜", "mobile": "13800138000", "owner": _uid(app, "rm1")}])
    body = {"label": {"zh": "客户手机", "en": "Mobiles"}, "entity": "customer",
            "columns": [{"name": "name", "field": "name"}, {"name": "mobile", "field": "mobile"}]}
    assert client.put("/api/v1/meta/reports/mobiles", json=body, headers=admin).status_code == 200
    table = _table(client.get("/api/v1/reports/mobiles", headers=login("rm1")).json)
    assert table == [{"name": "欧阳娜娜", "mobile": "138****8000"}]
    grouped = {"label": {"zh": "按手机", "en": "By mobile"}, "entity": "customer",
               "columns": [{"name": "mobile", "field": "mobile"}, {"name": "n", "label": {"zh": "数", "en": "n"}, "agg": "count"}]}
    assert client.put("/api/v1/meta/reports/by_mobile", json=grouped, headers=admin).status_code == 200
    assert_error(client.get("/api/v1/reports/by_mobile", headers=login("rm1")), 403)


def test_monthly_activity_buckets_by_beijing_month_and_exports_formula_safe(app: Any, client: Any, login: Any) -> None:
    cust = _customers(app, 4)
    txns = [
        (cust[0], "2026-01-31T15:59:00Z", "10.00"),  # 23:59 in Beijing: January
        (cust[0], "2026-01-31T16:00:00Z", "20.00"),  # 00:00 on 1 February in Beijing
        (cust[1], "2026-02-10T02:00:00Z", "30.00"),
        (cust[1], "2026-02-11T02:00:00Z", "40.00"),
        (cust[2], "2026-03-05T02:00:00Z", "50.00"),
    ]
    _insert(app, "transaction", [{"customer": c["id"], "amount": a, "direction": "in", "channel": "online", "occurred_at": t} for c, t, a in txns])
    admin = login("admin")
    result = client.get("/api/v1/reports/monthly_active_customers?since=2026-01-01", headers=admin).json
    assert _table(result) == [
        {"month": "2026-01", "active_customers": 1, "transactions": 1, "amount": "10.00"},
        {"month": "2026-02", "active_customers": 2, "transactions": 3, "amount": "90.00"},
        {"month": "2026-03", "active_customers": 1, "transactions": 1, "amount": "50.00"},
    ]
    assert result["params"] == {"since": "2026-01-01"}
    narrowed = client.get("/api/v1/reports/monthly_active_customers?since=2026-02-01", headers=admin).json
    assert [r["month"] for r in _table(narrowed)] == ["2026-02", "2026-03"]
    resp = client.get("/api/v1/reports/monthly_active_customers?since=2026-01-01&format=xlsx&lang=en", headers=admin)
    assert resp.status_code == 200
    sheet = list(load_workbook(io.BytesIO(resp.get_data()), read_only=True).active.iter_rows(values_only=True))
    assert sheet[0] == ("Month", "Active customers", "Transactions", "Amount")
    assert sheet[2] == ("2026-02", 2, 3, Decimal("90.00")) or sheet[2][:3] == ("2026-02", 2, 3)
    audit = client.get("/api/v1/audit", headers=admin, query_string={"action": "export"}).get_json()
    items = audit.get("items", audit) if isinstance(audit, dict) else audit
    assert any((i.get("detail") or {}).get("report") == "monthly_active_customers" for i in items)


def test_ticket_handling_time_averages_hours_between_opened_and_resolved(app: Any, client: Any, login: Any) -> None:
    cust = _customers(app, 3)
    tickets = [
        ("complaint", "2026-04-01T01:00:00Z", "2026-04-01T05:00:00Z"),  # 4 h
        ("complaint", "2026-04-02T01:00:00Z", "2026-04-03T03:00:00Z"),  # 26 h
        ("complaint", "2026-04-03T01:00:00Z", None),  # open
        ("inquiry", "2026-04-03T01:00:00Z", "2026-04-03T02:00:00Z"),
        ("complaint", "2026-05-01T01:00:00Z", "2026-05-01T13:30:00Z"),  # 12.5 h
    ]
    _insert(app, "ticket", [
        {"subject": f"工单{i}", "customer": cust[0]["id"], "category": c, "status": "resolved" if r else "new", "opened_at": o, **({"resolved_at": r} if r else {})}
        for i, (c, o, r) in enumerate(tickets)
    ])
    table = _table(client.get("/api/v1/reports/ticket_handling_time?since=2026-01-01", headers=login("admin")).json)
    assert table == [
        {"month": "2026-04", "tickets": 3, "resolved": 2, "avg_hours": 15.0},
        {"month": "2026-05", "tickets": 1, "resolved": 1, "avg_hours": 12.5},
    ]
    inquiries = _table(client.get("/api/v1/reports/ticket_handling_time?since=2026-01-01&category=inquiry", headers=login("admin")).json)
    assert inquiries == [{"month": "2026-04", "tickets": 1, "resolved": 1, "avg_hours": 1.0}]


def test_bad_parameters_and_filters_are_400s_naming_them(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    assert_error(client.get("/api/v1/reports/monthly_active_customers?since=2026-13-01", headers=admin), 400, field="since")
    assert_error(client.get("/api/v1/reports/monthly_active_customers?sincе=2026-01-01", headers=admin), 400)
    assert_error(client.get("/api/v1/reports/ticket_handling_time?category=x'; DROP TABLE e_ticket;--", headers=admin), 400, field="category")
    assert_error(client.get("/api/v1/reports/aum_tiers?filter={bad", headers=admin), 400)
    assert_error(client.get('/api/v1/reports/aum_tiers?filter={"field":"aum","op":"drop","value":1}', headers=admin), 400)
    assert_error(client.get("/api/v1/reports/aum_tiers?limit=abc", headers=admin), 400, field="limit")
    assert_error(client.get("/api/v1/reports/aum_tiers?format=pdf", headers=admin), 400, field="format")
    assert_error(client.get("/api/v1/reports/nope", headers=admin), 404)


def test_an_extra_filter_narrows_a_report_and_never_widens_the_scope(app: Any, client: Any, login: Any) -> None:
    rows = _customers(app)
    flt = '{"field":"aum","op":"gte","value":"500000"}'
    got = _table(client.get(f"/api/v1/reports/aum_tiers?filter={flt}", headers=login("rm1")).json)
    expected = _expected_tiers([r for r in rows if r["rm"] == "rm1" and Decimal(r["aum"]) >= 500000])
    assert {r["tier"]: (r["customers"], Decimal(r["total_aum"])) for r in got} == expected
    wide = '{"or":[{"field":"owner","op":"eq","value":%d},{"field":"id","op":"gt","value":0}]}' % _uid(app, "rm2")
    got = _table(client.get(f"/api/v1/reports/aum_tiers?filter={wide}", headers=login("rm1")).json)
    assert sum(r["customers"] for r in got) == len([r for r in rows if r["rm"] == "rm1"])


def test_business_users_add_a_column_and_a_filter_without_a_restart(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    _customers(app, 30)
    doc = client.get("/api/v1/meta/reports/channel_acquisition", headers=admin).json
    doc["columns"].append({"name": "average_aum", "label": {"zh": "户均AUM", "en": "Average AUM"}, "agg": "avg", "field": "aum"})
    doc["filter"] = {"and": [*doc["filter"]["and"], {"field": "acquisition_channel", "op": "ne", "value": "online"}]}
    resp = client.put("/api/v1/meta/reports/channel_acquisition", json=doc, headers=admin)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    result = client.get("/api/v1/reports/channel_acquisition?since=2026-01-01", headers=admin).json
    assert [c["name"] for c in result["columns"]] == ["channel", "customers", "total_aum", "average_aum"]
    assert "online" not in {r[0] for r in result["rows"]} and result["rows"]
    listed = client.get("/api/v1/meta/reports", headers=admin).json["items"]
    assert {"name": "channel_acquisition", "source": "runtime"}.items() <= next(i for i in listed if i["name"] == "channel_acquisition").items()
    # a relationship manager may run reports, not change them
    assert_error(client.put("/api/v1/meta/reports/channel_acquisition", json=doc, headers=login("rm1")), 403)


def test_an_invalid_report_is_refused_whole_with_every_error(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    bad = {"label": {"zh": "坏报表", "en": "Broken"}, "entity": "customer", "columns": [
        {"name": "x", "field": "no_such_field"},
        {"name": "s", "label": {"zh": "和", "en": "sum"}, "agg": "sum", "field": "occupation"},
        {"name": "i", "field": "id_number"},
        {"name": "n", "label": {"zh": "数", "en": "n"}, "agg": "count"},
    ], "sort": ["nope"], "chart": {"type": "bar", "x": "zzz"}}
    resp = client.put("/api/v1/meta/reports/broken", json=bad, headers=admin)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    pointers = {d.get("pointer") or d.get("field") for d in resp.json["error"]["details"]}
    for p in ("/report/broken/columns/0/field", "/report/broken/columns/1/field", "/report/broken/columns/2/field", "/report/broken/sort/0", "/report/broken/chart/x"):
        assert p in pointers, (p, pointers)
    assert_error(client.get("/api/v1/reports/broken", headers=admin), 404)
    schema_bad = {"label": {"zh": "坏", "en": "bad"}, "entity": "customer", "columns": [], "evil": 1}
    assert client.put("/api/v1/meta/reports/broken", json=schema_bad, headers=admin).status_code == 422


def test_export_needs_the_export_permission_and_neutralises_formulas(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    _insert(app, "customer", [{"name": "=cmd|' /C calc'!A0", "aum": "7000000", "owner": _uid(app, "rm1")}])
    resp = client.get("/api/v1/reports/value_top100?format=csv", headers=login("rm1"))  # rm1 reads names in clear
    assert resp.status_code == 200
    text = resp.get_data().decode("utf-8")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert rows[0][0] == "姓名" and rows[1][0] == "'=cmd|' /C calc'!A0"
    # auditor1-like roles without export on customer: ops may export, an unknown role may not
    body = {"label": {"zh": "产品", "en": "Products"}, "entity": "product", "columns": [{"name": "name", "field": "name"}]}
    assert client.put("/api/v1/meta/reports/products", json=body, headers=admin).status_code == 200
    assert client.get("/api/v1/reports/products", headers=login("rm1")).status_code == 200
    assert_error(client.get("/api/v1/reports/products?format=csv", headers=login("rm1")), 403)


def test_scheduled_reports_are_made_as_each_recipient_and_queued_once_per_period(app: Any, client: Any, login: Any) -> None:
    from engine.web.reports_api import deliver_scheduled_reports

    rows = _customers(app, 30)
    admin = login("admin")
    doc = client.get("/api/v1/meta/reports/aum_tiers", headers=admin).json
    doc["schedule"] = {"every": "month", "recipients": ["rm1", "admin", "nobody"], "format": "csv"}
    assert client.put("/api/v1/meta/reports/aum_tiers", json=doc, headers=admin).status_code == 200
    now = dt.datetime(2026, 12, 1, 1, 0)
    first = deliver_scheduled_reports(app, now)
    assert first["delivered"] >= 2 and first["skipped_recipients"] >= 1
    again = deliver_scheduled_reports(app, now + dt.timedelta(hours=3))
    assert again["delivered"] == 0
    notes = client.get("/api/v1/notifications", headers=login("rm1")).json
    items = notes.get("items", notes) if isinstance(notes, dict) else notes
    note = next(n for n in items if "AUM" in (n.get("subject") or ""))
    run_id = int(note["body"].split("/api/v1/reports/runs/")[1].split()[0])
    resp = client.get(f"/api/v1/reports/runs/{run_id}", headers=login("rm1"))
    assert resp.status_code == 200
    got = list(csv.reader(io.StringIO(resp.get_data().decode("utf-8")[1:])))
    labels = {"普通": "mass", "金卡": "gold", "白金": "platinum", "钻石": "diamond", "私行": "private"}
    counted = {labels[r[0]]: int(r[1]) for r in got[1:]}
    assert counted == {k: v[0] for k, v in _expected_tiers([r for r in rows if r["rm"] == "rm1"]).items()}
    # the file is the recipient's: nobody else downloads it
    assert_error(client.get(f"/api/v1/reports/runs/{run_id}", headers=login("rm2")), 404)
