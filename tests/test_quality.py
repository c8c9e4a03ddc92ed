"""Data quality (issue #6): cross-field rules on every write, the rules and completeness report,
duplicate groups within the reader's scope, merges into a golden record and their exact undo."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update

from engine.errors import MetadataInvalid
from engine.fieldtypes import LOCAL_TZ
from engine.meta.registry import build_registry, load_core_documents
from engine.meta.spec import EntitySpec, FieldSpec, Label, MergeSpec
from engine.quality.duplicates import name_similarity
from engine.quality.merge import golden_values
from engine.quality.rules import violations
from engine.security.audit import audit_table
from engine.security.principal import Principal
from tests.api_helpers import assert_error, error_fields
from tests.conftest import TEST_PASSWORD

SYSTEM = Principal.system("test")
TODAY = dt.datetime.now(LOCAL_TZ).date()
LABEL = {"zh": "测试", "en": "Test"}


def years_ago(n: int, days: int = 0) -> dt.date:
    return TODAY - dt.timedelta(days=round(n * 365.25) + days)


class Crm:
    """The app, its services and a few helpers: API calls as a user, seeding as the system
    (bulk inserts skip the write-time rules, like data from before they existed)."""

    def __init__(self, app: Any, client: Any, login: Any) -> None:
        self.app, self.client, self.login = app, client, login
        self.svc = app.extensions["fincrm"]
        sm = app.appbuilder.sm
        with app.app_context():
            self.uid = {u: sm.find_user(username=u).id for u in ("admin", "rm1", "rm2", "ops1")}
            self.uid["sup1"] = sm.add_user("sup1", "sup1", "T", "sup1@t.local", [sm.find_role("supervisor")], password=TEST_PASSWORD).id
        self.products = {
            kind: self.post("admin", "product", code=f"P-{kind}", name=kind, type=kind)["id"] for kind in ("deposit", "loan", "insurance")
        }

    def post(self, user: str, entity: str, **values: Any) -> dict[str, Any]:
        resp = self.client.post(f"/api/v1/records/{entity}", json=values, headers=self.login(user))
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    def seed(self, entity: str, rows: list[dict[str, Any]]) -> list[int]:
        with self.app.app_context():
            return self.svc.records.bulk_insert(SYSTEM, entity, rows)  # type: ignore[no-any-return]

    def clear(self, entity: str, rid: int) -> dict[str, Any]:
        """A record as the system reads it: every value in clear."""
        return self.svc.records.get(SYSTEM, entity, rid)  # type: ignore[no-any-return]

    def ids(self, user: str, entity: str, flt: Any = None) -> list[int]:
        body: dict[str, Any] = {"limit": 500, "sort": "id"}
        if flt is not None:
            body["filter"] = flt
        resp = self.client.post(f"/api/v1/records/{entity}/query", json=body, headers=self.login(user))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return [r["id"] for r in resp.json["items"]]

    def by_id_number(self, value: str) -> list[int]:
        """Customers found by an ID number (through its blind index, as the system searches)."""
        page = self.svc.records.list(SYSTEM, "customer", filter={"field": "id_number", "op": "eq", "value": value})
        return [r["id"] for r in page.items]

    def audit_rows(self) -> int:
        with self.svc.runtime.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_table)).scalar_one())

    def touch(self, entity: str, rid: int, when: dt.datetime) -> None:
        """Set a record's updated_at (the most_recent survivorship rule reads it)."""
        t = self.svc.runtime.cached_snapshot().tables[entity]
        with self.svc.runtime.begin() as conn:
            conn.execute(update(t).where(t.c.id == rid).values(updated_at=when))


@pytest.fixture
def crm(app: Any, client: Any, login: Any) -> Crm:
    return Crm(app, client, login)


def _rules(resp: Any) -> list[str]:
    return sorted({d["message"].rsplit("(rule ", 1)[-1].rstrip(")") for d in resp.json["error"]["details"]})


# ---------------------------------------------------------------------- rules on write


def test_a_write_that_breaks_a_rule_is_422_naming_field_and_rule_and_nothing_is_written(crm: Crm) -> None:
    admin = crm.login("admin")
    cid = crm.post("admin", "customer", name="持仓客户")["id"]
    holdings, audits = crm.ids("admin", "holding"), crm.audit_rows()
    bad = {"customer": cid, "product": crm.products["deposit"], "amount": "100", "start_date": "2025-06-01", "maturity_date": "2025-06-01"}
    resp = crm.client.post("/api/v1/records/holding", json=bad, headers=admin)
    assert_error(resp, 422, "validation_error", field="maturity_date")
    assert _rules(resp) == ["maturity_after_start"] and "maturity_after_start" in resp.json["error"]["message"]
    assert crm.ids("admin", "holding") == holdings and crm.audit_rows() == audits  # rolled back, audit entry included
    assert crm.post("admin", "holding", **{**bad, "maturity_date": "2025-06-02"})["maturity_date"] == "2025-06-02"
    assert crm.post("admin", "holding", **{**bad, "maturity_date": None})["maturity_date"] is None  # an empty side is not a violation

    cases = [
        ({"birth_date": years_ago(10).isoformat(), "occupation": "教师"}, "occupation", ["minor_occupation"]),
        ({"birth_date": years_ago(30).isoformat(), "occupation": "退休"}, "occupation", ["retired_age"]),
        ({"birth_date": (TODAY + dt.timedelta(days=3)).isoformat()}, "birth_date", ["birth_date_not_future"]),
        ({"birth_date": "1990-05-01", "opened_on": "1989-12-31"}, "opened_on", ["opened_after_birth"]),
    ]
    before = crm.ids("admin", "customer")
    for values, field, rules in cases:
        resp = crm.client.post("/api/v1/records/customer", json={"name": "规则", **values}, headers=admin)
        assert_error(resp, 422, "validation_error", field=field)
        assert _rules(resp) == rules
    assert crm.ids("admin", "customer") == before
    for ok in ({"birth_date": years_ago(10).isoformat(), "occupation": "学生"}, {"birth_date": years_ago(10).isoformat()}, {"occupation": "退休"}):
        crm.post("admin", "customer", name="合规", **ok)

    # a rule through a reference: a loan application is for a loan product
    loan = {"customer": cid, "amount": "1000", "purpose": "经营"}
    assert_error(crm.client.post("/api/v1/records/loan_application", json={**loan, "product": crm.products["deposit"]}, headers=admin), 422, field="product")
    crm.post("admin", "loan_application", **loan, product=crm.products["loan"])


