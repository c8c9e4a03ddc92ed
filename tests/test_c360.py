"""Customer 360 (/c360/<id>) and My work (/mywork/) as a relationship manager sees them: scope,
masking, money format, a fixed number of SQL statements, the monthly aggregate, the
break-glass request form, and HTML escaping."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any, Iterator

import pytest
from sqlalchemy import event, select

from engine.fieldtypes import LOCAL_TZ
from engine.security.principal import Principal
from engine.services.access import access_request_table
from engine.services.customer360 import TIERS, Customer360, month_keys, tier_for
from tests.api_helpers import (  # noqa: F401  (module-wide app fixtures)
    app,
    client,
    csrf_token,
    login,
    page_login,
    shared_app,
)

CUSTOMERS = "/api/v1/records/customer"
SCRIPT = "<script>alert(1)</script>"
SYSTEM = Principal.system("test")


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]


def _field(page: str, name: str) -> str:
    """Text of the element carrying ``data-field="name"`` in the 360 header."""
    header = re.search(r'id="c360-header".*?id="c360-tags"', page, re.S)
    assert header, "the page has a 360 header"
    found = re.search(rf'data-field="{name}"[^>]*>(.*?)</', header.group(0), re.S)
    assert found, f"no {name} in the header"
    return found.group(1).strip()


def _create(client: Any, headers: dict[str, str], entity: str, **values: Any) -> dict[str, Any]:
    resp = client.post(f"/api/v1/records/{entity}", json=values, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json  # type: ignore[no-any-return]


def _user_id(app: Any, username: str) -> int:
    with app.app_context():
        return int(app.appbuilder.sm.find_user(username=username).id)


def _bulk(app: Any, entity: str, rows: list[dict[str, Any]]) -> list[int]:
    with app.app_context():
        return app.extensions["fincrm"].records.bulk_insert(SYSTEM, entity, rows)  # type: ignore[no-any-return]


def _utc(local: str) -> str:
    """A Beijing wall-clock time as the API's UTC form."""
    moment = dt.datetime.fromisoformat(local).replace(tzinfo=LOCAL_TZ).astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def statements(app: Any) -> Iterator[list[str]]:
    """Every SQL statement sent meanwhile: the engine runtime's pools (reads and writes) and
    Flask-AppBuilder's own (the session user, roles, permissions)."""
    runtime = app.extensions["fincrm"].runtime
    seen: list[str] = []

    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with app.app_context():
        fab = app.extensions["sqlalchemy"].engine
    engines = {id(e): e for e in (runtime.engine, runtime.write_engine, fab)}.values()
    for e in engines:
        event.listen(e, "before_cursor_execute", _record)
    try:
        yield seen
    finally:
        for e in engines:
            event.remove(e, "before_cursor_execute", _record)


@pytest.fixture
def browser(client: Any) -> Any:
    """rm1 logged in through the form, as a browser with a session cookie."""
    resp = page_login(client, "rm1")
    assert resp.status_code in (302, 303), _text(resp)[:300]
    return client


@pytest.fixture
def product(app: Any) -> int:
    (pid,) = _bulk(app, "product", [{"code": "WM-90", "name": "稳健90天理财", "type": "wealth", "risk_level": "R2"}])
    return pid


