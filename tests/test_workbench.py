"""The low-code workbench (/workbench/) as an administrator drives it in a browser: fields added,
previewed, edited, archived, promoted and reordered, list columns and form sections arranged,
versions reverted, the role matrix edited — each change visible at once on the record pages
and audited — while staff without ``configure`` get a 403 everywhere."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from engine.errors import MetadataInvalid
from engine.meta.registry import build_registry, load_core_documents
from tests.api_helpers import csrf_token, signed_in
from tests.conftest import TEST_PASSWORD

CUSTOMERS = "/api/v1/records/customer"
WB = "/workbench/e/customer/"
SCRIPT = "<script>alert(1)</script>"
VIP = {
    "name": "vip_level",
    "label_zh": "贵宾等级",
    "label_en": "VIP level",
    "type": "enum",
    "options": "gold|金卡|Gold\nsilver|银卡|Silver",
    "storage": "json",
}


def _text(resp: Any) -> str:
    return resp.get_data(as_text=True)  # type: ignore[no-any-return]




@pytest.fixture
def admin(app: Any) -> Any:
    return signed_in(app, "admin")


def _post(client: Any, path: str, data: dict[str, Any], page: str = WB) -> Any:
    token = csrf_token(_text(client.get(page)))
    return client.post(path, data={"csrf_token": token, **data})


def _add(client: Any, **values: Any) -> Any:
    return _post(client, f"{WB}fields", {**VIP, **values})


def _entity(app: Any) -> Any:
    return app.extensions["fincrm"].runtime.cached_snapshot().registry.entity("customer")


def _history(app: Any) -> list[dict[str, Any]]:
    from engine.security.principal import Principal

    meta = app.extensions["fincrm"].meta
    return meta.history(Principal.system("test"), "entity_overlay", "customer")  # type: ignore[no-any-return]


def _audit(client: Any, login: Any, action: str) -> list[dict[str, Any]]:
    resp = client.get(f"/api/v1/audit?action={action}&limit=100", headers=login("admin"))
    assert resp.status_code == 200, _text(resp)
    return resp.json["items"]  # type: ignore[no-any-return]


def _error_for(page: str, key: str) -> str:
    found = re.search(rf'data-error-for="{key}">(.*?)</span>', page, re.S)
    assert found, f"no message beside {key}: " + " | ".join(re.findall(r'data-error-for="(\w+)"', page))
    return html.unescape(found.group(1))


def _headers(page: str) -> list[str]:
    thead = re.search(r"<thead>.*?</thead>", page, re.S)
    assert thead
    return [re.sub(r"<[^>]+>", "", h).strip().rstrip("▲▼ ").strip() for h in re.findall(r"<th>(.*?)</th>", thead.group(0), re.S)]


def _selects(page: str) -> dict[str, str]:
    """Each <select name=…> of a page with its selected value."""
    out = {}
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', page, re.S):
        chosen = re.search(r'<option value="([^"]*)"\s+selected', body)
        out[name] = chosen.group(1) if chosen else ""
    return out


# ---------------------------------------------------------------------- adding fields


def test_an_admin_adds_a_field_and_the_record_pages_show_it_at_once(app: Any, admin: Any, login: Any) -> None:
    page = _text(admin.get(WB))
    assert 'id="add-field"' in page and 'data-field="name"' in page and "姓名" in page
    resp = _add(admin)
    assert resp.status_code in (302, 303), _text(resp)[:500]
    assert admin.get(resp.headers["Location"]).status_code == 200
    form = _text(admin.get("/e/customer/new"))
    assert "贵宾等级" in form and 'name="vip_level"' in form and "金卡" in form

    columns = [c for c in _entity(app).columns] + ["vip_level"]
    resp = _post(admin, f"{WB}layout/columns", {"column": columns, **{f"pos__{c}": str(i + 1) for i, c in enumerate(columns)}})
    assert resp.status_code in (302, 303)
    saved = admin.post(CUSTOMERS, json={"name": "金卡客户", "vip_level": "gold"}, headers=login("rm1"))
    assert saved.status_code == 201, _text(saved)
    listing = _text(signed_in(app, "rm1").get("/e/customer/"))
    assert _headers(listing)[-2] == "贵宾等级"
    assert re.search(r'<td data-field="vip_level">\s*金卡\s*</td>', listing)
    changes = _audit(admin, login, "meta_change")
    assert [e["detail"]["comment"] for e in changes[:2]] == ["change list columns", "add field vip_level"]
    assert {e["actor"] for e in changes[:2]} == {"admin"}


def test_preview_shows_the_widget_and_a_list_cell_and_saves_nothing(app: Any, admin: Any) -> None:
    before = len(_history(app))
    resp = _add(admin, preview="1", name="card_no", label_zh="卡号", label_en="Card number", type="bank_card", sensitivity="C2", options="")
    assert resp.status_code == 200, _text(resp)[:500]
    page = _text(resp)
    assert 'id="field-preview"' in page and 'data-widget="text"' in page
    assert re.search(r'<td data-field="card_no">\s*6222021234567890123\s*</td>', page)
    masked = re.search(r'<td data-masked="card_no">\s*(\S+)', page)
    assert masked and "0123" in masked.group(1) and "622202" not in masked.group(1)
    assert 'value="card_no"' in page  # the form keeps what was typed
    enum = _text(_add(admin, preview="1"))
    assert 'data-widget="select"' in enum and "<option>金卡</option>" in enum
    assert len(_history(app)) == before and _entity(app).field("card_no") is None and _entity(app).field("vip_level") is None


@pytest.mark.parametrize(
    "values, key",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "id"}, "name"),
        ({"name": "mobile"}, "name"),
        ({"label_zh": ""}, "label_zh"),
        ({"label_en": ""}, "label_en"),
        ({"options": ""}, "options"),
        ({"options": "bad value|坏|Bad"}, "options"),
        ({"type": "decimal", "precision": "4", "scale": "6"}, "scale"),
        ({"type": "string", "max_length": "abc"}, "max_length"),
        ({"type": "string", "pattern": "(["}, "pattern"),
        ({"sensitivity": "C3"}, "sensitivity"),
        ({"type": "ref", "ref": ""}, "ref"),
    ],
)
def test_a_bad_field_definition_is_shown_beside_its_input_and_changes_nothing(app: Any, admin: Any, values: dict[str, Any], key: str) -> None:
    before = len(_history(app))
    resp = _add(admin, **values)
    assert resp.status_code in (409, 422), (resp.status_code, _text(resp)[:300])
    page = _text(resp)
    assert _error_for(page, key)
    assert 'id="form-message"' in page and 'id="add-field"' in page
    assert len(_history(app)) == before
    assert _entity(app).field(values.get("name", "vip_level")) is None or values.get("name") in ("id", "mobile")


def test_hostile_labels_and_options_are_escaped_everywhere(app: Any, admin: Any) -> None:
    hostile = {"name": "hostile", "label_zh": SCRIPT, "label_en": SCRIPT, "options": f"a|{SCRIPT}|{SCRIPT}"}
    preview = _text(_add(admin, preview="1", **hostile))
    assert SCRIPT not in preview and "&lt;script&gt;" in preview
    assert _add(admin, **hostile).status_code in (302, 303)
    for path in (WB, f"{WB}fields/hostile/edit", f"{WB}history", "/e/customer/new"):
        page = _text(admin.get(path))
        assert SCRIPT not in page and "&lt;script&gt;" in page, path


# ---------------------------------------------------------------------- editing fields


def test_an_edit_changes_labels_and_options_at_once(app: Any, admin: Any) -> None:
    assert _add(admin).status_code in (302, 303)
    edit = f"{WB}fields/vip_level/edit"
    page = _text(admin.get(edit))
    assert 'id="edit-field"' in page and 'value="贵宾等级"' in page and "gold|金卡|Gold" in page
    resp = _post(admin, edit, {**VIP, "label_zh": "客户等级", "options": VIP["options"] + "\nplatinum|白金卡|Platinum"}, page=edit)
    assert resp.status_code in (302, 303), _text(resp)[:500]
    form = _text(admin.get("/e/customer/new"))
    assert "客户等级" in form and "白金卡" in form and "贵宾等级" not in form
    unchanged = _post(admin, edit, {**VIP, "label_zh": "客户等级", "options": VIP["options"] + "\nplatinum|白金卡|Platinum"}, page=edit)
    assert unchanged.status_code == 200 and "没有改动" in _text(unchanged)


def test_an_unsafe_edit_is_refused_with_its_reason_and_nothing_changes(app: Any, admin: Any, login: Any) -> None:
    assert _add(admin).status_code in (302, 303)
    assert admin.post(CUSTOMERS, json={"name": "无等级客户"}, headers=login("admin")).status_code == 201
    assert admin.post(CUSTOMERS, json={"name": "金卡客户", "vip_level": "gold"}, headers=login("admin")).status_code == 201
    edit = f"{WB}fields/vip_level/edit"
    before = len(_history(app))
    for change, reason in (({"required": "1"}, "有1条记录没有值"), ({"options": "silver|银卡|Silver"}, "有1条记录使用了要删除的选项")):
        resp = _post(admin, edit, {**VIP, **change}, page=edit)
        assert resp.status_code == 409, _text(resp)[:500]
        page = _text(resp)
        message = re.search(r'id="form-message" data-code="unsafe_change">(.*?)</div>', page, re.S)
        assert message and reason in html.unescape(message.group(1)) and "修改被拒绝" in message.group(1)
        preview = _post(admin, edit, {**VIP, **change, "preview": "1"}, page=edit)
        assert preview.status_code == 409 and reason in html.unescape(_text(preview))
    lossy = _post(admin, edit, {**VIP, "type": "integer"}, page=edit)
    assert lossy.status_code == 409 and "could lose data" in _text(lossy)
    assert len(_history(app)) == before and not _entity(app).field("vip_level").required


def test_removing_an_attribute_the_entity_defines_is_refused_but_an_added_one_can_go(app: Any, admin: Any) -> None:
    edit = "/workbench/e/customer/fields/mobile/edit"
    page = _text(admin.get(edit))
    values = {k: v for k, v in (("label_zh", "手机号"), ("label_en", "Mobile"), ("type", "cn_mobile"))}
    assert _selects(page)["sensitivity"] == "C2"
    resp = _post(admin, edit, {**values, "sensitivity": "", "mask": ""}, page=edit)
    assert resp.status_code == 409 and _error_for(_text(resp), "sensitivity")
    assert _entity(app).field("mobile").sensitivity == "C2"
    assert _add(admin, name="note_code", type="string", max_length="20", options="").status_code in (302, 303)
    edit = f"{WB}fields/note_code/edit"
    resp = _post(admin, edit, {"label_zh": "贵宾等级", "label_en": "VIP level", "type": "string", "max_length": ""}, page=edit)
    assert resp.status_code in (302, 303), _text(resp)[:500]
    assert _entity(app).field("note_code").max_length is None


# ---------------------------------------------------------------------- archive, promote, order, layout, revert


def test_archive_promote_reorder_and_revert_take_effect_at_once_and_are_audited(app: Any, admin: Any, login: Any) -> None:
    audited = len(_audit(admin, login, "meta_change"))
    assert _add(admin).status_code in (302, 303)
    gold = admin.post(CUSTOMERS, json={"name": "金卡客户", "vip_level": "gold"}, headers=login("admin")).json

    resp = _post(admin, f"{WB}fields/vip_level/promote", {})
    assert resp.status_code in (302, 303)
    assert _entity(app).field("vip_level").storage == "column"
    found = admin.post(f"{CUSTOMERS}/query", json={"filter": {"field": "vip_level", "op": "eq", "value": "gold"}}, headers=login("admin"))
    assert [c["id"] for c in found.json["items"]] == [gold["id"]]

    order = [f.name for f in _entity(app).fields]
    assert order[-1] == "vip_level"
    assert _post(admin, f"{WB}fields/vip_level/move", {"direction": "up"}).status_code in (302, 303)
    assert [f.name for f in _entity(app).fields] == order[:-2] + ["vip_level", order[-2]]
    form = _text(admin.get("/e/customer/new"))
    # customer forms have sections: a field in none follows them (order within a section is the
    # section's own); the new order shows in the default list columns of sectionless entities
    assert f'name="{order[-2]}"' in form and form.index('name="vip_level"') > form.rindex("fincrm-section")
    assert _post(admin, "/workbench/e/customer/fields/name/move", {"direction": "up"}).status_code in (302, 303)  # first stays first
    assert _entity(app).fields[0].name == "name"

    assert _post(admin, f"{WB}fields/vip_level/archive", {}).status_code in (302, 303)
    assert _entity(app).live_field("vip_level") is None
    assert 'name="vip_level"' not in _text(admin.get("/e/customer/new"))
    row = re.search(r'<tr id="field-vip_level"[^>]*>', _text(admin.get(WB)))
    assert row and 'data-archived="1"' in row.group(0)

    history = _text(admin.get(f"{WB}history"))
    assert "archive field vip_level" in history and "promote field vip_level to a column" in history
    promoted = next(v for v in _history(app) if v["comment"] == "promote field vip_level to a column")
    resp = _post(admin, f"{WB}revert", {"kind": "entity_overlay", "version": str(promoted["version"])}, page=f"{WB}history")
    assert resp.status_code in (302, 303)
    live = _entity(app).live_field("vip_level")
    assert live is not None and live.storage == "column"
    assert [c["vip_level"] for c in admin.get(CUSTOMERS, headers=login("admin")).json["items"]] == ["gold"]
    entries = _audit(admin, login, "meta_change")
    comments = [e["detail"]["comment"] for e in entries[: len(entries) - audited]]
    for expected in ("add field vip_level", "promote field vip_level to a column", "change field order", "archive field vip_level", f"revert to version {promoted['version']}"):
        assert expected in comments, comments


def test_a_refused_archive_or_layout_is_explained_and_changes_nothing(app: Any, admin: Any) -> None:
    before = len(_history(app))
    resp = _post(admin, f"{WB}fields/name/archive", {})
    assert resp.status_code in (302, 303)
    page = _text(admin.get(resp.headers["Location"]))
    assert "未保存" in page and "title field" in page
    resp = _post(admin, f"{WB}layout/columns", {"column": ["name", "nope"], "pos__name": "1"})
    page = _text(admin.get(resp.headers["Location"]))
    assert "未保存" in page and "nope" in page
    assert len(_history(app)) == before and _entity(app).live_field("name") is not None


def test_form_sections_are_validated_stored_and_exposed_on_the_spec(app: Any, admin: Any) -> None:
    good = "basic|基本信息|Basics|name,mobile\nwealth|财富|Wealth|aum, risk_preference"
    assert _post(admin, f"{WB}layout/sections", {"sections": good}).status_code in (302, 303)
    sections = _entity(app).sections
    assert [(s.name, s.label.zh, s.fields) for s in sections] == [("basic", "基本信息", ("name", "mobile")), ("wealth", "财富", ("aum", "risk_preference"))]
    assert "basic|基本信息|Basics|name,mobile" in _text(admin.get(WB))
    for bad in ("dup|重复|Dup|name\nother|其他|Other|name", "x|未知|Unknown|nope", "Bad Name|坏|Bad|name"):
        resp = _post(admin, f"{WB}layout/sections", {"sections": bad})
        assert "未保存" in _text(admin.get(resp.headers["Location"])), bad
        assert _entity(app).sections == sections
    assert _post(admin, f"{WB}layout/sections", {"sections": ""}).status_code in (302, 303)
    assert _entity(app).sections == ()


def test_tags_in_use_are_listed_with_their_counts(app: Any, admin: Any, login: Any) -> None:
    for name in ("甲", "乙"):
        cid = admin.post(CUSTOMERS, json={"name": name}, headers=login("admin")).json["id"]
        assert admin.post(f"{CUSTOMERS}/{cid}/tags", json={"tag": "vip"}, headers=login("admin")).status_code in (200, 201)
    page = _text(admin.get(WB))
    assert re.search(r'data-tag="vip">vip · 2<', page)


# ---------------------------------------------------------------------- roles


def test_the_role_matrix_edit_takes_export_away_from_relationship_managers_at_once(app: Any, admin: Any, login: Any) -> None:
    rm1 = login("rm1")
    assert admin.get("/api/v1/export/customer?format=csv", headers=rm1).status_code == 200
    overview = _text(admin.get("/workbench/roles/"))
    assert 'data-role="relationship_manager"' in overview and "客户经理" in overview
    path = "/workbench/roles/relationship_manager"
    page = _text(admin.get(path))
    cells = _selects(page)
    assert cells["scope__customer__export"] == "own" and cells["scope__customer__read"] == "own" and cells["scope__customer__delete"] == ""
    resp = _post(admin, path, {**cells, "scope__customer__export": ""}, page=path)
    assert resp.status_code in (302, 303), _text(resp)[:500]
    assert admin.get("/api/v1/export/customer?format=csv", headers=rm1).status_code == 403
    assert admin.get(CUSTOMERS, headers=rm1).status_code == 200
    doc = admin.get("/api/v1/meta/roles/relationship_manager", headers=login("admin")).json
    assert doc["fields"] and {"entity": "customer", "actions": ["read", "create", "update", "import"], "scope": "own"} in doc["grants"]
    changes = _audit(admin, login, "role_change")
    assert changes and changes[0]["detail"]["role"] == "relationship_manager"
    assert _selects(_text(admin.get(path)))["scope__customer__export"] == ""


def test_an_invalid_role_matrix_is_refused_whole(app: Any, admin: Any, login: Any) -> None:
    path = "/workbench/roles/relationship_manager"
    cells = _selects(_text(admin.get(path)))
    resp = _post(admin, path, {**cells, "scope__customer__read": "everyone"}, page=path)
    assert resp.status_code == 422 and 'id="form-message"' in _text(resp)
    assert admin.get(CUSTOMERS, headers=login("rm1")).status_code == 200
    admin_path = "/workbench/roles/admin"
    cells = _selects(_text(admin.get(admin_path)))
    resp = _post(admin, admin_path, {**cells, "scope__meta_roles__configure": ""}, page=admin_path)
    assert resp.status_code == 422 and "would lock every administrator out" in _text(resp)


# ---------------------------------------------------------------------- who may open it

RM_PATHS_GET = [
    "/workbench/",
    WB,
    "/workbench/e/nope/",
    f"{WB}fields/name/edit",
    f"{WB}history",
    "/workbench/roles/",
    "/workbench/roles/relationship_manager",
]
RM_PATHS_POST = [
    f"{WB}fields",
    f"{WB}fields/name/edit",
    f"{WB}fields/mobile/archive",
    f"{WB}fields/mobile/promote",
    f"{WB}fields/mobile/move",
    f"{WB}layout/columns",
    f"{WB}layout/sections",
    f"{WB}revert",
    "/workbench/roles/relationship_manager",
]


def test_a_relationship_manager_gets_403_on_every_workbench_url_and_sees_no_link(app: Any, login: Any) -> None:
    rm = signed_in(app, "rm1")
    for path in RM_PATHS_GET:
        assert rm.get(path).status_code == 403, path
    token = csrf_token(_text(rm.get("/e/customer/new")))
    before = len(_history(app))
    for path in RM_PATHS_POST:
        resp = rm.post(path, data={"csrf_token": token, **VIP, "column": ["name"], "sections": "a|甲|A|name", "kind": "entity_overlay", "version": "1", "scope__customer__delete": "all"})
        assert resp.status_code == 403, path
    assert len(_history(app)) == before
    assert "/workbench/" not in _text(rm.get("/e/"))
    assert 'id="workbench-link"' in _text(signed_in(app, "admin").get("/e/"))
    anonymous = app.test_client().get("/workbench/")
    assert anonymous.status_code in (302, 303) and "/login/" in anonymous.headers["Location"]


def _metadata_editor(app: Any) -> Any:
    with app.app_context():
        sm = app.appbuilder.sm
        sm.add_user("meta1", "meta1", "Test", "meta1@test.local", [sm.find_role("metadata_editor")], password=TEST_PASSWORD)
    return signed_in(app, "meta1")


def test_a_metadata_editor_configures_entities_in_the_workbench(app: Any) -> None:
    editor = _metadata_editor(app)
    index = _text(editor.get("/workbench/"))
    assert 'data-entity="customer"' in index
    assert _add(editor).status_code in (302, 303)
    assert _entity(app).live_field("vip_level") is not None


def test_a_metadata_editor_may_not_edit_roles(app: Any) -> None:
    """'*' grants cover entities only: configure on '*' must not open the role matrix (that
    would let a metadata editor give itself any right)."""
    editor = _metadata_editor(app)
    assert 'id="open-roles"' not in _text(editor.get("/workbench/"))
    assert editor.get("/workbench/roles/").status_code == 403


def test_the_workbench_pages_render_for_every_entity(app: Any, admin: Any) -> None:
    index = _text(admin.get("/workbench/"))
    names = re.findall(r'<tr data-entity="([a-z_]+)">', index)
    assert {"customer", "ticket", "transaction"} <= set(names)
    for name in names:
        resp = admin.get(f"/workbench/e/{name}/")
        assert resp.status_code == 200, name
        assert resp.headers["Content-Security-Policy"] and "<script>" not in _text(resp)
    assert admin.get("/workbench/e/nope/").status_code == 404
    assert admin.get(f"{WB}fields/nope/edit").status_code == 404


# ---------------------------------------------------------------------- the metadata pipeline


def _customer_overlay(**extra: Any) -> dict[str, Any]:
    return {"kind": "entity_overlay", "name": "customer", **extra}


def test_field_order_puts_the_named_fields_first_and_keeps_the_rest() -> None:
    docs = load_core_documents()
    base = [f["name"] for f in next(d for d in docs if d["name"] == "customer")["fields"]]
    spec = build_registry(docs, [_customer_overlay(field_order=["aum", "name"])]).entity("customer")
    assert [f.name for f in spec.fields] == ["aum", "name"] + [n for n in base if n not in ("aum", "name")]
    with pytest.raises(MetadataInvalid) as info:
        build_registry(docs, [_customer_overlay(field_order=["aum", "nope"])])
    assert info.value.details[0]["pointer"] == "/overlay/customer/field_order/1"


def test_sections_are_checked_when_the_registry_is_built() -> None:
    docs = load_core_documents()
    ok = {"name": "basic", "label": {"zh": "基本", "en": "Basic"}, "fields": ["name", "mobile"]}
    assert build_registry(docs, [_customer_overlay(sections=[ok])]).entity("customer").sections[0].fields == ("name", "mobile")
    for bad, pointer in (
        ([ok, {**ok, "fields": ["aum"]}], "/entity/customer/sections/1/name"),
        ([ok, {**ok, "name": "more", "fields": ["name"]}], "/entity/customer/sections/1/fields/0"),
        ([{**ok, "fields": ["nope"]}], "/entity/customer/sections/0/fields/0"),
        ([{**ok, "label": {"zh": "基本"}}], "/overlay/customer/sections/0/label"),
    ):
        with pytest.raises(MetadataInvalid) as info:
            build_registry(docs, [_customer_overlay(sections=bad)])
        assert pointer in [e["pointer"] for e in info.value.details], info.value.details


def test_tag_sets_are_managed_in_the_workbench_and_offered_when_tagging(app: Any, admin: Any) -> None:
    """Tag sets: edited as text in the workbench (validated, versioned, audited, revertible
    like every layout change) and offered as choices on the record's tag input."""
    assert [t.name for t in _entity(app).tag_sets] == ["value", "service"]  # shipped with the core metadata
    page = _text(admin.get("/workbench/e/customer/"))
    assert 'id="tag-sets-form"' in page and "高净值=High net worth" in page
    resp = _post(admin, "/workbench/e/customer/layout/tag-sets", {"tag_sets": "life|人生阶段|Life stage|新婚=Newly married,退休=Retired\nvalue|客户价值|Customer value|高净值"})
    assert resp.status_code in (302, 303)
    sets = {t.name: [o.value for o in t.tags] for t in _entity(app).tag_sets}
    assert sets == {"life": ["新婚", "退休"], "value": ["高净值"]}
    assert [o.label.en for o in _entity(app).tag_sets[0].tags] == ["Newly married", "Retired"]
    assert _history(app)[0]["comment"] == "change tag sets"
    # a duplicate set name is refused whole, nothing changes
    bad = _post(admin, "/workbench/e/customer/layout/tag-sets", {"tag_sets": "x|甲|A|a\nx|乙|B|b"})
    assert bad.status_code in (302, 303)
    assert {t.name for t in _entity(app).tag_sets} == {"life", "value"}
    shown = _text(admin.get(bad.headers["Location"]))
    assert "未保存" in shown and "标签集x重复" in shown, re.findall(r"(?s)alert-(?:danger|success)[^>]*>(.{0,300})", shown)
    # the detail page offers the set's tags on its tag input
    cid = admin.post("/api/v1/records/customer", json={"name": "打标签"}, headers={"X-CSRFToken": csrf_token(page)}).json["id"]
    detail = _text(admin.get(f"/e/customer/{cid}"))
    assert 'list="tag-choices"' in detail and 'value="新婚"' in detail and 'value="退休"' in detail
