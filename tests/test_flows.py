"""Approval flows end to end: loan approval with an injected clock, threshold routing, all-of
approval by distinct people, no self-approval, role and comment checks, SLA escalation (once),
the state field guarded against PATCH, bad flow metadata refused whole, ticket progress sent to
the customer, the history, the REST endpoints and the detail page's buttons."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, update

from engine.errors import Conflict, Forbidden, ValidationFailed
from engine.flows.tables import flow_state_table, flow_vote_table, outbox_table
from engine.runtime import POLICY_VERSION, utcnow
from engine.security.audit import audit_table
from engine.security.org import set_staff
from engine.security.principal import Principal
from engine.store.tables import meta_doc_table
from tests.api_helpers import assert_error, client, csrf_token, login, page_login, shared_app, wipe_records  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

T0 = utcnow().replace(microsecond=0) + dt.timedelta(minutes=5)
EXTRA_STAFF = (
    ("sup1", ["supervisor"]),
    ("sup2", ["supervisor"]),
    ("bm1", ["branch_manager"]),
    ("bm2", ["branch_manager"]),
    ("risk1", ["risk_control"]),
    ("risk2", ["risk_control"]),
    ("rmbm", ["relationship_manager", "branch_manager"]),
)


@pytest.fixture(scope="module", autouse=True)
def staff_accounts(shared_app: Any) -> None:
    sm = shared_app.appbuilder.sm
    with shared_app.app_context():
        for name, roles in EXTRA_STAFF:
            if sm.find_user(username=name) is None:
                sm.add_user(name, name, "T", f"{name}@t.local", [sm.find_role(r) for r in roles], password=TEST_PASSWORD)


@pytest.fixture
def app(shared_app: Any) -> Any:
    """The module's app, emptied (branches form a tree: unlink them before the wipe)."""
    runtime = shared_app.extensions["fincrm"].runtime
    with runtime.begin() as conn:
        conn.execute(update(runtime.cached_snapshot().tables["branch"]).values(parent=None))
    wipe_records(shared_app)
    return shared_app


