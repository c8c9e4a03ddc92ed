"""The template packages page (/workbench/packages/) as IT drives it in a browser: the shipped and
stored packages with their published version, a dry run's plan (and that it changed nothing),
publishing exactly what the plan showed, the version history, rollback, export, uploads refused
with every error pointer or a clear message for a file that is not a package, the template
publisher's view, and a relationship manager refused everywhere (issue #8)."""

from __future__ import annotations

import html
import io
import json
import re
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from engine.errors import MetadataInvalid
from engine.meta.packages import check_package, digest, load_package_dir, shipped_packages
from engine.security.audit import audit_table
from engine.security.principal import Principal
from engine.store.tables import package_table
from tests.api_helpers import app, csrf_token, sample_package, shared_app, signed_in  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

PAGE = "/workbench/packages/"
L = {"zh": "测试", "en": "Test"}


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]


def _add_user(app: Any, username: str, role: str) -> None:
    with app.app_context():
        sm = app.appbuilder.sm
        if sm.find_user(username=username) is None:
            sm.add_user(username, username, "Test", f"{username}@test.local", [sm.find_role(role)], password=TEST_PASSWORD)




def _post(browser: Any, path: str, data: dict[str, Any] | None = None, page: str = PAGE, **kw: Any) -> Any:
    token = csrf_token(_text(browser.get(page)))
    return browser.post(path, data={"csrf_token": token, **(data or {})}, **kw)


def _upload(browser: Any, raw: bytes, filename: str = "package.json") -> Any:
    return _post(browser, f"{PAGE}upload", {"file": (io.BytesIO(raw), filename)}, content_type="multipart/form-data")


def _package(version: str = "1.0.0", *, label: dict[str, str] | None = None) -> dict[str, Any]:
    """A small package without role changes (a template publisher may publish it)."""
    return sample_package("pagetest", "pg", version, role=False, label=label or {"zh": "页面测试模板", "en": "Page test template"})


