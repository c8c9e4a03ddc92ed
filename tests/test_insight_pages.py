"""The report pages (/reports/, /reports/<name>) and the dashboard (/dashboard/) as the server
renders them: who gets them and in which language, the navbar links, 404 for an unknown report,
hostile report labels as text, and an HTML shell without personal data (rows come from the API,
scoped and masked there)."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

import pytest

from tests.api_helpers import app, client, csrf_token, login, shared_app, signed_in  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

PAGES = ("/reports/", "/reports/value_top100", "/reports/ticket_handling_time", "/dashboard/")
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]




def _page_data(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="insight-data">(.*?)</script>', html, re.S)
    assert found, "the page carries its data block"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def _add_user(app: Any, username: str, role: str) -> None:
    with app.app_context():
        sm = app.appbuilder.sm
        if sm.find_user(username=username) is None:
            sm.add_user(username, username, "Test", f"{username}@test.local", [sm.find_role(role)], password=TEST_PASSWORD)


def _nav(html: str) -> list[str]:
    return re.findall(r'data-nav="([a-z_]+)"', html)


@pytest.mark.parametrize("username", ["rm1", "admin"])
def test_the_pages_render_in_chinese_and_in_english(app: Any, username: str) -> None:
    zh_client, en_client = signed_in(app, username), signed_in(app, username, english=True)
    expected = {
        "/reports/": (("报表中心", "客户价值TOP100", "AUM客户分层", "月度客户活跃度分析"), ("Reports", "Top 100 customers by value", "Customers by AUM tier")),
        "/reports/value_top100": (("客户价值TOP100", "导出CSV", "导出Excel", "刷新"), ("Top 100 customers by value", "Export CSV", "Export Excel", "Refresh")),
        "/reports/ticket_handling_time": (("工单处理时效", "起始日期", "工单类别", "查询"), ("Ticket handling time", "From", "Category", "Run")),
        "/dashboard/": (("数据驾驶舱", "客户价值TOP100", "流失高风险客户", "NPS净推荐值趋势", "投诉热点关键词", "客户留存率", "交叉销售率"),
                        ("Dashboard", "Top 100 customers by value", "Customers at churn risk", "NPS trend", "Retention rate", "Cross-sell rate")),
    }
    for path, (zh_labels, en_labels) in expected.items():
        zh = _text(zh_client.get(path))
        en = _text(en_client.get(path))
        for label in zh_labels:
            assert label in zh, (path, label)
        for label in en_labels:
            assert label in en, (path, label)
        assert "数据驾驶舱" not in en and "报表中心" not in en, path
        assert _page_data(zh)["lang"] == "zh" if path != "/reports/" else True
        # the navbar offers both pages; every script and stylesheet is the app's own (no CDN)
        assert "reports" in _nav(zh) and "dashboard" in _nav(zh), path
        for url in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', zh):
            assert not re.match(r"(https?:)?//", url), url
    dashboard = _text(zh_client.get("/dashboard/"))
    assert "/static/vendor/echarts/echarts.min.js" in dashboard and "/static/fincrm/insight.js" in dashboard
    # the dashboard's cards: the reports that have a dashboard entry, in their order, then analytics
    cards = re.findall(r'data-card="([^"]+)"', dashboard)
    assert cards[:3] == ["report-value_top100", "report-aum_tiers", "report-monthly_active_customers"], cards
    assert {"channels", "churn", "nps", "rfm", "keywords", "report-ticket_handling_time"} <= set(cards)
    assert 'data-card="report-branch_performance"' not in dashboard  # a report without a dashboard entry


def test_the_pages_need_a_login(app: Any, client: Any) -> None:
    for path in PAGES:
        resp = client.get(path)
        assert resp.status_code == 302 and "/login/" in resp.headers["Location"], (path, resp.status_code)


def test_an_unknown_report_is_404_and_a_role_without_customers_gets_403(app: Any) -> None:
    browser = signed_in(app, "admin")
    resp = browser.get("/reports/no_such_report")
    assert resp.status_code == 404
    assert "no_such_report" not in _text(resp)
    _add_user(app, "auditor9", "auditor")
    auditor = signed_in(app, "auditor9")
    for path in ("/reports/", "/dashboard/", "/reports/value_top100"):
        assert auditor.get(path).status_code == 403, path
    home = _text(auditor.get("/e/"))
    assert "reports" not in _nav(home) and "dashboard" not in _nav(home)


def test_parameters_come_prefilled_and_values_from_the_address_bar_win(app: Any) -> None:
    browser = signed_in(app, "rm1")
    page = _text(browser.get("/reports/ticket_handling_time"))
    since = re.search(r'<input[^>]*id="param-since"[^>]*>', page)
    assert since and 'type="date"' in since.group(0)
    value = re.search(r'value="(\d{4}-\d{2}-\d{2})"', since.group(0))
    assert value, "the relative default (-12m) is shown as a date"
    api = browser.get("/api/v1/reports/ticket_handling_time", headers={"X-Requested-With": "page"})
    assert api.status_code == 200 and api.json["params"]["since"] == value.group(1)
    category = re.search(r'<select[^>]*id="param-category".*?</select>', page, re.S)
    assert category and re.search(r'<option value="complaint"\s+selected>投诉</option>', category.group(0))
    chosen = _text(browser.get("/reports/ticket_handling_time?since=2026-01-05&category=claim"))
    assert 'value="2026-01-05"' in chosen and re.search(r'<option value="claim"\s+selected>', chosen)


def test_the_editor_is_offered_to_those_who_may_configure(app: Any) -> None:
    rm1 = _text(signed_in(app, "rm1").get("/reports/value_top100"))
    assert 'id="report-editor"' not in rm1 and "editor" not in _page_data(rm1)
    admin = _text(signed_in(app, "admin").get("/reports/value_top100"))
    assert 'id="report-editor"' in admin and 'id="report-edit-toggle"' in admin
    editor = _page_data(admin)["editor"]
    fields = {f["name"]: f for f in editor["fields"]}
    assert fields["aum"]["aggs"] == ["count_distinct", "sum", "avg", "min", "max"] and fields["aum"]["clear"]
    assert "branch.name" in fields and fields["branch.name"]["label"]["zh"].endswith("名称")
    assert fields["opened_on"]["buckets"] == ["day", "week", "month", "quarter", "year"]
    # a field the editor sees masked may be shown, never grouped, aggregated or filtered on
    assert fields["name"]["clear"] is False and fields["name"]["aggs"] == []
    assert editor["ops"]["gte"] == "大于等于"


def test_a_hostile_report_label_is_shown_as_text(app: Any, client: Any, login: Any) -> None:
    body = {
        "label": {"zh": SCRIPT, "en": SCRIPT}, "description": {"zh": IMG, "en": IMG}, "entity": "customer",
        "params": [{"name": "who", "type": "string", "label": {"zh": IMG, "en": IMG}}],
        "filter": {"field": "occupation", "op": "eq", "value": {"param": "who"}},
        "columns": [{"name": "occupation", "label": {"zh": SCRIPT, "en": SCRIPT}, "field": "occupation"},
                    {"name": "n", "label": {"zh": IMG, "en": IMG}, "agg": "count"}],
        "chart": {"type": "bar", "x": "occupation", "y": ["n"]}, "dashboard": {"order": 1, "width": "half"},
    }
    assert client.put("/api/v1/meta/reports/hostile_label", json=body, headers=login("admin")).status_code == 200
    browser = signed_in(app, "admin")
    for path in ("/reports/", "/reports/hostile_label", "/dashboard/"):
        page = _text(browser.get(path))
        assert SCRIPT not in page and "<img src=x" not in page, path
        assert escape(SCRIPT, quote=False) in page or "\\u003cscript\\u003e" in page, path
    assert "\\u003cscript\\u003e" in _text(browser.get("/reports/hostile_label"))  # the data block escapes it too


def test_the_html_shell_holds_no_personal_data(app: Any, client: Any, login: Any) -> None:
    rm1 = login("rm1")
    made = client.post("/api/v1/records/customer", json={"name": "欧阳娜娜", "mobile": "13912345678", "aum": "88888888.88", "occupation": "教师"}, headers=rm1)
    assert made.status_code == 201, _text(made)
    for username in ("rm1", "admin"):
        # the API has the row (masked for the reader) …
        result = client.get("/api/v1/reports/value_top100", headers=login(username)).json
        names = [row[0] for row in result["rows"]]
        shown = names[0]
        assert shown.startswith("欧") and len(names) == 1
        # … the page shell has none of it: no name (clear or masked), no mobile, no amount
        browser = signed_in(app, username)
        for path in PAGES:
            page = _text(browser.get(path))
            for secret in ("欧阳娜娜", shown, "13912345678", "139****5678", "88888888", "88,888,888"):
                assert secret not in page, (username, path, secret)


def test_report_messages_are_translated_for_the_page(app: Any) -> None:
    browser = signed_in(app, "rm1")
    token = csrf_token(_text(browser.get("/reports/value_top100")))
    resp = browser.post("/reports/_messages", json={"messages": ["must be a date (YYYY-MM-DD)", "something new"]}, headers={"X-CSRFToken": token})
    assert resp.status_code == 200 and resp.json["messages"] == ["应为日期（YYYY-MM-DD）", "something new"]
    refused = browser.post("/reports/_messages", json={"messages": ["x"]}, headers={"Accept": "application/json"})
    assert refused.status_code == 403
    bad = browser.post("/reports/_messages", json={"messages": "x"}, headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert bad.status_code == 400 and bad.json["error"]["details"][0]["field"] == "messages"