class Bank:
    """The organisation of one test: branches BJ (rm1 under sup1; bm1) and SH (rm2 and rmbm under sup2; bm2)."""

    def __init__(self, app: Any, client: Any, login: Any) -> None:
        self.app, self.client, self.login = app, client, login
        self.svc = app.extensions["fincrm"]
        sm = app.appbuilder.sm
        with app.app_context():
            self.uid = {name: sm.find_user(username=name).id for name in ("admin", "rm1", "rm2", "ops1", *(n for n, _ in EXTRA_STAFF))}
        admin = login("admin")
        self.branch: dict[str, int] = {}
        for code, parent in (("HO", None), ("BJ", "HO"), ("BJ01", "BJ"), ("SH", "HO"), ("SH01", "SH")):
            resp = client.post("/api/v1/records/branch", json={"code": code, "name": code, "parent": self.branch.get(parent or "")}, headers=admin)
            assert resp.status_code == 201, resp.json
            self.branch[code] = resp.json["id"]
        rt = self.svc.runtime
        with rt.begin() as conn:
            u, b = self.uid, self.branch
            set_staff(conn, u["rm1"], branch_id=b["BJ01"], team="wealth", supervisor_id=u["sup1"])
            set_staff(conn, u["rmbm"], branch_id=b["SH01"], team="east", supervisor_id=u["sup2"])
            set_staff(conn, u["sup1"], branch_id=b["BJ"], team="wealth", supervisor_id=None)
            set_staff(conn, u["rm2"], branch_id=b["SH01"], team="east", supervisor_id=u["sup2"])
            set_staff(conn, u["sup2"], branch_id=b["SH"], team="east", supervisor_id=None)
            set_staff(conn, u["bm1"], branch_id=b["BJ"])
            set_staff(conn, u["bm2"], branch_id=b["SH"])
            rt.bump(conn, POLICY_VERSION)
        product = client.post("/api/v1/records/product", json={"code": "LOAN-1", "name": "个人经营贷", "type": "loan"}, headers=admin)
        assert product.status_code == 201, product.json
        self.product = product.json["id"]

    def principal(self, username: str) -> Principal:
        from engine.web.auth import principal_for_user_id

        with self.app.test_request_context():
            meta, policy = self.svc.runtime.stamps()
            self.svc.runtime.snapshot(meta)
            self.svc.authz.refresh(policy)
            entry = principal_for_user_id(self.uid[username], policy)
        assert entry is not None
        return entry[0]  # type: ignore[no-any-return]

    def customer(self, rm: str = "rm1") -> int:
        resp = self.client.post("/api/v1/records/customer", json={"name": f"{rm}的客户", "aum": "800000"}, headers=self.login(rm))
        assert resp.status_code == 201, resp.json
        return int(resp.json["id"])

    def loan(self, amount: str = "500000.00", rm: str = "rm1", **values: Any) -> dict[str, Any]:
        body = {"customer": self.customer(rm), "product": self.product, "amount": amount, "term_months": 36, "purpose": "经营周转", **values}
        resp = self.client.post("/api/v1/records/loan_application", json=body, headers=self.login(rm))
        assert resp.status_code == 201, resp.json
        return resp.json  # type: ignore[no-any-return]

    def move(self, username: str, lid: int, name: str, comment: str | None = None, at: dt.datetime | None = None) -> dict[str, Any]:
        """A transition through the service, on the injected clock."""
        return self.svc.flows.transition(self.principal(username), "loan_application", lid, name, comment, at or T0)  # type: ignore[no-any-return]

    def post(self, username: str, lid: int, name: str, **body: Any) -> Any:
        return self.client.post(f"/api/v1/records/loan_application/{lid}/transitions/{name}", json=body, headers=self.login(username))

    def get(self, lid: int, entity: str = "loan_application", who: str = "admin") -> dict[str, Any]:
        resp = self.client.get(f"/api/v1/records/{entity}/{lid}", headers=self.login(who))
        assert resp.status_code == 200, resp.json
        return resp.json  # type: ignore[no-any-return]

    def state_row(self, lid: int, flow: str = "loan_approval") -> Any:
        fs = flow_state_table
        with self.svc.runtime.engine.connect() as conn:
            return conn.execute(select(fs).where(fs.c.flow == flow, fs.c.record_id == lid)).first()

    def outbox(self, **where: Any) -> list[Any]:
        t = outbox_table
        with self.svc.runtime.engine.connect() as conn:
            return list(conn.execute(select(t).where(*[t.c[k] == v for k, v in where.items()]).order_by(t.c.id)))

    def audit_count(self, lid: int, entity: str = "loan_application") -> int:
        t = audit_table
        with self.svc.runtime.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(t.c.entity == entity, t.c.record_id == lid)).scalar_one())

    def tasks_for(self, username: str) -> list[dict[str, Any]]:
        flt = {"field": "owner", "op": "eq", "value": self.uid[username]}
        return self.svc.records.list(Principal.system("test"), "task", filter=flt, limit=500).items  # type: ignore[no-any-return]


@pytest.fixture
def bank(app: Any, client: Any, login: Any) -> Iterator[Bank]:
    yield Bank(app, client, login)


# ------------------------------------------------------------------ the loan approval flow