def _raw(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _pointers(page: str) -> list[str]:
    return [html.unescape(p) for p in re.findall(r'<li data-pointer="([^"]*)"', page)]


def _plan_digest(page: str) -> str:
    found = re.search(r'<form method="post" action="[^"]+/publish" id="publish-form">.*?name="digest" value="([0-9a-f]{64})"', page, re.S)
    assert found, "the plan carries a publish form with the digest"
    return found.group(1)


def _items(page: str, list_id: str) -> list[str]:
    found = re.search(rf'<ul id="{list_id}">(.*?)</ul>\s*(?:<h4|{{|<table|<form|</div>|<p)', page, re.S)
    assert found, f"no list {list_id}"
    return re.findall(r'data-name="([^"]+)"', found.group(1))


def _state(app: Any) -> dict[str, Any]:
    """What a dry run must leave as it was: the stamps, stored packages, tables, the metadata and the audit trail."""
    runtime = app.extensions["fincrm"].runtime
    with runtime.engine.connect() as conn:
        packages = conn.execute(select(func.count()).select_from(package_table)).scalar()
        audits = conn.execute(select(func.count()).select_from(audit_table).where(audit_table.c.action.like("package_%"))).scalar()
        tables = set(inspect(conn).get_table_names())
    snap = runtime.cached_snapshot()
    return {"stamps": runtime.stamps(), "packages": packages, "audits": audits, "tables": tables,
            "entities": set(snap.registry.entities), "customer_fields": {f.name for f in snap.registry.entity("customer").fields},
            "triggers": {n for (k, n) in snap.automation.documents if k == "trigger"}}


def _flashes(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", m) for m in re.findall(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', page, re.S))


# ---------------------------------------------------------------------- the list


def test_the_list_shows_the_shipped_verticals_in_chinese_and_in_english(app: Any) -> None:
    admin = signed_in(app, "admin")
    page = _text(admin.get(PAGE))
    rows = dict(re.findall(r'<tr data-package="(\w+)" data-active="([^"]*)">', page))
    assert {"bank", "securities", "insurance"} <= set(rows)
    assert all(rows[n] == "" for n in ("bank", "securities", "insurance"))  # none published yet
    for label in ("银行业模板", "证券行业模板", "保险行业模板", "未发布", "上传模板包", "随产品提供"):
        assert label in page, label
    assert 'enctype="multipart/form-data"' in page and 'name="csrf_token"' in page and 'data-max-bytes="2097152"' in page

    english = _text(signed_in(app, "admin", english=True).get(PAGE))
    for label in ("Bank template", "Securities template", "Insurance template", "Not published", "Upload a package"):
        assert label in english, label
    assert "银行业模板" not in english

    # the workbench's index links here for those who may configure packages, and only for them
    assert f'id="open-packages" href="{PAGE}"' in _text(admin.get("/workbench/"))
    _add_user(app, "editor1", "metadata_editor")
    editor = signed_in(app, "editor1")
    index = _text(editor.get("/workbench/"))
    assert 'id="workbench-entities"' in index and "open-packages" not in index
    assert editor.get(PAGE).status_code == 403


# ---------------------------------------------------------------------- dry run, publish, history, rollback


def test_a_dry_run_shows_the_plan_and_changes_nothing(app: Any) -> None:
    admin = signed_in(app, "admin")
    before = _state(app)
    resp = _post(admin, f"{PAGE}securities/dry-run", page=f"{PAGE}securities/")
    page = _text(resp)
    assert resp.status_code == 200, page[:1000]
    assert 'id="dry-run-note"' in page and "试运行：未做任何更改" in page
    assert set(_items(page, "plan-entities-added")) == {"advisory_record", "brokerage_account", "commission_adjustment", "position", "security", "trade"}
    assert "证券 <code>security</code>" in page  # each with its label
    changed = re.search(r'<li data-entity="customer">(.*?)</li>\s*</ul>\s*</li>', page, re.S)
    assert changed, "the customer entity is listed as extended"
    assert "投资者分类 <code>investor_class</code>" in changed.group(1) and 'data-name="securities_trading"' in changed.group(1)
    assert set(_items(page, "plan-roles")) == {"advisory_supervisor", "compliance_officer", "investment_advisor", "securities_operations"}
    assert "commission_adjustment" in _items(page, "plan-flows")
    assert {"quote_move_alert", "commission_sensitive_review"} <= set(_items(page, "plan-triggers"))
    assert "holdings_by_industry" in _items(page, "plan-reports")
    seeds = dict(re.findall(r'<li data-entity="(\w+)">.*?<span data-count="(\d+)">', re.search(r'<ul id="plan-seeds">(.*?)</ul>', page, re.S).group(1)))  # type: ignore[union-attr]
    shipped = load_package_dir(shipped_packages()["securities"])
    expected_seeds: dict[str, int] = {}
    for d in shipped["documents"]:
        if d["kind"] == "seed":
            expected_seeds[d["entity"]] = expected_seeds.get(d["entity"], 0) + len(d["records"])
    assert {k: int(v) for k, v in seeds.items()} == expected_seeds
    steps = re.findall(r'<tr data-op="(\w+)"><td>[^<]+</td><td><code>(\w+)</code></td><td><code>(\w+)</code>', page)
    assert ("create_table", "e_security", "e_security") in steps and ("add_column", "e_customer", "investor_class") in steps
    assert "新建表" in page and "新增列" in page
    assert _plan_digest(page) == digest(check_package(shipped))

    after = _state(app)
    assert after == before  # stamps, stored packages, tables, metadata, audit trail: all as they were
    assert "e_security" not in after["tables"] and "security" not in after["entities"]

    english = signed_in(app, "admin", english=True)
    page = _text(_post(english, f"{PAGE}securities/dry-run", page=f"{PAGE}securities/"))
    assert "Dry run: nothing was changed" in page and "Security <code>security</code>" in page and "create table" in page
    assert _state(app) == before


def test_publish_what_the_plan_showed_then_history_and_rollback(app: Any) -> None:
    admin = signed_in(app, "admin")
    detail = f"{PAGE}securities/"
    # publishing needs a plan first: no digest, or one of no content, is refused with a message
    resp = _post(admin, f"{detail}publish", page=detail)
    assert resp.status_code == 400 and "请先试运行" in _text(resp)
    resp = _post(admin, f"{detail}publish", {"digest": "0" * 64}, page=detail)
    assert resp.status_code == 400 and "请先试运行" in _text(resp)
    assert _post(admin, f"{detail}publish", {"digest": "<script>"}, page=detail).status_code == 400
    assert "security" not in _state(app)["entities"]

    plan = _text(_post(admin, f"{detail}dry-run", page=detail))
    resp = _post(admin, f"{detail}publish", {"digest": _plan_digest(plan)}, page=detail)
    assert resp.status_code in (302, 303), _text(resp)[:1000]
    page = _text(admin.get(resp.headers["Location"]))
    assert "已发布 securities 1.0.0" in _flashes(page) and "新增业务对象 6 个" in _flashes(page)
    assert re.search(r'id="published-version">1\.0\.0<', page)
    history = re.findall(r'<tr data-seq="(\d+)" data-version="([^"]+)" data-active="(\d)">', page)
    assert history == [("1", "1.0.0", "1")]
    assert "当前发布" in page and 'id="rollback-form"' in page
    state = _state(app)
    assert "security" in state["entities"] and "e_security" in state["tables"] and "investor_class" in state["customer_fields"]
    with app.app_context():
        assert app.appbuilder.sm.find_role("investment_advisor") is not None  # the package's new roles have their FAB roles
    listing = _text(admin.get(PAGE))
    assert '<tr data-package="securities" data-active="1.0.0">' in listing

    # the same content again: the plan says there is nothing to do, and offers no publish
    again = _text(_post(admin, f"{detail}dry-run", page=detail))
    assert 'id="plan-noop"' in again and 'id="publish-form"' not in again

    resp = _post(admin, f"{detail}rollback", page=detail)
    assert resp.status_code in (302, 303), _text(resp)[:1000]
    page = _text(admin.get(resp.headers["Location"]))
    assert "已取消发布 securities 1.0.0" in _flashes(page)
    assert re.search(r'id="published-version">未发布<', page) and 'id="rollback-none"' in page
    assert re.findall(r'<tr data-seq="(\d+)" data-version="([^"]+)" data-active="(\d)">', page) == [("1", "1.0.0", "0")]
    assert "已停用" in page and 'data-action="dry-run-version"' in page
    state = _state(app)
    assert "security" not in state["entities"] and "investor_class" not in state["customer_fields"]
    assert "e_security" in state["tables"]  # metadata only: tables and data stay
    assert '<tr data-package="securities" data-active="">' in _text(admin.get(PAGE))
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(select(audit_table.c.action).where(audit_table.c.entity == "securities").order_by(audit_table.c.seq))]
    assert actions == ["package_publish", "package_rollback"]

    # nothing left to roll back: the service's refusal is a message on the page, not an error page
    resp = _post(admin, f"{detail}rollback", page=detail)
    assert resp.status_code == 404 and 'id="package-message"' in _text(resp)


# ---------------------------------------------------------------------- uploads


def test_an_invalid_package_upload_lists_every_error_pointer(app: Any) -> None:
    admin = signed_in(app, "admin")
    stored = _state(app)["packages"]
    system = Principal.system("test")
    bad = _package()
    bad["version"] = "1.0"  # not semver
    bad["documents"][0]["fields"][2]["type"] = "money"  # unknown type
    bad["documents"].append({"kind": "widget", "name": "x"})
    with app.app_context(), pytest.raises(MetadataInvalid) as refused:
        app.extensions["fincrm"].packages.upload(system, bad)
    expected = {d["pointer"] for d in refused.value.details}
    resp = _upload(admin, _raw(bad), "坏模板.json")
    page = _text(resp)
    assert resp.status_code == 422, page[:1000]
    assert set(_pointers(page)) == expected and {"/version", "/documents/0/fields/2/type", "/documents/5/kind"} <= expected
    assert "坏模板.json" in page and 'id="upload-errors"' in page

    assert re.search(r'data-pointer="/documents/0/fields/2/type"><code>[^<]+</code> <span class="text-muted">（业务对象 pg_account）', page)

    # schema-valid but inconsistent: the candidate metadata's errors, nothing stored either
    bad = _package()
    bad["documents"][2]["entity"] = "no_such_entity"  # a trigger on a missing entity
    with app.app_context(), pytest.raises(MetadataInvalid) as refused:
        app.extensions["fincrm"].packages.upload(system, bad)
    expected = {d["pointer"] for d in refused.value.details}
    resp = _upload(admin, _raw(bad))
    page = _text(resp)
    assert resp.status_code == 422 and set(_pointers(page)) == expected and "/trigger/pg_big_account/entity" in expected
    assert "no_such_entity" in page
    assert _state(app)["packages"] == stored  # nothing stored


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"kind": "package", "name": "名"}'.encode("gbk"), "文件不是 UTF-8 编码"),
        (b'{"kind": "package",\n "name": }', "文件不是有效的 JSON：第 2 行第 10 列"),
        (b'{"kind": "package", "version": NaN}', "文件不是有效的 JSON"),
        (b"[1, 2]", "JSON 对象"),
        (b"  \n", "文件是空的"),
    ],
)
def test_a_file_that_is_not_a_package_gets_a_clear_message(app: Any, raw: bytes, message: str) -> None:
    admin = signed_in(app, "admin")
    stored = _state(app)["packages"]
    resp = _upload(admin, raw, "<img src=x onerror=alert(1)>.json")
    page = _text(resp)
    assert resp.status_code == 400, page[:500]
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.json" in page  # the file name is text
    found = re.search(r'<div class="alert alert-danger" role="alert" id="upload-message">(.*?)</div>', page, re.S)
    assert found and message in found.group(1), page[:2000]
    assert _state(app)["packages"] == stored


