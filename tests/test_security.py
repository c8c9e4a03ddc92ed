"""DESIGN §4 from the attacker's side: scope on every read route, masking, encryption at rest,
audit chain, break-glass, consent, and the web hygiene that Flask-AppBuilder leaves to us."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import text

from engine.runtime import POLICY_VERSION
from engine.security.org import set_staff
from tests.conftest import TEST_DB_URL, TEST_PASSWORD

ID_NUMBER = "11010519491231002X"
MOBILE = "13800138000"


@pytest.fixture
def world(app: Any, client: Any, login: Any) -> dict[str, Any]:
    """Two branches, rm1 in BJ01 and rm2 in SH01, each with one customer and its history."""
    admin = login("admin")
    ids: dict[str, int] = {}
    for code, parent in (("HO", None), ("BJ", "HO"), ("BJ01", "BJ"), ("SH", "HO"), ("SH01", "SH")):
        resp = client.post("/api/v1/records/branch", json={"code": code, "name": code, "parent": ids.get(parent) if parent else None}, headers=admin)
        assert resp.status_code == 201, resp.json
        ids[code] = resp.json["id"]
    sm = app.appbuilder.sm
    with app.app_context():
        users = {u: sm.find_user(username=u).id for u in ("rm1", "rm2", "admin", "ops1")}
        for name, role in (("sup1", "supervisor"), ("bm1", "branch_manager"), ("risk1", "risk_control"), ("audit1", "auditor")):
            users[name] = sm.add_user(name, name, "T", f"{name}@t.local", [sm.find_role(role)], password=TEST_PASSWORD).id
    rt = app.extensions["fincrm"].runtime
    with rt.begin() as conn:
        set_staff(conn, users["rm1"], branch_id=ids["BJ01"], team="wealth", supervisor_id=users["sup1"])
        set_staff(conn, users["rm2"], branch_id=ids["SH01"], team="other")
        set_staff(conn, users["sup1"], branch_id=ids["BJ"], team="wealth")
        set_staff(conn, users["bm1"], branch_id=ids["BJ"])
        rt.bump(conn, POLICY_VERSION)
    customers = {}
    for rm, idn, mobile, branch in (("rm1", ID_NUMBER, MOBILE, "BJ01"), ("rm2", "440106199001010013", "13900139000", "SH01")):
        h = login(rm)
        c = client.post(
            "/api/v1/records/customer",
            json={"name": f"{rm}的客户", "id_number": idn, "mobile": mobile, "branch": ids[branch], "aum": "5000000"},
            headers=h,
        )
        assert c.status_code == 201, c.json
        cid = c.json["id"]
        customers[rm] = cid
        assert client.post("/api/v1/records/interaction", json={"customer": cid, "channel": "phone", "occurred_at": "2026-01-02T10:00:00"}, headers=h).status_code == 201
        assert client.post(f"/api/v1/records/customer/{cid}/tags", json={"tag": "vip"}, headers=h).status_code == 201
        assert client.post("/api/v1/records/consent", json={"customer": cid, "purpose": "marketing", "granted_at": "2025-01-01T00:00:00Z"}, headers=h).status_code == 201
    return {"branches": ids, "users": users, "customers": customers}


def _rm2s_inbox_and_task(app: Any, world: dict[str, Any], theirs: int) -> None:
    """A notification to rm2 and an open task of rm2's, both about rm2's customer."""
    from engine.flows.outbox import enqueue_many
    from engine.runtime import utcnow
    from engine.security.principal import Principal

    svc = app.extensions["fincrm"]
    rm2 = world["users"]["rm2"]
    with svc.runtime.begin() as conn:
        enqueue_many(conn, [{"channel": "inbox", "recipient_kind": "user", "recipient_id": rm2, "subject": "rm2的客户已逾期", "body": "13900139000",
                             "source": "test", "entity": "customer", "record_id": theirs, "created_at": utcnow()}])
    overdue = (utcnow() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with app.app_context():
        svc.records.bulk_insert(Principal.system("test"), "task", [{"title": "回访rm2的客户", "customer": theirs, "status": "open", "due_at": overdue, "owner": rm2}])


def _rm2s_import_job(client: Any, login: Any) -> int:
    """A dry run of rm2's: a file named after and holding rm2's customer."""
    data = "姓名,手机号\nrm2的客户乙,13900139000\n".encode()
    form = {"dry_run": "1", "file": (io.BytesIO(data), "rm2的客户.csv")}
    resp = client.post("/api/v1/import/customer", headers=login("rm2"), data=form, content_type="multipart/form-data")
    assert resp.status_code in (201, 202), resp.get_data(as_text=True)
    return int(resp.json["id"])


# ------------------------------------------------------------------ row scope on every read route

# Every GET route under /api/v1/records, /api/v1/export and /e/ (and POST …/query), with how the
# test reaches it. A new read route fails test_every_read_route_is_covered until it is listed.
READ_ROUTES = {
    "/api/v1/records/<entity>": "list",
    "/api/v1/records/<entity>/query": "query",
    "/api/v1/records/<entity>/<record_id>": "get",
    "/api/v1/records/<entity>/<record_id>/related": "related",
    "/api/v1/records/<entity>/<record_id>/tags": "tags",
    "/api/v1/records/<entity>/<record_id>/history": "history",
    "/api/v1/records/<entity>/<record_id>/flow": "flow",
    "/api/v1/records/customer/<record_id>/export-personal-data": "personal",
    "/api/v1/export/<entity>": "export",
    "/api/v1/access-requests": "access_list",
    "/api/v1/access-requests/<request_id>": "access_get",
    "/e/": "pages_index",
    "/e/<entity>/": "page_list",
    "/e/<entity>/<int:rid>": "page_detail",
    "/e/<entity>/<int:rid>/edit": "page_edit",
    "/e/<entity>/new": "page_new",
    "/c360/<int:customer_id>": "page_c360",
    "/mywork/": "page_mywork",
    "/api/v1/notifications": "notifications",
    "/api/v1/tasks/mine": "tasks_mine",
    "/notifications/": "page_notifications",
    "/api/v1/quality/<entity>": "quality_report",
    "/api/v1/quality/<entity>/duplicates": "quality_duplicates",
    "/api/v1/quality/merges/<int:merge_id>": "quality_merge",
    "/api/v1/import/jobs": "api_import",
    "/api/v1/import/jobs/<job_id>": "api_import",
    "/api/v1/import/jobs/<job_id>/errors": "api_import",
    "/import/": "page_import",
    "/api/v1/reports": "reports",
    "/reports/": "page_insight",
    "/reports/<name>": "page_insight",
    "/dashboard/": "page_insight",
    "/api/v1/insight/keywords": "insight",
    "/api/v1/kb/search": "insight",
    "/api/v1/analytics/nps": "insight",
    "/api/v1/analytics/rfm": "analytics",
    "/api/v1/analytics/churn": "analytics",
    "/api/v1/analytics/cross-sell": "analytics",
    "/api/v1/analytics/cross-sell/targets": "analytics",
    "/api/v1/analytics/channels": "analytics",
    "/api/v1/analytics/kpis": "analytics",
    "/api/v1/reports/<name>": "reports",
    "/api/v1/reports/runs/<int:run_id>": "reports",
    "/import/jobs": "page_import",
    "/import/jobs/<int:job_id>/columns": "page_import",
}


# GET routes that hold no customer record data, with the reason; everything else that reads
# must be in READ_ROUTES. Flask-AppBuilder's own admin views (users, roles, permissions …) are
# guarded by its permissions, which FinCRM's roles do not grant to anyone but admin.
NO_RECORD_DATA = {
    "/": "redirects to My work",
    "/back": "Flask-AppBuilder's history redirect",
    "/lang/<string:locale>": "language switch",
    "/login/": "login form",
    "/logout/": "logout",
    "/static/<path:filename>": "static assets",
    "/static/appbuilder/<path:filename>": "static assets",
    "/api/v1/menu/": "menu entries of the caller",
    "/api/v1/openapi.json": "API description from metadata",
    "/api/v1/meta/entities": "metadata (labels, types)",
    "/api/v1/meta/entities/<entity>": "metadata (labels, types)",
    "/api/v1/meta/entities/<entity>/schema": "metadata (labels, types)",
    "/api/v1/meta/entities/<entity>/history": "metadata versions",
    "/api/v1/meta/reports": "report definitions (configure)",
    "/healthz": "process up",
    "/readyz": "readiness checks by name",
    "/metrics": "Prometheus counters (loopback or token)",
    "/api/v1/meta/reports/<name>": "report definitions (configure)",
}
FAB_ADMIN_PREFIXES = (
    "/users/", "/roles/", "/groups/", "/permissions/", "/permissionviews/", "/viewmenus/",
    "/resetpassword/", "/resetmypassword/", "/userinfoeditview/", "/userstatschartview/",
)
# Read routes a relationship manager may not open at all (403 for rm1, tested below).
FORBIDDEN_TO_RM = {
    "/api/v1/audit": "/api/v1/audit",
    "/api/v1/interfaces/calls": "/api/v1/interfaces/calls",
    "/api/v1/interfaces/dead-letters": "/api/v1/interfaces/dead-letters",
    "/api/v1/interfaces/connectors": "/api/v1/interfaces/connectors",
    "/api/v1/outbox": "/api/v1/outbox",
    "/api/v1/audit/verify": "/api/v1/audit/verify",
    "/api/v1/staff/<int:user_id>": "/api/v1/staff/{rm2}",
    "/api/v1/meta/roles": "/api/v1/meta/roles",
    "/api/v1/meta/roles/<name>": "/api/v1/meta/roles/relationship_manager",
    "/api/v1/meta/packages": "/api/v1/meta/packages",
    "/api/v1/meta/packages/<name>": "/api/v1/meta/packages/bank",
    "/api/v1/meta/packages/<name>/export": "/api/v1/meta/packages/bank/export",
    "/api/v1/meta/flows": "/api/v1/meta/flows",
    "/api/v1/meta/flows/<name>": "/api/v1/meta/flows/loan_approval",
    "/api/v1/meta/triggers": "/api/v1/meta/triggers",
    "/api/v1/meta/triggers/<name>": "/api/v1/meta/triggers/task_overdue_escalation",
    "/workbench/": "/workbench/",
    "/workbench/e/<entity>/": "/workbench/e/customer/",
    "/workbench/e/<entity>/history": "/workbench/e/customer/history",
    "/workbench/e/<entity>/fields/<field>/edit": "/workbench/e/customer/fields/name/edit",
    "/workbench/roles/": "/workbench/roles/",
    "/workbench/roles/<name>": "/workbench/roles/relationship_manager",
    "/workbench/packages/": "/workbench/packages/",
    "/workbench/packages/<name>/": "/workbench/packages/bank/",
    "/workbench/packages/<name>/export": "/workbench/packages/bank/export",
}


def test_every_read_route_is_covered(app: Any) -> None:
    reads = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if path.startswith(FAB_ADMIN_PREFIXES) or path in NO_RECORD_DATA:
            continue
        if "GET" in rule.methods or path.endswith("/query"):
            reads.add(path)
    covered = set(READ_ROUTES) | set(FORBIDDEN_TO_RM)
    assert reads == covered, f"unlisted or removed read routes: {reads ^ covered}"


@pytest.mark.parametrize("route", sorted(FORBIDDEN_TO_RM))
def test_read_routes_outside_a_relationship_managers_role_are_refused(client: Any, login: Any, world: dict[str, Any], route: str) -> None:
    path = FORBIDDEN_TO_RM[route].format(rm2=world["users"]["rm2"])
    if path.startswith("/api/"):
        resp = client.get(path, headers=login("rm1"))
    else:
        _page_session(client, "rm1")
        resp = client.get(path)
    assert resp.status_code == 403, (path, resp.status_code)
    assert "rm2的客户" not in resp.get_data(as_text=True)


def _page_session(client: Any, username: str) -> None:
    page = client.get("/login/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(r'id="csrf_token" name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, "login form has a CSRF token"
    resp = client.post("/login/", data={"username": username, "password": TEST_PASSWORD, "csrf_token": token.group(1)})
    assert resp.status_code in (302, 303)


@pytest.mark.parametrize("route", sorted(READ_ROUTES))
def test_rm1_cannot_reach_rm2s_customer_through_any_read_route(app: Any, client: Any, login: Any, world: dict[str, Any], route: str) -> None:
    theirs = world["customers"]["rm2"]
    secret_bits = ("440106199001010013", "13900139000", "rm2的客户", "0013")
    rm1 = login("rm1")
    kind = READ_ROUTES[route]
    bodies: list[str] = []
    if kind in ("notifications", "tasks_mine", "page_notifications"):
        _rm2s_inbox_and_task(app, world, theirs)
    if kind == "list":
        for entity in ("customer", "interaction", "consent"):
            resp = client.get(f"/api/v1/records/{entity}?limit=500", headers=rm1)
            assert resp.status_code == 200
            assert all(item.get("customer", item["id"]) != theirs for item in resp.json["items"])
            bodies.append(resp.get_data(as_text=True))
        q = client.get("/api/v1/records/customer?q=13900139000", headers=rm1)
        assert q.json["items"] == []
        q2 = client.get("/api/v1/records/customer?q=440106199001010013", headers=rm1)
        assert q2.json["items"] == []
    elif kind == "query":
        for flt in ({"field": "id", "op": "eq", "value": theirs}, {"field": "tags", "op": "has", "value": "vip"}):
            resp = client.post("/api/v1/records/customer/query", json={"filter": flt}, headers=rm1)
            assert resp.status_code == 200 and all(i["id"] != theirs for i in resp.json["items"])
            bodies.append(resp.get_data(as_text=True))
        resp = client.post("/api/v1/records/interaction/query", json={"filter": {"field": "customer", "op": "eq", "value": theirs}}, headers=rm1)
        assert resp.json["items"] == []
    elif kind in ("get", "related", "tags", "history", "personal", "flow"):
        suffix = {"get": "", "related": "/related", "tags": "/tags", "history": "/history", "personal": "/export-personal-data", "flow": "/flow"}[kind]
        resp = client.get(f"/api/v1/records/customer/{theirs}{suffix}", headers=rm1)
        assert resp.status_code == 404
        bodies.append(resp.get_data(as_text=True))
    elif kind == "export":
        for fmt in ("csv", "xlsx"):
            resp = client.get(f"/api/v1/export/customer?format={fmt}", headers=rm1)
            assert resp.status_code == 200
            bodies.append(resp.get_data().decode("utf-8", "ignore"))
        csv_text = bodies[0]
        assert f"\n{theirs}," not in csv_text
    elif kind in ("notifications", "tasks_mine"):
        path = {"notifications": "/api/v1/notifications", "tasks_mine": "/api/v1/tasks/mine"}[kind]
        assert "rm2的客户" in client.get(path, headers=login("rm2")).get_data(as_text=True)  # rm2 does see their own
        resp = client.get(path, headers=rm1)
        assert resp.status_code == 200
        bodies.append(resp.get_data(as_text=True))
    elif kind in ("access_list", "access_get"):
        risk = login("risk1")
        req = client.post(
            "/api/v1/access-requests",
            json={"entity": "customer", "record_id": theirs, "fields": ["id_number"], "reason": "核查可疑交易，需要查看证件号码"},
            headers=risk,
        )
        assert req.status_code == 201
        listed = client.get("/api/v1/access-requests", headers=rm1)
        assert listed.status_code == 200 and listed.json["items"] == []
        got = client.get(f"/api/v1/access-requests/{req.json['id']}", headers=rm1)
        assert got.status_code in (403, 404)
        denied = client.post(f"/api/v1/access-requests/{req.json['id']}/approve", headers=rm1)
        assert denied.status_code in (403, 404)
        bodies += [listed.get_data(as_text=True), got.get_data(as_text=True)]
    elif kind in ("quality_report", "quality_duplicates", "quality_merge"):
        # a second customer of rm2's with the same mobile: a duplicate pair only rm2 and admin see
        twin = client.post("/api/v1/records/customer", json={"name": "rm2的客户乙", "mobile": "13900139000", "branch": world["branches"]["SH01"]}, headers=login("rm2"))
        assert twin.status_code == 201, twin.json
        if kind == "quality_report":
            resp = client.get("/api/v1/quality/customer", headers=rm1)
            assert resp.status_code == 200 and resp.json["total"] == 1
            assert all(theirs not in r.get("sample_ids", []) for r in resp.json["rules"])
        elif kind == "quality_duplicates":
            seen = client.get("/api/v1/quality/customer/duplicates?rule=same_mobile", headers=login("admin")).json["rules"][0]["groups"]
            assert [len(g["records"]) for g in seen] == [2]
            resp = client.get("/api/v1/quality/customer/duplicates", headers=rm1)
            assert resp.status_code == 200 and all(r.get("groups", []) == [] for r in resp.json["rules"])
        else:
            merged = client.post("/api/v1/quality/customer/merge", json={"survivor": theirs, "merged": [twin.json["id"]]}, headers=login("admin"))
            assert merged.status_code == 201, merged.json
            resp = client.get(f"/api/v1/quality/merges/{merged.json['merge']['id']}", headers=rm1)
            assert resp.status_code in (403, 404)
        bodies.append(resp.get_data(as_text=True))
    elif kind == "api_import":
        rm2_job = _rm2s_import_job(client, login)
        listed = client.get("/api/v1/import/jobs", headers=rm1)
        assert listed.status_code == 200 and all(j["id"] != rm2_job for j in listed.json["items"])
        bodies.append(listed.get_data(as_text=True))
        for path in (f"/api/v1/import/jobs/{rm2_job}", f"/api/v1/import/jobs/{rm2_job}/errors"):
            resp = client.get(path, headers=rm1)
            assert resp.status_code == 404
            bodies.append(resp.get_data(as_text=True))
        # an upsert keyed on rm2's customer's ID number: refused like a create, nothing changed
        data = "姓名,身份证号,手机号,职业\n冒名,440106199001010013,13700137000,间谍\n".encode()
        form = {"mode": "upsert", "dedupe": "update", "file": (io.BytesIO(data), "upsert.csv")}
        job = client.post("/api/v1/import/customer", headers=rm1, data=form, content_type="multipart/form-data")
        assert job.status_code == 201 and job.json["counts"]["updated"] == 0 and job.json["counts"]["errors"] == 1, job.json
        errors = client.get(job.json["errors_url"], headers=rm1)
        assert "is already used by another record" in errors.get_data(as_text=True)
        bodies.append(job.get_data(as_text=True))  # (the error file shows rm1's own cell, masked)
        after = client.get(f"/api/v1/records/customer/{theirs}", headers=login("rm2")).json
        assert after["version"] == 1 and after["occupation"] != "间谍"
    elif kind == "insight":
        # rm2's complaint (a distinctive word, rm2's mobile) and a low NPS score of rm2's customer
        h2 = login("rm2")
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        ticket = {"subject": "保险箱租赁投诉", "customer": theirs, "category": "complaint", "status": "new", "opened_at": now,
                  "description": "客户投诉保险箱租赁手续费过高，保险箱钥匙遗失，联系电话13900139000"}
        assert client.post("/api/v1/records/ticket", json=ticket, headers=h2).status_code == 201
        assert client.post("/api/v1/records/survey_response", json={"customer": theirs, "survey": "nps", "score": 2, "responded_at": now}, headers=h2).status_code == 201
        theirs_kw = client.get("/api/v1/insight/keywords?period=month&periods=1", headers=h2).get_data(as_text=True)
        assert "保险箱" in theirs_kw  # rm2 sees the keyword of their own customer's complaint
        resp = client.get("/api/v1/insight/keywords?period=month&periods=1", headers=rm1)
        assert resp.status_code == 200 and "保险箱" not in resp.get_data(as_text=True)
        bodies.append(resp.get_data(as_text=True))
        resp = client.get("/api/v1/analytics/nps?period=month&periods=1", headers=rm1)
        assert resp.status_code == 200 and sum(i["responses"] for i in resp.json["items"]) == 0
        bodies.append(resp.get_data(as_text=True))
        for q in ("保险箱", "手续费"):  # (the knowledge base holds no customer data; terms echo the query)
            resp = client.get("/api/v1/kb/search", query_string={"q": q}, headers=rm1)
            assert resp.status_code in (200, 400)
            bodies.append(resp.get_data(as_text=True))
    elif kind == "analytics":
        h2 = login("rm2")
        product = client.post("/api/v1/records/product", json={"code": "W1", "name": "稳健理财", "type": "wealth", "risk_level": "R2"}, headers=login("admin"))
        assert product.status_code == 201, product.json
        for who, cid in (("rm1", world["customers"]["rm1"]), ("rm2", theirs)):
            h = login(who)
            txn = {"customer": cid, "amount": "1000.00", "direction": "in", "channel": "online", "occurred_at": "2026-01-05T10:00:00Z"}
            assert client.post("/api/v1/records/transaction", json=txn, headers=h).status_code == 201
            assert client.post("/api/v1/records/holding", json={"customer": cid, "product": product.json["id"], "amount": "1000.00", "start_date": "2026-01-05"}, headers=h).status_code == 201
        assert theirs in [i["customer"] for i in client.get("/api/v1/analytics/rfm?as_of=2026-02-01", headers=h2).json["items"]]
        paths = ["/api/v1/analytics/rfm?as_of=2026-02-01", "/api/v1/analytics/churn", "/api/v1/analytics/cross-sell?min_support=0.01&min_confidence=0.01",
                 "/api/v1/analytics/cross-sell/targets?antecedent=wealth&consequent=loan", "/api/v1/analytics/channels", "/api/v1/analytics/kpis"]
        for path in paths:
            resp = client.get(path, headers=rm1)
            assert resp.status_code == 200, (path, resp.get_data(as_text=True))
            assert all(i.get("customer") != theirs for i in resp.json.get("items", []) if isinstance(i, dict))
            bodies.append(resp.get_data(as_text=True))
        rfm = client.get("/api/v1/analytics/rfm?as_of=2026-02-01", headers=rm1).json
        assert [i["customer"] for i in rfm["items"]] == [world["customers"]["rm1"]] and rfm["total"] == 1
    elif kind == "reports":
        # every report rm1 may run, as JSON and as files, and rm2's scheduled report file
        from engine.web.reports_api import deliver_scheduled_reports

        listed = client.get("/api/v1/reports", headers=rm1)
        assert listed.status_code == 200 and listed.json["items"]
        for rep in listed.json["items"]:
            args = "&".join(f"{p['name']}=2000-01-01" for p in rep["params"] if p["type"] == "date")
            resp = client.get(f"/api/v1/reports/{rep['name']}?{args}", headers=rm1)
            assert resp.status_code == 200, (rep["name"], resp.get_data(as_text=True))
            bodies.append(resp.get_data(as_text=True))
            if rep["may_export"]:
                bodies.append(client.get(f"/api/v1/reports/{rep['name']}?format=csv&{args}", headers=rm1).get_data().decode("utf-8", "ignore"))
        top = client.get("/api/v1/reports/value_top100", headers=rm1).json
        assert len(top["rows"]) == 1  # rm1's own customer only
        admin = login("admin")
        doc = client.get("/api/v1/meta/reports/value_top100", headers=admin).json
        doc["schedule"] = {"every": "day", "recipients": ["rm2"], "format": "csv"}
        assert client.put("/api/v1/meta/reports/value_top100", json=doc, headers=admin).status_code == 200
        assert deliver_scheduled_reports(app, dt.datetime(2026, 12, 1, 1, 0))["delivered"] >= 1
        note = next(n for n in client.get("/api/v1/notifications", headers=login("rm2")).json["items"] if "/api/v1/reports/runs/" in (n.get("body") or ""))
        run_id = int(note["body"].split("/api/v1/reports/runs/")[1].split()[0])
        assert "rm2的客户" in client.get(f"/api/v1/reports/runs/{run_id}", headers=login("rm2")).get_data().decode("utf-8", "ignore")
        resp = client.get(f"/api/v1/reports/runs/{run_id}", headers=rm1)
        assert resp.status_code == 404
        bodies.append(resp.get_data(as_text=True))
    else:
        rm2_job = _rm2s_import_job(client, login) if kind == "page_import" else 0
        _page_session(client, "rm1")
        paths = {
            "pages_index": ["/e/"],
            "page_list": ["/e/customer/", "/e/customer/?q=rm2", "/e/interaction/"],
            "page_detail": [f"/e/customer/{theirs}"],
            "page_edit": [f"/e/customer/{theirs}/edit"],
            "page_new": ["/e/interaction/new", "/e/customer/new"],
            "page_c360": [f"/c360/{theirs}", f"/c360/{world['customers']['rm1']}"],
            "page_mywork": ["/mywork/"],
            "page_notifications": ["/notifications/", "/notifications/?unread=1"],
            "page_import": ["/import/", "/import/jobs", f"/import/jobs/{rm2_job}/columns"],
            "page_insight": ["/reports/", "/reports/value_top100", "/dashboard/"],
        }[kind]
        for path in paths:
            resp = client.get(path)
            assert resp.status_code in (200, 404)
            bodies.append(resp.get_data(as_text=True))
    for body in bodies:
        for bit in secret_bits:
            assert bit not in body, f"{route} leaked {bit!r}"


def test_import_style_upsert_cannot_overwrite_another_rms_customer(client: Any, login: Any, world: dict[str, Any]) -> None:
    theirs = world["customers"]["rm2"]
    rm1 = login("rm1")
    resp = client.patch(f"/api/v1/records/customer/{theirs}", json={"occupation": "间谍", "version": 1}, headers=rm1)
    assert resp.status_code == 404
    dup = client.post("/api/v1/records/customer", json={"name": "冒名", "id_number": "440106199001010013"}, headers=rm1)
    assert dup.status_code == 409 and "440106199001010013" not in dup.get_data(as_text=True)


@pytest.mark.parametrize(
    "who,sees",
    [("rm1", {"rm1"}), ("rm2", {"rm2"}), ("sup1", {"rm1"}), ("bm1", {"rm1"}), ("ops1", {"rm1", "rm2"}), ("admin", {"rm1", "rm2"})],
)
def test_scopes_own_team_branch_all(client: Any, login: Any, world: dict[str, Any], who: str, sees: set[str]) -> None:
    items = client.get("/api/v1/records/customer", headers=login(who)).json["items"]
    assert {i["id"] for i in items} == {world["customers"][rm] for rm in sees}
    holdings = client.get("/api/v1/records/interaction", headers=login(who)).json["items"]
    assert {i["customer"] for i in holdings} == {world["customers"][rm] for rm in sees}


def test_auditor_reads_only_the_audit_trail(client: Any, login: Any, world: dict[str, Any]) -> None:
    auditor = login("audit1")
    assert client.get("/api/v1/records/customer", headers=auditor).status_code == 403
    trail = client.get("/api/v1/audit", headers=auditor)
    assert trail.status_code == 200 and trail.json["items"]
    assert client.get("/api/v1/audit", headers=login("rm1")).status_code == 403


@pytest.mark.parametrize(
    "payload,expect",
    [
        ({"owner": "rm2"}, 403),
        ({"branch": "SH01"}, 403),
        ({"created_by": 1}, 422),
        ({"id": 999}, 422),
        ({"retained_at": "2020-01-01"}, 422),
    ],
)
def test_no_mass_assignment(client: Any, login: Any, world: dict[str, Any], payload: dict[str, Any], expect: int) -> None:
    mine = world["customers"]["rm1"]
    value = payload[next(iter(payload))]
    if value == "rm2":
        payload = {"owner": world["users"]["rm2"]}
    elif value == "SH01":
        payload = {"branch": world["branches"]["SH01"]}
    rm1 = login("rm1")
    resp = client.patch(f"/api/v1/records/customer/{mine}", json={**payload, "version": 1}, headers=rm1)
    assert resp.status_code == expect
    after = client.get(f"/api/v1/records/customer/{mine}", headers=rm1).json
    assert after["version"] == 1 and after["owner"] == world["users"]["rm1"]


def test_role_escalation_is_refused(client: Any, login: Any, world: dict[str, Any]) -> None:
    rm1 = login("rm1")
    grab = {"label": {"zh": "客户经理", "en": "RM"}, "grants": [{"entity": "*", "actions": ["read", "unmask"], "scope": "all"}]}
    assert client.put("/api/v1/meta/roles/relationship_manager", json=grab, headers=rm1).status_code == 403
    assert client.post("/api/v1/meta/entities/customer/fields", json={"name": "x", "type": "string", "label": {"zh": "x", "en": "x"}}, headers=rm1).status_code == 403
    assert client.put(f"/api/v1/staff/{world['users']['rm1']}", json={"branch_id": world["branches"]["HO"]}, headers=rm1).status_code == 403


def test_a_role_edit_takes_effect_on_the_next_request_and_is_audited(client: Any, login: Any, world: dict[str, Any]) -> None:
    admin, rm1 = login("admin"), login("rm1")
    doc = client.get("/api/v1/meta/roles/relationship_manager", headers=admin).json
    doc["fields"] = doc.get("fields", []) + [{"entity": "customer", "field": "occupation", "access": "hidden"}]
    assert client.put("/api/v1/meta/roles/relationship_manager", json=doc, headers=admin).status_code == 200
    mine = client.get(f"/api/v1/records/customer/{world['customers']['rm1']}", headers=rm1).json
    assert "occupation" not in mine
    hidden_filter = client.get('/api/v1/records/customer?filter={"field":"occupation","op":"eq","value":"x"}', headers=rm1)
    assert hidden_filter.status_code == 400
    assert any(e["action"] == "role_change" for e in client.get("/api/v1/audit", headers=admin).json["items"])
    bad = client.put("/api/v1/meta/roles/relationship_manager", json={"label": {"zh": "x"}, "grants": [{"entity": "customer", "actions": ["fly"], "scope": "galaxy"}]}, headers=admin)
    assert bad.status_code == 422 and len(bad.json["error"]["details"]) >= 3


def test_a_role_edit_reaches_warm_readers_in_every_worker_on_their_next_request(app: Any, client: Any, login: Any, world: dict[str, Any]) -> None:
    """Views, serialisation plans and statements are cached per policy version: a reader who
    has just read, in this worker and in another, sees a role edit (and its undoing) on the
    very next get and list."""
    from tests.api_helpers import second_worker

    admin, rm1 = login("admin"), login("rm1")
    one, many = f"/api/v1/records/customer/{world['customers']['rm1']}", "/api/v1/records/customer"
    doc = client.get("/api/v1/meta/roles/relationship_manager", headers=admin).json
    hidden = {**doc, "fields": doc.get("fields", []) + [{"entity": "customer", "field": "email", "access": "hidden"}]}

    def shown(c: Any) -> list[bool]:
        return ["email" in c.get(one, headers=rm1).json, "email" in c.get(many, headers=rm1).json["items"][0]]

    with second_worker(app) as other_app:
        other = other_app.test_client()
        assert shown(client) == shown(other) == [True, True]  # warm in both workers
        assert client.put("/api/v1/meta/roles/relationship_manager", json=hidden, headers=admin).status_code == 200
        assert shown(client) == shown(other) == [False, False]
        assert client.put("/api/v1/meta/roles/relationship_manager", json=doc, headers=admin).status_code == 200
        assert shown(other) == shown(client) == [True, True]


# ------------------------------------------------------------------ masking


def test_masks_in_every_output(client: Any, login: Any, world: dict[str, Any]) -> None:
    rm1 = login("rm1")
    cid = world["customers"]["rm1"]
    outputs = [
        client.get(f"/api/v1/records/customer/{cid}", headers=rm1).json,
        client.get("/api/v1/records/customer", headers=rm1).json["items"][0],
        client.get(f"/api/v1/records/customer/{cid}/related", headers=rm1).json["record"],
    ]
    for out in outputs:
        assert out["id_number"] == "110***********002X"
        assert out["mobile"] == "138****8000"
    history = client.get(f"/api/v1/records/customer/{cid}/history", headers=rm1).get_data(as_text=True)
    csv_text = client.get("/api/v1/export/customer?format=csv", headers=rm1).get_data(as_text=True)
    dup = client.post("/api/v1/records/customer", json={"name": "重复", "id_number": ID_NUMBER}, headers=rm1).get_data(as_text=True)
    bad = client.post("/api/v1/records/customer", json={"name": "错", "mobile": "12800138000"}, headers=rm1).get_data(as_text=True)
    for text_ in (history, csv_text, dup, bad, json.dumps(outputs)):
        assert ID_NUMBER not in text_ and MOBILE not in text_ and "12800138000" not in text_
    assert "110***********002X" in history


def test_masked_fields_cannot_be_used_as_an_oracle(client: Any, login: Any, world: dict[str, Any]) -> None:
    rm1 = login("rm1")
    for flt in ({"field": "mobile", "op": "startswith", "value": "138"}, {"field": "id_number", "op": "eq", "value": ID_NUMBER}):
        resp = client.post("/api/v1/records/customer/query", json={"filter": flt}, headers=rm1)
        assert resp.status_code == 400
    assert client.get("/api/v1/records/customer?sort=mobile", headers=rm1).status_code == 400


# ------------------------------------------------------------------ encryption at rest


def test_no_plaintext_id_numbers_at_rest(app: Any, world: dict[str, Any], tmp_path: Path) -> None:
    rt = app.extensions["fincrm"].runtime
    with rt.engine.connect() as conn:
        stored = conn.execute(text("select id_number, id_number__bi from e_customer")).all()
    assert stored and all(r[0].startswith("v1.") and ID_NUMBER not in r[0] for r in stored)
    if rt.dialect == "sqlite":
        rt.dispose()
        raw = b"".join(p.read_bytes() for p in Path(rt.url.removeprefix("sqlite:///")).parent.glob("*.db*"))
        assert ID_NUMBER.encode() not in raw and b"440106199001010013" not in raw
    else:
        import shutil
        import subprocess

        if shutil.which("pg_dump") is None:
            pytest.fail("pg_dump is needed to check a PostgreSQL dump")
        from sqlalchemy import make_url

        url = make_url(TEST_DB_URL)
        dump = subprocess.run(
            ["pg_dump", "-h", url.host or "127.0.0.1", "-U", url.username or "postgres", "-d", url.database or "test", "--data-only"],
            capture_output=True, check=True,
        ).stdout
        assert b"v1." in dump and ID_NUMBER.encode() not in dump


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(app: Any, client: Any, login: Any, world: dict[str, Any]) -> None:
    rt = app.extensions["fincrm"].runtime
    a, b = world["customers"]["rm1"], world["customers"]["rm2"]
    with rt.begin() as conn:
        value = conn.execute(text("select id_number from e_customer where id = :i"), {"i": a}).scalar()
        conn.execute(text("update e_customer set id_number = :v where id = :i"), {"v": value, "i": b})
    resp = client.get(f"/api/v1/records/customer/{b}", headers=login("admin"))
    assert resp.status_code == 500  # authentication of the value fails loudly, nothing is shown
    assert ID_NUMBER not in resp.get_data(as_text=True)


# ------------------------------------------------------------------ audit


def test_tampering_with_the_audit_trail_is_found_and_named(app: Any, client: Any, login: Any, world: dict[str, Any]) -> None:
    auditor = login("audit1")
    ok = client.get("/api/v1/audit/verify", headers=auditor).json
    assert ok["ok"] is True and ok["checked"] > 10
    rt = app.extensions["fincrm"].runtime
    with rt.begin() as conn:
        conn.execute(text("update fincrm_audit set detail = :d where seq = 5"), {"d": json.dumps({"forged": True})})
    edited = client.get("/api/v1/audit/verify", headers=auditor).json
    assert edited == {**edited, "ok": False, "first_bad": 5}
    with rt.begin() as conn:
        conn.execute(text("delete from fincrm_audit where seq = 5"))
    deleted = client.get("/api/v1/audit/verify", headers=auditor).json
    assert deleted["ok"] is False and deleted["first_bad"] == 5 and "missing" in deleted["reason"]


def test_logins_are_audited_success_and_failure(client: Any, login: Any) -> None:
    client.post("/api/v1/security/login", json={"username": "rm1", "password": "wrong-password", "provider": "db"})
    login("rm1")
    actions = [(e["action"], e["actor"]) for e in client.get("/api/v1/audit?limit=20", headers=login("admin")).json["items"]]
    assert ("login_failed", "rm1") in actions and ("login", "rm1") in actions


# ------------------------------------------------------------------ break-glass


def test_break_glass_request_approve_read_revoke(app: Any, client: Any, login: Any, world: dict[str, Any]) -> None:
    risk, sup, admin = login("risk1"), login("sup1"), login("admin")
    cid = world["customers"]["rm1"]
    assert client.get(f"/api/v1/records/customer/{cid}", headers=risk).json["id_number"] == "110***********002X"
    short = client.post("/api/v1/access-requests", json={"entity": "customer", "record_id": cid, "fields": ["id_number"], "reason": "看"}, headers=risk)
    assert short.status_code == 422
    req = client.post(
        "/api/v1/access-requests",
        json={"entity": "customer", "record_id": cid, "fields": ["id_number", "mobile"], "reason": "反洗钱可疑交易核查需要调阅", "minutes": 30},
        headers=risk,
    ).json
    assert client.post(f"/api/v1/access-requests/{req['id']}/approve", headers=risk).status_code == 403  # never the requester
    approved = client.post(f"/api/v1/access-requests/{req['id']}/approve", headers=sup)
    assert approved.status_code == 200 and approved.json["status"] == "approved"
    clear = client.get(f"/api/v1/records/customer/{cid}", headers=risk).json
    assert clear["id_number"] == ID_NUMBER and clear["mobile"] == MOBILE
    other = client.get(f"/api/v1/records/customer/{world['customers']['rm2']}", headers=risk).json
    assert other["id_number"] != "440106199001010013"  # the grant is for one record
    actions = [e["action"] for e in client.get("/api/v1/audit?limit=30", headers=admin).json["items"]]
    assert "unmasked_read" in actions and "access_approve" in actions
    assert client.post(f"/api/v1/access-requests/{req['id']}/revoke", headers=admin).status_code == 200
    assert client.get(f"/api/v1/records/customer/{cid}", headers=risk).json["id_number"] == "110***********002X"


def test_an_expired_grant_shows_masked_values_again(app: Any, client: Any, login: Any, world: dict[str, Any]) -> None:
    risk, admin = login("risk1"), login("admin")
    cid = world["customers"]["rm1"]
    req = client.post(
        "/api/v1/access-requests", json={"entity": "customer", "record_id": cid, "fields": ["id_number"], "reason": "客户投诉身份核实需要"}, headers=risk
    ).json
    client.post(f"/api/v1/access-requests/{req['id']}/approve", headers=admin)
    assert client.get(f"/api/v1/records/customer/{cid}", headers=risk).json["id_number"] == ID_NUMBER
    rt = app.extensions["fincrm"].runtime
    with rt.begin() as conn:
        conn.execute(text("update fincrm_access_request set expires_at = :t"), {"t": dt.datetime(2020, 1, 1)})
        rt.bump(conn, POLICY_VERSION)
    assert client.get(f"/api/v1/records/customer/{cid}", headers=risk).json["id_number"] == "110***********002X"


# ------------------------------------------------------------------ consent


def test_consent_filters_marketing_lists_and_withdrawal_is_immediate(client: Any, login: Any, world: dict[str, Any]) -> None:
    admin = login("admin")
    both = client.get("/api/v1/records/customer?consent=marketing", headers=admin).json["items"]
    assert {c["id"] for c in both} == set(world["customers"].values())
    consent = client.get(f'/api/v1/records/consent?filter={{"field":"customer","op":"eq","value":{world["customers"]["rm2"]}}}', headers=admin).json["items"][0]
    withdrawn = client.patch(f"/api/v1/records/consent/{consent['id']}", json={"withdrawn_at": "2026-01-01T00:00:00Z", "version": consent["version"]}, headers=admin)
    assert withdrawn.status_code == 200
    after = client.get("/api/v1/records/customer?consent=marketing", headers=admin).json["items"]
    assert {c["id"] for c in after} == {world["customers"]["rm1"]}
    assert client.get("/api/v1/records/customer?consent=profiling", headers=admin).json["items"] == []
    assert client.get("/api/v1/records/customer?consent=astrology", headers=admin).status_code == 400


def test_personal_data_export_holds_the_subjects_data(client: Any, login: Any, world: dict[str, Any]) -> None:
    rm1 = login("rm1")
    data = client.get(f"/api/v1/records/customer/{world['customers']['rm1']}/export-personal-data", headers=rm1).json
    assert data["subject"]["name"] == "rm1的客户" and data["tags"] == ["vip"]
    assert len(data["related"]["interaction.customer"]) == 1 and len(data["related"]["consent.customer"]) == 1


# ------------------------------------------------------------------ hygiene


def test_forged_expired_and_refresh_tokens_are_refused(app: Any, client: Any, login: Any) -> None:
    import jwt

    good = login("rm1")["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode({**claims, "sub": "1"}, "another-secret-of-32-bytes-or-more!!", algorithm="HS256")
    with app.app_context():
        expired = create_access_token(identity=claims["sub"], expires_delta=dt.timedelta(seconds=-5))
    for token in (forged, expired, "garbage", good + "x"):
        resp = client.get("/api/v1/records/customer", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthenticated"
    refresh = client.post("/api/v1/security/login", json={"username": "rm1", "password": TEST_PASSWORD, "provider": "db", "refresh": True}).json["refresh_token"]
    assert client.get("/api/v1/records/customer", headers={"Authorization": f"Bearer {refresh}"}).status_code == 401
    assert client.get("/api/v1/records/customer", headers={"Authorization": "Basic cm0xOnB3"}).status_code == 401


def test_disabling_a_user_or_changing_roles_kills_their_tokens(app: Any, client: Any, login: Any) -> None:
    rm1, ops1 = login("rm1"), login("ops1")
    sm = app.appbuilder.sm
    with app.app_context():
        user = sm.find_user(username="rm1")
        user.active = False
        sm.session.commit()
        ops = sm.find_user(username="ops1")
        ops.roles = [sm.find_role("relationship_manager")]
        sm.session.commit()
    assert client.get("/api/v1/records/customer", headers=rm1).status_code == 401
    assert client.get("/api/v1/records/customer", headers=ops1).status_code == 401


def test_cookie_sessions_need_csrf_for_api_writes(client: Any) -> None:
    _page_session(client, "rm1")
    assert client.get("/api/v1/records/customer").status_code == 200  # reads work with the session
    no_token = client.post("/api/v1/records/customer", json={"name": "无令牌"})
    assert no_token.status_code == 403
    page = client.get("/e/customer/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    with_token = client.post("/api/v1/records/customer", json={"name": "有令牌"}, headers={"X-CSRFToken": token})
    assert with_token.status_code == 201


def test_pages_send_security_headers_and_escape_hostile_names(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    hostile = '<script>alert("x")</script>'
    cid = client.post("/api/v1/records/customer", json={"name": hostile}, headers=rm1).json["id"]
    _page_session(client, "rm1")
    for path in ("/e/customer/", f"/e/customer/{cid}"):
        resp = client.get(path)
        body = resp.get_data(as_text=True)
        assert hostile not in body and "&lt;script&gt;" in body
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self' 'nonce-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert resp.headers["X-Frame-Options"] == "DENY"


def test_login_is_rate_limited(tmp_path: Path, db_url: str) -> None:
    from app import create_app
    from tests.conftest import TEST_MASTER_KEY

    limited = create_app(
        {
            "FINCRM_DATA_DIR": str(tmp_path / "rl"),
            "FINCRM_DATABASE_URL": db_url,
            "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
            "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
            "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
        }
    )
    c = limited.test_client()
    codes = [c.post("/api/v1/security/login", json={"username": "nobody", "password": "x", "provider": "db"}).status_code for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[-1] == 429
    # the record API is not limited: the limiter's hooks are wrapped to skip its requests
    limiter = limited.appbuilder.sm.limiter
    assert any(getattr(f, "__wrapped__", None) == limiter._check_request_limit for f in limited.before_request_funcs[None])
    assert c.get("/api/v1/records/customer").status_code == 401  # answered by the API, not the limiter
    limited.extensions["fincrm"].runtime.dispose()


def test_the_limiters_hooks_skip_one_blueprint_and_still_limit_the_rest() -> None:
    """The record API has no limits: Flask-Limiter's hooks do not run for it at all (they
    cost a tenth of a get-by-id), while every other route keeps its limits."""
    from flask import Blueprint, Flask
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from engine.web.security import skip_limiter_hooks

    probe = Flask("probe")
    limiter = Limiter(get_remote_address, app=probe, default_limits=["2 per minute"], storage_uri="memory://")
    free = Blueprint("free", __name__)
    free.add_url_rule("/free", "free", lambda: "ok")
    probe.add_url_rule("/limited", "limited", lambda: "ok")
    probe.register_blueprint(free)
    assert skip_limiter_hooks(probe, limiter, "free") == 3  # before, after and teardown: all found
    c = probe.test_client()
    assert [c.get("/free").status_code for _ in range(4)] == [200] * 4
    assert [c.get("/limited").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("password,ok", [("short1A!", False), ("alllowercaseletters", False), ("Fincrm-2026-secure", True), ("longbutnodigits!!AA", True)])
def test_password_policy(password: str, ok: bool) -> None:
    from flask_appbuilder.exceptions import PasswordComplexityValidationError

    from engine.web.security import password_policy

    if ok:
        password_policy(password)
    else:
        with pytest.raises(PasswordComplexityValidationError):
            password_policy(password)


def test_logs_never_carry_unmasked_values(client: Any, login: Any, caplog: pytest.LogCaptureFixture) -> None:
    rm1 = login("rm1")
    client.post("/api/v1/records/customer", json={"name": "日志", "mobile": "13700137000", "id_number": "610113198505059313"}, headers=rm1)
    client.get('/api/v1/records/customer?q=13700137000', headers=rm1)
    assert "13700137000" not in caplog.text and "610113198505059313" not in caplog.text


def test_history_shows_each_reader_only_what_they_may_see(client: Any, login: Any, world: dict[str, Any]) -> None:
    """Audit diffs follow the reader's field rules: operations (birth date hidden) never see a
    birth date change in a record's history; masked fields stay masked there too."""
    rm1, ops1 = login("rm1"), login("ops1")
    cid = world["customers"]["rm1"]
    version = client.get(f"/api/v1/records/customer/{cid}", headers=rm1).json["version"]
    resp = client.patch(f"/api/v1/records/customer/{cid}", json={"birth_date": "1949-12-31", "occupation": "教师"}, headers={**rm1, "If-Match": str(version)})
    assert resp.status_code == 200, resp.json
    as_ops = client.get(f"/api/v1/records/customer/{cid}/history", headers=ops1)
    assert as_ops.status_code == 200
    update = next(i for i in as_ops.json["items"] if i["action"] == "update")
    assert "birth_date" not in update["detail"]["changes"] and update["detail"]["changes"]["occupation"]["to"] == "教师"
    assert "1949-12-31" not in as_ops.get_data(as_text=True)
    created = next(i for i in as_ops.json["items"] if i["action"] == "create")
    assert created["detail"]["changes"]["id_number"]["to"] == "110***********002X"