def test_full_loan_approval_with_an_injected_clock(bank: Bank) -> None:
    loan = bank.loan("500000.00")
    lid = loan["id"]
    assert loan["status"] == "draft" and bank.state_row(lid).state == "draft"
    # the RM sees only what an RM may do
    rm_view = bank.svc.flows.available(bank.principal("rm1"), "loan_application", lid, T0)
    assert [t["name"] for t in rm_view["transitions"]] == ["submit", "withdraw"]

    out = bank.move("rm1", lid, "submit", at=T0)
    assert out["transition"] == {"flow": "loan_approval", "transition": "submit", "moved": True, "from": "draft", "to": "branch_review", "vote": None}
    assert out["record"]["status"] == "branch_review" and out["record"]["version"] == 2
    row = bank.state_row(lid)
    assert (row.state, row.entry, row.entered_at, row.entered_by, row.submitted_by) == ("branch_review", 2, T0, bank.uid["rm1"], bank.uid["rm1"])
    sup_view = bank.svc.flows.available(bank.principal("sup1"), "loan_application", lid, T0)
    assert sup_view["sla_due"] == (T0 + dt.timedelta(hours=24)).isoformat() + "Z"
    assert [t["name"] for t in sup_view["transitions"]] == ["branch_approve", "reject"]
    assert [n.subject for n in bank.outbox(record_id=lid, recipient_id=bank.uid["sup1"])] == ["贷款申请待审核"]

    bank.move("sup1", lid, "branch_approve", "材料齐全", at=T0 + dt.timedelta(hours=2))
    out = bank.move("risk1", lid, "risk_approve", "风险可控", at=T0 + dt.timedelta(hours=5))
    assert out["transition"]["to"] == "approved"  # 500k: no committee
    record = bank.get(lid)
    assert (record["status"], record["version"]) == ("approved", 4)
    assert record["updated_at"] == (T0 + dt.timedelta(hours=5)).isoformat() + "Z"
    assert bank.state_row(lid).entered_by == bank.uid["risk1"]
    assert [n.subject for n in bank.outbox(record_id=lid, recipient_id=bank.uid["rm1"])] == ["贷款申请已批准"]
    assert bank.svc.flows.available(bank.principal("rm1"), "loan_application", lid, T0)["transitions"] == []

    # the record's history shows each step, who took it and the comments
    history = bank.client.get(f"/api/v1/records/loan_application/{lid}/history", headers=bank.login("rm1")).json["items"]
    steps = [(h["actor"], h["detail"]["transition"], h["detail"]["from"], h["detail"]["to"], h["detail"]["comment"]) for h in history if h["action"] == "transition"]
    assert steps == [
        ("risk1", "risk_approve", "risk_review", "approved", "风险可控"),
        ("sup1", "branch_approve", "branch_review", "risk_review", "材料齐全"),
        ("rm1", "submit", "draft", "branch_review", None),
    ]
    assert history[0]["detail"]["changes"] == {"status": {"from": "risk_review", "to": "approved"}}


@pytest.mark.parametrize("amount, after_risk", [("1000000.00", "approved"), ("1000000.01", "committee_review"), ("2500000", "committee_review")])
def test_amount_routes_past_or_to_the_credit_committee(bank: Bank, amount: str, after_risk: str) -> None:
    lid = bank.loan(amount)["id"]
    bank.move("rm1", lid, "submit")
    bank.move("bm1", lid, "branch_approve")  # the branch manager may approve instead of the supervisor
    assert bank.move("risk1", lid, "risk_approve")["record"]["status"] == after_risk


def test_the_committee_needs_risk_control_and_a_branch_manager_as_two_people(bank: Bank) -> None:
    lid = bank.loan("3000000")["id"]
    bank.move("rm1", lid, "submit")
    bank.move("sup1", lid, "branch_approve")
    bank.move("risk1", lid, "risk_approve")
    version = bank.get(lid)["version"]

    first = bank.move("risk1", lid, "committee_approve", "同意")
    assert first["transition"]["moved"] is False and first["transition"]["vote"] == {"decision": "approve", "slot": 0, "pending": [1]}
    assert first["record"]["status"] == "committee_review" and first["record"]["version"] == version  # a vote is not a change
    assert first["flow"]["approval"]["pending"] == [1] and [v["user_id"] for v in first["flow"]["votes"]] == [bank.uid["risk1"]]
    # the same person twice, or a second risk officer for the filled slot: still one vote
    with pytest.raises(Conflict):
        bank.move("risk1", lid, "committee_approve")
    resp = bank.post("risk2", lid, "committee_approve")
    assert_error(resp, 409, "conflict")
    assert [t["name"] for t in bank.svc.flows.available(bank.principal("risk2"), "loan_application", lid)["transitions"]] == ["reject"]
    assert bank.get(lid)["status"] == "committee_review"
    # the branch manager fills the other slot: approved
    done = bank.move("bm1", lid, "committee_approve", "同意")
    assert done["transition"]["moved"] is True and done["record"]["status"] == "approved"
    with bank.svc.runtime.engine.connect() as conn:
        v = flow_vote_table
        votes = conn.execute(select(v.c.user_id, v.c.slot).where(v.c.record_id == lid, v.c.state == "committee_review").order_by(v.c.id)).all()
    assert [tuple(r) for r in votes] == [(bank.uid["risk1"], 0), (bank.uid["bm1"], 1)]


