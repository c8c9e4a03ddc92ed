"""Bad input, from clumsy to hostile: every request here gets a documented 4xx naming the
problem (DESIGN §3 errors), never a 500, and writes nothing."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Iterator

import pytest

from tests.api_helpers import (  # noqa: F401  (module-wide app fixtures)
    LABEL,
    Logins,
    app,
    assert_error,
    client,
    count,
    login,
    shared_app,
)

CUSTOMERS = "/api/v1/records/customer"
JSON = {"Content-Type": "application/json"}

# Runtime fields, so every field type is exercised on the customer entity.
EXTRA_FIELDS = [
    {"name": "t_int", "type": "integer", "min": 0, "max": 1000},
    {"name": "t_int_col", "type": "integer", "storage": "column"},
    {"name": "t_bool", "type": "boolean"},
    {"name": "t_text", "type": "text", "max_length": 50},
    {"name": "t_dt", "type": "datetime"},
    {"name": "t_multi", "type": "multi_enum", "options": [{"value": "a", "label": LABEL}, {"value": "b", "label": LABEL}]},
    {"name": "t_card", "type": "bank_card"},
    {"name": "t_url", "type": "url"},
    {"name": "t_dec_col", "type": "decimal", "precision": 10, "scale": 2, "storage": "column"},
]


@pytest.fixture(scope="module", autouse=True)
def typed_customer(shared_app: Any) -> Iterator[None]:
    c = shared_app.test_client()
    admin = Logins(c, shared_app.fincrm_test_logins)("admin")
    for doc in EXTRA_FIELDS:
        resp = c.post("/api/v1/meta/entities/customer/fields", json={"label": LABEL, **doc}, headers=admin)
        assert resp.status_code == 201, resp.get_data(as_text=True)
    yield


@pytest.fixture
def existing(client: Any, login: Any) -> dict[str, Any]:
    """One customer of rm1's, to aim updates at; counts are checked against it."""
    resp = client.post(CUSTOMERS, json={"name": "原始客户", "occupation": "教师", "aum": "100"}, headers=login("rm1"))
    assert resp.status_code == 201
    return resp.json  # type: ignore[no-any-return]


def _unchanged(client: Any, login: Any, existing: dict[str, Any]) -> None:
    """Nothing was written: one customer, as it was, with no tags."""
    admin, rm1 = login("admin"), login("rm1")
    assert count(client, admin) == 1
    assert client.get(f"{CUSTOMERS}/{existing['id']}", headers=rm1).json == existing
    assert client.get(f"{CUSTOMERS}/{existing['id']}/tags", headers=rm1).json == {"tags": []}


# ------------------------------------------------------------------ bodies that are not a JSON object

BAD_BODIES = {
    "malformed": b'{"name": "x",',
    "list": b'[{"name": "x"}]',
    "string": b'"name"',
    "number": b"42",
    "true": b"true",
    "null": b"null",
    "empty": b"",
    "invalid_utf8": b'{"name": "\xff\xfe\xfa"}',
    "utf16": '{"name": "x"}'.encode("utf-16"),
    "nan": b'{"name": "x", "aum": NaN}',
    "infinity": b'{"name": "x", "aum": Infinity}',
    "minus_infinity": b'{"name": "x", "aum": -Infinity}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "trailing_garbage": b'{"name": "x"} {"name": "y"}',
    "form_encoded": b"name=x&aum=1",
    "single_quotes": b"{'name': 'x'}",
}

WRITE_ENDPOINTS = {
    "create": ("post", CUSTOMERS),
    "update": ("patch", f"{CUSTOMERS}/<id>"),
    "query": ("post", f"{CUSTOMERS}/query"),
    "tag": ("post", f"{CUSTOMERS}/<id>/tags"),
    "add_field": ("post", "/api/v1/meta/entities/customer/fields"),
    "create_entity": ("post", "/api/v1/meta/entities"),
}