def test_no_file_and_a_file_over_the_limit(app: Any) -> None:
    admin = signed_in(app, "admin")
    stored = _state(app)["packages"]
    resp = _post(admin, f"{PAGE}upload", {}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "请选择要上传的模板文件" in _text(resp)
    limit = app.config["MAX_CONTENT_LENGTH"]
    resp = _upload(admin, b"{" + b" " * limit + b"}", "big.json")
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"{PAGE}#upload")  # refused before it is read
    page = _text(admin.get(resp.headers["Location"]))
    assert "文件过大，未上传：模板文件最大 2 MB" in _flashes(page) and 'id="workbench-packages"' in page
    # without an app-wide limit the page still reads no more than 2 MB of a file
    app.config["MAX_CONTENT_LENGTH"] = None
    try:
        resp = _upload(admin, b"{" + b" " * limit + b"}", "big.json")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit
    assert resp.status_code == 413 and "文件过大：模板文件最大 2 MB" in _text(resp)
    assert _state(app)["packages"] == stored


def test_upload_dry_run_publish_export_and_rollback_of_an_uploaded_package(app: Any) -> None:
    admin = signed_in(app, "admin")
    label = {"zh": "页面测试模板<script>alert(1)</script>", "en": "Page test template"}
    resp = _upload(admin, b"\xef\xbb\xbf" + _raw(_package(label=label)))  # a BOM is fine
    plan = _text(resp)
    assert resp.status_code == 200, plan[:2000]  # uploaded, and the plan of publishing it shown at once
    assert "已上传 pagetest 1.0.0" in _flashes(plan) and 'id="dry-run-note"' in plan
    assert "<script>alert(1)</script>" not in plan and "&lt;script&gt;" in plan
    assert re.findall(r'<tr data-seq="(\d+)" data-version="([^"]+)" data-active="(\d)">', plan) == [("1", "1.0.0", "0")]
    assert 'data-planned="1"' in plan
    assert _items(plan, "plan-entities-added") == ["pg_account"] and "测试账户 <code>pg_account</code>" in plan
    assert "细分 <code>pg_segment</code>" in plan and "测试标签 <code>pg_tags</code>" in plan
    assert "大额账户 <code>pg_big_account</code>" in plan and "账户数 <code>pg_accounts</code>" in plan
    assert 'id="plan-roles"' not in plan
    assert "pg_account" not in _state(app)["entities"]
    detail = f"{PAGE}pagetest/"
    assert 'id="dry-run-source" data-kind="upload"' in _text(admin.get(detail))
    assert '<tr data-package="pagetest" data-active="">' in _text(admin.get(PAGE))

    resp = _post(admin, f"{detail}publish", {"digest": _plan_digest(plan)}, page=detail)
    assert resp.status_code in (302, 303), _text(resp)[:1000]
    assert "pg_account" in _state(app)["entities"]

    # export: the published package (plus runtime changes) as a file to publish elsewhere
    resp = admin.get(f"{detail}export")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="pagetest-1.0.1.json"'
    exported = json.loads(_text(resp))
    assert exported["name"] == "pagetest" and exported["version"] == "1.0.1"
    assert [d["name"] for d in exported["documents"]][:5] == ["pg_account", "customer", "pg_big_account", "pg_accounts", "pg_scripts"]
    assert admin.get(f"{detail}export?version=2.0.0").headers["Content-Disposition"] == 'attachment; filename="pagetest-2.0.0.json"'
    resp = admin.get(f"{detail}export?version=abc")
    assert resp.status_code == 400 and "版本号应为" in _text(resp)
    resp = admin.get(f"{detail}export?version=1.0")
    assert resp.status_code == 422 and "/version" in _pointers(_text(resp))

    # the exported file uploads as the next version; a dry run from the history picks that exact version
    exported_raw = admin.get(f"{detail}export").get_data()
    resp = _upload(admin, exported_raw)
    assert resp.status_code == 200 and re.search(r'id="plan" data-version="1\.0\.1"', _text(resp))
    page = _text(admin.get(detail))
    assert re.findall(r'<tr data-seq="(\d+)" data-version="([^"]+)" data-active="(\d)">', page) == [("2", "1.0.1", "0"), ("1", "1.0.0", "1")]
    stored = re.search(r'<tr data-seq="2".*?name="digest" value="([0-9a-f]{64})"', page, re.S)
    assert stored
    plan = _text(_post(admin, f"{detail}dry-run", {"digest": stored.group(1)}, page=detail))
    assert re.search(r'id="plan" data-version="1\.0\.1"', plan) and _plan_digest(plan) == stored.group(1)

    resp = _post(admin, f"{detail}rollback", page=detail)
    assert resp.status_code in (302, 303)
    assert "pg_account" not in _state(app)["entities"]


