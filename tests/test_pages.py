"""The web pages as a browser sees them: Flask-AppBuilder's login form, then the generic record
pages (/e/…) with Chinese labels, masking, form errors, HTML escaping and CSRF."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from tests.api_helpers import (  # noqa: F401  (module-wide app fixtures)
    LABEL,
    app,
    client,
    count,
    csrf_token,
    login,
    page_login,
    shared_app,
)

CUSTOMERS = "/api/v1/records/customer"
SCRIPT = "<script>alert(1)</script>"


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]


def _cells(page: str, css_class: str) -> list[str]:
    """The text of each <td> in the table with ``css_class`` (tags stripped, entities kept)."""
    table = re.search(rf'<table[^>]*{css_class}.*?</table>', page, re.S)
    assert table, f"no table .{css_class}"
    return [re.sub(r"<[^>]+>", "", td).strip() for td in re.findall(r"<td[^>]*>(.*?)</td>", table.group(0), re.S)]


def _detail_value(page: str, field: str) -> str:
    found = re.search(rf'<dd data-field="{field}">(.*?)</dd>', page, re.S)
    assert found, f"no {field} on the detail page"
    return re.sub(r"<[^>]+>", "", found.group(1)).replace("&nbsp;", "").strip()


def _customer(client: Any, headers: dict[str, str], **values: Any) -> dict[str, Any]:
    resp = client.post(CUSTOMERS, json={"name": "页面客户", **values}, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json  # type: ignore[no-any-return]


@pytest.fixture
def browser(client: Any) -> Any:
    """rm1 logged in through the form, as a browser with a session cookie."""
    resp = page_login(client, "rm1")
    assert resp.status_code in (302, 303), _text(resp)[:300]
    return client


def test_pages_send_an_anonymous_visitor_to_the_login_form(client: Any) -> None:
    for path in ("/e/", "/e/customer/", "/e/customer/1", "/e/customer/new"):
        resp = client.get(path)
        assert resp.status_code in (302, 303) and "/login/" in resp.headers["Location"], path
    form = _text(client.get("/login/"))
    assert 'name="username"' in form and 'name="password"' in form and csrf_token(form)


def test_a_wrong_password_on_the_form_does_not_log_in(client: Any) -> None:
    resp = page_login(client, "rm1", "Wrong-password-1")
    assert client.get("/e/").status_code in (302, 303)
    assert resp.status_code in (200, 302)


def test_the_form_without_its_csrf_token_does_not_log_in(client: Any) -> None:
    from tests.conftest import TEST_PASSWORD

    client.get("/login/")
    client.post("/login/", data={"username": "rm1", "password": TEST_PASSWORD})
    assert client.get("/e/").status_code in (302, 303)


def test_the_entity_index_lists_every_entity_in_chinese(browser: Any) -> None:
    page = _text(browser.get("/e/"))
    entities = re.findall(r'href="/e/([a-z_]+)/"', page)
    assert {"customer", "holding", "transaction", "interaction", "product", "branch", "ticket", "task"} <= set(entities)
    for label in ("客户", "持仓", "交易流水", "联系记录", "产品", "工单"):
        assert label in page


def test_the_customer_list_shows_chinese_labels_masked_values_and_formatted_money(browser: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _customer(browser, rm1, name="王小明", mobile="13800138000", aum="1234567.5", risk_preference="balanced")["id"]
    _customer(browser, login("rm2"), name="别人的客户")
    resp = browser.get("/e/customer/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = _text(resp)
    headers = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th>(.*?)</th>", re.search(r"<thead>.*?</thead>", page, re.S).group(0), re.S)]
    assert headers[:4] == ["姓名", "手机号", "资产规模(AUM)", "风险偏好"]
    cells = _cells(page, "fincrm-list")
    assert cells[:5] == ["王小明", "138****8000", "¥1,234,567.50", "平衡型", "新客户"]
    assert "13800138000" not in page and "别人的客户" not in page
    assert f'href="/e/customer/{cid}"' in page


def test_the_detail_page_shows_the_record_masked(browser: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _customer(browser, rm1, name="李四", mobile="13912345678", id_number="11010519491231002X", birth_date="1949-12-31", gender="male")["id"]
    resp = browser.get(f"/e/customer/{cid}")
    assert resp.status_code == 200
    page = _text(resp)
    assert _detail_value(page, "name") == "李四"
    assert _detail_value(page, "mobile") == "139****5678"
    assert _detail_value(page, "id_number") == "110***********002X"
    assert _detail_value(page, "gender") == "男"
    assert "13912345678" not in page and "11010519491231002X" not in page and "1949-12-31" not in page
    assert "手机号" in page and "身份证号" in page and "持仓" in page and "联系记录" in page


def test_unknown_pages_are_404(browser: Any, login: Any) -> None:
    theirs = _customer(browser, login("rm2"), name="别人的")["id"]
    assert browser.get("/e/nope/").status_code == 404
    assert browser.get("/e/customer/999999").status_code == 404
    assert browser.get(f"/e/customer/{theirs}").status_code == 404
    assert browser.get("/e/nope/new").status_code == 404


def test_the_form_shows_a_field_error_and_writes_nothing(browser: Any, login: Any) -> None:
    admin = login("admin")
    form = _text(browser.get("/e/customer/new"))
    assert 'name="mobile"' in form and "手机号" in form
    resp = browser.post("/e/customer/new", data={"csrf_token": csrf_token(form), "name": "赵六", "mobile": "12345", "aum": "10"})
    assert resp.status_code == 200
    page = _text(resp)
    group = re.search(r'<div class="form-group has-error">.*?</div>\s*</div>', page, re.S)
    assert group and 'name="mobile"' in group.group(0)
    assert "应为11位大陆手机号码" in group.group(0)  # the engine's message, in the page's language
    assert 'value="赵六"' in page  # what the user typed is kept
    assert count(browser, admin) == 0


def test_the_form_creates_a_record_and_redirects_to_it(browser: Any, login: Any) -> None:
    form = _text(browser.get("/e/customer/new"))
    resp = browser.post(
        "/e/customer/new",
        data={"csrf_token": csrf_token(form), "name": "钱七", "mobile": "138 0013 8000", "aum": "1,000.5", "gender": "female", "opened_on": "2024-03-01"},
    )
    assert resp.status_code in (302, 303), _text(resp)[:500]
    detail = browser.get(resp.headers["Location"])
    page = _text(detail)
    assert _detail_value(page, "name") == "钱七" and _detail_value(page, "mobile") == "138****8000"
    assert _detail_value(page, "aum") == "¥1,000.50" and _detail_value(page, "gender") == "女"
    saved = browser.get(CUSTOMERS, headers=login("rm1")).json["items"]
    assert [(c["name"], c["aum"], c["opened_on"]) for c in saved] == [("钱七", "1000.50", "2024-03-01")]


def test_the_form_without_csrf_token_writes_nothing(browser: Any, login: Any) -> None:
    resp = browser.post("/e/customer/new", data={"name": "无令牌", "aum": "1"})
    assert resp.status_code in (400, 403)
    assert count(browser, login("admin")) == 0


def test_forms_save_integer_and_reference_fields(browser: Any, login: Any) -> None:
    """Form posts are strings: an integer score and a customer reference must be read as numbers."""
    cid = _customer(browser, login("rm1"), name="评分客户")["id"]
    form = _text(browser.get("/e/interaction/new"))
    resp = browser.post(
        "/e/interaction/new",
        data={"csrf_token": csrf_token(form), "customer": str(cid), "channel": "phone", "occurred_at": "2026-01-02T10:00", "satisfaction": "5"},
    )
    assert resp.status_code in (302, 303), re.findall(r'fincrm-error">([^<]*)', _text(resp))
    saved = browser.get("/api/v1/records/interaction", headers=login("rm1")).json["items"]
    assert [(i["customer"], i["satisfaction"]) for i in saved] == [(cid, 5)]


def test_the_see_all_link_of_a_relation_lists_its_records(browser: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _customer(browser, rm1, name="联系客户")["id"]
    made = browser.post("/api/v1/records/interaction", json={"customer": cid, "channel": "visit", "occurred_at": "2026-01-02T10:00:00"}, headers=rm1)
    assert made.status_code == 201
    page = _text(browser.get(f"/e/customer/{cid}"))
    link = re.search(r'href="(/e/interaction/\?[^"]+)"', page)
    assert link, "the contact log has a see-all link"
    listed = _text(browser.get(html.unescape(link.group(1))))
    assert "alert-warning" not in listed, re.findall(r'alert-warning[^>]*>([^<]*)', listed)
    assert f'data-id="{made.json["id"]}"' in listed


def test_every_column_header_of_the_list_sorts_without_an_error(browser: Any, login: Any) -> None:
    _customer(browser, login("rm1"), name="排序客户", mobile="13800138000")
    page = _text(browser.get("/e/customer/"))
    links = re.findall(r'<th><a href="(\?[^"]+)">([^<]+)</a></th>', page)
    assert len(links) >= 5
    broken = []
    for href, label in links:
        sorted_page = _text(browser.get("/e/customer/" + html.unescape(href)))
        if "alert-warning" in sorted_page or "排序客户" not in sorted_page:
            broken.append(label)
    assert broken == [], f"sorting by {broken} shows an error instead of the list"


def test_hostile_names_are_escaped_in_list_detail_and_form(browser: Any, login: Any) -> None:
    cid = _customer(browser, login("rm1"), name=SCRIPT, occupation='"><img src=x onerror=alert(1)>')["id"]
    for path in ("/e/customer/", f"/e/customer/{cid}", f"/e/customer/{cid}/edit"):
        page = _text(browser.get(path))
        assert SCRIPT not in page and "<img src=x" not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
    assert _detail_value(_text(browser.get(f"/e/customer/{cid}")), "name") == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_a_hostile_filter_value_in_the_list_page_is_escaped(browser: Any) -> None:
    page = _text(browser.get("/e/customer/", query_string={"q": SCRIPT, "f_field": "name", "f_op": "eq", "f_value": SCRIPT}))
    assert SCRIPT not in page and "&lt;script&gt;" in page


def test_a_cookie_session_api_write_needs_the_csrf_token(browser: Any, login: Any) -> None:
    admin = login("admin")
    assert browser.get(CUSTOMERS).status_code == 200  # reading with the session cookie works
    no_token = browser.post(CUSTOMERS, json={"name": "无令牌"})
    assert no_token.status_code == 403 and no_token.json["error"]["code"] == "forbidden"
    bad_token = browser.post(CUSTOMERS, json={"name": "假令牌"}, headers={"X-CSRFToken": "forged"})
    assert bad_token.status_code == 403
    assert count(browser, admin) == 0
    token = csrf_token(_text(browser.get("/e/customer/new")))
    created = browser.post(CUSTOMERS, json={"name": "有令牌"}, headers={"X-CSRFToken": token})
    assert created.status_code == 201 and created.json["name"] == "有令牌"
    cid = created.json["id"]
    assert browser.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "x", "version": 1}).status_code == 403
    assert browser.post(f"{CUSTOMERS}/{cid}/tags", json={"tag": "vip"}).status_code == 403
    patched = browser.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "教师", "version": 1}, headers={"X-CSRFToken": token})
    assert patched.status_code == 200 and patched.json["occupation"] == "教师"
    assert count(browser, admin) == 1


def test_a_field_added_at_runtime_appears_in_form_and_detail(browser: Any, login: Any) -> None:
    admin = login("admin")
    resp = browser.post("/api/v1/meta/entities/customer/fields", json={"name": "wechat_page", "type": "string", "label": {"zh": "微信号", "en": "WeChat"}}, headers=admin)
    assert resp.status_code == 201
    form = _text(browser.get("/e/customer/new"))
    assert 'name="wechat_page"' in form and "微信号" in form
    saved = browser.post("/e/customer/new", data={"csrf_token": csrf_token(form), "name": "微信客户", "aum": "0", "wechat_page": "wx_123"})
    assert saved.status_code in (302, 303)
    assert _detail_value(_text(browser.get(saved.headers["Location"])), "wechat_page") == "wx_123"
