"""The public records contract (DESIGN §3) and API authentication, through the Flask test client."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

import jwt
import pytest
from flask_jwt_extended import create_access_token

from tests.api_helpers import app, assert_error, client, count, error_fields, login, second_worker, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

CUSTOMERS = "/api/v1/records/customer"


def _login_body(username: str, password: str = TEST_PASSWORD) -> dict[str, Any]:
    return {"username": username, "password": password, "provider": "db", "refresh": True}


def _new_customer(client: Any, headers: dict[str, str], **values: Any) -> dict[str, Any]:
    resp = client.post(CUSTOMERS, json={"name": "张三", **values}, headers=headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json  # type: ignore[no-any-return]


def _filter_url(flt: Any, **params: Any) -> str:
    query = {"filter": json.dumps(flt, ensure_ascii=False), **params}
    return f"{CUSTOMERS}?{urllib.parse.urlencode(query)}"


# ------------------------------------------------------------------ authentication


def test_login_gives_access_and_refresh_tokens_and_the_access_token_opens_the_api(client: Any) -> None:
    resp = client.post("/api/v1/security/login", json=_login_body("rm1"))
    assert resp.status_code == 200
    assert set(resp.json) >= {"access_token", "refresh_token"}
    claims = jwt.decode(resp.json["access_token"], options={"verify_signature": False})
    assert claims["type"] == "access" and claims["exp"] > dt.datetime.now().timestamp()
    listed = client.get(CUSTOMERS, headers={"Authorization": f"Bearer {resp.json['access_token']}"})
    assert listed.status_code == 200 and set(listed.json) == {"items", "next_cursor"}


@pytest.mark.parametrize("username,password", [("rm1", "Wrong-password-1"), ("nobody", TEST_PASSWORD)])
def test_a_failed_login_is_a_401_in_the_documented_error_format(client: Any, username: str, password: str) -> None:
    resp = client.post("/api/v1/security/login", json=_login_body(username, password))
    assert "access_token" not in resp.get_data(as_text=True)
    assert_error(resp, 401, "unauthenticated")


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("get", CUSTOMERS, None),
        ("post", CUSTOMERS, {"name": "无令牌"}),
        ("get", f"{CUSTOMERS}/<id>", None),
        ("patch", f"{CUSTOMERS}/<id>", {"name": "无令牌", "version": 1}),
        ("delete", f"{CUSTOMERS}/<id>", None),
        ("post", f"{CUSTOMERS}/query", {"filter": {}}),
        ("get", f"{CUSTOMERS}/<id>/related", None),
        ("post", f"{CUSTOMERS}/<id>/tags", {"tag": "vip"}),
        ("get", "/api/v1/meta/entities", None),
        ("get", "/api/v1/meta/entities/customer/schema", None),
        ("post", "/api/v1/meta/entities/customer/fields", {"name": "no_token", "type": "string", "label": {"zh": "x", "en": "x"}}),
    ],
)
def test_no_token_is_a_401_in_the_error_format_and_writes_nothing(client: Any, login: Any, method: str, path: str, body: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1, name="已有客户")["id"]
    resp = getattr(client, method)(path.replace("<id>", str(cid)), json=body)
    assert_error(resp, 401, "unauthenticated")
    after = client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json
    assert after["name"] == "已有客户" and after["version"] == 1
    assert count(client, login("admin")) == 1
    assert client.get(f"{CUSTOMERS}/{cid}/tags", headers=rm1).json == {"tags": []}
    assert "no_token" not in [f["name"] for f in client.get("/api/v1/meta/entities/customer", headers=login("admin")).json["fields"]]


def _bad_token(app: Any, client: Any, kind: str) -> str:
    good = client.post("/api/v1/security/login", json=_login_body("rm1")).json
    access, refresh = good["access_token"], good["refresh_token"]
    claims = jwt.decode(access, options={"verify_signature": False})
    if kind == "forged":  # right shape, signed with another key, claiming to be the admin
        return "Bearer " + jwt.encode({**claims, "sub": "1"}, "not-the-server-secret-0123456789abcdef", algorithm="HS256")
    if kind == "alg_none":
        return "Bearer " + jwt.encode({**claims, "sub": "1"}, None, algorithm="none")  # type: ignore[arg-type]
    if kind == "tampered":  # payload changed, original signature kept
        header, _, sig = access.split(".")
        payload = jwt.utils.base64url_encode(json.dumps({**claims, "sub": "1"}).encode()).decode()
        return f"Bearer {header}.{payload}.{sig}"
    if kind == "garbage":
        return "Bearer not.a.token"
    if kind == "refresh":
        return f"Bearer {refresh}"
    if kind == "expired":
        with app.app_context():
            return "Bearer " + create_access_token(identity=claims["sub"], expires_delta=dt.timedelta(seconds=-1))
    if kind == "basic":
        return "Basic cm0xOkZpbmNybS10ZXN0LXB3LTE="  # rm1 with the right password, wrong scheme
    if kind == "empty_bearer":
        return "Bearer "
    if kind == "token_only":
        return access  # no scheme at all
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["forged", "alg_none", "tampered", "garbage", "refresh", "expired", "basic", "empty_bearer", "token_only"])
def test_bad_credentials_are_refused_with_a_401(app: Any, client: Any, login: Any, kind: str) -> None:
    _new_customer(client, login("rm1"), name="rm1的客户")
    auth = _bad_token(app, client, kind)
    resp = client.get(CUSTOMERS, headers={"Authorization": auth})
    assert_error(resp, 401, "unauthenticated")
    assert "rm1的客户" not in resp.get_data(as_text=True)
    write = client.post(CUSTOMERS, json={"name": "冒充"}, headers={"Authorization": auth})
    assert write.status_code == 401
    assert count(client, login("admin")) == 1


def test_a_disabled_user_is_locked_out_on_the_next_request(app: Any, client: Any, login: Any) -> None:
    sm = app.appbuilder.sm
    with app.app_context():
        sm.add_user("rm_leaver", "rm", "Leaver", "leaver@test.local", [sm.find_role("relationship_manager")], password=TEST_PASSWORD)
    token = client.post("/api/v1/security/login", json=_login_body("rm_leaver")).json["access_token"]
    leaver = {"Authorization": f"Bearer {token}"}
    with second_worker(app) as other_app:
        other = other_app.test_client()
        assert client.get(CUSTOMERS, headers=leaver).status_code == 200  # principal now cached in both processes
        assert other.get(CUSTOMERS, headers=leaver).status_code == 200
        with app.app_context():
            user = sm.find_user(username="rm_leaver")
            user.active = False
            sm.session.commit()
        assert_error(client.get(CUSTOMERS, headers=leaver), 401, "unauthenticated")
        assert_error(other.get(CUSTOMERS, headers=leaver), 401, "unauthenticated")
    assert client.post(CUSTOMERS, json={"name": "停用后"}, headers=leaver).status_code == 401
    assert client.post("/api/v1/security/login", json=_login_body("rm_leaver")).status_code == 401
    with app.app_context():
        user = sm.find_user(username="rm_leaver")
        user.active = True
        sm.session.commit()
    assert client.get(CUSTOMERS, headers=leaver).status_code == 401  # the old token stays dead
    fresh = client.post("/api/v1/security/login", json=_login_body("rm_leaver")).json["access_token"]
    assert client.get(CUSTOMERS, headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    assert count(client, login("admin")) == 0
    with app.app_context():
        user = sm.find_user(username="rm_leaver")
        user.active = False
        sm.session.commit()


# ------------------------------------------------------------------ create / read


def test_create_answers_201_with_id_version_location_and_etag(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    resp = client.post(CUSTOMERS, json={"name": "李雷", "aum": "1000.5", "occupation": "教师", "birth_date": "1985-06-01"}, headers=rm1)
    assert resp.status_code == 201
    created = resp.json
    assert isinstance(created["id"], int) and created["version"] == 1
    assert created["name"] == "李雷" and created["aum"] == "1000.50" and created["occupation"] == "教师"
    assert created["lifecycle_stage"] == "new"  # the field's default
    assert created["created_at"].endswith("Z") and created["created_at"] == created["updated_at"]
    assert resp.headers["ETag"] == '"1"'
    location = resp.headers["Location"]
    assert urllib.parse.urlsplit(location).path == f"{CUSTOMERS}/{created['id']}"
    fetched = client.get(location, headers=rm1)
    assert fetched.status_code == 200 and fetched.json == created and fetched.headers["ETag"] == '"1"'


def test_get_one_and_list_return_the_same_record(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    created = _new_customer(client, rm1, name="韩梅梅", mobile="13900139000", aum="88")
    one = client.get(f"{CUSTOMERS}/{created['id']}", headers=rm1)
    assert one.status_code == 200 and one.mimetype == "application/json"
    assert one.json["mobile"] == "139****9000"
    page = client.get(CUSTOMERS, headers=rm1).json
    assert set(page) == {"items", "next_cursor"} and page["next_cursor"] is None
    assert page["items"] == [one.json]


def _seed(client: Any, headers: dict[str, str]) -> dict[str, int]:
    # ASCII names: sort expectations must not depend on the database's collation of Chinese
    rows = [
        ("amy", "500", "教师", "1980-01-01", "male", "balanced"),
        ("bob", "1500000", "医生", "1975-05-05", "female", "growth"),
        ("cat", "1500000", None, "1990-09-09", "female", "conservative"),
        ("dan", "20", "工程师", None, None, None),
        ("eve", "999999.99", "教师", "2000-02-29", "male", "growth"),
    ]
    ids = {}
    for name, aum, occ, born, gender, risk in rows:
        ids[name] = _new_customer(client, headers, name=name, aum=aum, occupation=occ, birth_date=born, gender=gender, risk_preference=risk)["id"]
    return ids


FILTERS = [
    ({"field": "aum", "op": "gte", "value": "1000000"}, {"bob", "cat"}),
    ({"field": "aum", "op": "lt", "value": 100}, {"dan"}),
    ({"field": "aum", "op": "between", "value": ["500", "999999.99"]}, {"amy", "eve"}),
    ({"field": "occupation", "op": "eq", "value": "教师"}, {"amy", "eve"}),
    ({"field": "occupation", "op": "ne", "value": "教师"}, {"bob", "cat", "dan"}),
    ({"field": "occupation", "op": "in", "value": ["医生", "工程师"]}, {"bob", "dan"}),
    ({"field": "occupation", "op": "nin", "value": ["教师"]}, {"bob", "cat", "dan"}),
    ({"field": "occupation", "op": "contains", "value": "程"}, {"dan"}),
    ({"field": "occupation", "op": "startswith", "value": "医"}, {"bob"}),
    ({"field": "occupation", "op": "is_null", "value": True}, {"cat"}),
    ({"field": "name", "op": "contains", "value": "A"}, {"amy", "dan", "cat"}),  # contains ignores case
    ({"field": "gender", "op": "eq", "value": "female"}, {"bob", "cat"}),
    ({"field": "risk_preference", "op": "is_null", "value": False}, {"amy", "bob", "cat", "eve"}),
    ({"or": [{"field": "name", "op": "eq", "value": "amy"}, {"field": "aum", "op": "lt", "value": "100"}]}, {"amy", "dan"}),
    ({"and": [{"field": "gender", "op": "eq", "value": "male"}, {"not": {"field": "occupation", "op": "eq", "value": "教师"}}]}, set()),
    ({"not": {"field": "name", "op": "in", "value": ["amy", "bob"]}}, {"cat", "dan", "eve"}),
    ({}, {"amy", "bob", "cat", "dan", "eve"}),
]


@pytest.mark.parametrize("flt,expected", FILTERS, ids=[json.dumps(f, ensure_ascii=False)[:60] for f, _ in FILTERS])
def test_filters_in_the_query_string_and_in_the_query_body_agree(client: Any, login: Any, flt: Any, expected: set[str]) -> None:
    ops1 = login("ops1")  # operations read every customer
    _seed(client, login("rm1"))
    via_get = client.get(_filter_url(flt, limit=50), headers=ops1)
    via_post = client.post(f"{CUSTOMERS}/query", json={"filter": flt, "limit": 50}, headers=ops1)
    assert via_get.status_code == 200 and via_post.status_code == 200, (via_get.json, via_post.json)
    assert {c["name"] for c in via_get.json["items"]} == expected
    assert via_post.json == via_get.json


@pytest.mark.parametrize(
    "negated,plain",
    [
        ({"not": {"field": "gender", "op": "eq", "value": "male"}}, {"field": "gender", "op": "ne", "value": "male"}),
        ({"not": {"field": "occupation", "op": "in", "value": ["教师"]}}, {"field": "occupation", "op": "nin", "value": ["教师"]}),
        ({"not": {"field": "occupation", "op": "contains", "value": "医"}}, {"field": "occupation", "op": "ne", "value": "医生"}),
    ],
)
def test_not_matches_the_same_records_as_the_negative_operators(client: Any, login: Any, negated: Any, plain: Any) -> None:
    """``ne``/``nin`` include records with no value; ``not`` must agree, or a "not male" list
    silently drops every customer whose gender was never recorded."""
    rm1 = login("rm1")
    _seed(client, rm1)
    by_not = {c["name"] for c in client.post(f"{CUSTOMERS}/query", json={"filter": negated}, headers=rm1).json["items"]}
    by_op = {c["name"] for c in client.post(f"{CUSTOMERS}/query", json={"filter": plain}, headers=rm1).json["items"]}
    assert by_op and by_not == by_op


@pytest.mark.parametrize(
    "sort,expected",
    [
        ("-aum,name", ["bob", "cat", "eve", "amy", "dan"]),
        ("aum", ["dan", "amy", "eve", "bob", "cat"]),
        ("gender,name", ["bob", "cat", "amy", "eve", "dan"]),  # empty values last ...
        ("-gender,-name", ["eve", "amy", "cat", "bob", "dan"]),  # ... in both directions
        ("+name", ["amy", "bob", "cat", "dan", "eve"]),
        ("", ["bob", "cat", "eve", "amy", "dan"]),  # the entity's default sort: -aum, then id
    ],
)
def test_sort_orders_by_one_or_several_keys(client: Any, login: Any, sort: str, expected: list[str]) -> None:
    rm1 = login("rm1")
    _seed(client, rm1)
    names = [c["name"] for c in client.get(f"{CUSTOMERS}?sort={urllib.parse.quote(sort)}", headers=rm1).json["items"]]
    assert names == expected
    by_body = client.post(f"{CUSTOMERS}/query", json={"sort": sort.split(",") if sort else None}, headers=rm1).json["items"]
    assert [c["name"] for c in by_body] == expected


def test_fields_selects_the_returned_fields(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1, name="选字段", aum="7", occupation="律师")["id"]
    items = client.get(f"{CUSTOMERS}?fields=name,aum", headers=rm1).json["items"]
    assert items == [{"id": cid, "version": 1, "created_at": items[0]["created_at"], "updated_at": items[0]["updated_at"], "name": "选字段", "aum": "7.00"}]
    one = client.get(f"{CUSTOMERS}/{cid}?fields=occupation", headers=rm1).json
    assert set(one) == {"id", "version", "created_at", "updated_at", "occupation"}
    body = client.post(f"{CUSTOMERS}/query", json={"fields": ["name"]}, headers=rm1).json["items"][0]
    assert set(body) == {"id", "version", "created_at", "updated_at", "name"}
    assert_error(client.get(f"{CUSTOMERS}?fields=name,nope", headers=rm1), 400, field="nope")


@pytest.mark.parametrize("limit,status", [("1", 200), ("500", 200), ("0", 400), ("501", 400), ("-5", 400), ("ten", 400), ("2.5", 400)])
def test_limit_bounds(client: Any, login: Any, limit: str, status: int) -> None:
    rm1 = login("rm1")
    for i in range(3):
        _new_customer(client, rm1, name=f"限{i}")
    resp = client.get(f"{CUSTOMERS}?limit={limit}", headers=rm1)
    if status == 200:
        assert resp.status_code == 200 and len(resp.json["items"]) == min(int(limit), 3)
        assert (resp.json["next_cursor"] is not None) == (int(limit) < 3)
    else:
        assert_error(resp, 400, field="limit")
    assert client.post(f"{CUSTOMERS}/query", json={"limit": int(limit) if limit.lstrip("-").isdigit() else limit}, headers=rm1).status_code == status


@pytest.mark.parametrize("sort", ["", "-aum,name", "occupation,-aum", "gender,opened_on", "-opened_on,-gender", "-created_at", "name"])
def test_keyset_pages_walk_every_record_exactly_once(client: Any, login: Any, sort: str) -> None:
    rm1 = login("rm1")
    occupations = ["教师", None, "医生", "教师", None]
    for i in range(17):
        _new_customer(
            client, rm1, name=f"客户{i % 6:02d}", aum=str((i * 37) % 5 * 1000), occupation=occupations[i % 5],
            gender=("male", "female", None)[i % 3], opened_on=None if i % 4 == 0 else f"20{10 + i % 7}-01-0{1 + i % 3}",
        )
    whole = client.get(f"{CUSTOMERS}?limit=500&sort={sort}", headers=rm1).json["items"]
    assert len(whole) == 17
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        url = f"{CUSTOMERS}?limit=4&sort={sort}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = client.get(url, headers=rm1)
        assert page.status_code == 200, page.json
        seen += [c["id"] for c in page.json["items"]]
        cursor = page.json["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == 5
    assert seen == [c["id"] for c in whole]
    assert len(set(seen)) == 17


def test_query_body_pages_with_its_cursor_and_a_cursor_is_tied_to_its_sort(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    for i in range(5):
        _new_customer(client, rm1, name=f"页{i}", aum=str(i))
    first = client.post(f"{CUSTOMERS}/query", json={"sort": "aum", "limit": 2}, headers=rm1).json
    second = client.post(f"{CUSTOMERS}/query", json={"sort": "aum", "limit": 2, "cursor": first["next_cursor"]}, headers=rm1).json
    assert [c["name"] for c in first["items"] + second["items"]] == ["页0", "页1", "页2", "页3"]
    other_sort = client.get(f"{CUSTOMERS}?sort=-aum&cursor={urllib.parse.quote(first['next_cursor'])}", headers=rm1)
    assert_error(other_sort, 400, "invalid_cursor")
    body, sig = first["next_cursor"].split(".")
    assert_error(client.get(f"{CUSTOMERS}?sort=aum&cursor={body}.{sig[::-1]}", headers=rm1), 400, "invalid_cursor")


def test_count_is_given_on_request_and_capped(client: Any, login: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rm1 = login("rm1")
    for i in range(5):
        _new_customer(client, rm1, name=f"计{i}", aum=str(i))
    plain = client.get(f"{CUSTOMERS}?limit=2", headers=rm1).json
    assert "count" not in plain  # no count(*) on every page
    counted = client.get(f"{CUSTOMERS}?limit=2&count=1", headers=rm1).json
    assert counted["count"] == 5 and counted["count_capped"] is False and len(counted["items"]) == 2
    filtered = client.post(f"{CUSTOMERS}/query", json={"filter": {"field": "aum", "op": "gte", "value": 3}, "count": True}, headers=rm1).json
    assert filtered["count"] == 2
    monkeypatch.setattr("engine.services.records.COUNT_CAP", 3)
    capped = client.get(f"{CUSTOMERS}?limit=2&count=1", headers=rm1).json
    assert capped["count"] == 3 and capped["count_capped"] is True


# ------------------------------------------------------------------ update / delete


def test_patch_needs_a_version(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1)["id"]
    resp = client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "会计"}, headers=rm1)
    assert_error(resp, 400, field="version")
    bad = client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "会计"}, headers={**rm1, "If-Match": "latest"})
    assert_error(bad, 400, field="version")
    after = client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json
    assert after["version"] == 1 and after["occupation"] is None


@pytest.mark.parametrize("how", ['If-Match: "1"', "If-Match: 1", 'If-Match: W/"1"', "body"])
def test_patch_with_the_current_version_updates_and_moves_the_etag(client: Any, login: Any, how: str) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1, aum="10")["id"]
    headers, body = dict(rm1), {"occupation": "会计", "aum": "20.5"}
    if how == "body":
        body["version"] = 1
    else:
        headers["If-Match"] = how.split(": ", 1)[1]
    resp = client.patch(f"{CUSTOMERS}/{cid}", json=body, headers=headers)
    assert resp.status_code == 200, resp.json
    assert resp.json["version"] == 2 and resp.headers["ETag"] == '"2"'
    assert resp.json["occupation"] == "会计" and resp.json["aum"] == "20.50" and resp.json["name"] == "张三"
    assert resp.json["updated_at"] >= resp.json["created_at"]
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json == resp.json


def test_a_stale_version_is_a_409_and_changes_nothing(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1)["id"]
    first = client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "会计"}, headers={**rm1, "If-Match": '"1"'})
    assert first.status_code == 200
    stale = client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "律师"}, headers={**rm1, "If-Match": '"1"'})
    assert_error(stale, 409, "version_conflict")
    future = client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "律师", "version": 7}, headers=rm1)
    assert_error(future, 409, "version_conflict")
    now = client.get(f"{CUSTOMERS}/{cid}", headers=rm1).json
    assert now["occupation"] == "会计" and now["version"] == 2


@pytest.mark.parametrize("entity", ["customer", "holding"])
def test_delete_answers_204_and_the_record_is_gone(client: Any, login: Any, entity: str) -> None:
    admin = login("admin")
    cid = _new_customer(client, admin, name="将删除")["id"]
    rid = cid
    if entity == "holding":
        pid = client.post("/api/v1/records/product", json={"code": "P1", "name": "产品", "type": "fund"}, headers=admin).json["id"]
        rid = client.post("/api/v1/records/holding", json={"customer": cid, "product": pid, "amount": "100"}, headers=admin).json["id"]
    url = f"/api/v1/records/{entity}/{rid}"
    resp = client.delete(url, headers=admin)
    assert resp.status_code == 204 and resp.get_data() == b""
    assert_error(client.get(url, headers=admin), 404, "not_found")
    assert client.get(f"/api/v1/records/{entity}", headers=admin).json["items"] == []
    assert client.delete(url, headers=admin).status_code == 404
    assert client.patch(url, json={"version": 1}, headers=admin).status_code == 404


def test_delete_with_a_stale_if_match_is_refused(client: Any, login: Any) -> None:
    admin = login("admin")
    cid = _new_customer(client, admin)["id"]
    client.patch(f"{CUSTOMERS}/{cid}", json={"occupation": "会计", "version": 1}, headers=admin)
    assert_error(client.delete(f"{CUSTOMERS}/{cid}", headers={**admin, "If-Match": '"1"'}), 409, "version_conflict")
    assert client.get(f"{CUSTOMERS}/{cid}", headers=admin).status_code == 200


def test_relationship_manager_cannot_delete(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1)["id"]
    assert_error(client.delete(f"{CUSTOMERS}/{cid}", headers=rm1), 403, "forbidden")
    assert client.get(f"{CUSTOMERS}/{cid}", headers=rm1).status_code == 200


# ------------------------------------------------------------------ customer-360


def test_related_returns_the_customer_360(client: Any, login: Any) -> None:
    admin, rm1, rm2 = login("admin"), login("rm1"), login("rm2")
    product = client.post("/api/v1/records/product", json={"code": "W01", "name": "稳盈理财", "type": "wealth"}, headers=admin).json["id"]
    mine = _new_customer(client, rm1, name="王芳", aum="300000")["id"]
    theirs = _new_customer(client, rm2, name="别人的客户")["id"]
    made: dict[str, list[int]] = {"holdings": [], "transactions": [], "interactions": []}
    for cid, headers in ((mine, rm1), (theirs, rm2)):
        for amount in ("100000", "200000"):
            r = client.post("/api/v1/records/holding", json={"customer": cid, "product": product, "amount": amount}, headers=headers)
            assert r.status_code == 201, r.json
            if cid == mine:
                made["holdings"].append(r.json["id"])
        r = client.post(
            "/api/v1/records/transaction",
            json={"customer": cid, "product": product, "amount": "100000", "direction": "in", "occurred_at": "2026-01-05T09:30:00+08:00"},
            headers=headers,
        )
        assert r.status_code == 201, r.json
        if cid == mine:
            made["transactions"].append(r.json["id"])
        r = client.post("/api/v1/records/interaction", json={"customer": cid, "channel": "visit", "occurred_at": "2026-01-06T15:00:00", "summary": "面谈"}, headers=headers)
        assert r.status_code == 201, r.json
        if cid == mine:
            made["interactions"].append(r.json["id"])
    resp = client.get(f"{CUSTOMERS}/{mine}/related", headers=rm1)
    assert resp.status_code == 200
    data = resp.json
    assert data["record"]["id"] == mine and data["record"]["name"] == "王芳"
    assert {"holdings", "transactions", "interactions", "opportunities", "tickets", "tasks"} <= set(data["relations"])
    for name, ids in made.items():
        block = data["relations"][name]
        assert sorted(i["id"] for i in block["items"]) == sorted(ids), name
        assert all(i["customer"] == mine for i in block["items"])
        assert block["more"] is False and block["label"]["zh"]
    assert data["relations"]["holdings"]["entity"] == "holding"
    assert data["relations"]["transactions"]["items"][0]["occurred_at"] == "2026-01-05T01:30:00Z"
    assert data["relations"]["opportunities"]["items"] == []
    limited = client.get(f"{CUSTOMERS}/{mine}/related?limit=1", headers=rm1).json["relations"]["holdings"]
    assert len(limited["items"]) == 1 and limited["more"] is True
    assert_error(client.get(f"{CUSTOMERS}/{mine}/related?limit=0", headers=rm1), 400, field="limit")
    assert_error(client.get(f"{CUSTOMERS}/{theirs}/related", headers=rm1), 404, "not_found")


# ------------------------------------------------------------------ tags


def test_tags_add_list_remove_and_filter(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    a = _new_customer(client, rm1, name="高净值")["id"]
    b = _new_customer(client, rm1, name="普通")["id"]
    added = client.post(f"{CUSTOMERS}/{a}/tags", json={"tag": "vip"}, headers=rm1)
    assert added.status_code == 201 and added.json == {"tags": ["vip"]}
    assert client.post(f"{CUSTOMERS}/{a}/tags", json={"tag": "  vip "}, headers=rm1).json == {"tags": ["vip"]}  # idempotent, trimmed
    assert client.post(f"{CUSTOMERS}/{a}/tags", json={"tag": "养老客群"}, headers=rm1).json == {"tags": ["vip", "养老客群"]}
    assert client.post(f"{CUSTOMERS}/{b}/tags", json={"tag": "养老客群"}, headers=rm1).status_code == 201
    assert client.get(f"{CUSTOMERS}/{a}/tags", headers=rm1).json == {"tags": ["vip", "养老客群"]}
    has_vip = client.get(_filter_url({"field": "tags", "op": "has", "value": "vip"}), headers=rm1).json["items"]
    assert [c["id"] for c in has_vip] == [a]
    both = client.post(f"{CUSTOMERS}/query", json={"filter": {"field": "tags", "op": "has", "value": "养老客群"}}, headers=rm1).json["items"]
    assert {c["id"] for c in both} == {a, b}
    removed = client.delete(f"{CUSTOMERS}/{a}/tags/vip", headers=rm1)
    assert removed.status_code == 200 and removed.json == {"tags": ["养老客群"]}
    assert client.get(_filter_url({"field": "tags", "op": "has", "value": "vip"}), headers=rm1).json["items"] == []
    assert_error(client.delete(f"{CUSTOMERS}/{a}/tags/vip", headers=rm1), 404, "not_found")


@pytest.mark.parametrize("tag", ["", "   ", "x" * 65, 5, None, ["vip"]])
def test_invalid_tags_are_refused(client: Any, login: Any, tag: Any) -> None:
    rm1 = login("rm1")
    cid = _new_customer(client, rm1)["id"]
    assert_error(client.post(f"{CUSTOMERS}/{cid}/tags", json={"tag": tag}, headers=rm1), 422, field="tag")
    assert client.get(f"{CUSTOMERS}/{cid}/tags", headers=rm1).json == {"tags": []}


def test_tags_on_someone_elses_customer_are_404(client: Any, login: Any) -> None:
    theirs = _new_customer(client, login("rm2"))["id"]
    rm1 = login("rm1")
    assert client.post(f"{CUSTOMERS}/{theirs}/tags", json={"tag": "vip"}, headers=rm1).status_code == 404
    assert client.get(f"{CUSTOMERS}/{theirs}/tags", headers=login("rm2")).json == {"tags": []}


# ------------------------------------------------------------------ quick search


def test_q_searches_the_search_fields(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    ids = {name: _new_customer(client, rm1, name=name)["id"] for name in ("欧阳娜娜", "欧阳修", "张伟")}
    found = client.get(f"{CUSTOMERS}?q={urllib.parse.quote('欧阳')}", headers=rm1).json["items"]
    assert {c["id"] for c in found} == {ids["欧阳娜娜"], ids["欧阳修"]}
    exact = client.post(f"{CUSTOMERS}/query", json={"q": "张伟"}, headers=rm1).json["items"]
    assert [c["id"] for c in exact] == [ids["张伟"]]
    assert client.get(f"{CUSTOMERS}?q=%25", headers=rm1).json["items"] == []  # a wildcard is just a character
    assert client.get(f"{CUSTOMERS}?q={urllib.parse.quote('李')}", headers=rm1).json["items"] == []
    assert_error(client.get(f"{CUSTOMERS}?q={'长' * 101}", headers=rm1), 400, field="q")
    combined = client.get(_filter_url({"field": "name", "op": "ne", "value": "欧阳修"}, q="欧阳"), headers=rm1).json["items"]
    assert [c["id"] for c in combined] == [ids["欧阳娜娜"]]


def test_error_details_name_every_bad_field_at_once(client: Any, login: Any) -> None:
    rm1 = login("rm1")
    resp = client.post(CUSTOMERS, json={"name": "", "mobile": "123", "email": "bad", "gender": "x", "aum": "-1"}, headers=rm1)
    assert_error(resp, 422, "validation_error")
    assert set(error_fields(resp)) == {"name", "mobile", "email", "gender", "aum"}
    assert count(client, login("admin")) == 0