@pytest.mark.parametrize("endpoint", sorted(WRITE_ENDPOINTS))
@pytest.mark.parametrize("body", sorted(BAD_BODIES))
def test_a_body_that_is_not_a_json_object_is_a_400(client: Any, login: Any, existing: dict[str, Any], endpoint: str, body: str) -> None:
    method, path = WRITE_ENDPOINTS[endpoint]
    user = "admin" if endpoint in ("add_field", "create_entity") else "rm1"
    fields_before = client.get("/api/v1/meta/entities/customer", headers=login("admin")).json
    resp = getattr(client, method)(
        path.replace("<id>", str(existing["id"])), data=BAD_BODIES[body], headers={**login(user), **JSON, "If-Match": '"1"'}
    )
    assert_error(resp, 400, "malformed_request")
    _unchanged(client, login, existing)
    assert client.get("/api/v1/meta/entities/customer", headers=login("admin")).json == fields_before


@pytest.mark.parametrize("endpoint", sorted(WRITE_ENDPOINTS))
def test_a_body_over_the_size_limit_is_a_413(client: Any, login: Any, existing: dict[str, Any], endpoint: str) -> None:
    method, path = WRITE_ENDPOINTS[endpoint]
    big = json.dumps({"name": "大" * (1024 * 1024)}).encode()  # 3 MB of UTF-8, over the 2 MB limit
    resp = getattr(client, method)(path.replace("<id>", str(existing["id"])), data=big, headers={**login("admin"), **JSON, "If-Match": '"1"'})
    assert_error(resp, 413, "payload_too_large")
    _unchanged(client, login, existing)


def test_a_body_just_under_the_limit_is_judged_on_its_content(client: Any, login: Any, existing: dict[str, Any]) -> None:
    body = json.dumps({"name": "x" * (1024 * 1024)}).encode()
    resp = client.post(CUSTOMERS, data=body, headers={**login("rm1"), **JSON})
    assert_error(resp, 422, "validation_error", field="name")
    _unchanged(client, login, existing)


# ------------------------------------------------------------------ unknown and read-only keys

FORBIDDEN_KEYS = ["id", "created_at", "updated_at", "created_by", "updated_by", "retained_at", "ext", "nickname", "", "name; DROP TABLE e_customer; --", "__proto__", "Name", "tags"]


@pytest.mark.parametrize("key", FORBIDDEN_KEYS + ["version"])
def test_unknown_and_system_keys_are_refused_on_create(client: Any, login: Any, existing: dict[str, Any], key: str) -> None:
    resp = client.post(CUSTOMERS, json={"name": "新客户", key: 5}, headers=login("rm1"))
    assert_error(resp, 422, "validation_error", field=key)
    _unchanged(client, login, existing)


@pytest.mark.parametrize("key", FORBIDDEN_KEYS)
def test_unknown_and_system_keys_are_refused_on_update(client: Any, login: Any, existing: dict[str, Any], key: str) -> None:
    resp = client.patch(f"{CUSTOMERS}/{existing['id']}", json={"occupation": "医生", key: 5, "version": 1}, headers=login("rm1"))
    assert_error(resp, 422, "validation_error", field=key)
    _unchanged(client, login, existing)


# ------------------------------------------------------------------ wrong values for every field type