def test_nobody_approves_what_they_submitted_own_or_created(bank: Bank) -> None:
    # rmbm is a relationship manager and a branch manager: their own application needs someone else
    lid = bank.loan("800000", rm="rmbm")["id"]
    bank.move("rmbm", lid, "submit")
    assert [t["name"] for t in bank.svc.flows.available(bank.principal("rmbm"), "loan_application", lid)["transitions"]] == ["withdraw"]
    before = (bank.get(lid)["version"], bank.audit_count(lid))
    resp = bank.post("rmbm", lid, "branch_approve")
    assert_error(resp, 403, "forbidden")
    assert "submitted, own or created" in resp.json["error"]["message"]
    assert (bank.get(lid)["version"], bank.audit_count(lid)) == before and bank.get(lid)["status"] == "branch_review"
    assert bank.move("bm2", lid, "branch_approve")["record"]["status"] == "risk_review"


def test_a_role_without_the_right_gets_403_and_nothing_changes(bank: Bank) -> None:
    lid = bank.loan()["id"]
    bank.move("rm1", lid, "submit")
    before = (bank.get(lid), bank.audit_count(lid), tuple(bank.state_row(lid)))
    for who in ("ops1", "rm1", "rm2"):  # roles the transition does not name
        assert_error(bank.post(who, lid, "branch_approve", comment="同意"), 403, "forbidden")
    # an approver role, but the application is outside their scope: not even found
    assert_error(bank.post("sup2", lid, "branch_approve"), 404)
    assert_error(bank.post("bm2", lid, "branch_approve"), 404)
    assert (bank.get(lid), bank.audit_count(lid), tuple(bank.state_row(lid))) == before
    with pytest.raises(Forbidden):
        bank.move("risk1", lid, "branch_approve")


def test_rejecting_needs_a_comment(bank: Bank) -> None:
    lid = bank.loan()["id"]
    bank.move("rm1", lid, "submit")
    before = (bank.get(lid)["version"], bank.audit_count(lid))
    for body in ({}, {"comment": "   "}):
        resp = bank.post("sup1", lid, "reject", **body)
        assert_error(resp, 422, "validation_error", field="comment")
    assert (bank.get(lid)["version"], bank.audit_count(lid)) == before
    resp = bank.post("sup1", lid, "reject", comment="负债率过高")
    assert resp.status_code == 200, resp.json
    assert resp.json["record"]["status"] == "rejected" and resp.json["transition"]["vote"]["decision"] == "reject"
    assert [n.subject for n in bank.outbox(record_id=lid, recipient_id=bank.uid["rm1"])] == ["贷款申请未获批准"]
    history = bank.client.get(f"/api/v1/records/loan_application/{lid}/history", headers=bank.login("rm1")).json["items"]
    assert history[0]["action"] == "transition" and history[0]["detail"]["comment"] == "负债率过高"


def test_the_rm_may_withdraw_only_before_risk_review(bank: Bank) -> None:
    a, b = bank.loan()["id"], bank.loan()["id"]
    assert bank.post("rm1", a, "withdraw").json["record"]["status"] == "withdrawn"
    bank.move("rm1", b, "submit")
    bank.move("sup1", b, "branch_approve")
    resp = bank.post("rm1", b, "withdraw")
    assert_error(resp, 409, "conflict", field="status")


def test_a_transition_condition_must_hold(bank: Bank) -> None:
    lid = bank.loan(term_months=None)["id"]  # the term is needed before submitting
    resp = bank.post("rm1", lid, "submit")
    assert_error(resp, 422, "validation_error", field="transition")
    assert bank.get(lid)["status"] == "draft"
    patched = bank.client.patch(f"/api/v1/records/loan_application/{lid}", json={"term_months": 12}, headers={**bank.login("rm1"), "If-Match": "1"})
    assert patched.status_code == 200, patched.json
    assert bank.post("rm1", lid, "submit").json["record"]["status"] == "branch_review"