# ---------------------------------------------------------------------- who may


def test_a_template_publisher_sees_the_page_and_may_not_publish_role_changes(app: Any) -> None:
    _add_user(app, "tp1", "template_publisher")
    tp = signed_in(app, "tp1")
    page = _text(tp.get(PAGE))
    assert 'id="workbench-packages"' in page and '<tr data-package="bank"' in page
    assert 'data-nav="packages"' in page  # the navbar takes them here: they have no workbench
    assert "配置工作台" not in re.search(r'<ol class="breadcrumb.*?</ol>', page, re.S).group(0)  # type: ignore[union-attr]
    assert 'data-nav="packages"' not in _text(signed_in(app, "admin").get(PAGE))  # the admin comes from the workbench

    # a vertical with roles needs the role administrator: a message, nothing changed
    before = _state(app)
    resp = _post(tp, f"{PAGE}securities/dry-run", page=f"{PAGE}securities/")
    page = _text(resp)
    assert resp.status_code == 403 and 'id="refused-note"' in page and "职责分离" in page
    assert _state(app) == before

    # a package without role changes they may upload, publish and roll back
    mine = json.loads(json.dumps(_package()).replace("pg_", "tp_").replace("PG-", "TP-").replace('"pagetest"', '"tppkg"'))
    resp = _upload(tp, _raw(mine))
    plan = _text(resp)
    assert resp.status_code == 200 and _items(plan, "plan-entities-added") == ["tp_account"], plan[:2000]
    detail = f"{PAGE}tppkg/"
    resp = _post(tp, f"{detail}publish", {"digest": _plan_digest(plan)}, page=detail)
    assert resp.status_code in (302, 303), _text(resp)[:1000]
    assert re.search(r'id="published-version">1\.0\.0<', _text(tp.get(detail)))
    assert "tp_account" in _state(app)["entities"]
    assert _post(tp, f"{detail}rollback", page=detail).status_code in (302, 303)
    assert "tp_account" not in _state(app)["entities"]


def test_a_relationship_manager_gets_403_on_every_route(app: Any) -> None:
    rm = signed_in(app, "rm1")
    for path in (PAGE, f"{PAGE}bank/", f"{PAGE}bank/export", f"{PAGE}nosuch/"):
        resp = rm.get(path)
        assert resp.status_code == 403, (path, resp.status_code)
    token = csrf_token(_text(rm.get("/e/customer/new")))
    bank = digest(check_package(load_package_dir(shipped_packages()["bank"])))
    before = _state(app)
    for path, data in ((f"{PAGE}upload", {"file": (io.BytesIO(_raw(_package())), "p.json")}), (f"{PAGE}bank/dry-run", {}),
                       (f"{PAGE}bank/publish", {"digest": bank}), (f"{PAGE}bank/rollback", {})):
        resp = rm.post(path, data={"csrf_token": token, **data}, content_type="multipart/form-data")
        assert resp.status_code == 403, (path, resp.status_code)
    assert _state(app) == before
    # not signed in: the login page
    resp = app.test_client().get(PAGE)
    assert resp.status_code == 302 and "/login/" in resp.headers["Location"]
