"""The foundation's must-shows, end to end through the REST API (DESIGN §3)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.conftest import TEST_MASTER_KEY

LABEL = {"zh": "测试", "en": "Test"}


def _count(client: Any, headers: dict[str, str], entity: str) -> int:
    return int(client.get(f"/api/v1/records/{entity}?count=1&limit=1", headers=headers).json["count"])


@pytest.mark.parametrize("storage", ["json", "column"])
def test_added_field_is_writable_filterable_sortable_and_in_openapi_at_once(client: Any, login: Any, storage: str) -> None:
    admin = login("admin")
    resp = client.post(
        "/api/v1/meta/entities/customer/fields",
        json={"name": "wechat_id", "type": "string", "label": {"zh": "微信号", "en": "WeChat ID"}, "max_length": 40, "storage": storage},
        headers=admin,
    )
    assert resp.status_code == 201, resp.json
    assert resp.json["storage"] == storage
    rm1 = login("rm1")
    ids = []
    for name, wechat in (("张三", "zs_001"), ("李四", "ls_002"), ("王五", None)):
        created = client.post("/api/v1/records/customer", json={"name": name, "wechat_id": wechat}, headers=rm1)
        assert created.status_code == 201, created.json
        assert created.json["wechat_id"] == wechat
        ids.append(created.json["id"])
    found = client.get('/api/v1/records/customer?filter={"field":"wechat_id","op":"startswith","value":"ls_"}', headers=rm1).json
    assert [c["id"] for c in found["items"]] == [ids[1]]
    ordered = client.get("/api/v1/records/customer?sort=-wechat_id", headers=rm1).json["items"]
    assert [c["wechat_id"] for c in ordered] == ["zs_001", "ls_002", None]  # NULLs last
    schema = client.get("/api/v1/openapi.json", headers=rm1).json["components"]["schemas"]["customer"]
    assert schema["properties"]["wechat_id"]["maxLength"] == 40
    too_long = client.post("/api/v1/records/customer", json={"name": "赵六", "wechat_id": "x" * 41}, headers=rm1)
    assert too_long.status_code == 422
    assert too_long.json["error"]["details"] == [{"field": "wechat_id", "message": "is longer than 40 characters"}]


def test_new_entity_serves_crud_filters_and_openapi_without_restart(client: Any, login: Any) -> None:
    admin = login("admin")
    doc = {
        "name": "campaign",
        "label": {"zh": "营销活动", "en": "Campaign"},
        "fields": [
            {"name": "title", "type": "string", "label": {"zh": "活动名称", "en": "Title"}, "required": True},
            {"name": "budget", "type": "decimal", "label": {"zh": "预算", "en": "Budget"}, "precision": 14, "scale": 2},
            {"name": "starts_on", "type": "date", "label": {"zh": "开始日期", "en": "Starts"}},
        ],
    }
    assert client.post("/api/v1/meta/entities", json=doc, headers=admin).status_code == 201
    assert client.post("/api/v1/meta/entities", json=doc, headers=admin).status_code == 409
    for title, budget in (("春季理财节", "50000"), ("养老金融周", "120000.5")):
        assert client.post("/api/v1/records/campaign", json={"title": title, "budget": budget}, headers=admin).status_code == 201
    big = client.get('/api/v1/records/campaign?filter={"field":"budget","op":"gt","value":"100000"}', headers=admin).json["items"]
    assert [c["title"] for c in big] == ["养老金融周"] and big[0]["budget"] == "120000.50"
    assert "campaign" in client.get("/api/v1/openapi.json", headers=admin).json["components"]["schemas"]
    assert "/api/v1/records/campaign" in client.get("/api/v1/openapi.json", headers=admin).json["paths"]


def test_a_field_added_in_one_process_is_visible_in_another(app: Any, client: Any, login: Any, tmp_path: Any) -> None:
    from app import create_app

    rt = app.extensions["fincrm"].runtime
    second = create_app(
        {
            "FINCRM_DATA_DIR": str(tmp_path / "worker2"),
            "FINCRM_DATABASE_URL": rt.url,
            "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
            "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
            "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
            "FINCRM_INDEX_KEY": base64.b64encode(app.config["FINCRM_SETTINGS"].index_key).decode(),
            "RATELIMIT_ENABLED": False,
        }
    )
    other = second.test_client()
    admin = login("admin")
    other_admin = {"Authorization": admin["Authorization"]}  # same secret: the token is valid in both
    client.get("/api/v1/records/customer", headers=admin)
    other.get("/api/v1/records/customer", headers=other_admin)  # worker 2 has its snapshot cached
    assert client.post(
        "/api/v1/meta/entities/customer/fields", json={"name": "hobby", "type": "string", "label": LABEL}, headers=admin
    ).status_code == 201
    created = other.post("/api/v1/records/customer", json={"name": "钱七", "hobby": "围棋"}, headers=other_admin)
    assert created.status_code == 201, created.json
    assert created.json["hobby"] == "围棋"
    second.extensions["fincrm"].runtime.dispose()
    with second.app_context():
        second.extensions["sqlalchemy"].engine.dispose()


def test_patch_needs_version_and_refuses_stale_writes(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = client.post("/api/v1/records/customer", json={"name": "孙八"}, headers=rm1).json["id"]
    no_version = client.patch(f"/api/v1/records/customer/{cid}", json={"occupation": "教师"}, headers=rm1)
    assert no_version.status_code == 400 and no_version.json["error"]["details"][0]["field"] == "version"
    ok = client.patch(f"/api/v1/records/customer/{cid}", json={"occupation": "教师"}, headers={**rm1, "If-Match": '"1"'})
    assert ok.status_code == 200 and ok.json["version"] == 2 and ok.headers["ETag"] == '"2"'
    stale = client.patch(f"/api/v1/records/customer/{cid}", json={"occupation": "医生", "version": 1}, headers=rm1)
    assert stale.status_code == 409 and stale.json["error"]["code"] == "version_conflict"
    assert client.get(f"/api/v1/records/customer/{cid}", headers=rm1).json["occupation"] == "教师"


BAD_CUSTOMERS = [
    ({"name": "a" * 101}, "name", 422),
    ({"name": "张三", "mobile": "12345678901"}, "mobile", 422),
    ({"name": "张三", "mobile": "1380013800"}, "mobile", 422),
    ({"name": "张三", "id_number": "110105194912310021"}, "id_number", 422),
    ({"name": "张三", "id_number": "110105199902300013"}, "id_number", 422),
    ({"name": "张三", "email": "not-an-email"}, "email", 422),
    ({"name": "张三", "aum": "12.345"}, "aum", 422),
    ({"name": "张三", "aum": True}, "aum", 422),
    ({"name": "张三", "aum": "-5"}, "aum", 422),
    ({"name": "张三", "birth_date": "2020-02-30"}, "birth_date", 422),
    ({"name": "张三", "risk_preference": "yolo"}, "risk_preference", 422),
    ({"name": "张三", "branch": 999999}, "branch", 422),
    ({"name": "张三", "nickname": "x"}, "nickname", 422),
    ({"name": "张三", "id": 5}, "id", 422),
    ({"name": "张三", "created_at": "2020-01-01"}, "created_at", 422),
    ({"name": "张\u0000三"}, "name", 422),
    ({"mobile": "13800138000"}, "name", 422),
]


@pytest.mark.parametrize("payload,field,status", BAD_CUSTOMERS)
def test_invalid_customer_values_are_refused_with_the_field_named_and_nothing_written(
    client: Any, login: Any, payload: dict[str, Any], field: str, status: int
) -> None:
    admin = login("admin")
    before = _count(client, admin, "customer")
    resp = client.post("/api/v1/records/customer", json=payload, headers=login("rm1"))
    assert resp.status_code == status
    assert field in [d["field"] for d in resp.json["error"]["details"]]
    assert _count(client, admin, "customer") == before


@pytest.mark.parametrize(
    "raw,status,code",
    [
        (b"{bad json", 400, "malformed_request"),
        (b"[1, 2]", 400, "malformed_request"),
        (b'"a string"', 400, "malformed_request"),
        (b"\xff\xfe\x00garbage", 400, "malformed_request"),
        (b'{"name": NaN}', 400, "malformed_request"),
        (b"", 400, "malformed_request"),
    ],
)
def test_malformed_bodies_get_a_400(client: Any, login: Any, raw: bytes, status: int, code: str) -> None:
    resp = client.post("/api/v1/records/customer", data=raw, headers={**login("rm1"), "Content-Type": "application/json"})
    assert resp.status_code == status
    assert resp.json["error"]["code"] == code


def test_an_oversized_body_gets_a_413(client: Any, login: Any) -> None:
    resp = client.post(
        "/api/v1/records/customer", data=b'{"name": "' + b"x" * (3 * 1024 * 1024) + b'"}', headers={**login("rm1"), "Content-Type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "query,status,field",
    [
        ('filter={"field":"nope","op":"eq","value":1}', 400, "nope"),
        ('filter={"field":"aum","op":"regex","value":"1"}', 400, "aum"),
        ('filter={"field":"aum","op":"gt","value":"abc"}', 400, "aum"),
        ("filter=not-json", 400, "filter"),
        ("sort=name;drop table e_customer", 400, "name;drop table e_customer"),
        ("sort=-nope", 400, "nope"),
        ("limit=0", 400, "limit"),
        ("limit=abc", 400, "limit"),
        ("fields=name,secret", 400, "secret"),
        ("cursor=forged.cursor", 400, None),
    ],
)
def test_bad_list_parameters_get_a_400_naming_the_problem(client: Any, login: Any, query: str, status: int, field: str | None) -> None:
    resp = client.get(f"/api/v1/records/customer?{query}", headers=login("rm1"))
    assert resp.status_code == status
    if field is not None:
        assert field in [d["field"] for d in resp.json["error"].get("details", [])]


def test_sql_in_filter_values_matches_nothing_and_breaks_nothing(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    client.post("/api/v1/records/customer", json={"name": "周九"}, headers=rm1)
    hostile = "' OR 1=1 --"
    resp = client.post("/api/v1/records/customer/query", json={"filter": {"field": "name", "op": "eq", "value": hostile}}, headers=rm1)
    assert resp.status_code == 200 and resp.json["items"] == []
    like = client.post("/api/v1/records/customer/query", json={"filter": {"field": "occupation", "op": "contains", "value": "%"}}, headers=rm1)
    assert like.status_code == 200 and like.json["items"] == []
    assert len(client.get("/api/v1/records/customer", headers=rm1).json["items"]) == 1


@pytest.mark.parametrize("path,status", [("/api/v1/records/nope", 404), ("/api/v1/records/customer/999999", 404), ("/api/v1/records/customer/abc", 404), ("/api/v1/records/customer/99999999999999999999999", 404), ("/api/v1/nothing-here", 404)])
def test_unknown_things_are_404_in_json(client: Any, login: Any, path: str, status: int) -> None:
    resp = client.get(path, headers=login("rm1"))
    assert resp.status_code == status
    assert resp.json["error"]["code"] == "not_found"


def test_keyset_pages_walk_every_record_once(client: Any, login: Any) -> None:
    admin = login("admin")
    for i in range(23):
        client.post("/api/v1/records/product", json={"code": f"P{i:03d}", "name": f"产品{i % 4}", "type": "fund", "term_days": i % 3}, headers=admin)
    seen: list[int] = []
    cursor = None
    while True:
        url = "/api/v1/records/product?limit=5&sort=-term_days,name" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=admin).json
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    everything = client.get("/api/v1/records/product?limit=100&sort=-term_days,name", headers=admin).json["items"]
    assert seen == [p["id"] for p in everything] and len(set(seen)) == 23


def test_decimal_money_is_exact_to_its_declared_precision(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    created = client.post("/api/v1/records/customer", json={"name": "吴十", "aum": "1234567890123456.78"}, headers=rm1)
    assert created.status_code == 201
    assert client.get(f"/api/v1/records/customer/{created.json['id']}", headers=rm1).json["aum"] == "1234567890123456.78"
    total = client.get('/api/v1/records/customer?filter={"field":"aum","op":"eq","value":"1234567890123456.78"}', headers=rm1).json
    assert len(total["items"]) == 1
    too_big = client.post("/api/v1/records/customer", json={"name": "吴十", "aum": "123456789012345678.91"}, headers=rm1)
    assert too_big.status_code == 422 and too_big.json["error"]["details"][0]["field"] == "aum"


def test_full_width_digits_are_normalised(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    created = client.post("/api/v1/records/customer", json={"name": "郑一", "mobile": "１３８００１３８０００", "id_number": "11010519491231002x"}, headers=rm1)
    assert created.status_code == 201, created.json
    assert created.json["mobile"] == "138****8000"
    assert created.json["id_number"] == "110***********002X"


def test_logout_ends_the_token_and_a_new_login_works_at_once(client: Any, login: Any) -> None:
    from tests.conftest import TEST_PASSWORD

    rm1 = login("rm1")
    assert client.post("/api/v1/security/logout", headers=rm1).status_code == 200
    assert client.get("/api/v1/records/customer", headers=rm1).status_code == 401
    fresh = client.post("/api/v1/security/login", json={"username": "rm1", "password": TEST_PASSWORD, "provider": "db"})
    again = {"Authorization": f"Bearer {fresh.json['access_token']}"}
    assert client.get("/api/v1/records/customer", headers=again).status_code == 200


def test_editing_in_the_page_form_keeps_masked_values(client: Any, login: Any) -> None:
    import re

    from tests.conftest import TEST_PASSWORD

    rm1 = login("rm1")
    cid = client.post("/api/v1/records/customer", json={"name": "表单", "mobile": "13800138000", "occupation": "教师"}, headers=rm1).json["id"]
    page = client.get("/login/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    client.post("/login/", data={"username": "rm1", "password": TEST_PASSWORD, "csrf_token": token})
    form = client.get(f"/e/customer/{cid}/edit").get_data(as_text=True)
    assert 'value="138****8000"' not in form and "138****8000" in form  # shown as a hint only
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    resp = client.post(f"/e/customer/{cid}/edit", data={"csrf_token": csrf, "version": "1", "name": "表单", "mobile": "", "occupation": "医生"})
    assert resp.status_code == 302
    system = __import__("engine").Principal.system("test")
    stored = client.application.extensions["fincrm"].records.get(system, "customer", cid)
    assert stored["mobile"] == "13800138000" and stored["occupation"] == "医生"