# ------------------------------------------------------------------ SLA escalation


def test_overdue_steps_escalate_once_to_the_supervisor_then_to_the_branch_manager(bank: Bank) -> None:
    lid = bank.loan()["id"]
    bank.move("rm1", lid, "submit", at=T0)
    flows = bank.svc.flows
    assert flows.escalate_overdue(T0 + dt.timedelta(hours=23))["escalated"] == 0
    result = flows.escalate_overdue(T0 + dt.timedelta(hours=25))
    assert (result["escalated"], result["tasks"], result["notifications"]) == (1, 1, 1)
    tasks = bank.tasks_for("sup1")
    assert len(tasks) == 1 and tasks[0]["title"].startswith("审批超时：贷款审批 · 支行审核") and tasks[0]["priority"] == "high"
    escalations = bank.outbox(record_id=lid, source="flow:loan_approval", recipient_id=bank.uid["sup1"])
    assert [n.subject for n in escalations] == ["贷款申请待审核", "审批超时：贷款审批 · 支行审核"]
    assert bank.state_row(lid).escalated_at == T0 + dt.timedelta(hours=25)
    # a second pass (and a later one) adds nothing
    assert flows.escalate_overdue(T0 + dt.timedelta(hours=25))["escalated"] == 0
    assert flows.escalate_overdue(T0 + dt.timedelta(hours=40))["escalated"] == 0
    assert len(bank.tasks_for("sup1")) == 1 and len(bank.outbox(record_id=lid, recipient_id=bank.uid["sup1"])) == 2
    history = bank.client.get(f"/api/v1/records/loan_application/{lid}/history", headers=bank.login("admin")).json["items"]
    assert history[0]["action"] == "flow_escalated" and history[0]["detail"]["recipients"] == [bank.uid["sup1"]]

    # risk review: 48 h, escalated to the branch managers over the owner's branch (bm1, not bm2)
    entered = T0 + dt.timedelta(hours=26)
    bank.move("sup1", lid, "branch_approve", at=entered)
    assert flows.escalate_overdue(entered + dt.timedelta(hours=47))["escalated"] == 0
    assert flows.escalate_overdue(entered + dt.timedelta(hours=49))["tasks"] == 1
    assert len(bank.tasks_for("bm1")) == 1 and bank.tasks_for("bm2") == []
    assert flows.escalate_overdue(entered + dt.timedelta(hours=60))["escalated"] == 0


def test_an_overdue_record_with_nobody_to_escalate_to_is_claimed_once(bank: Bank) -> None:
    cid = bank.customer()
    resp = bank.client.post(
        "/api/v1/records/ticket", json={"subject": "网银无法登录", "customer": cid, "category": "service"}, headers=bank.login("ops1")
    )
    assert resp.status_code == 201, resp.json
    tid = resp.json["id"]
    with bank.svc.runtime.begin() as conn:  # created "now": make its entry older than the 4 h SLA
        conn.execute(flow_state_table.update().where(flow_state_table.c.record_id == tid).values(entered_at=T0 - dt.timedelta(hours=5)))
    # the ticket's owner is ops1 (no supervisor): nobody to escalate to, but the visit is claimed once
    assert bank.svc.flows.escalate_overdue(T0)["steps"][0]["tasks"] == 0
    assert bank.svc.flows.escalate_overdue(T0)["escalated"] == 0


# ------------------------------------------------------------------ the state field is guarded