def _fill(app: Any, cid: int, owner: int, product: int, n: int) -> None:
    """``n`` holdings, transactions, contacts, opportunities, tasks and tickets for a customer."""
    now = dt.datetime.now(dt.timezone.utc)
    _bulk(app, "holding", [{"customer": cid, "product": product, "amount": f"{1000 + i}.50", "maturity_date": "2031-01-01"} for i in range(n)])
    _bulk(
        app, "transaction",
        [{"customer": cid, "product": product, "amount": "100.00", "direction": "in" if i % 2 else "out", "occurred_at": (now - dt.timedelta(days=7 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")} for i in range(n)],
    )
    _bulk(app, "interaction", [{"customer": cid, "channel": "phone", "occurred_at": "2025-01-02T03:04:05Z", "summary": f"第{i}次回访", "owner": owner} for i in range(n)])
    _bulk(app, "opportunity", [{"customer": cid, "title": f"商机{i}", "product": product, "owner": owner} for i in range(n)])
    _bulk(app, "task", [{"customer": cid, "title": f"任务{i}", "owner": owner} for i in range(n)])
    _bulk(app, "ticket", [{"customer": cid, "subject": f"工单{i}", "category": "inquiry", "status": "closed" if i % 2 else "new", "owner": owner} for i in range(n)])


# ------------------------------------------------------------------ the 360 page


def test_rm_sees_their_customer_360_masked_with_yuan_aum_tier_tags_and_consent(browser: Any, login: Any, product: int) -> None:
    rm1 = login("rm1")
    c = _create(
        browser, rm1, "customer", name="李四", id_number="11010519491231002X", mobile="13912345678", aum="1234567.89",
        risk_preference="moderately_conservative", birth_date="1949-12-31",
    )
    assert browser.post(f"{CUSTOMERS}/{c['id']}/tags", json={"tag": "高净值"}, headers=rm1).status_code in (200, 201)
    _create(browser, rm1, "consent", customer=c["id"], purpose="marketing", granted_at="2024-01-01T00:00:00Z")
    _create(browser, rm1, "consent", customer=c["id"], purpose="profiling", granted_at="2024-01-01T00:00:00Z", withdrawn_at="2024-06-01T00:00:00Z")
    _create(browser, rm1, "holding", customer=c["id"], product=product, amount="1000000.00", maturity_date="2030-06-30")
    resp = browser.get(f"/c360/{c['id']}")
    assert resp.status_code == 200, _text(resp)[:500]
    page = _text(resp)
    assert _field(page, "name") == "李四"
    assert _field(page, "id_number") == "110***********002X"
    assert _field(page, "mobile") == "139****5678"
    assert _field(page, "aum") == "¥1,234,567.89"
    assert _field(page, "tier") == "钻石"
    assert _field(page, "risk_preference") == "稳健型"
    assert "11010519491231002X" not in page and "13912345678" not in page and "1949-12-31" not in page
    assert 'data-tag="高净值"' in page
    assert re.search(r'data-consent="marketing" data-active="1"', page) and re.search(r'data-consent="profiling" data-active="0"', page)
    holdings = re.search(r'id="c360-holdings".*?</table>', page, re.S)
    assert holdings and "稳健90天理财" in holdings.group(0) and "¥1,000,000.00" in holdings.group(0)
    assert 'id="c360-chart"' in page and 'id="c360-data"' in page
    assert "/static/vendor/echarts/echarts.min.js" in page and "/static/fincrm/c360.js" in page
    nonce = re.search(r"'nonce-([^']+)'", resp.headers["Content-Security-Policy"])
    assert nonce and f'src="/static/fincrm/c360.js" nonce="{nonce.group(1)}"' in page
    assert "<script>" not in re.sub(r'<script (type="application/json" id="c360-data"|src="[^"]+" nonce="[^"]+")>', "", page), "no inline executable script"
    detail = _text(browser.get(f"/e/customer/{c['id']}"))
    assert f'href="/c360/{c["id"]}"' in detail and "客户360视图" in detail


def test_the_vendored_echarts_is_served_from_this_app(browser: Any) -> None:
    resp = browser.get("/static/vendor/echarts/echarts.min.js")
    assert resp.status_code == 200 and b"echarts" in resp.get_data()[:2000].lower()
    resp.close()
    assert browser.get("/static/fincrm/c360.js").status_code == 200


def test_rm1_gets_404_for_rm2s_customer_and_sees_nothing_of_it(browser: Any, login: Any, app: Any, product: int) -> None:
    c = _create(browser, login("rm2"), "customer", name="王秘密", mobile="13700001234", aum="8888888.88")
    _fill(app, c["id"], _user_id(app, "rm2"), product, 3)
    resp = browser.get(f"/c360/{c['id']}")
    assert resp.status_code == 404
    page = _text(resp)
    assert "王" not in page and "8,888,888.88" not in page and "稳健90天理财" not in page and "工单" not in page
    assert browser.get("/c360/999999").status_code == 404
    token = csrf_token(_text(browser.get("/e/customer/new")))
    post = browser.post(f"/c360/{c['id']}/access-request", data={"csrf_token": token, "fields": "mobile", "reason": "核实客户身份信息需要查看"})
    assert post.status_code == 404
    with app.app_context():
        runtime = app.extensions["fincrm"].runtime
        with runtime.engine.connect() as conn:
            assert conn.execute(select(access_request_table.c.id).where(access_request_table.c.record_id == c["id"])).first() is None


def test_every_related_list_carries_the_readers_own_scope(browser: Any, login: Any, app: Any, product: int) -> None:
    """A role that reads every customer but only its own holdings, every contact and nothing
    else: the 360 shows the customer, no holdings of it, the contacts, and leaves the rest out."""
    doc = {
        "kind": "role", "name": "c360_probe", "label": {"zh": "探针", "en": "Probe"},
        "grants": [
            {"entity": "customer", "actions": ["read"], "scope": "all"},
            {"entity": "holding", "actions": ["read"], "scope": "own"},
            {"entity": "interaction", "actions": ["read"], "scope": "all"},
            {"entity": "product", "actions": ["read"], "scope": "all"},
        ],
    }
    assert browser.put("/api/v1/meta/roles/c360_probe", json=doc, headers=login("admin")).status_code in (200, 201)
    rm1, rm2 = _user_id(app, "rm1"), _user_id(app, "rm2")
    c = _create(browser, login("rm1"), "customer", name="甲乙丙")
    _fill(app, c["id"], rm1, product, 3)
    with app.app_context():
        services = app.extensions["fincrm"]
        services.authz.refresh(services.runtime.stamps()[1])
        data = Customer360(services.records).view(Principal(rm2, "rm2", frozenset({"c360_probe"})), c["id"])
    assert data["customer"]["name"] == "甲**"  # this role has no rule on names: masked
    assert data["holdings"] is not None and data["holdings"].items == []
    assert len(data["interactions"].items) == 3
    assert data["transactions"] is None and data["monthly"] is None and data["tickets"] is None and data["tasks"] is None
    assert data["opportunities"] is None and data["consent"] is None


def test_the_360_takes_a_fixed_number_of_statements_whatever_the_data(browser: Any, login: Any, app: Any, product: int) -> None:
    rm1 = _user_id(app, "rm1")
    small = _create(browser, login("rm1"), "customer", name="少")
    large = _create(browser, login("rm1"), "customer", name="多")
    _fill(app, small["id"], rm1, product, 2)
    _fill(app, large["id"], rm1, product, 60)
    browser.get(f"/c360/{small['id']}")  # warm: principal and policy cached, as in a running app
    counts = {}
    for name, cid in (("small", small["id"]), ("large", large["id"])):
        with statements(app) as seen:
            resp = browser.get(f"/c360/{cid}")
        assert resp.status_code == 200
        counts[name] = len(seen)
    principal = Principal(rm1, "rm1", frozenset({"relationship_manager"}))
    service_counts = {}
    with app.app_context():
        svc = Customer360(app.extensions["fincrm"].records)
        for name, cid in (("small", small["id"]), ("large", large["id"])):
            with statements(app) as seen:
                data = svc.view(principal, cid)
            service_counts[name] = len(seen)
        assert len(data["holdings"].items) == 60 and len(data["transactions"].items) == 10 and data["transactions"].more
    print(f"\n360 statements: page {counts}, service {service_counts}")
    further = len(data["more_sections"])  # one list page per further relation (loan applications, policies …)
    assert further == 3, [r["name"] for r in data["more_sections"]]
    assert counts["small"] == counts["large"] <= 11 + further  # the whole page, session user included
    assert service_counts["small"] == service_counts["large"] <= 10 + further


def test_the_monthly_aggregate_matches_a_hand_computation(app: Any, login: Any, client: Any) -> None:
    rm1 = _user_id(app, "rm1")
    c = _create(client, login("rm1"), "customer", name="月")
    rows = [
        ("2024-03-05T10:00:00", "in", "1000.10"),
        ("2024-03-31T23:30:00", "in", "0.90"),  # 15:30 UTC: still March in Beijing
        ("2024-04-01T00:30:00", "out", "500.00"),  # 2024-03-31 16:30 UTC: April in Beijing
        ("2024-04-15T12:00:00", "out", "250.25"),
        ("2024-04-20T12:00:00", "in", "99999999.99"),
        ("2026-01-10T09:00:00", "in", "7.00"),  # the current month of the fixed clock
        ("2023-12-31T23:59:00", "in", "123.00"),  # 25 months back: outside the window
    ]
    _bulk(app, "transaction", [{"customer": c["id"], "amount": a, "direction": d, "occurred_at": _utc(t)} for t, d, a in rows])
    other = _create(client, login("rm2"), "customer", name="别人")
    _bulk(app, "transaction", [{"customer": other["id"], "amount": "5.00", "direction": "in", "occurred_at": _utc("2024-03-10T10:00:00")}])
    now = dt.datetime(2026, 1, 20, 4, 0, 0)  # naive UTC
    with app.app_context():
        svc = Customer360(app.extensions["fincrm"].records, now=lambda: now)
        monthly = svc.view(Principal(rm1, "rm1", frozenset({"relationship_manager"})), c["id"])["monthly"]
    assert [m["month"] for m in monthly] == month_keys(now, 24)
    assert monthly[0]["month"] == "2024-02" and monthly[-1]["month"] == "2026-01" and len(monthly) == 24
    by_month = {m["month"]: m for m in monthly}
    assert by_month["2024-03"] == {"month": "2024-03", "in": Decimal("1001.00"), "out": Decimal("0.00"), "count": 2}
    assert by_month["2024-04"] == {"month": "2024-04", "in": Decimal("99999999.99"), "out": Decimal("750.25"), "count": 3}
    assert by_month["2026-01"]["in"] == Decimal("7.00")
    assert sum(m["count"] for m in monthly) == 6
    assert all(m["in"] == m["out"] == Decimal("0.00") for k, m in by_month.items() if k not in ("2024-03", "2024-04", "2026-01"))


def test_the_chart_data_block_carries_this_months_sums(browser: Any, login: Any, app: Any) -> None:
    c = _create(browser, login("rm1"), "customer", name="图")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    _bulk(app, "transaction", [
        {"customer": c["id"], "amount": "1200.50", "direction": "in", "occurred_at": stamp},
        {"customer": c["id"], "amount": "200.25", "direction": "out", "occurred_at": stamp},
    ])
    page = _text(browser.get(f"/c360/{c['id']}"))
    block = re.search(r'<script type="application/json" id="c360-data">(.*?)</script>', page, re.S)
    assert block
    data = json.loads(block.group(1))
    assert data["months"][-1] == now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).strftime("%Y-%m")
    assert data["in"][-1] == "1200.50" and data["out"][-1] == "200.25" and len(data["months"]) == 24


def test_the_request_access_form_creates_a_pending_request(browser: Any, login: Any, app: Any) -> None:
    c = _create(browser, login("rm1"), "customer", name="赵六", id_number="11010519491231002X")
    page = _text(browser.get(f"/c360/{c['id']}"))
    assert 'id="c360-access-form"' in page and 'value="id_number"' in page and 'id="c360-access-pending"' not in page
    no_token = browser.post(f"/c360/{c['id']}/access-request", data={"fields": "id_number", "reason": "客户办理大额业务需核实证件"})
    assert no_token.status_code == 400
    token = csrf_token(page)
    short = browser.post(f"/c360/{c['id']}/access-request", data={"csrf_token": token, "fields": "id_number", "reason": "看看"}, follow_redirects=True)
    assert "申请未提交" in _text(short) and 'id="c360-access-pending"' not in _text(short)
    resp = browser.post(
        f"/c360/{c['id']}/access-request", data={"csrf_token": token, "fields": ["id_number"], "reason": "客户办理大额业务需核实证件", "minutes": "60"}
    )
    assert resp.status_code in (302, 303) and resp.headers["Location"].endswith(f"/c360/{c['id']}#c360-access")
    page = _text(browser.get(f"/c360/{c['id']}"))
    assert 'id="c360-access-pending" data-status="pending"' in page and 'data-pending-field="id_number"' in page
    assert _field(page, "id_number") == "110***********002X"
    mine = browser.get("/api/v1/access-requests", headers=login("rm1")).json["items"]
    assert [(r["record_id"], r["fields"], r["status"], r["minutes"]) for r in mine] == [(c["id"], ["id_number"], "pending", 60)]


def test_an_approved_request_shows_the_value_in_clear_until_it_expires(browser: Any, login: Any, app: Any) -> None:
    c = _create(browser, login("rm1"), "customer", name="钱七", id_number="11010519491231002X")
    created = browser.post("/api/v1/access-requests", json={"entity": "customer", "record_id": c["id"], "fields": ["id_number"], "reason": "客户办理大额业务需核实证件"}, headers=login("rm1"))
    assert created.status_code == 201
    assert browser.post(f"/api/v1/access-requests/{created.json['id']}/approve", headers=login("admin")).status_code == 200
    browser.get(f"/c360/{c['id']}")  # the first request after the approval reloads the policy
    with statements(app) as seen:
        page = _text(browser.get(f"/c360/{c['id']}"))
    assert _field(page, "id_number") == "11010519491231002X" and 'data-granted="id_number"' in page
    print(f"\n360 statements with an unmasked read audited: {len(seen)}")
    with app.app_context():
        entries = browser.get(f"/api/v1/audit?entity=customer&record_id={c['id']}", headers=login("admin")).json["items"]
    assert any(e["action"] == "unmasked_read" for e in entries)


def test_a_hostile_customer_name_is_escaped(browser: Any, login: Any, app: Any) -> None:
    c = _create(browser, login("rm1"), "customer", name=SCRIPT, occupation='"><img src=x onerror=alert(1)>')
    browser.post(f"{CUSTOMERS}/{c['id']}/tags", json={"tag": "</script><script>alert(2)</script>"}, headers=login("rm1"))
    _bulk(app, "task", [{"customer": c["id"], "title": SCRIPT, "owner": _user_id(app, "rm1"), "due_at": "2020-01-01T00:00:00Z"}])
    for path in (f"/c360/{c['id']}", "/mywork/"):
        page = _text(browser.get(path))
        assert SCRIPT not in page and "<img src=x" not in page and "alert(2)</script>" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_anonymous_visitors_are_sent_to_the_login_form(client: Any) -> None:
    for path in ("/c360/1", "/mywork/"):
        resp = client.get(path)
        assert resp.status_code in (302, 303) and "/login/" in resp.headers["Location"], path


# ------------------------------------------------------------------ My work


def test_my_work_lists_my_overdue_today_and_upcoming_tasks_not_rm2s(browser: Any, login: Any, app: Any, product: int) -> None:
    rm1, rm2 = _user_id(app, "rm1"), _user_id(app, "rm2")
    mine = _create(browser, login("rm1"), "customer", name="张三")
    theirs = _create(browser, login("rm2"), "customer", name="李四")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    end_of_today = dt.datetime.combine(now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).date() + dt.timedelta(days=1), dt.time(), LOCAL_TZ)
    later_today = min(now + dt.timedelta(minutes=30), end_of_today.astimezone(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=1))

    def z(moment: dt.datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    _bulk(app, "task", [
        {"customer": mine["id"], "title": "逾期回访", "owner": rm1, "due_at": z(now - dt.timedelta(days=2))},
        {"customer": mine["id"], "title": "今日回访", "owner": rm1, "due_at": z(later_today)},
        {"customer": mine["id"], "title": "下周回访", "owner": rm1, "due_at": z(now + dt.timedelta(days=3, hours=1))},
        {"customer": mine["id"], "title": "已完成的", "owner": rm1, "due_at": z(now - dt.timedelta(days=1)), "status": "done"},
        {"customer": theirs["id"], "title": "别人的逾期", "owner": rm2, "due_at": z(now - dt.timedelta(days=2))},
    ])
    _bulk(app, "opportunity", [
        {"customer": mine["id"], "title": "理财到期续作", "stage": "contacted", "owner": rm1, "product": product, "expected_amount": "500000", "due_date": "2030-01-01"},
        {"customer": theirs["id"], "title": "别人的商机", "stage": "contacted", "owner": rm2},
    ])
    soon = (now + dt.timedelta(days=10)).date().isoformat()
    _bulk(app, "holding", [
        {"customer": mine["id"], "product": product, "amount": "300000.00", "maturity_date": soon},
        {"customer": theirs["id"], "product": product, "amount": "777777.00", "maturity_date": soon},
    ])
    resp = browser.get("/mywork/")
    assert resp.status_code == 200
    page = _text(resp)
    tasks = re.search(r'id="mywork-tasks".*?id="mywork-opportunities"', page, re.S)
    assert tasks
    buckets = {b: re.search(rf'data-bucket="{b}".*?</table>', tasks.group(0), re.S) for b in ("overdue", "today", "upcoming")}
    assert buckets["overdue"] and "逾期回访" in buckets["overdue"].group(0)
    assert buckets["today"] and "今日回访" in buckets["today"].group(0)
    assert buckets["upcoming"] and "下周回访" in buckets["upcoming"].group(0)
    assert f'href="/c360/{mine["id"]}"' in tasks.group(0) and "张三" in tasks.group(0)
    assert "别人的" not in page and "李四" not in page and "777,777.00" not in page and "已完成的" not in page
    assert "理财到期续作" in page and "¥500,000.00" in page and 'data-stage="contacted"' in page
    reminders = re.search(r'id="mywork-reminders".*?</table>', page, re.S)
    assert reminders and "稳健90天理财" in reminders.group(0) and "¥300,000.00" in reminders.group(0)
    with statements(app) as seen:
        assert browser.get("/mywork/").status_code == 200
    print(f"\nmy work statements: {len(seen)}")
    assert len(seen) <= 8


def test_home_leads_a_signed_in_user_to_my_work(browser: Any) -> None:
    resp = browser.get("/")
    assert resp.status_code in (302, 303) and resp.headers["Location"].endswith("/mywork/")
    assert 'data-nav="mywork"' in _text(browser.get("/mywork/"))


# ------------------------------------------------------------------ tiers


@pytest.mark.parametrize(
    ("aum", "key"),
    [("0", "standard"), ("49999.99", "standard"), ("50000", "gold"), ("499999.99", "gold"), ("500000", "platinum"),
     ("1000000", "diamond"), ("5999999.99", "diamond"), ("6000000", "private"), ("80000000", "private")],
)
def test_aum_tiers_follow_the_documented_thresholds(aum: str, key: str) -> None:
    tier = tier_for(Decimal(aum))
    assert tier is not None and tier.key == key
    assert tier_for(None) is None and [t.key for t in TIERS][-1] == "standard"


def test_both_pages_speak_english_when_the_user_picks_it(browser: Any, login: Any) -> None:
    c = _create(browser, login("rm1"), "customer", name="王五", aum="50000.00", id_number="11010519491231002X")
    browser.get("/lang/en")
    page = _text(browser.get(f"/c360/{c['id']}"))
    assert "Holdings" in page and "Request access" in page and "Contact timeline" in page
    assert _field(page, "tier") == "Gold" and _field(page, "aum") == "¥50,000.00"
    assert "My tasks" in _text(browser.get("/mywork/"))