def test_an_update_that_breaks_a_rule_is_422_and_the_record_keeps_its_values(crm: Crm) -> None:
    admin = crm.login("admin")
    kid = crm.post("admin", "customer", name="少年", birth_date=years_ago(12).isoformat(), occupation="学生")
    resp = crm.client.patch(f"/api/v1/records/customer/{kid['id']}", json={"occupation": "工程师", "version": 1}, headers=admin)
    assert_error(resp, 422, "validation_error", field="occupation")
    after = crm.clear("customer", kid["id"])
    assert after["occupation"] == "学生" and after["version"] == 1

    # data from before the rules (seeded as the system) can still be edited in other fields …
    cid = crm.post("admin", "customer", name="旧数据")["id"]
    (hid,) = crm.seed("holding", [{"customer": cid, "product": crm.products["deposit"], "amount": "5", "start_date": "2025-01-10", "maturity_date": "2025-01-01"}])
    ok = crm.client.patch(f"/api/v1/records/holding/{hid}", json={"amount": "6", "version": 1}, headers=admin)
    assert ok.status_code == 200 and ok.json["amount"] == "6.00"
    # … but a change to a field the rule reads must fix it
    still_bad = crm.client.patch(f"/api/v1/records/holding/{hid}", json={"maturity_date": "2025-01-05", "version": 2}, headers=admin)
    assert_error(still_bad, 422, field="maturity_date")
    fixed = crm.client.patch(f"/api/v1/records/holding/{hid}", json={"maturity_date": "2026-01-10", "version": 2}, headers=admin)
    assert fixed.status_code == 200 and fixed.json["version"] == 3


def test_violations_checks_a_batch_of_ids_in_one_call(crm: Crm) -> None:
    cid = crm.post("admin", "customer", name="批量")["id"]
    deposit = crm.products["deposit"]
    good, bad, empty = crm.seed(
        "holding",
        [
            {"customer": cid, "product": deposit, "amount": "1", "start_date": "2025-01-01", "maturity_date": "2025-02-01"},
            {"customer": cid, "product": deposit, "amount": "1", "start_date": "2025-01-01", "maturity_date": "2024-12-31"},
            {"customer": cid, "product": deposit, "amount": "1", "start_date": None, "maturity_date": "2024-12-31"},
        ],
    )
    snap = crm.svc.runtime.cached_snapshot()
    with crm.svc.runtime.engine.connect() as conn:
        found = violations(conn, snap, snap.registry.entity("holding"), snap.tables["holding"], [good, bad, empty])
    assert list(found) == [bad]
    assert {d["field"] for d in found[bad]} == {"maturity_date", "start_date"} and {d["rule"] for d in found[bad]} == {"maturity_after_start"}


# ---------------------------------------------------------------------- field comparisons in the filter DSL


def test_field_comparisons_in_filters_whatever_the_storage(crm: Crm) -> None:
    admin = crm.login("admin")
    for doc in (
        {"name": "review_on", "type": "date"},
        {"name": "target", "type": "decimal", "precision": 18, "scale": 4},
    ):
        resp = crm.client.post("/api/v1/meta/entities/holding/fields", json={"label": LABEL, **doc}, headers=admin)
        assert resp.status_code == 201, resp.get_data(as_text=True)
    cid = crm.post("admin", "customer", name="比较")["id"]
    deposit = crm.products["deposit"]
    a, b, c = crm.seed(
        "holding",
        [
            {"customer": cid, "product": deposit, "amount": "100.00", "start_date": "2025-01-01", "maturity_date": "2024-01-01", "review_on": "2025-03-01", "target": "100.0001"},
            {"customer": cid, "product": deposit, "amount": "100.00", "start_date": "2025-01-01", "maturity_date": "2026-01-01", "review_on": "2024-03-01", "target": "99.9999"},
            {"customer": cid, "product": deposit, "amount": "100.00", "start_date": None, "maturity_date": "2026-01-01", "target": "100"},
        ],
    )

    def match(flt: Any) -> set[int]:
        return set(crm.ids("admin", "holding", flt)) & {a, b, c}

    assert match({"field": "maturity_date", "op": "lt", "value": {"field": "start_date"}}) == {a}
    assert match({"field": "maturity_date", "op": "gte", "value": {"field": "start_date"}}) == {b}  # c: an empty side matches nothing
    assert match({"field": "maturity_date", "op": "ne", "value": {"field": "start_date"}}) == {a, b, c}  # ne: is distinct from
    assert match({"field": "review_on", "op": "gt", "value": {"field": "start_date"}}) == {a}  # JSON date vs column date
    assert match({"field": "target", "op": "gt", "value": {"field": "amount"}}) == {a}  # JSON decimal (4 places) vs column money
    assert match({"field": "target", "op": "eq", "value": {"field": "amount"}}) == {c}
    assert match({"not": {"field": "target", "op": "lte", "value": {"field": "amount"}}}) == {a}

    for flt, field in (
        ({"field": "amount", "op": "gt", "value": {"field": "start_date"}}, "amount"),  # decimal vs date
        ({"field": "maturity_date", "op": "gt", "value": {"field": "nope"}}, "nope"),  # unknown field
        ({"field": "maturity_date", "op": "contains", "value": {"field": "start_date"}}, "maturity_date"),
        ({"field": "maturity_date", "op": "gt", "value": {"field": "start_date", "x": 1}}, "maturity_date"),
        ({"field": "customer", "op": "eq", "value": {"field": "product"}}, "customer"),  # references to different entities
    ):
        resp = crm.client.post("/api/v1/records/holding/query", json={"filter": flt}, headers=admin)
        assert_error(resp, 400, "invalid_filter", field=field)
    # an encrypted field is never compared; a masked one is refused to a reader who cannot unmask
    enc = crm.client.post("/api/v1/records/customer/query", json={"filter": {"field": "id_number", "op": "eq", "value": {"field": "id_number"}}}, headers=admin)
    assert_error(enc, 400, "invalid_filter", field="id_number")
    masked = crm.client.post(
        "/api/v1/records/customer/query", json={"filter": {"field": "opened_on", "op": "gt", "value": {"field": "birth_date"}}}, headers=crm.login("rm1")
    )
    assert_error(masked, 400, "invalid_filter", field="birth_date")