BAD_VALUES = [
    # string
    ("name", 123), ("name", ["张三"]), ("name", {"zh": "张三"}), ("name", True), ("name", "张" * 101), ("name", "张\u0000三"), ("name", "两行\n姓名"),
    ("occupation", "职" * 101),
    # text
    ("t_text", "字" * 51), ("t_text", 5),
    # integer (json and column)
    ("t_int", "abc"), ("t_int", 1.5), ("t_int", "1.5"), ("t_int", True), ("t_int", -1), ("t_int", 1001), ("t_int", [1]), ("t_int", "1e3"),
    ("t_int_col", 2**63), ("t_int_col", "12abc"), ("t_int_col", {}),
    # decimal (json and column)
    ("aum", True), ("aum", "abc"), ("aum", "1e5"), ("aum", "NaN"), ("aum", "Infinity"), ("aum", "-1"), ("aum", "1.234"), ("aum", "1234567890123456789"),
    ("aum", [1]), ("aum", {"v": 1}), ("aum", 1e30), ("aum", 12345678901234567890123),
    ("t_dec_col", "123456789.12"), ("t_dec_col", False),
    # boolean
    ("t_bool", "maybe"), ("t_bool", 2), ("t_bool", []), ("t_bool", "是的"),
    # date
    ("birth_date", "abc"), ("birth_date", "2020-02-30"), ("birth_date", "1899-12-31"), ("birth_date", 20200101), ("birth_date", "2020-1-1"), ("birth_date", "01/02/2020"),
    ("opened_on", True),
    # datetime
    ("t_dt", "abc"), ("t_dt", "2024-13-01T00:00:00"), ("t_dt", 1700000000), ("t_dt", "2024-01-01T25:00:00Z"),
    # enum / multi_enum
    ("gender", "other"), ("gender", 1), ("gender", ["male"]), ("risk_preference", "YOLO"), ("t_multi", "a"), ("t_multi", ["c"]), ("t_multi", [1]), ("t_multi", [["a"]]),
    # ref / user
    ("branch", "x"), ("branch", 999_999), ("branch", 0), ("branch", -3), ("branch", 1.5), ("owner", "rm1"), ("owner", 0),
    # email / url
    ("email", "not-an-email"), ("email", "a@b"), ("email", "a@@example.com"), ("email", 5), ("t_url", "javascript:alert(1)"), ("t_url", "ftp://example.com"), ("t_url", "example.com"),
    # cn_mobile
    ("mobile", "12345678901"), ("mobile", "1380013800"), ("mobile", "138001380001"), ("mobile", "10000000000"), ("mobile", "abcdefghijk"), ("mobile", 13800138000.5),
    # cn_id
    ("id_number", "110105194912310021"), ("id_number", "110105199902300013"), ("id_number", "11010519491231002"), ("id_number", "110105300001010011"), ("id_number", "ABCDEFGHIJKLMNOPQR"),
    # bank_card
    ("t_card", "4111111111111112"), ("t_card", "41111111111"), ("t_card", "41111111111111111111"), ("t_card", "4111-1111-1111-111x"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={str(v)[:24]!r}" for f, v in BAD_VALUES])
@pytest.mark.parametrize("action", ["create", "update"])
def test_a_wrong_value_is_a_422_naming_the_field_and_writes_nothing(client: Any, login: Any, existing: dict[str, Any], field: str, value: Any, action: str) -> None:
    rm1 = login("rm1")
    if action == "create":
        resp = client.post(CUSTOMERS, json={"name": "新客户", field: value}, headers=rm1)
    else:
        resp = client.patch(f"{CUSTOMERS}/{existing['id']}", json={field: value}, headers={**rm1, "If-Match": '"1"'})
    assert_error(resp, 422, "validation_error", field=field)
    if isinstance(value, str) and len(value) >= 8 and field not in ("name",):
        assert value not in resp.get_data(as_text=True)  # a rejected value is never echoed back
    _unchanged(client, login, existing)


@pytest.mark.parametrize(
    "field,value,stored",
    [
        ("mobile", "１３８００１３８０００", "138****8000"),
        ("mobile", "+86 138-0013-8000", "138****8000"),
        ("mobile", "0086 13800138000", "138****8000"),
        ("id_number", "１１０１０５１９４９１２３１００２ｘ", "110***********002X"),
        ("id_number", "110105491231002", "110***********002X"),  # 15-digit number upgraded (check digit added)
        ("aum", "１２３．４５", "123.45"),
        ("aum", "1,234,567.5", "1234567.50"),
        ("aum", 12.5, "12.50"),
        ("t_dec_col", "１０", "10.00"),
        ("t_int", "１２", 12),
        ("t_int", "12", 12),
        ("t_int_col", " 7 ", 7),
        ("t_int", 3.0, 3),
        ("birth_date", "１９８０-０１-０２", "******"),
        ("opened_on", "2020/01/02", "2020-01-02"),
        ("t_card", "４１１１ １１１１ １１１１ １１１１", "4111111111111111"),
        ("email", "Ａlice@Example.com", "A***@example.com"),
        ("name", "  张三  ", "张三"),
        ("t_bool", "是", True),
        ("t_bool", "false", False),
        ("t_dt", "2024-01-02 08:00:00", "2024-01-02T00:00:00Z"),
        ("t_multi", ["b", "a", "b"], ["b", "a"]),
    ],
)
def test_values_are_normalised_on_the_way_in(client: Any, login: Any, field: str, value: Any, stored: Any) -> None:
    resp = client.post(CUSTOMERS, json={"name": "规范化", field: value}, headers=login("rm1"))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.json[field] == stored


def test_an_unassigned_but_well_formed_mobile_range_is_refused(client: Any, login: Any, existing: dict[str, Any]) -> None:
    resp = client.post(CUSTOMERS, json={"name": "空号段", "mobile": "14000000000"}, headers=login("rm1"))
    assert_error(resp, 422, "validation_error", field="mobile")
    _unchanged(client, login, existing)


# ------------------------------------------------------------------ filters, sorts and list parameters


def _list(client: Any, headers: dict[str, str], **params: Any) -> Any:
    return client.get(f"{CUSTOMERS}?{urllib.parse.urlencode(params)}", headers=headers)


BAD_FILTERS = [
    ({"field": "nope", "op": "eq", "value": 1}, "nope", "invalid_filter"),
    ({"field": "name; DROP TABLE e_customer; --", "op": "eq", "value": 1}, "name; DROP TABLE e_customer; --", "invalid_filter"),
    ({"field": "ext", "op": "eq", "value": "x"}, "ext", "invalid_filter"),
    ({"field": "retained_at", "op": "is_null", "value": True}, "retained_at", "invalid_filter"),
    ({"field": "aum", "op": "regex", "value": "1"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "contains", "value": "1"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "=", "value": "1"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "gt; DROP TABLE e_customer", "value": "1"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": ["eq"], "value": "1"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "gt", "value": "abc"}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "gt", "value": True}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "gt", "value": 1e30}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "between", "value": ["1"]}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "in", "value": []}, "aum", "invalid_filter"),
    ({"field": "aum", "op": "in", "value": ["1"] * 1001}, "aum", "invalid_filter"),
    ({"field": "t_int", "op": "eq", "value": "1 OR 1=1"}, "t_int", "invalid_filter"),
    ({"field": "t_int_col", "op": "lt", "value": {"$gt": ""}}, "t_int_col", "invalid_filter"),
    ({"field": "opened_on", "op": "gt", "value": "yesterday"}, "opened_on", "invalid_filter"),
    ({"field": "opened_on", "op": "within_next_days", "value": -1}, "opened_on", "invalid_filter"),
    ({"field": "opened_on", "op": "within_next_days", "value": 10**9}, "opened_on", "invalid_filter"),
    ({"field": "gender", "op": "eq", "value": "other"}, "gender", "invalid_filter"),
    ({"field": "name", "op": "contains", "value": ""}, "name", "invalid_filter"),
    ({"field": "name", "op": "contains", "value": "长" * 201}, "name", "invalid_filter"),
    ({"field": "name", "op": "is_null", "value": "yes"}, "name", "invalid_filter"),
    ({"field": "tags", "op": "eq", "value": "vip"}, "tags", "invalid_filter"),
    ({"field": "tags", "op": "has", "value": ""}, "tags", "invalid_filter"),
    ({"field": "mobile", "op": "startswith", "value": "138"}, "mobile", "invalid_filter"),  # masked for rm1: no oracle
    ({"field": "id_number", "op": "eq", "value": "11010519491231002X"}, "id_number", "invalid_filter"),
]


@pytest.mark.parametrize("flt,field,code", BAD_FILTERS, ids=[json.dumps(f, ensure_ascii=False)[:50] for f, _, _ in BAD_FILTERS])
@pytest.mark.parametrize("via", ["get", "post"])
def test_a_bad_filter_condition_is_a_400_naming_the_field(client: Any, login: Any, existing: dict[str, Any], flt: Any, field: str, code: str, via: str) -> None:
    rm1 = login("rm1")
    if via == "get":
        resp = _list(client, rm1, filter=json.dumps(flt))
    else:
        resp = client.post(f"{CUSTOMERS}/query", json={"filter": flt}, headers=rm1)
    assert_error(resp, 400, code, field=field)
    _unchanged(client, login, existing)


SHAPELESS_FILTERS = [
    "not json",
    '{"field": "aum", "op": "gt", "value": NaN}',
    '{"field": "aum", "op": "gt", "value": Infinity}',
    '{"field": "aum", "op": "gt", "value": 1e999}',
    '"aum > 1"',
    "[1, 2]",
    "42",
    '{"and": {"field": "name", "op": "eq", "value": "x"}}',
    '{"and": [], "or": []}',
    '{"field": "name", "op": "eq", "value": "x", "sql": "1=1"}',
    '{"field": 5, "op": "eq", "value": "x"}',
    '{"or": [' + ",".join(['{"field": "name", "op": "eq", "value": "x"}'] * 250) + "]}",
    '{"not": ' * 30 + "{}" + "}" * 30,
    "[" * 50_000 + "]" * 50_000,
]


@pytest.mark.parametrize("raw", SHAPELESS_FILTERS, ids=[r[:40] for r in SHAPELESS_FILTERS])
def test_a_filter_that_is_not_a_filter_is_a_400(client: Any, login: Any, existing: dict[str, Any], raw: str) -> None:
    rm1 = login("rm1")
    resp = _list(client, rm1, filter=raw)
    assert_error(resp, 400)
    assert resp.json["error"]["code"] in ("invalid_filter", "malformed_request")
    body = b'{"filter": ' + raw.encode() + b"}"
    via_body = client.post(f"{CUSTOMERS}/query", data=body, headers={**rm1, **JSON})
    assert_error(via_body, 400)
    _unchanged(client, login, existing)


HOSTILE_VALUES = ["' OR 1=1 --", "' OR '1'='1", '" OR ""="', "%", "_", "%%", "\\", "张%", "'; DROP TABLE e_customer; --", "1) OR (1=1", "*"]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("field,op", [("name", "eq"), ("name", "contains"), ("name", "startswith"), ("name", "in"), ("occupation", "ne"), ("t_text", "contains"), ("tags", "has")])
def test_sql_in_filter_values_matches_only_what_it_literally_says(client: Any, login: Any, existing: dict[str, Any], value: str, field: str, op: str) -> None:
    rm1 = login("rm1")
    literal = client.post(CUSTOMERS, json={"name": "张" + value, "occupation": "教师", "t_text": "x"}, headers=rm1).json
    flt = {"field": field, "op": op, "value": [value] if op == "in" else value}
    resp = client.post(f"{CUSTOMERS}/query", json={"filter": flt}, headers=rm1)
    assert resp.status_code == 200, resp.json
    ids = [c["id"] for c in resp.json["items"]]
    expected = {
        ("name", "eq"): [],
        ("name", "contains"): [literal["id"]],  # "张' OR 1=1 --" does contain the value, and only that record
        ("name", "startswith"): [],
        ("name", "in"): [],
        ("occupation", "ne"): sorted([existing["id"], literal["id"]]),  # both are 教师, so neither equals the value
        ("t_text", "contains"): [],
        ("tags", "has"): [],
    }[(field, op)]
    assert sorted(ids) == expected
    assert count(client, login("admin")) == 2  # and the table is still there


def test_a_hostile_string_matches_itself_exactly(client: Any, login: Any, existing: dict[str, Any]) -> None:
    rm1 = login("rm1")
    hostile = "x' OR 1=1 --"
    made = client.post(CUSTOMERS, json={"name": hostile}, headers=rm1).json
    found = client.post(f"{CUSTOMERS}/query", json={"filter": {"field": "name", "op": "eq", "value": hostile}}, headers=rm1).json["items"]
    assert [c["id"] for c in found] == [made["id"]]


BAD_SORTS = [
    ("name;drop table e_customer", "name;drop table e_customer"),
    ("name; DROP TABLE e_customer; --", "name; DROP TABLE e_customer; --"),
    ("-aum,(select 1)", "(select 1)"),
    ("aum desc", "aum desc"),
    ("1", "1"),
    ("ext", "ext"),
    ("retained_at", "retained_at"),
    ("nope", "nope"),
    ("-nope", "nope"),
    ("aum,,name", ""),
    ("t_text", "t_text"),  # long text is not sortable
    ("t_multi", "t_multi"),
    ("mobile", "mobile"),  # masked for rm1
    ("aum,aum", "aum"),
]


@pytest.mark.parametrize("sort,field", BAD_SORTS)
def test_a_bad_sort_is_a_400_naming_the_key(client: Any, login: Any, existing: dict[str, Any], sort: str, field: str) -> None:
    rm1 = login("rm1")
    assert_error(_list(client, rm1, sort=sort), 400, "invalid_sort", field=field)
    assert_error(client.post(f"{CUSTOMERS}/query", json={"sort": sort}, headers=rm1), 400, "invalid_sort", field=field)
    _unchanged(client, login, existing)


@pytest.mark.parametrize(
    "params,field",
    [
        ({"sort": "a,b,c,d,e,f"}, None),
        ({"fields": "name,nope"}, "nope"),
        ({"fields": "name,ext"}, "ext"),
        ({"fields": "name;drop table e_customer"}, "name;drop table e_customer"),
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "9" * 30}, "limit"),
        ({"cursor": "forged"}, None),
        ({"cursor": "eyJ4IjoxfQ.AAAA"}, None),
        ({"q": "长" * 101}, "q"),
        ({"consent": "astrology"}, None),
    ],
)
def test_bad_list_parameters_are_400(client: Any, login: Any, existing: dict[str, Any], params: dict[str, str], field: str | None) -> None:
    resp = _list(client, login("rm1"), **params)
    assert_error(resp, 400, field=field)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"filter": {}, "nope": 1}, "nope"),
        ({"sort": 5}, "sort"),
        ({"fields": "name", "limit": True}, "limit"),
        ({"fields": [1, 2]}, "fields"),
        ({"limit": [1]}, "limit"),
        ({"q": ["x"]}, None),
        ({"cursor": 5}, None),
    ],
)
def test_bad_query_bodies_are_400(client: Any, login: Any, existing: dict[str, Any], body: dict[str, Any], field: str | None) -> None:
    resp = client.post(f"{CUSTOMERS}/query", json=body, headers=login("rm1"))
    assert_error(resp, 400, field=field)