def test_the_state_field_changes_only_through_transitions(bank: Bank) -> None:
    loan = bank.loan()
    lid = loan["id"]
    rm1 = bank.login("rm1")
    resp = bank.client.patch(f"/api/v1/records/loan_application/{lid}", json={"status": "approved"}, headers={**rm1, "If-Match": "1"})
    assert_error(resp, 422, "validation_error", field="status")
    assert "changed only through the flow's transitions" in resp.json["error"]["message"]
    assert bank.get(lid)["status"] == "draft" and bank.get(lid)["version"] == 1
    # the admin too: there is no bypass
    resp = bank.client.patch(f"/api/v1/records/loan_application/{lid}", json={"status": "approved"}, headers={**bank.login("admin"), "If-Match": "1"})
    assert_error(resp, 422, field="status")
    # other fields (and the unchanged state) save as usual
    ok = bank.client.patch(f"/api/v1/records/loan_application/{lid}", json={"purpose": "设备采购", "status": "draft"}, headers={**rm1, "If-Match": "1"})
    assert ok.status_code == 200 and ok.json["purpose"] == "设备采购"
    # a new record starts in the initial state
    body = {"customer": bank.customer(), "amount": "100", "purpose": "x", "status": "approved"}
    assert_error(bank.client.post("/api/v1/records/loan_application", json=body, headers=rm1), 422, field="status")


def test_bulk_loaded_records_are_guarded_too(bank: Bank) -> None:
    """Records loaded in bulk (imports, seeding) have no state row yet: the guard still holds."""
    cid = bank.customer()
    system = Principal.system("import")
    (tid,) = bank.svc.records.bulk_insert(system, "ticket", [{"subject": "历史工单", "customer": cid, "category": "inquiry", "status": "resolved"}])
    assert bank.state_row(tid, "ticket_handling") is None
    resp = bank.client.patch(f"/api/v1/records/ticket/{tid}", json={"status": "new"}, headers={**bank.login("ops1"), "If-Match": "1"})
    assert_error(resp, 422, field="status")
    ok = bank.client.patch(f"/api/v1/records/ticket/{tid}", json={"subject": "历史工单（补录）"}, headers={**bank.login("ops1"), "If-Match": "1"})
    assert ok.status_code == 200
    assert bank.state_row(tid, "ticket_handling").state == "resolved"
    resp = bank.client.post(f"/api/v1/records/ticket/{tid}/transitions/reopen", json={"comment": "客户反馈未解决"}, headers=bank.login("ops1"))
    assert resp.status_code == 200 and resp.json["record"]["status"] == "in_progress"


# ------------------------------------------------------------------ tickets: progress to the customer


def test_ticket_progress_reaches_the_customer_through_the_outbox(bank: Bank) -> None:
    cid = bank.customer()
    ops = bank.login("ops1")
    resp = bank.client.post("/api/v1/records/ticket", json={"subject": "转账失败", "customer": cid, "category": "complaint"}, headers=ops)
    assert resp.status_code == 201, resp.json
    tid = resp.json["id"]
    for name, body in (("start", {}), ("resolve", {"comment": "已退回款项"}), ("reopen", {"comment": "客户仍未收到"}), ("resolve", {"comment": "已到账"}), ("close", {})):
        r = bank.client.post(f"/api/v1/records/ticket/{tid}/transitions/{name}", json=body, headers=ops)
        assert r.status_code == 200, (name, r.json)
    notes = bank.outbox(recipient_kind="customer", recipient_id=cid, entity="ticket")
    assert [n.subject for n in notes] == ["您的工单已受理", "您的工单正在处理", "您的工单已解决", "您的工单正在处理", "您的工单已解决", "您的工单已关闭"]
    assert {n.record_id for n in notes} == {tid} and {n.source for n in notes} == {"flow:ticket_handling"}
    history = bank.client.get(f"/api/v1/records/ticket/{tid}/history", headers=ops).json["items"]
    assert [h["detail"]["transition"] for h in history if h["action"] == "transition"] == ["close", "resolve", "reopen", "resolve", "start"]
    assert_error(bank.client.post(f"/api/v1/records/ticket/{tid}/transitions/resolve", json={}, headers=ops), 409, "conflict")


# ------------------------------------------------------------------ REST details


