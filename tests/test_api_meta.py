"""Low-code must-shows through the metadata API (DESIGN §2, §3): fields and entities added,
changed, archived and promoted at runtime, seen at once by the records API, OpenAPI, the
record JSON Schema and every other worker process."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.api_helpers import (  # noqa: F401  (module-wide app fixtures)
    LABEL,
    app,
    assert_error,
    client,
    count,
    error_fields,
    login,
    second_worker,
    shared_app,
)

CUSTOMERS = "/api/v1/records/customer"
FIELDS = "/api/v1/meta/entities/customer/fields"
OPTS = [{"value": "gold", "label": {"zh": "金卡", "en": "Gold"}}, {"value": "silver", "label": {"zh": "银卡", "en": "Silver"}}]


def _add(client: Any, headers: dict[str, str], entity: str = "customer", **doc: Any) -> dict[str, Any]:
    resp = client.post(f"/api/v1/meta/entities/{entity}/fields", json={"label": LABEL, **doc}, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json  # type: ignore[no-any-return]


def _customer(client: Any, headers: dict[str, str], **values: Any) -> dict[str, Any]:
    resp = client.post(CUSTOMERS, json={"name": "测试客户", **values}, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json  # type: ignore[no-any-return]


def _query(client: Any, headers: dict[str, str], flt: Any, **extra: Any) -> Any:
    resp = client.post(f"{CUSTOMERS}/query", json={"filter": flt, **extra}, headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.json["items"]


def _openapi_props(client: Any, headers: dict[str, str], entity: str = "customer") -> dict[str, Any]:
    return client.get("/api/v1/openapi.json", headers=headers).json["components"]["schemas"][entity]["properties"]  # type: ignore[no-any-return]


def _field_names(client: Any, headers: dict[str, str], entity: str = "customer") -> list[str]:
    return [f["name"] for f in client.get(f"/api/v1/meta/entities/{entity}", headers=headers).json["fields"] if not f.get("archived")]


# For each type: the field's extra attributes, three values (sorted ascending, the last one
# empty), a filter and which of the three records it matches, and the value as the API returns it.
TYPE_CASES = {
    "string": ({"max_length": 20}, ["alpha", "beta", None], {"op": "startswith", "value": "be"}, [1], ["alpha", "beta", None]),
    "text": ({}, ["多行\n第一", "多行\n第二", None], {"op": "contains", "value": "第二"}, [1], ["多行\n第一", "多行\n第二", None]),
    "integer": ({"min": 0}, [3, 12, None], {"op": "gt", "value": 5}, [1], [3, 12, None]),
    "decimal": ({"precision": 12, "scale": 2}, ["9.5", "100", None], {"op": "gte", "value": "10"}, [1], ["9.50", "100.00", None]),
    "boolean": ({}, [False, True, None], {"op": "eq", "value": True}, [1], [False, True, None]),
    "date": ({}, ["2023-12-31", "2024-01-02", None], {"op": "between", "value": ["2024-01-01", "2024-12-31"]}, [1], ["2023-12-31", "2024-01-02", None]),
    "datetime": ({}, ["2024-01-02T08:00:00+08:00", "2024-01-02T10:00:00Z", None], {"op": "gt", "value": "2024-01-02T01:00:00Z"}, [1], ["2024-01-02T00:00:00Z", "2024-01-02T10:00:00Z", None]),
    "enum": ({"options": OPTS}, ["gold", "silver", None], {"op": "in", "value": ["silver"]}, [1], ["gold", "silver", None]),
    "email": ({}, ["a@example.com", "b@example.com", None], {"op": "eq", "value": "b@example.com"}, [1], ["a@example.com", "b@example.com", None]),
    "url": ({}, ["https://a.example", "https://b.example", None], {"op": "contains", "value": "b.ex"}, [1], ["https://a.example", "https://b.example", None]),
}


@pytest.mark.parametrize("storage", ["json", "column"])
@pytest.mark.parametrize("ftype", sorted(TYPE_CASES))
def test_an_added_field_is_writable_filterable_sortable_and_published_at_once(client: Any, login: Any, ftype: str, storage: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    extra, values, flt, matches, shown = TYPE_CASES[ftype]
    name = f"x_{ftype}_{storage}"
    added = _add(client, admin, name=name, type=ftype, storage=storage, **extra)
    assert added["name"] == name and added["storage"] == storage and added["type"] == ftype
    ids = []
    for value, expected in zip(values, shown):
        created = _customer(client, rm1, **{name: value})
        assert created[name] == expected
        ids.append(created["id"])
    assert client.get(f"{CUSTOMERS}/{ids[0]}", headers=rm1).json[name] == shown[0]
    found = _query(client, rm1, {"field": name, **flt})
    assert [c["id"] for c in found] == [ids[i] for i in matches]
    if ftype != "text":  # long text is not sortable
        ascending = client.get(f"{CUSTOMERS}?sort={name}&fields={name}", headers=rm1).json["items"]
        assert [c["id"] for c in ascending] == ids  # empty values last
        descending = client.get(f"{CUSTOMERS}?sort=-{name}&fields={name}", headers=rm1).json["items"]
        assert [c["id"] for c in descending] == [ids[1], ids[0], ids[2]]
    empty = _query(client, rm1, {"field": name, "op": "is_null", "value": True})
    assert [c["id"] for c in empty] == [ids[2]]
    patched = client.patch(f"{CUSTOMERS}/{ids[2]}", json={name: values[0], "version": 1}, headers=rm1)
    assert patched.status_code == 200 and patched.json[name] == shown[0]
    assert name in _openapi_props(client, rm1)
    assert name in client.get("/api/v1/openapi.json", headers=rm1).json["components"]["schemas"]["customer_input"]["properties"]
    assert name in client.get("/api/v1/meta/entities/customer/schema", headers=rm1).json["properties"]


def test_a_multi_enum_field_is_filtered_with_has(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    _add(client, admin, name="hobbies", type="multi_enum", options=[*OPTS, {"value": "tea", "label": {"zh": "茶", "en": "Tea"}}])
    a = _customer(client, rm1, hobbies=["gold", "tea", "gold"])
    b = _customer(client, rm1, hobbies=["silver"])
    assert a["hobbies"] == ["gold", "tea"]
    assert [c["id"] for c in _query(client, rm1, {"field": "hobbies", "op": "has", "value": "tea"})] == [a["id"]]
    assert [c["id"] for c in _query(client, rm1, {"field": "hobbies", "op": "has", "value": "silver"})] == [b["id"]]
    assert_error(client.post(CUSTOMERS, json={"name": "x", "hobbies": ["chess"]}, headers=rm1), 422, field="hobbies")


def test_a_new_entity_serves_crud_at_once(client: Any, login: Any) -> None:
    admin = login("admin")
    doc = {
        "name": "campaign",
        "label": {"zh": "营销活动", "en": "Campaign"},
        "title_field": "title",
        "fields": [
            {"name": "title", "type": "string", "label": {"zh": "活动名称", "en": "Title"}, "required": True, "max_length": 50},
            {"name": "budget", "type": "decimal", "label": {"zh": "预算", "en": "Budget"}, "precision": 14, "scale": 2},
            {"name": "channel", "type": "enum", "label": {"zh": "渠道", "en": "Channel"}, "options": OPTS},
            {"name": "target", "type": "ref", "ref": "customer", "label": {"zh": "目标客户", "en": "Target"}},
        ],
    }
    resp = client.post("/api/v1/meta/entities", json=doc, headers=admin)
    assert resp.status_code == 201, resp.json
    assert [f["name"] for f in resp.json["fields"]] == ["title", "budget", "channel", "target"]
    assert "campaign" in [e["name"] for e in client.get("/api/v1/meta/entities", headers=admin).json["items"]]
    assert_error(client.post("/api/v1/meta/entities", json=doc, headers=admin), 409)
    target = _customer(client, login("rm1"))["id"]
    made = client.post("/api/v1/records/campaign", json={"title": "春季理财节", "budget": "50000", "channel": "gold", "target": target}, headers=admin)
    assert made.status_code == 201 and made.headers["Location"].endswith(f"/api/v1/records/campaign/{made.json['id']}")
    cid = made.json["id"]
    other = client.post("/api/v1/records/campaign", json={"title": "养老金融周", "budget": "120000.5"}, headers=admin).json["id"]
    assert client.get(f"/api/v1/records/campaign/{cid}", headers=admin).json["budget"] == "50000.00"
    big = client.get("/api/v1/records/campaign?" + urllib.parse.urlencode({"filter": json.dumps({"field": "budget", "op": "gt", "value": "100000"})}), headers=admin)
    assert [c["id"] for c in big.json["items"]] == [other]
    assert [c["id"] for c in client.get("/api/v1/records/campaign?sort=-budget", headers=admin).json["items"]] == [other, cid]
    patched = client.patch(f"/api/v1/records/campaign/{cid}", json={"budget": "60000"}, headers={**admin, "If-Match": '"1"'})
    assert patched.status_code == 200 and patched.json["budget"] == "60000.00" and patched.json["version"] == 2
    assert_error(client.post("/api/v1/records/campaign", json={"budget": "1"}, headers=admin), 422, field="title")
    assert_error(client.post("/api/v1/records/campaign", json={"title": "x", "target": 999999}, headers=admin), 422, field="target")
    assert client.delete(f"/api/v1/records/campaign/{cid}", headers=admin).status_code == 204
    assert client.get(f"/api/v1/records/campaign/{cid}", headers=admin).status_code == 404
    spec = client.get("/api/v1/openapi.json", headers=admin).json
    assert "/api/v1/records/campaign" in spec["paths"] and "/api/v1/records/campaign/{id}" in spec["paths"]
    assert set(spec["components"]["schemas"]["campaign"]["properties"]) >= {"id", "version", "title", "budget", "channel", "target"}
    assert set(client.get("/api/v1/meta/entities/campaign/schema", headers=admin).json["properties"]["channel"]["enum"]) - {None} == {"gold", "silver"}


def test_a_new_entity_is_closed_to_roles_not_granted_it(client: Any, login: Any) -> None:
    admin = login("admin")
    doc = {"name": "secret_project", "label": {"zh": "项目", "en": "Project"}, "fields": [{"name": "title", "type": "string", "label": LABEL}]}
    assert client.post("/api/v1/meta/entities", json=doc, headers=admin).status_code == 201
    assert client.post("/api/v1/records/secret_project", json={"title": "x"}, headers=admin).status_code == 201
    for user in ("rm1", "ops1"):
        assert_error(client.get("/api/v1/records/secret_project", headers=login(user)), 403, "forbidden")
        assert_error(client.post("/api/v1/records/secret_project", json={"title": "y"}, headers=login(user)), 403, "forbidden")
    assert count(client, admin, "secret_project") == 1


# ------------------------------------------------------------------ changing a field


@pytest.mark.parametrize("storage", ["json", "column"])
def test_patch_changes_the_label_and_widens_max_length(client: Any, login: Any, storage: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    name = f"nick_{storage}"
    _add(client, admin, name=name, type="string", max_length=5, storage=storage)
    cid = _customer(client, rm1, **{name: "abcde"})["id"]
    assert_error(client.patch(f"{CUSTOMERS}/{cid}", json={name: "abcdef", "version": 1}, headers=rm1), 422, field=name)
    resp = client.patch(f"{FIELDS}/{name}", json={"label": {"zh": "昵称", "en": "Nickname"}, "max_length": 30}, headers=admin)
    assert resp.status_code == 200, resp.json
    assert resp.json["label"] == {"zh": "昵称", "en": "Nickname"} and resp.json["max_length"] == 30 and resp.json["storage"] == storage
    longer = client.patch(f"{CUSTOMERS}/{cid}", json={name: "a" * 30, "version": 1}, headers=rm1)
    assert longer.status_code == 200, longer.json
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json[name] == "a" * 30
    prop = _openapi_props(client, rm1)[name]
    assert prop["title"] == "Nickname" and prop["description"] == "昵称" and prop["maxLength"] == 30
    described = [f for f in client.get("/api/v1/meta/entities/customer", headers=admin).json["fields"] if f["name"] == name][0]
    assert described["label"]["zh"] == "昵称"


@pytest.mark.parametrize(
    "ftype,extra,value,change,storage",
    [
        ("string", {}, "abc", {"type": "integer"}, "json"),
        ("string", {}, "abc", {"type": "date"}, "json"),
        ("decimal", {}, "1.25", {"type": "integer"}, "json"),
        ("text", {}, "长文本", {"type": "string"}, "json"),
        ("integer", {}, 7, {"type": "boolean"}, "json"),
        ("string", {}, "abc", {"type": "integer"}, "column"),
        ("integer", {}, 7, {"type": "decimal"}, "column"),
        ("enum", {"options": OPTS}, "gold", {"type": "multi_enum"}, "json"),
    ],
)
def test_a_lossy_type_change_is_refused_with_the_reason(client: Any, login: Any, ftype: str, extra: dict[str, Any], value: Any, change: dict[str, Any], storage: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    name = f"lossy_{ftype}_{change['type']}_{storage}"
    _add(client, admin, name=name, type=ftype, storage=storage, **extra)
    cid = _customer(client, rm1, **{name: value})["id"]
    resp = client.patch(f"{FIELDS}/{name}", json=change, headers=admin)
    assert_error(resp, 409, "unsafe_change", field=name)
    assert ftype in resp.json["error"]["message"] and change["type"] in resp.json["error"]["message"]
    field = [f for f in client.get("/api/v1/meta/entities/customer", headers=admin).json["fields"] if f["name"] == name][0]
    assert field["type"] == ftype
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json[name] == (value if ftype != "decimal" else "1.25")


@pytest.mark.parametrize("ftype,value,new_type,shown", [("string", "abc", "text", "abc"), ("integer", 7, "decimal", "7.00"), ("enum", "gold", "string", "gold")])
def test_a_safe_type_change_keeps_the_data_readable_and_filterable(client: Any, login: Any, ftype: str, value: Any, new_type: str, shown: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    name = f"safe_{ftype}"
    _add(client, admin, name=name, type=ftype, **({"options": OPTS} if ftype == "enum" else {}))
    cid = _customer(client, rm1, **{name: value})["id"]
    resp = client.patch(f"{FIELDS}/{name}", json={"type": new_type}, headers=admin)
    assert resp.status_code == 200, resp.json
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json[name] == shown
    op = "contains" if new_type == "text" else "eq"
    assert [c["id"] for c in _query(client, rm1, {"field": name, "op": op, "value": shown})] == [cid]


@pytest.mark.parametrize("storage", ["json", "column"])
def test_shrinking_max_length_below_existing_data_is_refused(client: Any, login: Any, storage: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    name = f"memo_{storage}"
    _add(client, admin, name=name, type="string", max_length=50, storage=storage)
    cid = _customer(client, rm1, **{name: "x" * 12})["id"]
    refused = client.patch(f"{FIELDS}/{name}", json={"max_length": 10}, headers=admin)
    assert_error(refused, 409, "unsafe_change", field=name)
    assert "1 records" in refused.json["error"]["message"] and "10" in refused.json["error"]["message"]
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json[name] == "x" * 12
    ok = client.patch(f"{FIELDS}/{name}", json={"max_length": 12}, headers=admin)
    assert ok.status_code == 200 and ok.json["max_length"] == 12
    assert_error(client.post(CUSTOMERS, json={"name": "n", name: "y" * 13}, headers=rm1), 422, field=name)


def test_other_changes_existing_data_would_not_survive_are_refused(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    _add(client, admin, name="tier", type="enum", options=OPTS)
    _add(client, admin, name="visits", type="integer", min=0)
    _customer(client, rm1, tier="gold", visits=40)
    _customer(client, rm1)
    cases = [
        ("tier", {"options": OPTS[1:]}, "options"),
        ("tier", {"required": True}, "no value"),
        ("visits", {"max": 10}, "bounds"),
        ("visits", {"storage": "json"}, "storage"),
        ("visits", {"name": "renamed"}, "name"),
        ("visits", {"indexed": True}, "promote"),
    ]
    for name, change, reason in cases:
        resp = client.patch(f"{FIELDS}/{name}", json=change, headers=admin)
        assert_error(resp, 409, "unsafe_change")
        assert reason in resp.json["error"]["message"], (change, resp.json)
    assert {c["tier"] for c in client.get(CUSTOMERS, headers=rm1).json["items"]} == {"gold", None}


def test_patching_an_unknown_or_archived_field_is_404(client: Any, login: Any) -> None:
    admin = login("admin")
    assert_error(client.patch(f"{FIELDS}/nope", json={"label": LABEL}, headers=admin), 404, "not_found")
    _add(client, admin, name="gone_soon", type="string")
    assert client.delete(f"{FIELDS}/gone_soon", headers=admin).status_code == 200
    assert_error(client.patch(f"{FIELDS}/gone_soon", json={"label": LABEL}, headers=admin), 404, "not_found")
    assert_error(client.delete(f"{FIELDS}/gone_soon", headers=admin), 404, "not_found")
    assert_error(client.patch(f"{FIELDS}/gone_soon", json={}, headers=admin), 400)


# ------------------------------------------------------------------ archiving


def _entity_with_field(client: Any, admin: dict[str, str], entity: str) -> None:
    doc = {"name": entity, "label": {"zh": "档案", "en": "Dossier"}, "fields": [{"name": "title", "type": "string", "label": LABEL, "required": True}]}
    assert client.post("/api/v1/meta/entities", json=doc, headers=admin).status_code == 201


@pytest.mark.parametrize("storage", ["json", "column"])
def test_deleting_a_field_archives_it_hidden_everywhere_data_kept(client: Any, login: Any, storage: str) -> None:
    admin = login("admin")
    entity = f"dossier_{storage}"
    _entity_with_field(client, admin, entity)
    _add(client, admin, entity=entity, name="note", type="string", storage=storage)
    base = f"/api/v1/records/{entity}"
    rid = client.post(base, json={"title": "t", "note": "保留的数据"}, headers=admin).json["id"]
    before = client.get(f"/api/v1/meta/entities/{entity}/history", headers=admin).json["items"][0]["version"]
    resp = client.delete(f"/api/v1/meta/entities/{entity}/fields/note", headers=admin)
    assert resp.status_code == 200 and resp.json == {"name": "note", "archived": True}
    assert "note" not in client.get(f"{base}/{rid}", headers=admin).json
    assert all("note" not in item for item in client.get(base, headers=admin).json["items"])
    assert "note" not in _openapi_props(client, admin, entity)
    assert "note" not in client.get(f"/api/v1/meta/entities/{entity}/schema", headers=admin).json["properties"]
    assert_error(client.get(f"{base}?fields=note", headers=admin), 400, field="note")
    assert_error(client.post(f"{base}/query", json={"filter": {"field": "note", "op": "eq", "value": "x"}}, headers=admin), 400, field="note")
    assert_error(client.get(f"{base}?sort=note", headers=admin), 400, field="note")
    assert_error(client.post(base, json={"title": "t2", "note": "x"}, headers=admin), 422, field="note")
    assert_error(client.post(f"/api/v1/meta/entities/{entity}/fields", json={"name": "note", "type": "string", "label": LABEL}, headers=admin), 409)
    described = [f for f in client.get(f"/api/v1/meta/entities/{entity}", headers=admin).json["fields"] if f["name"] == "note"][0]
    assert described["archived"] is True
    reverted = client.post(f"/api/v1/meta/entities/{entity}/revert", json={"version": before}, headers=admin)
    assert reverted.status_code == 200, reverted.json
    assert client.get(f"{base}/{rid}", headers=admin).json["note"] == "保留的数据"  # the data was kept


@pytest.mark.parametrize("field,reason", [("owner", "owner field"), ("name", "title field"), ("aum", "default sort")])
def test_fields_the_entity_depends_on_cannot_be_archived(client: Any, login: Any, field: str, reason: str) -> None:
    admin = login("admin")
    resp = client.delete(f"{FIELDS}/{field}", headers=admin)
    assert_error(resp, 409, "unsafe_change", field=field)
    assert reason in resp.json["error"]["message"]
    assert field in _field_names(client, admin)


# ------------------------------------------------------------------ promoting


def test_promoting_json_fields_to_columns_keeps_data_filters_and_sorts(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    specs = {
        "p_str": ("string", {}, ["b", "a"], {"op": "eq", "value": "a"}),
        "p_int": ("integer", {}, [5, 2], {"op": "lt", "value": 3}),
        "p_dec": ("decimal", {"precision": 12, "scale": 2}, ["10.25", "3.5"], {"op": "lte", "value": "3.50"}),
        "p_date": ("date", {}, ["2024-05-01", "2023-05-01"], {"op": "lt", "value": "2024-01-01"}),
        "p_dt": ("datetime", {}, ["2024-05-01T10:00:00Z", "2023-05-01T10:00:00Z"], {"op": "within_last_days", "value": 36500}),
        "p_bool": ("boolean", {}, [True, False], {"op": "eq", "value": False}),
    }
    for name, (ftype, extra, _, _) in specs.items():
        _add(client, admin, name=name, type=ftype, **extra)
    first = _customer(client, rm1, **{n: v[2][0] for n, v in specs.items()})
    second = _customer(client, rm1, **{n: v[2][1] for n, v in specs.items()})
    third = _customer(client, rm1)
    before = {c["id"]: c for c in client.get(f"{CUSTOMERS}?limit=10", headers=rm1).json["items"]}
    for name in specs:
        resp = client.post(f"{FIELDS}/{name}/promote", headers=admin)
        assert resp.status_code == 200, resp.json
        assert resp.json["storage"] == "column" and resp.json["indexed"] is True
    after = {c["id"]: c for c in client.get(f"{CUSTOMERS}?limit=10", headers=rm1).json["items"]}
    assert after == before
    for name, (_, _, _, flt) in specs.items():
        expected = [first["id"], second["id"]] if flt["op"] == "within_last_days" else [second["id"]]
        assert sorted(c["id"] for c in _query(client, rm1, {"field": name, **flt})) == sorted(expected), name
        ordered = client.get(f"{CUSTOMERS}?sort={name}", headers=rm1).json["items"]
        assert [c["id"] for c in ordered] == [second["id"], first["id"], third["id"]], name
    assert_error(client.post(f"{FIELDS}/p_str/promote", headers=admin), 409)
    updated = client.patch(f"{CUSTOMERS}/{third['id']}", json={"p_str": "c", "p_dec": "1", "version": 1}, headers=rm1)
    assert updated.status_code == 200 and updated.json["p_str"] == "c" and updated.json["p_dec"] == "1.00"


def test_promote_through_patch_storage_and_refusals(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    _add(client, admin, name="hot", type="string")
    _add(client, admin, name="multi", type="multi_enum", options=OPTS)
    cid = _customer(client, rm1, hot="热", multi=["gold"])["id"]
    resp = client.patch(f"{FIELDS}/hot", json={"storage": "column"}, headers=admin)
    assert resp.status_code == 200 and resp.json["storage"] == "column"
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json["hot"] == "热"
    assert_error(client.post(f"{FIELDS}/multi/promote", headers=admin), 409, "unsafe_change", field="multi")
    assert_error(client.post(f"{FIELDS}/nope/promote", headers=admin), 404)


def test_reverting_to_a_version_before_a_promotion_keeps_the_values(client: Any, login: Any) -> None:
    admin = login("admin")
    _entity_with_field(client, admin, "ledger")
    _add(client, admin, entity="ledger", name="memo", type="string")
    base = "/api/v1/records/ledger"
    rid = client.post(base, json={"title": "t", "memo": "重要备注"}, headers=admin).json["id"]
    as_json = client.get("/api/v1/meta/entities/ledger/history", headers=admin).json["items"][0]["version"]
    assert client.post("/api/v1/meta/entities/ledger/fields/memo/promote", headers=admin).status_code == 200
    assert client.post("/api/v1/meta/entities/ledger/revert", json={"version": as_json}, headers=admin).status_code == 200
    assert client.get(f"{base}/{rid}", headers=admin).json["memo"] == "重要备注"
    assert [r["id"] for r in client.post(f"{base}/query", json={"filter": {"field": "memo", "op": "eq", "value": "重要备注"}}, headers=admin).json["items"]] == [rid]


# ------------------------------------------------------------------ who may configure, and what is valid


META_WRITES = [
    ("post", FIELDS, {"name": "by_rm", "type": "string", "label": LABEL}),
    ("patch", f"{FIELDS}/occupation", {"label": {"zh": "改", "en": "Changed"}}),
    ("delete", f"{FIELDS}/occupation", None),
    ("post", f"{FIELDS}/occupation/promote", None),
    ("post", "/api/v1/meta/entities", {"name": "rm_entity", "label": LABEL, "fields": [{"name": "a", "type": "string", "label": LABEL}]}),
    ("post", "/api/v1/meta/entities/customer/revert", {"version": 1}),
    ("get", "/api/v1/meta/entities/customer/history", None),
]


@pytest.mark.parametrize("user", ["rm1", "ops1"])
@pytest.mark.parametrize("method,path,body", META_WRITES)
def test_staff_without_configure_rights_get_a_403_and_change_nothing(client: Any, login: Any, user: str, method: str, path: str, body: Any) -> None:
    admin = login("admin")
    before = client.get("/api/v1/meta/entities/customer", headers=admin).json
    resp = getattr(client, method)(path, json=body, headers=login(user))
    assert_error(resp, 403, "forbidden")
    assert client.get("/api/v1/meta/entities/customer", headers=admin).json == before
    assert "rm_entity" not in [e["name"] for e in client.get("/api/v1/meta/entities", headers=admin).json["items"]]


def test_an_invalid_field_document_is_refused_whole_with_every_error_pointed_at(client: Any, login: Any) -> None:
    admin = login("admin")
    before = client.get("/api/v1/meta/entities/customer", headers=admin).json
    doc = {"name": "Bad Name", "type": "colour", "label": {"zh": 5}, "max_length": 0, "sensitivity": "C3", "encrypted": True}
    resp = client.post(FIELDS, json=doc, headers=admin)
    assert_error(resp, 422, "metadata_invalid")
    pointers = {d["pointer"] for d in resp.json["error"]["details"]}
    assert {"/name", "/type", "/label", "/label/zh", "/max_length", "/sensitivity"} <= pointers, pointers
    assert all(d["message"] for d in resp.json["error"]["details"])
    assert client.get("/api/v1/meta/entities/customer", headers=admin).json == before


@pytest.mark.parametrize(
    "doc,pointer",
    [
        ({"name": "tier2", "type": "enum", "label": LABEL}, ""),  # options required
        ({"name": "link", "type": "ref", "label": LABEL}, ""),  # ref target required
        ({"name": "card", "type": "bank_card", "label": LABEL, "searchable": True}, ""),  # searchable needs encrypted
        ({"name": "x", "type": "string", "label": LABEL, "colour": "red"}, ""),  # unknown attribute
        ({"name": "id", "type": "string", "label": LABEL}, "/name"),  # reserved
        ({"name": "tags", "type": "string", "label": LABEL}, "/name"),  # reserved
        ({"name": "a" * 64, "type": "string", "label": LABEL}, "/name"),
        ({"type": "string", "label": LABEL}, ""),
    ],
)
def test_invalid_field_documents_are_422_with_pointers(client: Any, login: Any, doc: dict[str, Any], pointer: str) -> None:
    admin = login("admin")
    before = _field_names(client, admin)
    resp = client.post(FIELDS, json=doc, headers=admin)
    assert_error(resp, 422, "metadata_invalid")
    assert all("pointer" in d and d["message"] for d in resp.json["error"]["details"])
    assert any(d["pointer"].endswith(pointer) for d in resp.json["error"]["details"])
    assert _field_names(client, admin) == before


def test_an_invalid_entity_document_lists_every_error(client: Any, login: Any) -> None:
    admin = login("admin")
    doc = {"name": "Bad-Entity", "fields": [{"name": "a"}, {"name": "b", "type": "nope", "label": LABEL}]}
    resp = client.post("/api/v1/meta/entities", json=doc, headers=admin)
    assert_error(resp, 422, "metadata_invalid")
    pointers = [d["pointer"] for d in resp.json["error"]["details"]]
    assert "/name" in pointers and "/fields/0" in pointers and "/fields/1/type" in pointers
    assert "" in pointers  # the missing label
    assert client.get("/api/v1/meta/entities/bad_entity", headers=admin).status_code == 404
    names = [e["name"] for e in client.get("/api/v1/meta/entities", headers=admin).json["items"]]
    assert not any(n.lower().startswith("bad") for n in names)


def test_adding_a_field_that_exists_is_a_409(client: Any, login: Any) -> None:
    admin = login("admin")
    resp = client.post(FIELDS, json={"name": "mobile", "type": "string", "label": LABEL}, headers=admin)
    assert_error(resp, 409, field="name")
    assert [f for f in client.get("/api/v1/meta/entities/customer", headers=admin).json["fields"] if f["name"] == "mobile"][0]["type"] == "cn_mobile"


# ------------------------------------------------------------------ JSON Schema of a record


def test_the_record_schema_is_a_json_schema_that_returned_records_satisfy(client: Any, login: Any) -> None:
    admin, rm1 = login("admin"), login("rm1")
    _add(client, admin, name="level_no", type="integer", min=1, max=9)
    resp = client.get("/api/v1/meta/entities/customer/schema", headers=rm1)
    assert resp.status_code == 200
    schema = resp.json
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["level_no"]["minimum"] == 1 and schema["properties"]["level_no"]["maximum"] == 9
    assert set(schema["properties"]["gender"]["enum"]) - {None} == {"female", "male"}
    assert schema["properties"]["id"]["readOnly"] is True
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    record = _customer(client, rm1, name="验证", level_no=3, aum="12.5", email="x@example.com", gender="male", opened_on="2024-01-01")
    assert [e.message for e in validator.iter_errors(record)] == []
    assert [e.message for e in validator.iter_errors({**record, "level_no": 10})] != []
    assert [e.message for e in validator.iter_errors({**record, "surprise": 1})] != []
    assert_error(client.get("/api/v1/meta/entities/nope/schema", headers=rm1), 404, "not_found")


def test_masked_records_still_satisfy_their_published_schema(client: Any, login: Any) -> None:
    """Clients validate responses against OpenAPI: a masked mobile (138****8000) or ID number
    must not break the schema the server itself publishes."""
    rm1 = login("rm1")
    schema = client.get("/api/v1/meta/entities/customer/schema", headers=rm1).json
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    record = _customer(
        client, rm1, name="脱敏", mobile="13800138000", id_number="11010519491231002X", birth_date="1949-12-31",
        gender="male", risk_preference="balanced", acquisition_channel="outlet",  # no empty enums: only masking is under test
    )
    assert record["mobile"] == "138****8000"
    masked = ("mobile", "id_number", "birth_date")
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(record) if e.path and e.path[0] in masked] == []


# ------------------------------------------------------------------ several worker processes


@pytest.mark.parametrize("storage", ["json", "column"])
def test_a_field_added_in_one_worker_is_writable_in_another_on_its_next_request(app: Any, client: Any, login: Any, storage: str) -> None:
    admin, rm1 = login("admin"), login("rm1")
    name = f"w2_{storage}"
    with second_worker(app) as other_app:
        other = other_app.test_client()
        assert other.get(CUSTOMERS, headers=rm1).status_code == 200  # worker B has its snapshot cached
        _add(client, admin, name=name, type="integer", storage=storage)
        created = other.post(CUSTOMERS, json={"name": "乙进程", name: 42}, headers=rm1)
        assert created.status_code == 201, created.json
        assert created.json[name] == 42
        found = other.post(f"{CUSTOMERS}/query", json={"filter": {"field": name, "op": "eq", "value": 42}}, headers=rm1).json["items"]
        assert [c["id"] for c in found] == [created.json["id"]]
        assert name in other.get("/api/v1/openapi.json", headers=rm1).json["components"]["schemas"]["customer"]["properties"]
        assert client.get(f"{CUSTOMERS}/{created.json['id']}", headers=rm1).json[name] == 42  # and back in worker A
        assert client.delete(f"{FIELDS}/{name}", headers=admin).status_code == 200
        assert name not in other.get(f"{CUSTOMERS}/{created.json['id']}", headers=rm1).json
        assert_error(other.post(CUSTOMERS, json={"name": "乙进程", name: 1}, headers=rm1), 422, field=name)


def test_an_entity_created_in_one_worker_is_served_by_another(app: Any, client: Any, login: Any) -> None:
    admin = login("admin")
    with second_worker(app) as other_app:
        other = other_app.test_client()
        assert other.get("/api/v1/records/branch", headers=admin).status_code == 200
        doc = {"name": "survey", "label": {"zh": "问卷", "en": "Survey"}, "fields": [{"name": "score", "type": "integer", "label": LABEL, "min": 0, "max": 10}]}
        assert client.post("/api/v1/meta/entities", json=doc, headers=admin).status_code == 201
        made = other.post("/api/v1/records/survey", json={"score": 9}, headers=admin)
        assert made.status_code == 201, made.json
        assert_error(other.post("/api/v1/records/survey", json={"score": 11}, headers=admin), 422, field="score")
        assert client.get(f"/api/v1/records/survey/{made.json['id']}", headers=admin).json["score"] == 9
        assert "survey" in [e["name"] for e in other.get("/api/v1/meta/entities", headers=admin).json["items"]]


def test_metadata_changes_are_versioned_and_audited(client: Any, login: Any) -> None:
    admin = login("admin")
    _add(client, admin, name="audited_field", type="string")
    client.patch(f"{FIELDS}/audited_field", json={"label": {"zh": "新", "en": "New"}}, headers=admin)
    history = client.get("/api/v1/meta/entities/customer/history", headers=admin).json["items"]
    assert [h["comment"] for h in history[:2]] == ["change field audited_field", "add field audited_field"]
    assert history[0]["version"] == history[1]["version"] + 1 and history[0]["author"] == "admin"
    trail = client.get("/api/v1/audit?action=meta_change&entity=customer&limit=5", headers=admin).json["items"]
    assert [t["detail"]["comment"] for t in trail[:2]] == ["change field audited_field", "add field audited_field"]


# ------------------------------------------------------------------ optimistic stamps on reads


def test_reads_see_a_change_from_another_worker_on_their_very_next_request(app: Any, client: Any, login: Any) -> None:
    """Gets and lists assume the stamps they last saw and check them inside their one
    statement: a field added, or a session revoked, in another worker still counts at once."""
    admin, rm1 = login("admin"), login("rm1")
    cid = _customer(client, rm1, name="乐观读")["id"]
    with second_worker(app) as other_app:
        other = other_app.test_client()
        assert other.get(f"{CUSTOMERS}/{cid}", headers=rm1).status_code == 200  # B caches its stamps
        _add(client, admin, name="opt_level", type="integer")  # A moves the metadata stamp
        # an unknown field for B's old snapshot: B must notice the stamp, reload, and answer
        listed = other.get(f"{CUSTOMERS}?fields=name,opt_level", headers=rm1)
        assert listed.status_code == 200, listed.json
        assert listed.json["items"][0]["opt_level"] is None
        got = other.get(f"{CUSTOMERS}/{cid}?fields=opt_level", headers=rm1)
        assert got.status_code == 200 and "opt_level" in got.json
        # A ends rm1's sessions (the policy stamp moves): B refuses the old token at once,
        # even on a read whose row would carry the stamps
        assert client.post("/api/v1/security/logout", headers=rm1).status_code == 200
        login.tokens.pop("rm1")  # the module's cached token is dead now
        for path in (f"{CUSTOMERS}/{cid}", CUSTOMERS):
            assert_error(other.get(path, headers=rm1), 401, "unauthenticated")
        assert_error(other.post(f"{CUSTOMERS}/query", json={}, headers=rm1), 401, "unauthenticated")


def test_a_field_added_or_removed_reaches_a_warm_reader_in_every_worker_at_once(app: Any, client: Any, login: Any) -> None:
    """Views and serialisation plans are cached per metadata snapshot: a get or list without
    ``fields`` (the cached view's visible fields) shows a new field, and stops showing a removed
    one, on the very next request, in the worker that changed it and in another."""
    admin, rm1 = login("admin"), login("rm1")
    cid = _customer(client, rm1, name="缓存视图")["id"]
    with second_worker(app) as other_app:
        other = other_app.test_client()

        def shown(name: str) -> list[bool]:
            return [
                name in c.get(f"{CUSTOMERS}/{cid}", headers=rm1).json and name in c.get(CUSTOMERS, headers=rm1).json["items"][0]
                for c in (client, other)
            ]

        assert shown("view_level") == [False, False]  # warm in both workers
        _add(client, admin, name="view_level", type="integer")
        assert shown("view_level") == [True, True]
        assert client.delete(f"{FIELDS}/view_level", headers=admin).status_code == 200
        assert shown("view_level") == [False, False]


def test_a_warm_get_or_list_is_one_sql_statement(app: Any, client: Any, login: Any) -> None:
    from sqlalchemy import event

    rm1 = login("rm1")
    cid = _customer(client, rm1, name="一条语句")["id"]
    runtime = app.extensions["fincrm"].runtime
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engines = {id(e): e for e in (runtime.engine, runtime.point_engine)}.values()  # one on SQLite
    for path in (f"{CUSTOMERS}/{cid}", f"{CUSTOMERS}?sort=-aum&limit=10"):
        assert client.get(path, headers=rm1).status_code == 200  # warm: principal, snapshot
        for engine in engines:
            event.listen(engine, "before_cursor_execute", record)
        try:
            statements.clear()
            assert client.get(path, headers=rm1).status_code == 200
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", record)
        assert len(statements) == 1, (path, statements)
