"""The import page (/import/) as the server renders it: who gets it and in which language, the
entities it offers (exactly those the role may import), the navbar link, my recent jobs, the
columns of a dry run's file, the messages in Chinese, and hostile file names as text."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.api_helpers import app, client, csrf_token, login, shared_app, signed_in  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

ROLES = Path(__file__).resolve().parents[1] / "metadata" / "core" / "roles"
SCRIPT = "<script>alert(1)</script>"
CSV = "姓名,手机号,备注\n张三,13800138000,老客户\n=cmd|' /C calc'!A0,13800138001,公式\n".encode()


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]




def _offered(page: str) -> list[str]:
    select = re.search(r'<select[^>]*id="import-entity".*?</select>', page, re.S)
    assert select, "the page has the entity select"
    return re.findall(r'<option value="([^"]+)"', select.group(0))


def _upload(client: Any, headers: dict[str, str], data: bytes = CSV, filename: str = "客户.csv", **options: Any) -> dict[str, Any]:
    form: dict[str, Any] = {k: str(v) for k, v in options.items()}
    form["file"] = (io.BytesIO(data), filename)
    resp = client.post("/api/v1/import/customer", headers=headers, data=form, content_type="multipart/form-data")
    assert resp.status_code == 201, _text(resp)  # a two-row file finishes within the API's wait
    return resp.get_json()  # type: ignore[no-any-return]


def _add_user(app: Any, username: str, role: str) -> None:
    with app.app_context():
        sm = app.appbuilder.sm
        if sm.find_user(username=username) is None:
            sm.add_user(username, username, "Test", f"{username}@test.local", [sm.find_role(role)], password=TEST_PASSWORD)


@pytest.mark.parametrize("username", ["ops1", "admin"])
def test_the_page_renders_in_chinese_and_in_english(app: Any, username: str) -> None:
    zh = _text(signed_in(app, username).get("/import/"))
    for label in ("导入数据", "试运行", "导入方式", "列对应关系", "我的导入任务", "下载错误文件"):
        assert label in zh, label
    assert 'data-nav="import"' in zh and csrf_token(zh)
    assert 'id="import-dry-run"' in zh and 'id="import-run"' in zh and 'type="file"' in zh
    en = _text(signed_in(app, username, english=True).get("/import/"))
    for label in ("Import data", "Dry run", "Mode", "Column mapping", "My import jobs", "Download the error file"):
        assert label in en, label
    assert "导入数据" not in en and "试运行" not in en
    # every script and stylesheet is served by the app itself: no CDN
    for url in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', zh):
        assert not re.match(r"(https?:)?//", url), url


def test_the_page_offers_exactly_the_entities_the_role_may_import(app: Any) -> None:
    entities = list(app.extensions["fincrm"].runtime.cached_snapshot().registry.entities)
    grants = json.loads((ROLES / "operations.json").read_text(encoding="utf-8"))["grants"]
    may = {g["entity"] for g in grants if "import" in g["actions"]}
    offered = _offered(_text(signed_in(app, "ops1").get("/import/")))
    assert sorted(offered) == sorted(e for e in entities if e in may)
    assert "customer" in offered and "branch" not in offered and "product" not in offered  # operations may create those, not import
    assert sorted(_offered(_text(signed_in(app, "admin").get("/import/")))) == sorted(entities)


def test_the_mapping_targets_are_the_fields_the_user_may_write(app: Any) -> None:
    page = _text(signed_in(app, "ops1").get("/import/"))
    data = json.loads(re.search(r'id="import-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    customer = next(e for e in data["entities"] if e["name"] == "customer")
    targets = {f["name"]: f for f in customer["fields"]}
    assert targets["name"]["required"] and targets["name"]["label"] == "姓名"
    assert targets["id_number"]["unique"] and "id" in targets
    assert "created_at" not in targets and "version" not in targets
    assert customer["options"]["gender"]["male"] == "男"


def test_a_user_who_may_import_nothing_gets_403_and_no_link(app: Any) -> None:
    _add_user(app, "risk9", "risk_control")
    risk = signed_in(app, "risk9")
    resp = risk.get("/import/")
    assert resp.status_code == 403 and 'id="import-form"' not in _text(resp)
    assert risk.get("/import/jobs").status_code == 403
    assert 'data-nav="import"' not in _text(risk.get("/e/"))
    assert 'data-nav="import"' in _text(signed_in(app, "ops1").get("/e/"))


def test_an_anonymous_visitor_is_sent_to_the_login_form(client: Any) -> None:
    resp = client.get("/import/")
    assert resp.status_code == 302 and "/login/" in resp.headers["Location"]
    assert client.get("/import/jobs/1/columns", headers={"Accept": "application/json"}).status_code == 401


def test_my_recent_jobs_show_status_counts_the_error_file_and_escaped_names(app: Any, client: Any, login: Any) -> None:
    mine = _upload(client, login("ops1"), filename=f"{SCRIPT}.csv")
    theirs = _upload(client, login("admin"), filename="管理员的文件.csv", dry_run=1)
    page = _text(signed_in(app, "ops1").get("/import/"))
    row = re.search(rf'<tr data-job="{mine["id"]}" data-status="done">.*?</tr>', page, re.S)
    assert row, "ops1's job is listed"
    cells = row.group(0)
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in cells
    assert re.search(r'data-count="inserted">1<', cells) and re.search(r'data-count="errors">1<', cells)
    assert f'href="/api/v1/import/jobs/{mine["id"]}/errors"' in cells and "完成" in cells
    assert f'data-job="{theirs["id"]}"' not in page and "管理员的文件" not in page
    fragment = _text(signed_in(app, "ops1").get("/import/jobs"))  # the rows alone, for the page's refresh
    assert f'data-job="{mine["id"]}"' in fragment and "<html" not in fragment and "管理员的文件" not in fragment
    assert f'data-job="{theirs["id"]}"' in _text(signed_in(app, "admin").get("/import/"))


def test_the_columns_of_a_dry_run_name_every_header_of_the_file(app: Any, client: Any, login: Any) -> None:
    data = f"姓名,手机号,{SCRIPT}\n张三,13800138000,x\n".encode()
    job = _upload(client, login("ops1"), data=data, dry_run=1)
    ops = signed_in(app, "ops1")
    resp = ops.get(f"/import/jobs/{job['id']}/columns", headers={"Accept": "application/json"})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json()["columns"] == [
        {"header": "姓名", "field": "name"},
        {"header": "手机号", "field": "mobile"},
        {"header": SCRIPT, "field": None},  # not matched: the page offers it for mapping by hand
    ]
    other = signed_in(app, "rm1").get(f"/import/jobs/{job['id']}/columns", headers={"Accept": "application/json"})
    assert other.status_code == 404 and "张三" not in _text(other)


def test_engine_messages_are_shown_in_the_users_language(app: Any) -> None:
    ops = signed_in(app, "ops1")
    token = csrf_token(_text(ops.get("/import/")))
    messages = ["the file is empty", "required field 姓名 / name has no column", "something new"]
    resp = ops.post("/import/messages", json={"messages": messages}, headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert resp.status_code == 200
    assert resp.get_json()["messages"] == ["文件是空的", "必填字段“姓名”没有对应的列", "something new"]
    assert ops.post("/import/messages", json={"messages": messages}, headers={"Accept": "application/json"}).status_code == 403
    bad = ops.post("/import/messages", json={"messages": "x"}, headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert bad.status_code == 400 and bad.get_json()["error"]["details"][0]["field"] == "messages"
    ops.get("/lang/en")
    resp = ops.post("/import/messages", json={"messages": messages}, headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert resp.get_json()["messages"] == messages


def test_a_column_set_to_ignore_on_the_page_is_not_imported(app: Any, client: Any, login: Any) -> None:
    from engine.security.principal import Principal

    data = "姓名,职业\n赵忽略,教师\n".encode()
    job = _upload(client, login("ops1"), data=data, mapping=json.dumps({"职业": None}))
    assert job["counts"]["inserted"] == 1
    with app.app_context():
        stored = app.extensions["fincrm"].records.list(Principal.system("test"), "customer", limit=10).items
    assert [(c["name"], c.get("occupation")) for c in stored] == [("赵忽略", None)]
