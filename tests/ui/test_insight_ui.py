"""Reports and the dashboard in Chromium, over a demo book of two relationship managers' customers:
the admin's dashboard draws every card with ECharts canvases from the APIs (KPI tiles agree with
the APIs, churn names link to the customer-360 page, charts follow the window's size); the
English switch relabels it; an admin adds a column and a filter condition in the report editor,
sees a 422's pointers, saves and sees the new column; rm1's value TOP100 holds rm1's customers
only; hostile report labels and customer names stay text, tooltips included. A screenshot of the
dashboard is kept (docs/screenshots/dashboard.png)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from engine.demo import seed_branches, seed_demo
from tests.ui.conftest import screenshot

SCRIPT = "<script>alert(1)</script>"
HOSTILE_NAME = "<img src=x onerror=alert(2)>"
ANALYTICS = {
    "channels": "/api/v1/analytics/channels",
    "churn": "/api/v1/analytics/churn?limit=8",
    "nps": "/api/v1/analytics/nps?period=month&periods=12",
    "rfm": "/api/v1/analytics/rfm?limit=1",
    "keywords": "/api/v1/insight/keywords?period=month&periods=6&top=20",
}


@pytest.fixture(scope="module")
def seeded(ui_app: Any) -> dict[str, int]:
    """A demo book: 120 customers with a year of history, split between rm1 and rm2."""
    records = ui_app.extensions["fincrm"].records
    with ui_app.app_context():
        sm = ui_app.appbuilder.sm
        owners = [(sm.find_user(username="rm1").id, "BJ01"), (sm.find_user(username="rm2").id, "SH01")]
        branches = seed_branches(records)
        return seed_demo(records, branches=branches, owners=owners, customers=120, months=13, seed=20261203)


def _get(api: Any, username: str, path: str) -> Any:
    client, login = api
    resp = client.get(path, headers=login(username))
    assert resp.status_code == 200, (path, resp.get_data(as_text=True)[:300])
    return resp.json


def _count(api: Any, username: str, condition: dict[str, Any] | None = None) -> int:
    query = "/api/v1/records/customer?count=1&limit=1" + (f"&filter={json.dumps(condition)}" if condition else "")
    return int(_get(api, username, query)["count"])


def _watch_dialogs(page: Any) -> list[str]:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return dialogs


def _open_dashboard(page: Any) -> None:
    page.goto("/dashboard/")
    page.wait_for_selector("#dashboard[data-loaded='1']")


def _has_data(kind: str, body: dict[str, Any]) -> bool:
    if kind == "channels":
        return any(c["acquired"] or c["converted"] for c in body["channels"])
    if kind == "churn":
        return bool(body["count"])
    if kind == "nps":
        return any(i["responses"] for i in body["items"])
    if kind == "rfm":
        return bool(body["total"])
    return any(i["keywords"] for i in body["items"])


def _points(card: Any) -> int:
    return int(card.locator("[data-chart]").get_attribute("data-points") or 0)


def test_the_admins_dashboard_draws_every_card_from_the_apis(page_as: Any, api: Any, seeded: dict[str, int]) -> None:
    page = page_as("admin")
    page.goto("/e/")
    page.locator("[data-nav=dashboard]").click()
    page.wait_for_selector("#dashboard[data-loaded='1']")
    assert page.url.endswith("/dashboard/")

    # every report with a dashboard entry: a chart on canvas with one point per result row
    boards = [r for r in _get(api, "admin", "/api/v1/reports")["items"] if r["dashboard"]]
    assert {"value_top100", "aum_tiers", "monthly_active_customers", "ticket_handling_time"} <= {r["name"] for r in boards}
    for r in boards:
        card = page.locator(f"[data-card='report-{r['name']}']")
        rows = _get(api, "admin", f"/api/v1/reports/{r['name']}")["rows"]
        assert card.get_attribute("data-state") == ("done" if rows else "empty"), r["name"]
        if rows:
            assert card.locator("[data-chart] canvas").count() >= 1, r["name"]
            assert _points(card) == len(rows), r["name"]
    assert _points(page.locator("[data-card='report-value_top100']")) == min(100, seeded["customer"])

    # analytics cards: drawn when their API has data, "no data" otherwise, never an error
    for kind, path in ANALYTICS.items():
        card = page.locator(f"[data-card='{kind}']")
        assert card.count() == 1, kind
        body = _get(api, "admin", path)
        assert card.get_attribute("data-state") == ("done" if _has_data(kind, body) else "empty"), kind
    for kind in ("rfm", "nps"):
        assert page.locator(f"[data-card='{kind}'] [data-chart] canvas").count() >= 1, kind

    # KPI tiles say what the APIs say
    tile = lambda key: page.locator(f"[data-kpi='{key}'] [data-value]").inner_text().strip()  # noqa: E731
    assert tile("customers") == f"{seeded['customer']:,}"
    total_aum = sum(Decimal(row[2]) for row in _get(api, "admin", "/api/v1/reports/aum_tiers")["rows"])
    shown = tile("aum_total")
    assert shown.startswith("¥") and shown.endswith(("万", "亿")), shown
    unit = Decimal(10_000) if shown.endswith("万") else Decimal(100_000_000)
    assert abs(Decimal(shown[1:-1].replace(",", "")) * unit - total_aum) <= unit / 100, (shown, total_aum)
    kpis = _get(api, "admin", "/api/v1/analytics/kpis")
    for key, rate in (("retention", kpis["retention"]["rate"]), ("cross_sell", kpis["cross_sell"]["rate"])):
        assert abs(float(tile(key).rstrip("%")) - rate * 100) < 0.051, (key, tile(key), rate)
    churn = _get(api, "admin", ANALYTICS["churn"])
    assert tile("churn") == f"{churn['count']:,}"

    # churn risk: the API's (masked) names, each a link to the customer-360 page
    links = page.locator("[data-card='churn'] a.fincrm-churn-name")
    assert links.all_inner_texts() == [i["name"] for i in churn["items"]]
    assert page.errors == []
    screenshot(page, "dashboard")

    # charts follow the window
    canvas = page.locator("[data-card='report-value_top100'] [data-chart] canvas").first
    wide = canvas.bounding_box()["width"]
    page.set_viewport_size({"width": 900, "height": 900})
    page.wait_for_function("w => document.querySelector(\"[data-card='report-value_top100'] [data-chart] canvas\").getBoundingClientRect().width < w - 100", arg=wide)
    page.set_viewport_size({"width": 1366, "height": 900})

    if churn["items"]:
        first = churn["items"][0]
        links.first.click()
        page.wait_for_load_state("networkidle")
        assert page.url.endswith(f"/c360/{first['customer']}")
    assert page.errors == []


def test_the_english_switch_relabels_the_dashboard_and_the_reports(page_as: Any, seeded: dict[str, int]) -> None:
    page = page_as("rm1")
    _open_dashboard(page)
    assert page.locator("h2").first.inner_text().strip() == "数据驾驶舱"
    page.goto("/lang/en")
    _open_dashboard(page)
    assert page.locator("h2").first.inner_text().strip() == "Dashboard"
    titles = page.locator(".fincrm-dash-card-title").all_inner_texts()
    assert "Top 100 customers by value" in titles and "Customers at churn risk" in titles and "Monthly customer activity" in titles
    assert page.locator("[data-kpi='retention'] .fincrm-kpi-title").inner_text().strip() == "Retention rate"
    assert page.locator("[data-nav=reports]").inner_text().strip() == "Reports"
    page.goto("/reports/aum_tiers")
    page.wait_for_selector("#report-params[data-state=done]")
    headers = page.locator("#report-table th").all_inner_texts()
    assert headers[:2] == ["Tier", "Customers"], headers
    tiers = set(page.locator("#report-table td[data-column=tier]").all_inner_texts())
    assert tiers and tiers <= {"Mass", "Gold", "Platinum", "Diamond", "Private banking"}, tiers
    assert page.errors == []
    page.goto("/lang/zh")


def test_an_admin_adds_a_column_and_a_condition_in_the_editor(page_as: Any, api: Any, seeded: dict[str, int]) -> None:
    client, login = api
    original = _get(api, "admin", "/api/v1/meta/reports/branch_performance")
    page = page_as("admin")
    page.goto("/reports/branch_performance")
    page.wait_for_selector("#report-params[data-state=done]")
    before = page.locator("#report-table th").all_inner_texts()
    page.click("#report-edit-toggle")
    page.wait_for_selector(f"#editor-columns li:nth-child({len(original['columns'])})")
    try:
        # a definition the server refuses: its pointers are shown, nothing changes
        for _ in original["columns"]:
            page.locator("#editor-columns [data-remove-column]").first.click()
        page.click("#editor-save")
        page.wait_for_selector("#editor-problems:not(.hidden)")
        pointers = page.locator("#editor-problems li[data-pointer]").evaluate_all("els => els.map(e => e.dataset.pointer)")
        assert any("/columns" in p for p in pointers), pointers
        assert page.locator("#report-table th").all_inner_texts() == before
        page.click("#editor-cancel")
        assert page.locator("#editor-columns li").count() == len(original["columns"])

        # average AUM per branch, over customers with at least 1,000,000 AUM
        page.select_option("#editor-field", "aum")
        page.select_option("#editor-agg", "avg")
        assert page.input_value("#editor-label-zh") == "资产规模(AUM)平均"
        page.click("#editor-add")
        page.click("#editor-add-filter")
        row = page.locator("#editor-filters .fincrm-editor-filter").last
        row.locator("[data-role=field]").select_option("aum")
        row.locator("[data-role=op]").select_option("gte")
        row.locator("[data-role=value]").fill("1000000")
        page.click("#editor-save")
        page.wait_for_selector("#report-saved:not(.hidden)")
        page.wait_for_selector("#report-params[data-state=done]")
        assert page.locator("#report-table th[data-column=aum_avg]").inner_text().strip() == "资产规模(AUM)平均"
        saved = _get(api, "admin", "/api/v1/meta/reports/branch_performance")
        assert saved["columns"][-1] == {"name": "aum_avg", "label": {"zh": "资产规模(AUM)平均", "en": "Average of AUM"}, "field": "aum", "agg": "avg"}
        # the table now counts only the customers the condition keeps
        counts = page.locator("#report-table td[data-column=customers]").all_inner_texts()
        assert sum(int(c.replace(",", "")) for c in counts) == _count(api, "admin", {"field": "aum", "op": "gte", "value": "1000000"})
        assert all(v.strip() for v in page.locator("#report-table td[data-column=aum_avg]").all_inner_texts())
        assert page.errors == []
    finally:
        restore = {k: v for k, v in original.items() if k not in ("kind", "name")}
        assert client.put("/api/v1/meta/reports/branch_performance", json=restore, headers=login("admin")).status_code == 200


def test_rm1_sees_only_their_own_customers_in_value_top100(page_as: Any, api: Any, seeded: dict[str, int]) -> None:
    page = page_as("rm1")
    page.goto("/reports/value_top100")
    page.wait_for_selector("#report-params[data-state=done]")
    mine = _count(api, "rm1", {"field": "aum", "op": "is_null", "value": False})
    assert 0 < mine < seeded["customer"]
    assert int(page.locator("#report-table").get_attribute("data-rows") or 0) == min(100, mine)
    owners = set(page.locator("#report-table td[data-column=owner]").all_inner_texts())
    assert owners == {r[1] for r in _get(api, "rm1", "/api/v1/reports/value_top100")["rows"]} and len(owners) == 1
    names = sorted(page.locator("#report-table td[data-column=name]").all_inner_texts())
    listed = _get(api, "rm1", "/api/v1/records/customer?limit=200&fields=name&sort=-aum")["items"]
    assert names == sorted(i["name"] for i in listed[:100])
    _open_dashboard(page)
    assert _points(page.locator("[data-card='report-value_top100']")) == min(100, mine)
    assert page.errors == []


def test_a_bad_parameter_is_shown_beside_its_field_without_a_reload(page_as: Any, seeded: dict[str, int]) -> None:
    page = page_as("rm1")
    page.goto("/reports/ticket_handling_time")
    page.wait_for_selector("#report-params[data-state=done]")
    page.evaluate("window.fincrmMark = 1")  # gone if the page reloads
    # the date picker accepts real dates only; a typed-in value can still be wrong
    page.evaluate("document.querySelector('#param-since').type = 'text'")
    page.fill("#param-since", "2026-13-45")
    page.click("#report-run")
    page.wait_for_selector("#report-params[data-state=error]")
    assert page.locator("[data-error-for=since]").inner_text().strip() == "应为日期（YYYY-MM-DD）"
    assert page.locator("#report-problems li[data-field=since] strong").inner_text() == "起始日期"
    assert page.locator("#report-table tbody tr").count() == 0
    page.fill("#param-since", "2026-01-01")
    page.select_option("#param-category", "inquiry")
    page.wait_for_selector("#report-params[data-state=done]")
    assert page.evaluate("window.fincrmMark") == 1
    assert "since=2026-01-01" in page.url and "category=inquiry" in page.url
    assert "since=2026-01-01" in (page.get_attribute("#report-export-csv", "href") or "")
    assert page.locator("#report-problems").is_hidden() and page.errors == []


def test_hostile_report_labels_and_customer_names_stay_text(page_as: Any, api: Any, seeded: dict[str, int]) -> None:
    client, login = api
    made = client.post("/api/v1/records/customer", json={"name": HOSTILE_NAME, "aum": "987654321.00"}, headers=login("rm1"))
    assert made.status_code == 201, made.get_data(as_text=True)
    body = {
        "label": {"zh": SCRIPT, "en": SCRIPT}, "description": {"zh": HOSTILE_NAME, "en": HOSTILE_NAME}, "entity": "customer",
        "columns": [{"name": "name", "label": {"zh": SCRIPT, "en": SCRIPT}, "field": "name"}, {"name": "aum", "field": "aum"}],
        "filter": {"field": "aum", "op": "gte", "value": "900000000"}, "sort": ["-aum"],
        "chart": {"type": "bar", "x": "name", "y": ["aum"]}, "dashboard": {"order": 1, "width": "half"},
    }
    assert client.put("/api/v1/meta/reports/hostile_xss", json=body, headers=login("admin")).status_code == 200
    try:
        page = page_as("rm1")  # rm1 reads the customer's name in clear: the raw markup reaches the chart
        dialogs = _watch_dialogs(page)
        _open_dashboard(page)
        card = page.locator("[data-card='report-hostile_xss']")
        assert card.locator(".fincrm-dash-card-title").inner_text() == SCRIPT
        assert card.get_attribute("data-state") == "done" and _points(card) == 1
        # the tooltips (HTML in ECharts) of this chart and of value TOP100, where the name ranks first
        for key in ("report-hostile_xss", "report-value_top100"):
            page.evaluate(
                "key => { const el = document.querySelector(`[data-card='${key}'] [data-chart]`);"
                " echarts.getInstanceByDom(el).dispatchAction({type: 'showTip', seriesIndex: 0, dataIndex: 0}); }",
                key,
            )
            page.wait_for_timeout(300)
        assert page.locator("#dash-grid img").count() == 0
        page.goto("/reports/hostile_xss")
        page.wait_for_selector("#report-params[data-state=done]")
        assert page.locator("#report-title").inner_text() == SCRIPT
        assert page.locator("#report-table td[data-column=name]").all_inner_texts() == [HOSTILE_NAME]
        page.goto("/reports/")
        assert page.locator("[data-report=hostile_xss] .fincrm-report-label").inner_text() == SCRIPT
        assert dialogs == [] and page.errors == []
    finally:
        body.pop("dashboard")
        client.put("/api/v1/meta/reports/hostile_xss", json=body, headers=login("admin"))