# ------------------------------------------------------------------ unknown things


ENTITY_ROUTES = [
    ("get", "/api/v1/records/{e}", None),
    ("post", "/api/v1/records/{e}", {"name": "x"}),
    ("post", "/api/v1/records/{e}/query", {}),
    ("get", "/api/v1/records/{e}/1", None),
    ("patch", "/api/v1/records/{e}/1", {"version": 1}),
    ("delete", "/api/v1/records/{e}/1", None),
    ("get", "/api/v1/records/{e}/1/related", None),
    ("get", "/api/v1/records/{e}/1/tags", None),
    ("get", "/api/v1/records/{e}/1/history", None),
    ("get", "/api/v1/meta/entities/{e}", None),
    ("get", "/api/v1/meta/entities/{e}/schema", None),
    ("post", "/api/v1/meta/entities/{e}/fields", {"name": "x", "type": "string", "label": LABEL}),
]


@pytest.mark.parametrize("entity", ["nope", "e_customer", "Customer", "customer;drop", "fincrm_state", "__init__", "customer%00"])
@pytest.mark.parametrize("method,path,body", ENTITY_ROUTES)
def test_an_unknown_entity_is_a_404_everywhere(client: Any, login: Any, existing: dict[str, Any], entity: str, method: str, path: str, body: Any) -> None:
    resp = getattr(client, method)(path.format(e=entity), json=body, headers={**login("admin"), "If-Match": '"1"'})
    assert_error(resp, 404, "not_found")
    _unchanged(client, login, existing)


