"""The bank template package end to end: publish (dry-run plan, publish, no-op again), then its
scenarios replayed through the API as the roles that play them, with the jobs pass in between:
wealth tiers kept by AUM, the loan approval flow with its committee threshold and the overdue
flag, row scope and masking of credit reports, the mortgage-without-wealth segment, private
banking allocation drift, the seeded scripts and products, and the demo seeder."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any, Iterator

import pytest
from sqlalchemy import delete, select

from engine.flows.jobs import run_pass
from engine.flows.tables import outbox_table
from engine.meta.packages import load_package_dir, package_errors
from engine.meta.schema import METADATA_DIR
from engine.runtime import POLICY_VERSION
from engine.security.org import set_staff
from engine.security.principal import Principal
from engine.store.tables import tag_table
from tests.api_helpers import assert_error, client, login, publish_vertical, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

SYSTEM = Principal.system("test")
PACKAGE_DIR = METADATA_DIR / "verticals" / "bank"
BANK_STAFF = (
    ("sup1", "supervisor"),
    ("sup2", "supervisor"),
    ("bm1", "branch_manager"),
    ("risk1", "risk_control"),
    ("risk2", "risk_control"),
    ("credit1", "credit_officer"),
    ("pb1", "private_banker"),
)
# reference data set up once for the module; the transactional records are wiped between tests
KEPT = ("branch", "product", "sales_script")
TIER_TAGS = ("普通", "金卡", "白金", "私行")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bank(shared_app: Any) -> dict[str, Any]:
    """Publish the bank package (dry run first), then set up the organisation it is played in:
    branches BJ (rm1 and pb1 under sup1; bm1; credit1) and SH (rm2 under sup2), a wealth product."""
    svc = shared_app.extensions["fincrm"]
    before = set(svc.runtime.cached_snapshot().registry.entities)
    dry = publish_vertical(shared_app, "bank", dry_run=True)
    after_dry = set(svc.runtime.cached_snapshot().registry.entities)
    first = publish_vertical(shared_app, "bank")
    again = publish_vertical(shared_app, "bank")
    sm = shared_app.appbuilder.sm
    with shared_app.app_context():
        for username, role in BANK_STAFF:
            if sm.find_user(username=username) is None:
                sm.add_user(username, username, "T", f"{username}@t.local", [sm.find_role(role)], password=TEST_PASSWORD)
        uid = {u.username: u.id for u in sm.get_all_users()}
    branch: dict[str, int] = {}
    for code, parent in (("HO", None), ("BJ", "HO"), ("BJ01", "BJ"), ("SH", "HO"), ("SH01", "SH")):
        branch[code] = svc.records.create(SYSTEM, "branch", {"code": code, "name": code, "parent": branch.get(parent or "")})["id"]
    with svc.runtime.begin() as conn:
        for user, (where, team, boss) in {
            "rm1": ("BJ01", "wealth", "sup1"), "pb1": ("BJ01", "wealth", "sup1"), "sup1": ("BJ", "wealth", None), "bm1": ("BJ", None, None),
            "credit1": ("BJ", None, None), "rm2": ("SH01", "east", "sup2"), "sup2": ("SH", "east", None),
            "risk1": ("HO", None, None), "risk2": ("HO", None, None), "ops1": ("HO", None, None),
        }.items():
            set_staff(conn, uid[user], branch_id=branch[where], team=team, supervisor_id=uid[boss] if boss else None)
        svc.runtime.bump(conn, POLICY_VERSION)
    svc.records.create(SYSTEM, "product", {"code": "WM-TEST", "name": "稳享90天理财", "type": "wealth", "risk_level": "R2"})
    products = {p["code"]: p["id"] for p in svc.records.list(SYSTEM, "product", limit=100, fields=["code"]).items}
    return {"dry": dry, "first": first, "again": again, "before": before, "after_dry": after_dry, "uid": uid, "branch": branch, "product": products}


@pytest.fixture
def app(shared_app: Any, bank: dict[str, Any]) -> Any:
    """The module's app with the package published; records of earlier tests removed (the
    branches, products and seeded scripts stay)."""
    runtime = shared_app.extensions["fincrm"].runtime
    snap = runtime.cached_snapshot()
    keep = {snap.tables[name] for name in KEPT}
    entity_tables = set(snap.tables.values()) - keep
    with runtime.begin() as conn:
        conn.execute(delete(tag_table))
        for table in reversed(snap.metadata.sorted_tables):
            if table in entity_tables:
                conn.execute(delete(table))
    return shared_app


class Bank:
    """One test's view of the bank: API calls as the demo roles, the jobs pass, lookups."""

    def __init__(self, app: Any, client: Any, login: Any, bank: dict[str, Any]) -> None:
        self.app, self.client, self.login = app, client, login
        self.svc = app.extensions["fincrm"]
        self.uid: dict[str, int] = bank["uid"]
        self.product: dict[str, int] = bank["product"]

    def post(self, who: str, entity: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        resp = self.client.post(f"/api/v1/records/{entity}", json=body, headers=self.login(who))
        assert resp.status_code == status, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    def get(self, who: str, entity: str, rid: int) -> dict[str, Any]:
        resp = self.client.get(f"/api/v1/records/{entity}/{rid}", headers=self.login(who))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    def patch(self, who: str, entity: str, rid: int, body: dict[str, Any]) -> Any:
        version = self.get("admin", entity, rid)["version"]
        return self.client.patch(f"/api/v1/records/{entity}/{rid}", json=body, headers={**self.login(who), "If-Match": str(version)})

    def customer(self, who: str = "rm1", aum: str = "300000", name: str = "", **values: Any) -> int:
        return int(self.post(who, "customer", {"name": name or f"{who}的客户", "aum": aum, **values})["id"])

    def tags(self, cid: int, who: str = "admin") -> set[str]:
        resp = self.client.get(f"/api/v1/records/customer/{cid}/tags", headers=self.login(who))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return set(resp.json["tags"])

    def credit_report(self, cid: int, who: str = "rm1", **values: Any) -> int:
        body = {"customer": cid, "report_date": dt.date.today().isoformat(), "score": 720, "total_debt": "250000.00", **values}
        return int(self.post(who, "credit_report", body)["id"])

    def loan(self, cid: int, amount: str, who: str = "rm1", **values: Any) -> dict[str, Any]:
        body = {"customer": cid, "product": self.product["LN-BIZ"], "amount": amount, "term_months": 36, "purpose": "经营周转", **values}
        return self.post(who, "loan_application", body)

    def move(self, who: str, lid: int, transition: str, status: int = 200, **body: Any) -> dict[str, Any]:
        resp = self.client.post(f"/api/v1/records/loan_application/{lid}/transitions/{transition}", json=body, headers=self.login(who))
        assert resp.status_code == status, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    def jobs(self) -> dict[str, Any]:
        """One jobs pass; the jobs this package relies on must succeed."""
        result = run_pass(self.svc.runtime, self.svc.records)
        status = {j["job"]: j["status"] for j in result["jobs"]}
        assert all(status[j] == "ok" for j in ("scheduled_triggers", "sla_escalation", "outbox_delivery")), result
        return result

    def triggers_fired(self) -> list[dict[str, Any]]:
        """One jobs pass; what each scheduled trigger did."""
        (job,) = [j for j in self.jobs()["jobs"] if j["job"] == "scheduled_triggers"]
        return job["detail"]["triggers"]  # type: ignore[no-any-return]

    def rows(self, entity: str, **where: Any) -> list[dict[str, Any]]:
        flt = {"and": [{"field": k, "op": "eq", "value": v} for k, v in where.items()]} if where else None
        return self.svc.records.list(SYSTEM, entity, filter=flt, limit=500).items  # type: ignore[no-any-return]

    def report(self, who: str, name: str, **params: str) -> list[dict[str, Any]]:
        resp = self.client.get(f"/api/v1/reports/{name}", query_string=params, headers=self.login(who))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        names = [c["name"] for c in resp.json["columns"]]
        return [dict(zip(names, row)) for row in resp.json["rows"]]

    def inbox(self, who: str, record_id: int) -> list[str]:
        t = outbox_table
        with self.svc.runtime.engine.connect() as conn:
            rows = conn.execute(select(t.c.subject).where(t.c.recipient_id == self.uid[who], t.c.record_id == record_id).order_by(t.c.id))
            return [r.subject for r in rows]


@pytest.fixture
def crm(app: Any, client: Any, login: Any, bank: dict[str, Any]) -> Iterator[Bank]:
    yield Bank(app, client, login, bank)


# ------------------------------------------------------------------ publishing


def test_the_dry_run_plans_everything_the_publish_applies_and_a_second_publish_is_a_no_op(bank: dict[str, Any], client: Any, login: Any) -> None:
    dry, first, again = bank["dry"], bank["first"], bank["again"]
    assert dry["dry_run"] and not dry["noop"] and dry["version"] == "1.0.0"
    assert bank["after_dry"] == bank["before"], "a dry run changes nothing"
    changes = dry["changes"]
    assert changes["entities"]["added"] == ["asset_allocation", "credit_report", "repayment_record"]
    changed = changes["entities"]["changed"]
    assert changed["loan_application"]["fields_added"] == ["credit_report", "overdue_flag"]
    assert changed["product"]["fields_added"] == ["loan_kind"]
    assert set(changed["customer"]["tag_sets_added"]) == {"wealth_tier", "bank_segment", "credit_risk"}
    assert changes["roles"]["added"] == ["credit_officer", "private_banker"]
    assert set(changes["roles"]["changed"]) == {"branch_manager", "operations", "relationship_manager", "risk_control", "supervisor"}
    assert changes["flows"] == {"added": [], "removed": [], "changed": ["loan_approval"]}
    assert {"wealth_tier_gold", "wealth_tier_private", "loan_overdue_flag", "loan_overdue_flag_scan", "mortgage_without_wealth",
            "asset_rebalance_task"} <= set(changes["triggers"]["added"])
    assert set(changes["reports"]["added"]) == {"wealth_tier_distribution", "asset_allocation_deviation", "loan_approval_pipeline",
                                                "loan_credit_review", "mortgage_without_wealth_list"}
    assert changes["seeds"] == {"product": 3, "sales_script": 8}
    steps = {(s["op"], s["name"]) for s in dry["migration"]}
    assert {("create_table", "e_credit_report"), ("create_table", "e_repayment_record"), ("create_table", "e_asset_allocation"),
            ("add_column", "overdue_flag"), ("add_column", "credit_report"), ("add_column", "loan_kind")} <= steps

    def steps_of(plan: dict[str, Any]) -> list[tuple[str, ...]]:
        return sorted(tuple(s.values()) for s in plan["migration"])  # (index steps come in no fixed order)

    # the publish applied exactly that plan; the same content again changes nothing
    assert not first["dry_run"] and steps_of(first) == steps_of(dry) and first["changes"] == changes
    assert again["noop"] and again["changes"] == {} and again["migration"] == []
    resp = client.post("/api/v1/meta/packages/bank/publish?dry_run=1", headers=login("admin"))
    assert resp.status_code == 200 and resp.json["noop"], resp.get_data(as_text=True)


def test_the_package_is_valid_and_its_core_role_refinements_keep_every_core_grant() -> None:
    from engine.services.roles import _extend  # how a package role extends the role of its name

    pkg = load_package_dir(PACKAGE_DIR)
    assert package_errors(pkg) == []
    shipped = {d["name"]: d for d in pkg["documents"] if d["kind"] == "role"}
    replaced = sorted(n for n in shipped if (METADATA_DIR / "core" / "roles" / f"{n}.json").exists())
    assert replaced == ["branch_manager", "operations", "relationship_manager", "risk_control", "supervisor"]
    roles = dict(shipped)
    for name in replaced:
        core = json.loads((METADATA_DIR / "core" / "roles" / f"{name}.json").read_text(encoding="utf-8"))
        assert not [g for g in shipped[name]["grants"] if g in core["grants"]], f"{name}: the package lists only what it adds"
        roles[name] = _extend(core, shipped[name])
        granted = {(g["entity"], a, g["scope"]) for g in roles[name]["grants"] for a in g["actions"]}
        missing = [(g["entity"], a, g["scope"]) for g in core["grants"] for a in g["actions"] if (g["entity"], a, g["scope"]) not in granted]
        assert missing == [], f"{name} lost core grants"
        assert all(rule in roles[name].get("fields", []) for rule in core.get("fields", [])), name
        assert {g["entity"] for g in roles[name]["grants"]} >= {"credit_report", "repayment_record", "asset_allocation"}, name


# ------------------------------------------------------------------ wealth tiers


def test_wealth_tiers_follow_aum_after_the_jobs_pass(crm: Bank) -> None:
    aums = ["49999.99", "50000", "499999.99", "500000", "5999999.99", "6000000"]
    ids = [crm.customer(aum=a) for a in aums]
    assert crm.client.post(f"/api/v1/records/customer/{ids[1]}/tags", json={"tag": "高净值"}, headers=crm.login("rm1")).status_code == 201
    crm.jobs()
    assert [crm.tags(c) & set(TIER_TAGS) for c in ids] == [{"普通"}, {"金卡"}, {"金卡"}, {"白金"}, {"白金"}, {"私行"}]
    # a customer crossing 50万 moves up from 金卡 to 白金; one falling back goes down; manual tags stay
    assert crm.patch("rm1", "customer", ids[1], {"aum": "520000"}).status_code == 200
    assert crm.patch("rm1", "customer", ids[3], {"aum": "80000"}).status_code == 200
    assert crm.patch("rm1", "customer", ids[0], {"aum": "6500000"}).status_code == 200
    crm.jobs()
    assert crm.tags(ids[1]) == {"白金", "高净值"}
    assert crm.tags(ids[3]) == {"金卡"}
    assert crm.tags(ids[0]) == {"私行"}
    # nothing moves on another pass: the tags already match
    fired = {t["trigger"]: t["fired"] for t in crm.triggers_fired() if t["trigger"].startswith("wealth_tier_")}
    assert fired == dict.fromkeys(fired, 0) and len(fired) == 4
    # the report counts the same tiers, within the reader's scope
    crm.customer("rm2", aum="9000000")
    assert {r["tier"]: r["customers"] for r in crm.report("rm1", "wealth_tier_distribution")} == {"private": 2, "platinum": 2, "gold": 2}
    assert {r["tier"]: r["customers"] for r in crm.report("admin", "wealth_tier_distribution")} == {"private": 3, "platinum": 2, "gold": 2}


# ------------------------------------------------------------------ loan approval


def test_a_large_loan_goes_branch_risk_committee_approved(crm: Bank) -> None:
    cid = crm.customer()
    lid = crm.loan(cid, "5000000.00")["id"]
    # a credit report must be linked before submission
    resp = crm.client.post(f"/api/v1/records/loan_application/{lid}/transitions/submit", headers=crm.login("rm1"))
    assert_error(resp, 422, "validation_error", "transition")
    assert crm.patch("rm1", "loan_application", lid, {"credit_report": crm.credit_report(cid)}).status_code == 200
    assert crm.move("rm1", lid, "submit")["record"]["status"] == "branch_review"
    crm.move("rm1", lid, "branch_approve", status=403)  # the RM cannot approve their own application
    assert crm.move("sup1", lid, "branch_approve")["record"]["status"] == "risk_review"
    out = crm.move("risk1", lid, "risk_approve", comment="第一还款来源充足")
    assert out["transition"]["to"] == "committee_review", "above CNY 3,000,000: the committee"
    assert "贷款申请已提交贷审会" in crm.inbox("rm1", lid)
    vote = crm.move("risk2", lid, "committee_approve")
    assert not vote["transition"]["moved"] and vote["record"]["status"] == "committee_review"
    assert crm.move("bm1", lid, "committee_approve")["record"]["status"] == "approved"
    record = crm.get("rm1", "loan_application", lid)
    assert record["status"] == "approved" and record["overdue_flag"] is False
    assert "贷款申请已批准" in crm.inbox("rm1", lid)
    pipeline = {r["status"]: (r["applications"], Decimal(str(r["total_amount"]))) for r in crm.report("admin", "loan_approval_pipeline")}
    assert pipeline == {"approved": (1, Decimal("5000000"))}


def test_a_small_loan_skips_the_committee_and_a_credit_officer_may_decide_it(crm: Bank) -> None:
    cid = crm.customer()
    lid = crm.loan(cid, "800000", credit_report=crm.credit_report(cid))["id"]
    crm.move("rm1", lid, "submit")
    crm.move("sup1", lid, "branch_approve")
    out = crm.move("credit1", lid, "risk_approve")
    assert (out["transition"]["from"], out["transition"]["to"]) == ("risk_review", "approved")
    # a credit officer of another branch may not decide it
    other = crm.customer("rm2")
    lid2 = crm.loan(other, "800000", who="rm2", credit_report=crm.credit_report(other, who="rm2"))["id"]
    crm.move("rm2", lid2, "submit")
    crm.move("sup2", lid2, "branch_approve")
    resp = crm.client.post(f"/api/v1/records/loan_application/{lid2}/transitions/risk_approve", headers=crm.login("credit1"))
    assert_error(resp, 404, "not_found")  # outside the officer's branch: not even visible
    assert crm.get("admin", "loan_application", lid2)["status"] == "risk_review"


def test_overdue_history_flags_a_small_loan_and_sends_it_to_the_committee(crm: Bank) -> None:
    cid = crm.customer()
    due = dt.date.today() - dt.timedelta(days=40)
    crm.post("ops1", "repayment_record", {"customer": cid, "loan_account": "6222020200112233", "due_date": due.isoformat(), "amount_due": "5300.00",
                                          "overdue_days": 12, "paid_on": (due + dt.timedelta(days=12)).isoformat(), "amount_paid": "5300.00", "status": "paid"})
    loan = crm.loan(cid, "200000", credit_report=crm.credit_report(cid))
    assert loan["overdue_flag"] is True, "flagged by the change trigger as it was created"
    assert crm.inbox("rm1", loan["id"]) == ["贷款申请触发逾期预警"]
    # nobody clears the flag by hand
    assert_error(crm.patch("rm1", "loan_application", loan["id"], {"overdue_flag": False}), 422, "validation_error", "overdue_flag")
    crm.move("rm1", loan["id"], "submit")
    crm.move("sup1", loan["id"], "branch_approve")
    assert crm.move("credit1", loan["id"], "risk_approve")["transition"]["to"] == "committee_review"
    review = {r["purpose"]: r for r in crm.report("risk1", "loan_credit_review")}["经营周转"]
    assert (review["overdue_flag"], review["overdue_repayments"], review["max_overdue_days"]) == (True, 1, 12)


def test_arrears_found_later_or_in_the_credit_report_flag_the_application_too(crm: Bank) -> None:
    cid = crm.customer()
    clean = crm.loan(cid, "150000", credit_report=crm.credit_report(cid))
    assert clean["overdue_flag"] is False
    crm.move("rm1", clean["id"], "submit")
    # an instalment of another loan falls overdue while the application is under review
    crm.post("ops1", "repayment_record", {"customer": cid, "due_date": (dt.date.today() - dt.timedelta(days=9)).isoformat(),
                                          "amount_due": "3000.00", "overdue_days": 9, "status": "overdue"})
    crm.jobs()
    assert crm.get("rm1", "loan_application", clean["id"])["overdue_flag"] is True
    assert crm.tags(cid) >= {"逾期客户"} and any(t["title"].startswith("客户贷款逾期") for t in crm.rows("task", customer=cid))
    # arrears at other banks show in the credit report: its 24-month overdue count flags the loan
    other = crm.customer()
    report = crm.credit_report(other, overdue_count_24m=2, max_overdue_days=35, score=610)
    assert crm.loan(other, "90000", credit_report=report)["overdue_flag"] is True
    # a customer with no arrears anywhere is not flagged, and an old arrear (beyond 24 months) does not count
    third = crm.customer()
    old = dt.date.today() - dt.timedelta(days=800)
    crm.post("ops1", "repayment_record", {"customer": third, "due_date": old.isoformat(), "amount_due": "3000.00", "overdue_days": 30,
                                          "paid_on": (old + dt.timedelta(days=30)).isoformat(), "amount_paid": "3000.00", "status": "paid"})
    assert crm.loan(third, "90000", credit_report=crm.credit_report(third))["overdue_flag"] is False


# ------------------------------------------------------------------ scope and masking


def test_credit_reports_are_scoped_through_the_customer_and_total_debt_is_masked(crm: Bank) -> None:
    mine, theirs = crm.customer("rm1"), crm.customer("rm2")
    my_report = crm.credit_report(mine, total_debt="1234567.80")
    their_report = crm.credit_report(theirs, who="rm2", total_debt="88000.00")
    # rm1 may neither read nor write credit reports of rm2's customers
    assert [r["id"] for r in crm.client.get("/api/v1/records/credit_report", headers=crm.login("rm1")).json["items"]] == [my_report]
    assert crm.client.get(f"/api/v1/records/credit_report/{their_report}", headers=crm.login("rm1")).status_code == 404
    resp = crm.client.post("/api/v1/records/credit_report", json={"customer": theirs, "report_date": "2026-01-05"}, headers=crm.login("rm1"))
    assert_error(resp, 403, "forbidden")
    assert crm.rows("credit_report", customer=theirs)[0]["id"] == their_report
    # the debt is C2: masked for relationship managers and supervisors, clear for credit and risk staff
    assert crm.get("rm1", "credit_report", my_report)["total_debt"] == "******"
    assert crm.get("sup1", "credit_report", my_report)["total_debt"] == "******"
    assert crm.get("credit1", "credit_report", my_report)["total_debt"] == "1234567.80"
    assert crm.get("risk1", "credit_report", their_report)["total_debt"] == "88000.00"
    # a masked field is no filter for those who see it masked (it would be an oracle)
    flt = json.dumps({"field": "total_debt", "op": "gt", "value": "1000000"})
    assert_error(crm.client.get("/api/v1/records/credit_report", query_string={"filter": flt}, headers=crm.login("rm1")), 400, "invalid_filter", "total_debt")
    assert crm.client.get("/api/v1/records/credit_report", query_string={"filter": flt}, headers=crm.login("risk1")).json["items"][0]["id"] == my_report
    # branch scope: the BJ credit officer sees BJ's customers only; the supervisor only the team's
    assert [r["id"] for r in crm.client.get("/api/v1/records/credit_report", headers=crm.login("credit1")).json["items"]] == [my_report]
    assert [r["id"] for r in crm.client.get("/api/v1/records/credit_report", headers=crm.login("sup2")).json["items"]] == [their_report]
    # the customer-360 relations carry them, in the reader's scope
    related = crm.client.get(f"/api/v1/records/customer/{mine}/related", headers=crm.login("rm1")).json["relations"]
    assert [r["id"] for r in related["credit_reports"]["items"]] == [my_report]
    assert {"repayment_records", "asset_allocations", "loan_applications"} <= set(related)


# ------------------------------------------------------------------ mortgage without wealth


def test_mortgage_without_wealth_customers_are_tagged_and_consenting_ones_get_an_opportunity(crm: Bank) -> None:
    today = dt.date.today()
    names = ("consenting", "no_consent", "with_wealth", "no_mortgage", "paid_off")
    cid = {n: crm.customer(name=f"客户{i}") for i, n in enumerate(names)}

    def hold(customer: int, code: str, amount: str, start: dt.date, maturity: dt.date) -> None:
        crm.post("rm1", "holding", {"customer": customer, "product": crm.product[code], "amount": amount,
                                    "start_date": start.isoformat(), "maturity_date": maturity.isoformat()})

    for n in ("consenting", "no_consent", "with_wealth"):
        hold(cid[n], "LN-MORT", "1200000.00", today - dt.timedelta(days=900), today + dt.timedelta(days=8000))
    hold(cid["paid_off"], "LN-MORT", "0.00", today - dt.timedelta(days=9000), today - dt.timedelta(days=30))
    hold(cid["with_wealth"], "WM-TEST", "200000.00", today - dt.timedelta(days=30), today + dt.timedelta(days=60))
    hold(cid["no_mortgage"], "LN-CONS", "50000.00", today - dt.timedelta(days=100), today + dt.timedelta(days=900))
    crm.post("rm1", "consent", {"customer": cid["consenting"], "purpose": "marketing", "granted_at": "2025-01-01T09:00:00", "channel": "counter"})
    crm.jobs()
    tagged = {n for n in names if "房贷无理财" in crm.tags(cid[n])}
    assert tagged == {"consenting", "no_consent"}
    opportunities = crm.rows("opportunity")
    assert [(o["customer"], o["owner"], o["stage"]) for o in opportunities] == [(cid["consenting"], crm.uid["rm1"], "identified")]
    assert opportunities[0]["title"].startswith("房贷客户理财交叉销售")
    listed = [(r["name"], Decimal(str(r["mortgage_balance"]))) for r in crm.report("rm1", "mortgage_without_wealth_list")]
    assert sorted(listed) == [("客户0", Decimal("1200000")), ("客户1", Decimal("1200000"))]
    assert crm.report("rm2", "mortgage_without_wealth_list") == []
    # no second opportunity on the next pass; buying a wealth product takes the customer out
    hold(cid["consenting"], "WM-TEST", "100000.00", today, today + dt.timedelta(days=90))
    crm.jobs()
    assert "房贷无理财" not in crm.tags(cid["consenting"]) and "房贷无理财" in crm.tags(cid["no_consent"])
    assert len(crm.rows("opportunity")) == 1


# ------------------------------------------------------------------ private banking


def test_allocation_drift_gives_the_private_banker_a_rebalancing_task(crm: Bank) -> None:
    today = dt.date.today().isoformat()
    drifting, steady = crm.customer("pb1", aum="12000000"), crm.customer("pb1", aum="8000000")

    def allocate(customer: int, cls: str, target: str, actual: str) -> None:
        t = Decimal(target)
        body = {"customer": customer, "as_of": today, "asset_class": cls, "target_pct": target, "min_pct": str(t - 5), "max_pct": str(t + 5), "actual_pct": actual}
        crm.post("pb1", "asset_allocation", body)

    allocate(drifting, "equity", "30", "41.50")
    allocate(drifting, "fixed_income", "40", "30.00")
    allocate(steady, "equity", "30", "33.00")
    resp = crm.client.post("/api/v1/records/asset_allocation", json={"customer": steady, "as_of": today, "asset_class": "cash", "target_pct": "10",
                                                                     "min_pct": "15", "max_pct": "20", "actual_pct": "10"}, headers=crm.login("pb1"))
    assert_error(resp, 422, "validation_error")
    crm.jobs()
    tasks = crm.rows("task")
    assert [(t["customer"], t["owner"], t["priority"]) for t in tasks] == [(drifting, crm.uid["pb1"], "high")]
    assert tasks[0]["title"].startswith("资产配置偏离")
    rows = crm.report("pb1", "asset_allocation_deviation")
    assert sorted((r["asset_class"], Decimal(str(r["actual_pct"]))) for r in rows) == [("equity", Decimal("41.5")), ("fixed_income", Decimal("30"))]
    assert crm.report("rm1", "asset_allocation_deviation") == []
    crm.jobs()
    assert len(crm.rows("task")) == 1, "once a month per customer"


# ------------------------------------------------------------------ seeds


def test_seeded_scripts_match_the_packages_tags_and_loan_products_have_their_kind(crm: Bank) -> None:
    resp = crm.client.get("/api/v1/records/sales_script", query_string={"limit": 100}, headers=crm.login("rm1"))
    scripts = [s for s in resp.json["items"] if s["code"].startswith("BANK-")]
    assert len(scripts) == 8 and all(s["active"] and s["compliance_note"] for s in scripts)
    customer = crm.svc.runtime.cached_snapshot().registry.entity("customer")
    tags = {t.value for ts in customer.tag_sets if ts.name in ("wealth_tier", "bank_segment", "credit_risk") for t in ts.tags}
    assert {s["match_tag"] for s in scripts} == tags
    kinds = {p["code"]: p["loan_kind"] for p in crm.rows("product") if p["code"].startswith("LN-")}
    assert kinds == {"LN-MORT": "mortgage", "LN-CONS": "consumer", "LN-BIZ": "business"}


# ------------------------------------------------------------------ demo data


def test_the_demo_seeder_brings_the_scenarios_to_life_on_a_small_core_demo(crm: Bank, bank: dict[str, Any]) -> None:
    from engine.demo import seed_demo as core_demo
    from engine.verticals import DemoContext, seeder

    records = crm.svc.records
    owners = [(crm.uid["rm1"], "BJ01"), (crm.uid["rm2"], "SH01")]
    core_demo(records, branches=bank["branch"], owners=owners, customers=40)
    ctx = DemoContext(records=records, owners=owners, branches=bank["branch"], users=crm.uid, scale=0.02)
    counts = seeder("bank")(ctx)
    assert all(counts[e] > 0 for e in ("holding", "repayment_record", "credit_report", "asset_allocation", "loan_application")), counts
    assert counts["product"] == 0, "the loan products came with the package"
    applications = crm.rows("loan_application")
    assert {a["status"] for a in applications} == {"draft", "branch_review", "risk_review", "committee_review", "approved", "rejected"}
    crm.jobs()
    # every customer has exactly one wealth tier, the one their AUM says
    bounds = {"普通": (Decimal(0), Decimal(50_000)), "金卡": (Decimal(50_000), Decimal(500_000)),
              "白金": (Decimal(500_000), Decimal(6_000_000)), "私行": (Decimal(6_000_000), Decimal(10) ** 12)}
    for c in crm.rows("customer"):
        (tier,) = crm.tags(c["id"]) & set(TIER_TAGS)
        assert bounds[tier][0] <= Decimal(c["aum"]) < bounds[tier][1]
    # the segment and the flags are what the data says, computed here independently
    products = {p["id"]: p for p in crm.rows("product")}
    today = dt.date.today()
    live: dict[int, set[str]] = {}
    for h in _all(crm, "holding"):
        if h["maturity_date"] is None or dt.date.fromisoformat(h["maturity_date"]) >= today:
            p = products[h["product"]]
            live.setdefault(h["customer"], set()).add("mortgage" if p.get("loan_kind") == "mortgage" else p["type"])
    segment = {c for c, kinds in live.items() if "mortgage" in kinds and "wealth" not in kinds}
    assert segment, "the demo has mortgage customers without wealth products"
    assert {c["id"] for c in crm.rows("customer") if "房贷无理财" in crm.tags(c["id"])} == segment
    owing = {r["customer"] for r in _all(crm, "repayment_record") if r["overdue_days"] > 0 and dt.date.fromisoformat(r["due_date"]) >= today - dt.timedelta(days=730)}
    reports = {r["id"]: r for r in _all(crm, "credit_report")}
    for a in crm.rows("loan_application"):
        arrears = a["customer"] in owing or (a["credit_report"] is not None and reports[a["credit_report"]]["overdue_count_24m"] > 0)
        open_ = a["status"] in ("draft", "branch_review", "risk_review", "committee_review")
        assert a["overdue_flag"] is (arrears and open_), a
    assert any(a["overdue_flag"] for a in crm.rows("loan_application")), "the demo shows a flagged application"


def _all(crm: Bank, entity: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = crm.svc.records.list(SYSTEM, entity, limit=500, cursor=cursor)
        out += page.items
        cursor = page.next_cursor
        if cursor is None:
            return out