# ---------------------------------------------------------------------- metadata


def _with(entity: str, **extra: Any) -> list[dict[str, Any]]:
    docs = copy.deepcopy(load_core_documents())
    for d in docs:
        if d["name"] == entity:
            d.update(extra)
    return docs


def _rule(check: Any, fields: list[str], **more: Any) -> dict[str, Any]:
    return {"name": "r", "label": LABEL, "message": LABEL, "fields": fields, "check": check, **more}


@pytest.mark.parametrize(
    "entity,extra,pointer",
    [
        ("holding", {"rules": [_rule({"field": "amount", "op": "gt", "value": {"field": "start_date"}}, ["amount"])]}, "/entity/holding/rules/0/check"),
        ("holding", {"rules": [_rule({"field": "amount", "op": "gt", "value": "1"}, ["nope"])]}, "/entity/holding/rules/0/fields/0"),
        ("holding", {"rules": [_rule({"field": "amount", "op": "gt", "value": "1"}, ["amount"], when={"field": "x", "op": "eq", "value": 1})]}, "/entity/holding/rules/0/when"),
        ("customer", {"rules": [_rule({"field": "id_number", "op": "eq", "value": "11010519491231002X"}, ["id_number"])]}, "/entity/customer/rules/0/check"),
        ("customer", {"rules": [_rule({}, ["name"]), _rule({}, ["name"])]}, "/entity/customer/rules/1/name"),
        ("customer", {"rules": [_rule({}, ["name"], extra=1)]}, "/entity/customer/rules/0"),
        ("customer", {"dedupe": {"keys": [{"name": "k", "label": LABEL, "fields": ["tags_x"]}]}}, "/entity/customer/dedupe/keys/0/fields/0"),
        ("customer", {"dedupe": {"fuzzy": [{"name": "f", "label": LABEL, "field": "aum", "same": ["birth_date"]}]}}, "/entity/customer/dedupe/fuzzy/0/field"),
        ("customer", {"merge": {"fields": {"name": "max"}}}, "/entity/customer/merge/fields/name"),
        ("customer", {"merge": {"fields": {"aum": "longest"}}}, "/entity/customer/merge/fields/aum"),
        ("customer", {"merge": {"default": "newest"}}, "/entity/customer/merge/default"),
    ],
)
def test_invalid_quality_metadata_is_refused_with_a_pointer(entity: str, extra: dict[str, Any], pointer: str) -> None:
    with pytest.raises(MetadataInvalid) as err:
        build_registry(_with(entity, **extra))
    assert pointer in [e["pointer"] for e in err.value.details], err.value.details


def test_archiving_a_field_a_rule_reads_is_refused_with_the_rule_named(crm: Crm) -> None:
    resp = crm.client.delete("/api/v1/meta/entities/holding/fields/start_date", headers=crm.login("admin"))
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert any(d.get("pointer", "").startswith("/entity/holding/rules/0/") for d in resp.json["error"]["details"]), resp.json
    assert "start_date" in [f["name"] for f in crm.client.get("/api/v1/meta/entities/holding", headers=crm.login("admin")).json["fields"] if not f.get("archived")]


def test_core_rules_dedupe_and_merge_are_frozen_into_the_spec() -> None:
    reg = build_registry(load_core_documents())
    customer = reg.entity("customer")
    assert {r.name for r in customer.rules} == {"minor_occupation", "retired_age", "birth_date_not_future", "opened_after_birth"}
    assert all(r.label.zh and r.label.en and r.message.zh and r.message.en for e in reg.entities.values() for r in e.rules)
    assert next(r for r in customer.rules if r.name == "opened_after_birth").depends == ("birth_date", "opened_on")
    assert customer.dedupe is not None and [k.fields for k in customer.dedupe.keys] == [("id_number",), ("mobile",)]
    assert customer.merge is not None and customer.merge.rule_for("aum") == "max" and customer.merge.rule_for("name") == "non_empty"
    assert [r.name for r in reg.entity("holding").rules] == ["maturity_after_start"]


# ---------------------------------------------------------------------- report and completeness