def test_the_flow_endpoint_and_transition_errors(bank: Bank) -> None:
    lid = bank.loan()["id"]
    rm1 = bank.login("rm1")
    flow = bank.client.get(f"/api/v1/records/loan_application/{lid}/flow", headers=rm1)
    assert flow.status_code == 200
    assert flow.json["state"] == {"name": "draft", "label": {"zh": "草稿", "en": "Draft"}} and flow.json["sla_due"] is None
    assert [s["name"] for s in flow.json["states"]][:3] == ["draft", "branch_review", "risk_review"]
    assert_error(bank.client.post(f"/api/v1/records/loan_application/{lid}/transitions/fly", json={}, headers=rm1), 404, "not_found")
    stale = bank.client.post(f"/api/v1/records/loan_application/{lid}/transitions/submit", json={}, headers={**rm1, "If-Match": "7"})
    assert_error(stale, 409, "version_conflict")
    assert_error(bank.client.post(f"/api/v1/records/loan_application/{lid}/transitions/submit", json={"comment": 5}, headers=rm1), 422, field="comment")
    assert_error(bank.client.post(f"/api/v1/records/loan_application/{lid}/transitions/submit", json={"when": 1}, headers=rm1), 400)
    assert_error(bank.client.post(f"/api/v1/records/customer/{bank.customer()}/transitions/submit", json={}, headers=rm1), 404)
    ok = bank.client.post(f"/api/v1/records/loan_application/{lid}/transitions/submit", headers={**rm1, "If-Match": "1"})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"' and ok.json["flow"]["state"]["name"] == "branch_review"
    # another RM cannot see the application at all
    assert_error(bank.client.get(f"/api/v1/records/loan_application/{lid}/flow", headers=bank.login("rm2")), 404)
    assert_error(bank.post("rm2", lid, "withdraw"), 404)


# ------------------------------------------------------------------ metadata


BAD_FLOW = {
    "label": {"zh": "坏流程", "en": "Broken flow"},
    "entity": "loan_application",
    "field": "purpose",  # not an enum
    "initial": "nowhere",
    "states": [
        {"name": "draft", "label": {"zh": "草稿", "en": "Draft"}, "escalate": "supervisor"},
        {"name": "review", "label": {"zh": "审核", "en": "Review"}, "approval": {"mode": "one", "approvers": [{"role": "a"}, {"role": "b"}], "approve": "ok", "reject": "nope"}},
    ],
    "transitions": [
        {"name": "ok", "label": {"zh": "通过", "en": "OK"}, "from": ["limbo"], "to": "heaven", "roles": ["supervisor"], "condition": {"field": "no_such_field", "op": "eq", "value": 1}},
        {"name": "route", "label": {"zh": "分流", "en": "Route"}, "from": ["draft"], "roles": ["supervisor"], "to": [{"state": "review"}, {"when": {"field": "amount", "op": "gt", "value": "1"}, "state": "draft"}]},
    ],
}


def test_bad_flow_metadata_is_refused_whole_with_every_error(bank: Bank) -> None:
    admin = bank.login("admin")

    def stored() -> int:
        with bank.svc.runtime.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(meta_doc_table)).scalar_one())

    before = stored()
    resp = bank.client.put("/api/v1/meta/flows/broken", json=BAD_FLOW, headers=admin)
    assert_error(resp, 422, "metadata_invalid")
    pointers = {d["pointer"] for d in resp.json["error"]["details"]}
    expected = {
        "/flow/broken/field",
        "/flow/broken/initial",
        "/flow/broken/states/0/escalate",
        "/flow/broken/states/1/approval/approvers",
        "/flow/broken/states/1/approval/reject",
        "/flow/broken/transitions/0/from/0",
        "/flow/broken/transitions/0/to",
        "/flow/broken/transitions/0/condition",
        "/flow/broken/transitions/1/to/0",
        "/flow/broken/transitions/1/to/1",
    }
    assert expected <= pointers, expected - pointers
    assert stored() == before
    assert_error(bank.client.get("/api/v1/meta/flows/broken", headers=admin), 404)
    # shape errors are listed all at once, before the registry is even asked
    worse = bank.client.put("/api/v1/meta/flows/broken", json={"label": {"zh": "x"}, "entity": "Loan", "states": [], "transitions": "none"}, headers=admin)
    assert_error(worse, 422, "metadata_invalid")
    assert len(worse.json["error"]["details"]) >= 5 and stored() == before
    # configuring flows is not for relationship managers
    assert_error(bank.client.put("/api/v1/meta/flows/broken", json=BAD_FLOW, headers=bank.login("rm1")), 403)