RECORD_ROUTES = [
    ("get", "", None),
    ("patch", "", {"occupation": "x", "version": 1}),
    ("delete", "", None),
    ("get", "/related", None),
    ("get", "/tags", None),
    ("post", "/tags", {"tag": "vip"}),
    ("delete", "/tags/vip", None),
    ("get", "/history", None),
]


@pytest.mark.parametrize("rid", ["999999", "abc", "0", "-1", "1.5", "99999999999999999999999", "9223372036854775808", "1;drop table e_customer", "%20"])
@pytest.mark.parametrize("method,suffix,body", RECORD_ROUTES)
def test_an_unknown_or_malformed_id_is_a_404(client: Any, login: Any, existing: dict[str, Any], rid: str, method: str, suffix: str, body: Any) -> None:
    resp = getattr(client, method)(f"{CUSTOMERS}/{rid}{suffix}", json=body, headers=login("admin"))
    assert_error(resp, 404, "not_found")
    _unchanged(client, login, existing)


@pytest.mark.parametrize("method,path", [("put", CUSTOMERS), ("delete", CUSTOMERS), ("put", f"{CUSTOMERS}/1"), ("get", "/api/v1/meta/entities/customer/fields")])
def test_a_wrong_method_is_a_405_in_the_error_format(client: Any, login: Any, existing: dict[str, Any], method: str, path: str) -> None:
    assert_error(getattr(client, method)(path, json={}, headers=login("admin")), 405)
    _unchanged(client, login, existing)