def _breaks(c: dict[str, Any]) -> set[str]:
    """The customer rules a record breaks, computed here without SQL."""
    born = dt.date.fromisoformat(c["birth_date"]) if c.get("birth_date") else None
    opened = dt.date.fromisoformat(c["opened_on"]) if c.get("opened_on") else None
    out = set()
    if born and born >= TODAY - dt.timedelta(days=5844) and born <= TODAY and c.get("occupation") not in ("学生", None):
        out.add("minor_occupation")
    if c.get("occupation") == "退休" and born and not born < TODAY - dt.timedelta(days=16436):
        out.add("retired_age")
    if born and born > TODAY:
        out.add("birth_date_not_future")
    if born and opened and opened < born:
        out.add("opened_after_birth")
    return out


def test_report_counts_rule_violations_and_completeness_within_the_readers_scope(crm: Crm) -> None:
    rm1, rm2 = crm.uid["rm1"], crm.uid["rm2"]
    opts = [{"value": "golf", "label": LABEL}, {"value": "tea", "label": LABEL}]
    for doc in ({"name": "hobbies", "type": "multi_enum", "options": opts}, {"name": "level_no", "type": "integer"}):  # JSON-stored
        resp = crm.client.post("/api/v1/meta/entities/customer/fields", json={"label": LABEL, **doc}, headers=crm.login("admin"))
        assert resp.status_code == 201, resp.get_data(as_text=True)
    rows = [
        {"name": "甲", "owner": rm1, "birth_date": years_ago(10), "occupation": "教师", "mobile": "13800000001", "hobbies": ["golf"], "level_no": 0},
        {"name": "乙", "owner": rm1, "birth_date": years_ago(10), "occupation": "学生", "email": "b@example.com", "hobbies": []},
        {"name": "丙", "owner": rm1, "birth_date": years_ago(30), "occupation": "退休", "level_no": 3},
        {"name": "丁", "owner": rm1, "occupation": "退休", "opened_on": "2020-01-01"},
        {"name": "戊", "owner": rm2, "birth_date": TODAY + dt.timedelta(days=5), "mobile": "13800000002"},
        {"name": "己", "owner": rm2, "birth_date": dt.date(1980, 1, 1), "opened_on": "1979-06-01", "occupation": ""},
        {"name": "庚", "owner": rm2, "birth_date": years_ago(12), "occupation": "程序员", "email": "g@example.com"},
        {"name": "辛", "owner": rm1, "birth_date": dt.date(1985, 3, 3), "occupation": "医生", "opened_on": "2010-01-01", "mobile": "13800000003"},
    ]
    ids = crm.seed("customer", rows)
    everyone = [crm.clear("customer", i) for i in ids]

    def expected_rules(records: list[dict[str, Any]]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for c in records:
            for name in _breaks(c):
                out.setdefault(name, []).append(c["id"])
        return out

    def check(user: str, records: list[dict[str, Any]], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        resp = crm.client.get("/api/v1/quality/customer", headers=crm.login(user))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        report = resp.json
        assert report["total"] == len(records)
        want = expected_rules(records)
        for r in report["rules"]:
            assert r["label"]["zh"] and r["message"]["en"]
            if "birth_date" in hidden:
                assert r["available"] is False and "birth_date" in r["reason"]
                continue
            assert r["available"] is True
            assert r["violations"] == len(want.get(r["name"], [])), r
            assert r["sample_ids"] == sorted(want.get(r["name"], []))
        spec = crm.svc.runtime.cached_snapshot().registry.entity("customer")
        names = [f.name for f in spec.live_fields if f.name not in hidden]
        assert [c["field"] for c in report["completeness"]] == names
        for c in report["completeness"]:
            filled = sum(1 for r in records if r[c["field"]] not in (None, "", []))
            assert c["filled"] == filled, c
            assert c["ratio"] == round(filled / len(records), 4)
        return report

    admin = check("admin", everyone)
    assert sum(r["violations"] for r in admin["rules"]) == 5  # 甲 and 庚 minors, 丙 retired young, 戊 born in the future, 己 opened before birth
    check("rm1", [c for c in everyone if c["owner"] == rm1])
    check("rm2", [c for c in everyone if c["owner"] == rm2])
    check("ops1", everyone, hidden=frozenset({"birth_date"}))  # operations may not see birth dates: age rules are not counted for them

    # holdings: scope through the customer
    deposit = crm.products["deposit"]
    hs = crm.seed(
        "holding",
        [
            {"customer": ids[0], "product": deposit, "amount": "1", "start_date": "2025-02-01", "maturity_date": "2025-01-01"},
            {"customer": ids[4], "product": deposit, "amount": "1", "start_date": "2025-02-01", "maturity_date": "2025-01-01"},
            {"customer": ids[4], "product": deposit, "amount": "1", "start_date": "2025-02-01", "maturity_date": "2025-03-01"},
        ],
    )
    by_user = {u: crm.client.get("/api/v1/quality/holding", headers=crm.login(u)).json for u in ("admin", "rm1", "rm2")}
    assert [(r["name"], r["violations"], r["sample_ids"]) for r in by_user["admin"]["rules"]] == [("maturity_after_start", 2, [hs[0], hs[1]])]
    assert [(r["violations"], r["sample_ids"]) for r in by_user["rm1"]["rules"]] == [(1, [hs[0]])]
    assert [(r["violations"], r["sample_ids"]) for r in by_user["rm2"]["rules"]] == [(1, [hs[1]])]
    assert by_user["rm2"]["total"] == 2 and by_user["rm1"]["total"] == 1
    assert_error(crm.client.get("/api/v1/quality/nope", headers=crm.login("admin")), 404)
    assert_error(crm.client.get("/api/v1/quality/loan_application", headers=crm.login("ops1")), 403)


def test_the_demo_data_breaks_no_rule(records: Any) -> None:
    from engine.demo import seed_branches, seed_demo

    branches = seed_branches(records)
    seed_demo(records, branches=branches, owners=[(101, "BJ01"), (102, "SH01")], customers=40, today=TODAY)
    for entity in ("customer", "holding", "insurance_policy", "ticket", "consent"):
        report = records_report(records, entity)
        assert report["total"] > 0, entity
        assert {r["name"]: r["violations"] for r in report["rules"]} == {r["name"]: 0 for r in report["rules"]}, entity


def records_report(records: Any, entity: str) -> dict[str, Any]:
    from engine.quality.service import QualityService

    return QualityService(records).report(SYSTEM, entity)


# ---------------------------------------------------------------------- duplicates


def _groups(crm: Crm, user: str, rule: str, entity: str = "customer", **params: Any) -> list[list[int]]:
    resp = crm.client.get(f"/api/v1/quality/{entity}/duplicates", query_string={"rule": rule, **params}, headers=crm.login(user))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (found,) = resp.json["rules"]
    assert found["available"] is True
    return [[r["id"] for r in g["records"]] for g in found["groups"]]


def test_duplicate_groups_by_mobile_and_similar_name_within_scope(crm: Crm) -> None:
    rm1, rm2 = crm.uid["rm1"], crm.uid["rm2"]
    born = dt.date(1980, 5, 5)
    a, b, c, d, e, f, g = crm.seed(
        "customer",
        [
            {"name": "王小明", "owner": rm1, "mobile": "13912345678", "birth_date": born},
            {"name": "王晓明", "owner": rm1, "mobile": "13912345678", "birth_date": born},
            {"name": "张伟", "owner": rm1, "mobile": "13700000000", "birth_date": born},
            {"name": "王小明", "owner": rm2, "mobile": "13912345678", "birth_date": born},
            {"name": "王小明", "owner": rm1, "birth_date": dt.date(1981, 5, 5)},  # another birth date
            {"name": " 王 小 明 ", "owner": rm1, "birth_date": born},  # the same name once spaces are dropped
            {"name": "王大锤", "owner": rm1, "birth_date": born},  # same bucket, not similar enough
        ],
    )
    assert _groups(crm, "admin", "same_mobile") == [[a, b, d]]
    assert _groups(crm, "rm1", "same_mobile") == [[a, b]]  # rm2's record is not theirs to see
    assert _groups(crm, "rm2", "same_mobile") == []
    assert _groups(crm, "admin", "similar_name_same_birth_date") == [[a, b, d, f]]
    assert _groups(crm, "rm1", "similar_name_same_birth_date") == [[a, b, f]]
    assert name_similarity("王小明", "王晓明") == pytest.approx(2 / 3) and name_similarity(" 王 小 明 ", "王小明") == 1.0

    # records come masked, as the reader sees them in lists; the shared value is never shown
    body = crm.client.get("/api/v1/quality/customer/duplicates", headers=crm.login("rm1")).get_data(as_text=True)
    assert "13912345678" not in body and "139****5678" in body
    resp = crm.client.get("/api/v1/quality/customer/duplicates", headers=crm.login("rm1")).json
    assert [r["name"] for r in resp["rules"]] == ["same_id_number", "same_mobile", "similar_name_same_birth_date"]
    fuzzy = resp["rules"][2]
    assert fuzzy["kind"] == "fuzzy" and fuzzy["groups"][0]["size"] == 3 and fuzzy["groups"][0]["score"] == pytest.approx(0.6667)
    # operations may not see birth dates: the fuzzy rule is not run for them
    ops = crm.client.get("/api/v1/quality/customer/duplicates", headers=crm.login("ops1")).json["rules"]
    assert [r["available"] for r in ops] == [True, True, False]
    everyone = [r["id"] for rule in crm.client.get("/api/v1/quality/customer/duplicates", headers=crm.login("admin")).json["rules"] for g in rule["groups"] for r in g["records"]]
    assert not {c, e, g} & set(everyone)  # another mobile, another birth date, a name not similar enough


def test_duplicate_pages_follow_the_cursor(crm: Crm) -> None:
    rows = [{"name": f"客户{i}", "mobile": f"1391234{i // 2:04d}"} for i in range(10)]  # five pairs
    ids = crm.seed("customer", rows)
    pairs = [ids[i : i + 2] for i in range(0, 10, 2)]
    seen: list[list[int]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"rule": "same_mobile", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        (rule,) = crm.client.get("/api/v1/quality/customer/duplicates", query_string=params, headers=crm.login("admin")).json["rules"]
        seen += [[r["id"] for r in g["records"]] for g in rule["groups"]]
        cursor = rule["next_cursor"]
        if cursor is None:
            break
    assert seen == pairs
    assert_error(crm.client.get("/api/v1/quality/customer/duplicates?cursor=5", headers=crm.login("admin")), 400, field="cursor")
    assert_error(crm.client.get("/api/v1/quality/customer/duplicates?rule=same_mobile&cursor=x", headers=crm.login("admin")), 400, "invalid_cursor")
    assert_error(crm.client.get("/api/v1/quality/customer/duplicates?rule=nope", headers=crm.login("admin")), 404, field="rule")
    assert_error(crm.client.get("/api/v1/quality/customer/duplicates?limit=51", headers=crm.login("admin")), 400, field="limit")


def test_same_id_number_groups_compare_the_blind_index(crm: Crm) -> None:
    """Customers' ID numbers are unique; a runtime entity (leads from a campaign) may hold the
    same ID several times, encrypted: groups come from the blind index, never the clear value."""
    admin = crm.login("admin")
    doc = {
        "name": "lead",
        "label": {"zh": "线索", "en": "Lead"},
        "fields": [
            {"name": "title", "type": "string", "label": LABEL, "required": True},
            {"name": "id_no", "type": "cn_id", "label": LABEL, "sensitivity": "C2", "encrypted": True, "searchable": True},
        ],
        "dedupe": {"keys": [{"name": "same_id", "label": {"zh": "证件号相同", "en": "Same ID"}, "fields": ["id_no"]}]},
    }
    resp = crm.client.post("/api/v1/meta/entities", json=doc, headers=admin)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    x, y = "11010519491231002X", "440106199001010013"
    ids = [crm.post("admin", "lead", title=f"线索{i}", id_no=v)["id"] for i, v in enumerate([x, y, x, None, x])]
    assert _groups(crm, "admin", "same_id", entity="lead") == [[ids[0], ids[2], ids[4]]]
    body = crm.client.get("/api/v1/quality/lead/duplicates", headers=admin).get_data(as_text=True)
    assert x not in body and "110***********002X" in body


# ---------------------------------------------------------------------- merge and undo


def _merge_world(crm: Crm) -> dict[str, Any]:
    admin = crm.login("admin")
    resp = crm.client.post(
        "/api/v1/meta/entities/interaction/fields", json={"name": "referred_by", "type": "ref", "ref": "customer", "label": LABEL}, headers=admin
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    s = crm.post("admin", "customer", name="王小明", mobile="13911112222", aum="100", birth_date="1980-05-05", opened_on="2020-01-01", risk_preference="balanced")
    m = crm.post(
        "admin", "customer", name="王晓明", mobile="13933334444", aum="500", occupation="教师", email="wxm@example.com", id_number="11010519491231002X",
        birth_date="1980-05-05", opened_on="2015-03-01", risk_preference="growth",
    )
    m2 = crm.post("admin", "customer", name="王小明", aum="50", occupation="工程师", mobile="13955556666")
    base = dt.datetime(2026, 1, 1, 8, 0, 0)
    for rid, hours in ((s["id"], 0), (m2["id"], 1), (m["id"], 2)):  # m was updated last
        crm.touch("customer", rid, base + dt.timedelta(hours=hours))
    deposit = crm.products["deposit"]
    related = {
        "holding": crm.post("admin", "holding", customer=m["id"], product=deposit, amount="500", start_date="2025-01-01", maturity_date="2026-01-01")["id"],
        "transaction": crm.post("admin", "transaction", customer=m["id"], amount="500", direction="in", occurred_at="2025-01-01T10:00:00")["id"],
        "interaction": crm.post("admin", "interaction", customer=m2["id"], channel="phone", occurred_at="2025-02-01T10:00:00")["id"],
        "referral": crm.post("admin", "interaction", customer=s["id"], channel="phone", occurred_at="2025-03-01T10:00:00", referred_by=m["id"])["id"],
        "own": crm.post("admin", "holding", customer=s["id"], product=deposit, amount="100", start_date="2025-01-01")["id"],
    }
    for rid, tag in ((s["id"], "新客"), (m["id"], "vip"), (m["id"], "新客"), (m2["id"], "睡眠")):
        assert crm.client.post(f"/api/v1/records/customer/{rid}/tags", json={"tag": tag}, headers=admin).status_code == 201
    return {"s": s["id"], "m": m["id"], "m2": m2["id"], "related": related}


def _tags(crm: Crm, rid: int) -> list[str]:
    from engine.store.tables import tag_table

    with crm.svc.runtime.engine.connect() as conn:
        return sorted(r.tag for r in conn.execute(select(tag_table.c.tag).where(tag_table.c.entity == "customer", tag_table.c.record_id == rid)))


def _state(crm: Crm, w: dict[str, Any]) -> dict[str, Any]:
    """Everything a merge touches, as stored (clear values), without versions and times."""

    def bare(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("version", "updated_at")}

    return {
        "customers": {k: bare(crm.clear("customer", w[k])) for k in ("s", "m", "m2")},
        "related": {
            "holding": crm.clear("holding", w["related"]["holding"])["customer"],
            "transaction": crm.clear("transaction", w["related"]["transaction"])["customer"],
            "interaction": crm.clear("interaction", w["related"]["interaction"])["customer"],
            "referral": crm.clear("interaction", w["related"]["referral"])["referred_by"],
        },
        "tags": {k: _tags(crm, w[k]) for k in ("s", "m", "m2")},
    }


def test_merge_makes_a_golden_record_repoints_references_and_hides_the_merged(crm: Crm) -> None:
    w = _merge_world(crm)
    s, m, m2 = w["s"], w["m"], w["m2"]
    admin, ops = crm.login("admin"), crm.login("ops1")
    before = _state(crm, w)
    resp = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": s, "merged": [m, m2], "overrides": {"risk_preference": s}, "version": 1}, headers=ops)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    merge, record = resp.json["merge"], resp.json["record"]
    assert record["id"] == s and record["version"] == 2 and merge["survivor"] == s and merge["merged"] == [m, m2]
    assert record["mobile"] == "139****4444" and "birth_date" not in record  # as operations sees it: masked, hidden

    golden = crm.clear("customer", s)
    assert golden["name"] == "王小明"  # non_empty: the survivor's
    assert golden["aum"] == "500.00"  # max
    assert golden["mobile"] == "13933334444" and golden["occupation"] == "教师"  # most_recent: m was updated last
    assert golden["email"] == "wxm@example.com" and golden["id_number"] == "11010519491231002X"  # non_empty: the first merged one that has it
    assert golden["opened_on"] == "2015-03-01"  # min
    assert golden["risk_preference"] == "balanced"  # the request's override
    assert golden["lifecycle_stage"] == before["customers"]["s"]["lifecycle_stage"]

    # references and tags follow the survivor
    rel = w["related"]
    assert crm.clear("holding", rel["holding"])["customer"] == s and crm.clear("transaction", rel["transaction"])["customer"] == s
    assert crm.clear("interaction", rel["interaction"])["customer"] == s and crm.clear("interaction", rel["referral"])["referred_by"] == s
    assert _tags(crm, s) == ["vip", "新客", "睡眠"] and _tags(crm, m) == [] and _tags(crm, m2) == []
    assert sorted(crm.ids("admin", "holding", {"field": "customer", "op": "eq", "value": s})) == sorted([rel["holding"], rel["own"]])
    assert {(r["entity"], r["field"], r["count"]) for r in merge["repointed"]} == {
        ("holding", "customer", 1), ("transaction", "customer", 1), ("interaction", "customer", 1), ("interaction", "referred_by", 1)
    }

    # the merged records are gone from every read
    for rid in (m, m2):
        assert_error(crm.client.get(f"/api/v1/records/customer/{rid}", headers=admin), 404)
    assert m not in crm.ids("admin", "customer") and m2 not in crm.ids("admin", "customer")
    found = crm.client.get("/api/v1/records/customer", query_string={"q": "王晓明"}, headers=admin).json["items"]
    assert found == []
    assert crm.by_id_number("11010519491231002X") == [s]  # the ID number moved with its blind index
    assert _groups(crm, "admin", "same_id_number") == [] and _groups(crm, "admin", "similar_name_same_birth_date") == []

    # audited, masked, and the chain still verifies
    history = crm.client.get(f"/api/v1/records/customer/{s}/history", headers=admin).json["items"]
    entry = next(h for h in history if h["action"] == "merge")
    assert entry["detail"]["merge_id"] == merge["id"] and entry["detail"]["merged"] == [m, m2]
    assert entry["detail"]["changes"]["mobile"] == {"from": "139****2222", "to": "139****4444"}
    assert "11010519491231002X" not in str(entry) and "13933334444" not in str(entry)
    assert crm.client.get("/api/v1/audit/verify", headers=admin).json["ok"] is True
    got = crm.client.get(f"/api/v1/quality/merges/{merge['id']}", headers=ops).json
    assert got == merge and got["changes"]["aum"] == {"from": "100.00", "to": "500.00"}


def test_undo_restores_the_exact_previous_state_and_refuses_after_a_change(crm: Crm) -> None:
    w = _merge_world(crm)
    s, m, m2 = w["s"], w["m"], w["m2"]
    admin, ops = crm.login("admin"), crm.login("ops1")
    before = _state(crm, w)
    merge = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": s, "merged": [m, m2]}, headers=ops).json["merge"]
    assert crm.clear("customer", s)["aum"] == "500.00" and _tags(crm, m) == []

    undone = crm.client.post(f"/api/v1/quality/merges/{merge['id']}/undo", headers=ops)
    assert undone.status_code == 200, undone.get_data(as_text=True)
    assert undone.json["merge"]["undone_at"] and undone.json["merge"]["undone_by"] == "ops1"
    assert _state(crm, w) == before  # values (the ID number back on m), references and tags
    assert crm.clear("customer", s)["version"] == 3 and crm.clear("customer", m)["version"] == 3  # versions move forward
    assert crm.client.get(f"/api/v1/records/customer/{m}", headers=admin).status_code == 200
    assert crm.by_id_number("11010519491231002X") == [m]
    history = crm.client.get(f"/api/v1/records/customer/{s}/history", headers=admin).json["items"]
    assert [h["action"] for h in history[:2]] == ["merge_undo", "merge"]
    assert history[0]["detail"]["changes"]["aum"] == {"from": "500.00", "to": "100.00"}
    assert crm.client.get("/api/v1/audit/verify", headers=admin).json["ok"] is True
    assert_error(crm.client.post(f"/api/v1/quality/merges/{merge['id']}/undo", headers=ops), 409, "conflict")

    # merge again; once the survivor has changed, undo would lose that change: 409
    again = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": s, "merged": [m]}, headers=ops).json
    patched = crm.client.patch(f"/api/v1/records/customer/{s}", json={"occupation": "律师", "version": again["record"]["version"]}, headers=admin)
    assert patched.status_code == 200
    assert_error(crm.client.post(f"/api/v1/quality/merges/{again['merge']['id']}/undo", headers=ops), 409, "version_conflict", field="version")
    assert crm.clear("customer", s)["occupation"] == "律师" and crm.client.get(f"/api/v1/records/customer/{m}", headers=admin).status_code == 404


def test_merge_needs_update_and_import_and_stays_in_scope(crm: Crm) -> None:
    rm1, rm2 = crm.uid["rm1"], crm.uid["rm2"]
    a, b, c = crm.seed("customer", [{"name": "甲", "owner": rm1}, {"name": "乙", "owner": rm1}, {"name": "丙", "owner": rm2}])
    payload = {"survivor": a, "merged": [c]}
    assert_error(crm.client.post("/api/v1/quality/customer/merge", json=payload, headers=crm.login("sup1")), 403)  # supervisors may not import
    resp = crm.client.post("/api/v1/quality/customer/merge", json=payload, headers=crm.login("rm1"))
    assert resp.status_code in (403, 404)  # 403 without import; with it, rm2's customer is not rm1's to merge
    assert crm.client.get(f"/api/v1/records/customer/{c}", headers=crm.login("admin")).status_code == 200
    done = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": a, "merged": [b]}, headers=crm.login("admin")).json["merge"]
    assert_error(crm.client.get(f"/api/v1/quality/merges/{done['id']}", headers=crm.login("sup1")), 403)
    assert_error(crm.client.post(f"/api/v1/quality/merges/{done['id']}/undo", headers=crm.login("sup1")), 403)
    assert_error(crm.client.get("/api/v1/quality/merges/999999", headers=crm.login("admin")), 404)
    assert_error(crm.client.post(f"/api/v1/quality/merges/{2**70}/undo", headers=crm.login("admin")), 404)


@pytest.mark.parametrize(
    "payload,status,field",
    [
        ({"merged": [2]}, 422, "survivor"),
        ({"survivor": 1, "merged": []}, 422, "merged"),
        ({"survivor": 1, "merged": [1]}, 422, "merged"),
        ({"survivor": 1, "merged": ["x"]}, 422, "merged"),
        ({"survivor": 1, "merged": [2], "overrides": {"nope": 1}}, 422, "overrides.nope"),
        ({"survivor": 1, "merged": [2], "overrides": {"aum": 99}}, 422, "overrides.aum"),
        ({"survivor": 1, "merged": [2], "extra": 1}, 400, "extra"),
        ({"survivor": 1, "merged": [999999]}, 404, "merged"),
        ({"survivor": 1, "merged": [2], "version": 7}, 409, "version"),
    ],
)
def test_bad_merge_requests_name_the_field(crm: Crm, payload: dict[str, Any], status: int, field: str) -> None:
    a, b = crm.seed("customer", [{"name": "甲"}, {"name": "乙"}])
    remap = {1: a, 2: b}
    body = copy.deepcopy(payload)
    if isinstance(body.get("survivor"), int):
        body["survivor"] = remap.get(body["survivor"], body["survivor"])
    body["merged"] = [remap.get(x, x) if isinstance(x, int) else x for x in body.get("merged", [])] if "merged" in body else None
    if body["merged"] is None:
        del body["merged"]
    resp = crm.client.post("/api/v1/quality/customer/merge", json=body, headers=crm.login("admin"))
    assert_error(resp, status, field=field)
    assert crm.clear("customer", a)["version"] == 1 and crm.clear("customer", b)["version"] == 1


def test_a_golden_record_that_breaks_a_rule_is_refused_and_nothing_changes(crm: Crm) -> None:
    # the survivor was born in 1980; the duplicate (data from before the rules) says opened in 1970:
    # "min" would make the golden record opened before its birth
    s, m = crm.seed("customer", [{"name": "甲", "birth_date": "1980-01-01"}, {"name": "甲", "opened_on": "1970-01-01"}])
    resp = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": s, "merged": [m]}, headers=crm.login("ops1"))
    assert_error(resp, 422, "validation_error", field="opened_on")
    assert "opened_after_birth" in resp.json["error"]["message"]
    assert crm.clear("customer", s)["version"] == 1 and crm.clear("customer", m)["version"] == 1  # m still visible, nothing written
    resp = crm.client.post("/api/v1/quality/customer/merge", json={"survivor": s, "merged": [m], "overrides": {"opened_on": s}}, headers=crm.login("ops1"))
    assert resp.status_code == 201 and resp.json["record"]["opened_on"] is None


def test_entities_without_dedupe_or_merge_rules_cannot_be_merged(crm: Crm) -> None:
    cid = crm.post("admin", "customer", name="甲")["id"]
    deposit = crm.products["deposit"]
    h1, h2 = crm.seed("holding", [{"customer": cid, "product": deposit, "amount": "1"}, {"customer": cid, "product": deposit, "amount": "2"}])
    resp = crm.client.post("/api/v1/quality/holding/merge", json={"survivor": h1, "merged": [h2]}, headers=crm.login("admin"))
    assert_error(resp, 400, field="entity")
    assert "entity" in error_fields(resp)


# ---------------------------------------------------------------------- survivorship, unit


def test_survivorship_rules_pick_values_field_by_field() -> None:
    lbl = Label("x", "x")
    spec = EntitySpec(
        "thing",
        lbl,
        (
            FieldSpec("a", "string", lbl),
            FieldSpec("b", "string", lbl),
            FieldSpec("c", "decimal", lbl),
            FieldSpec("d", "date", lbl),
            FieldSpec("e", "string", lbl),
            FieldSpec("f", "string", lbl),
            FieldSpec("g", "string", lbl, readonly=True),
        ),
        merge=MergeSpec("non_empty", (("b", "survivor"), ("c", "max"), ("d", "min"), ("e", "longest"), ("f", "most_recent"))),
    )
    values = {
        1: {"a": None, "b": None, "c": Decimal("5"), "d": dt.date(2020, 1, 1), "e": "ab", "f": "old", "g": "keep"},
        2: {"a": "x2", "b": "b2", "c": Decimal("9"), "d": dt.date(2019, 1, 1), "e": "abcd", "f": None, "g": "other"},
        3: {"a": "x3", "b": "b3", "c": Decimal("9"), "d": None, "e": "abc", "f": "new", "g": "other"},
    }
    updated = {1: dt.datetime(2026, 1, 3), 2: dt.datetime(2026, 1, 5), 3: dt.datetime(2026, 1, 4)}
    golden, sources = golden_values(spec, values, [1, 2, 3], updated)
    assert golden == {"a": "x2", "b": None, "c": Decimal("9"), "d": dt.date(2019, 1, 1), "e": "abcd", "f": "new", "g": "keep"}
    assert sources == {"a": 2, "b": 1, "c": 2, "d": 2, "e": 2, "f": 3, "g": 1}  # ties go to the record listed first
    golden, _ = golden_values(spec, values, [1, 2, 3], updated, overrides={"a": 3, "c": 1})
    assert golden["a"] == "x3" and golden["c"] == Decimal("5")