def test_flow_and_trigger_documents_are_listed_read_and_replaced(bank: Bank) -> None:
    admin = bank.login("admin")
    flows = bank.client.get("/api/v1/meta/flows", headers=admin).json["items"]
    assert {f["name"]: (f["entity"], f["source"]) for f in flows} == {"loan_approval": ("loan_application", "core"), "ticket_handling": ("ticket", "core")}
    triggers = bank.client.get("/api/v1/meta/triggers", headers=admin).json["items"]
    assert "task_overdue_escalation" in {t["name"] for t in triggers}
    doc = bank.client.get("/api/v1/meta/flows/ticket_handling", headers=admin).json
    assert doc["kind"] == "flow" and doc["states"][0]["sla_hours"] == 4
    try:
        doc["states"][0]["sla_hours"] = 6
        saved = bank.client.put("/api/v1/meta/flows/ticket_handling", json=doc, headers=admin)
        assert saved.status_code == 200, saved.json
        assert bank.svc.runtime.snapshot().automation.flows["ticket_handling"].state("new").sla_hours == 6
        listed = {f["name"]: f for f in bank.client.get("/api/v1/meta/flows", headers=admin).json["items"]}
        assert (listed["ticket_handling"]["source"], listed["ticket_handling"]["version"]) == ("runtime", 1)
    finally:
        doc["states"][0]["sla_hours"] = 4
        assert bank.client.put("/api/v1/meta/flows/ticket_handling", json=doc, headers=admin).status_code == 200
    trig = bank.client.get("/api/v1/meta/triggers/task_overdue_escalation", headers=admin).json
    trig["condition"] = {"field": "nope", "op": "eq", "value": 1}
    bad = bank.client.put("/api/v1/meta/triggers/task_overdue_escalation", json=trig, headers=admin)
    assert_error(bad, 422, "metadata_invalid")
    assert any(d["pointer"] == "/trigger/task_overdue_escalation/condition" for d in bad.json["error"]["details"])


# ------------------------------------------------------------------ the detail page


def test_the_detail_page_offers_the_callers_transitions_with_a_comment_box(bank: Bank) -> None:
    lid = bank.loan()["id"]
    bank.move("rm1", lid, "submit")
    client = bank.app.test_client()
    assert page_login(client, "sup1").status_code in (302, 303)
    page = client.get(f"/e/loan_application/{lid}").get_data(as_text=True)
    assert 'id="record-flow"' in page and "支行审核" in page and 'name="comment"' in page
    assert 'data-transition="branch_approve"' in page and 'data-transition="reject"' in page and 'data-transition="withdraw"' not in page
    token = csrf_token(page)
    # no CSRF token: refused, nothing changes
    refused = client.post(f"/e/loan_application/{lid}/transitions/branch_approve", data={"comment": "同意"})
    assert refused.status_code in (400, 403)
    assert bank.get(lid)["status"] == "branch_review"
    # reject without a comment: a Chinese message, nothing changes
    resp = client.post(f"/e/loan_application/{lid}/transitions/reject", data={"csrf_token": token}, follow_redirects=True)
    assert "此操作须填写审批意见" in resp.get_data(as_text=True) and bank.get(lid)["status"] == "branch_review"
    resp = client.post(f"/e/loan_application/{lid}/transitions/branch_approve", data={"csrf_token": token, "comment": "同意上报"}, follow_redirects=True)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "已支行审核通过，当前状态：风控审查" in text
    assert bank.get(lid)["status"] == "risk_review"
    assert "同意上报" in text and 'data-action="transition"' in text  # the history on the page
    # English
    client.get("/lang/en")
    page = client.get(f"/e/loan_application/{lid}").get_data(as_text=True)
    assert "Risk review" in page and "Nothing for you to do in this flow now" in page
    # the edit form leaves the state field to the flow
    form = client.get(f"/e/loan_application/{lid}/edit").get_data(as_text=True)
    assert 'name="status"' not in form and 'name="purpose"' in form