# ------------------------------------------------------------------ hostile strings are data


HOSTILE_TEXT = {
    "name": "<script>alert(1)</script>",
    "occupation": '"><img src=x onerror=alert(1)>',
    "t_text": "</textarea><svg/onload=alert('x')>\n{{7*7}} ${7*7}",
    "t_url": "https://example.com/?q=<script>",
}


def test_html_and_script_are_stored_verbatim_and_returned_as_json(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    resp = client.post(CUSTOMERS, json=HOSTILE_TEXT, headers=rm1)
    assert resp.status_code == 201, resp.json
    for r in (resp, client.get(f"{CUSTOMERS}/{resp.json['id']}", headers=rm1)):
        assert r.mimetype == "application/json" and r.headers["X-Content-Type-Options"] == "nosniff"
        for key, value in HOSTILE_TEXT.items():
            assert r.json[key] == value
    listed = client.get(CUSTOMERS, headers=rm1)
    assert listed.mimetype == "application/json" and listed.json["items"][0]["name"] == HOSTILE_TEXT["name"]
    found = client.post(f"{CUSTOMERS}/query", json={"filter": {"field": "name", "op": "eq", "value": HOSTILE_TEXT["name"]}}, headers=rm1).json["items"]
    assert [c["id"] for c in found] == [resp.json["id"]]
    tagged = client.post(f"{CUSTOMERS}/{resp.json['id']}/tags", json={"tag": "<b>vip</b>"}, headers=rm1)
    assert tagged.status_code == 201 and tagged.json == {"tags": ["<b>vip</b>"]}


def test_an_error_about_a_hostile_key_is_json_not_html(client: Any, login: Any, existing: dict[str, Any]) -> None:
    resp = client.post(CUSTOMERS, json={"name": "x", "<script>alert(1)</script>": 1}, headers=login("rm1"))
    assert_error(resp, 422, field="<script>alert(1)</script>")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    _unchanged(client, login, existing)
