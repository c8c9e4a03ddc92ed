"""Triggers: the six shipped scenarios with an injected clock, cycles and idempotency (two
concurrent workers), consent exclusion, set-wise evaluation, and bad metadata refused whole."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.errors import InvalidFilter, MetadataInvalid
from engine.flows.conditions import condition_checker
from engine.flows.spec import build_automation, load_automation_documents
from engine.flows.tables import outbox_table, trigger_fire_table
from engine.flows.triggers import TriggerEngine
from engine.runtime import Runtime, utcnow
from engine.security.org import set_staff
from engine.security.principal import Principal
from engine.services.records import RecordService
from engine.store.tables import tag_table

SYSTEM = Principal.system("test")
SUP, RM, RM2 = 10, 11, 12
# The clock the jobs run on: a few days after "real" now, so records created now (created_at)
# can be old enough for the 3-day rules; every date below is relative to it.
NOW = utcnow().replace(hour=2, minute=0, second=0) + dt.timedelta(days=5)
TODAY = (NOW + dt.timedelta(hours=8)).date()  # business date in Asia/Shanghai


def days(n: int) -> str:
    return (TODAY + dt.timedelta(days=n)).isoformat()


def at(n: float) -> str:
    return (NOW + dt.timedelta(days=n)).isoformat() + "Z"


@pytest.fixture
def crm(runtime: Runtime, records: RecordService) -> Any:
    with runtime.begin() as conn:
        set_staff(conn, SUP)
        set_staff(conn, RM, supervisor_id=SUP)
        set_staff(conn, RM2, supervisor_id=SUP)
    engine = TriggerEngine(runtime, records).install()

    class Crm:
        def __init__(self) -> None:
            self.engine = engine
            self.wealth = records.create(SYSTEM, "product", {"code": "W1", "name": "稳健理财90天", "type": "wealth"})["id"]
            self.deposit = records.create(SYSTEM, "product", {"code": "D1", "name": "三年定期", "type": "deposit"})["id"]

        def customer(self, owner: int = RM, **kw: Any) -> int:
            return int(records.create(SYSTEM, "customer", {"name": "王小明", "aum": "100000", "owner": owner, **kw})["id"])

        def add(self, entity: str, **values: Any) -> int:
            return int(records.create(SYSTEM, entity, values)["id"])

        def rows(self, entity: str, **where: Any) -> list[dict[str, Any]]:
            flt = {"and": [{"field": k, "op": "eq", "value": v} for k, v in where.items()]}
            return records.list(SYSTEM, entity, filter=flt, limit=500).items

        def run(self, now: dt.datetime = NOW) -> dict[str, Any]:
            return engine.run_scheduled(now)

        def fired(self, name: str) -> int:
            with runtime.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(trigger_fire_table).where(trigger_fire_table.c.trigger == name)).scalar_one())

        def outbox(self, **where: Any) -> list[Any]:
            t = outbox_table
            with runtime.engine.connect() as conn:
                return list(conn.execute(select(t).where(*[t.c[k] == v for k, v in where.items()]).order_by(t.c.id)))

    return Crm()


def consent(crm: Any, cid: int, purpose: str = "marketing") -> None:
    crm.add("consent", customer=cid, purpose=purpose, granted_at=at(-100), channel="app", evidence="APP-勾选")


def test_wealth_product_maturing_within_15_days_gives_the_owner_one_task(crm: Any) -> None:
    a, b, c = crm.customer(), crm.customer(), crm.customer(owner=RM2)
    soon = crm.add("holding", customer=a, product=crm.wealth, amount="200000", start_date=days(-80), maturity_date=days(10))
    crm.add("holding", customer=b, product=crm.deposit, amount="50000", start_date=days(-300), maturity_date=days(10))  # not wealth
    crm.add("holding", customer=c, product=crm.wealth, amount="80000", start_date=days(-60), maturity_date=days(20))  # not yet
    result = crm.run()
    tasks = crm.rows("task")
    assert [(t["customer"], t["owner"], t["priority"]) for t in tasks] == [(a, RM, "high")]
    assert tasks[0]["title"].startswith("理财产品即将到期")
    assert dt.datetime.fromisoformat(tasks[0]["due_at"].rstrip("Z")) == NOW + dt.timedelta(days=3)
    assert next(r for r in result["triggers"] if r["trigger"] == "wealth_maturity_task")["fired"] == 1
    # the same pass again, and the next days: once per holding per maturity date
    crm.run()
    crm.run(NOW + dt.timedelta(days=1))
    assert len(crm.rows("task")) == 1
    # five days on, the other holding enters the window and fires; a renewed holding (a new
    # maturity date) fires again
    crm.run(NOW + dt.timedelta(days=6))  # (the first task is overdue by now: escalated, see below)
    maturity = lambda: sorted(t["customer"] for t in crm.rows("task") if t["title"].startswith("理财产品"))  # noqa: E731
    assert maturity() == [a, c]
    h = crm.rows("holding", id=soon)[0]
    crm.engine.records.update(SYSTEM, "holding", soon, {"maturity_date": days(100)}, h["version"])
    crm.run(NOW + dt.timedelta(days=90))
    assert maturity() == [a, a, c]


def test_balance_surge_gives_an_opportunity_only_to_consenting_customers(crm: Any) -> None:
    big, big_no_consent, spike, steady, outflow = (crm.customer() for _ in range(5))
    for cid in (big, spike, steady, outflow):
        consent(crm, cid)
    crm.add("transaction", customer=big, amount="650000", direction="in", channel="online", occurred_at=at(-5))
    crm.add("transaction", customer=big_no_consent, amount="650000", direction="in", channel="online", occurred_at=at(-5))
    # 120k in 30 days against a monthly average of ~13k over the year: above 3x and the minimum
    crm.add("transaction", customer=spike, amount="40000", direction="in", channel="counter", occurred_at=at(-200))
    crm.add("transaction", customer=spike, amount="120000", direction="in", channel="counter", occurred_at=at(-3))
    # 150k every month: 30-day inflow equals the monthly average, no surge
    for m in range(12):
        crm.add("transaction", customer=steady, amount="150000", direction="in", channel="rm", occurred_at=at(-2 - 30 * m))
    # large inflow offset by an outflow: net is what counts
    crm.add("transaction", customer=outflow, amount="700000", direction="in", channel="online", occurred_at=at(-10))
    crm.add("transaction", customer=outflow, amount="650000", direction="out", channel="online", occurred_at=at(-8))
    crm.run()
    opps = crm.rows("opportunity")
    assert sorted(o["customer"] for o in opps) == sorted([big, spike])
    assert {o["source"] for o in opps} == {"balance_surge"} and {o["owner"] for o in opps} == {RM}
    assert {o["stage"] for o in opps} == {"identified"}
    # once per month: the same month adds nothing, the next month fires again while it lasts
    crm.run(NOW + dt.timedelta(hours=1))
    assert len(crm.rows("opportunity")) == 2
    assert crm.engine.count("balance_surge_opportunity", NOW) == 2


def test_withdrawn_consent_takes_effect_on_the_next_pass(crm: Any, records: RecordService) -> None:
    cid = crm.customer()
    consent(crm, cid)
    records.update(SYSTEM, "consent", crm.rows("consent", customer=cid)[0]["id"], {"withdrawn_at": at(-1)}, 1)
    crm.add("transaction", customer=cid, amount="900000", direction="in", channel="online", occurred_at=at(-2))
    crm.run()
    assert crm.rows("opportunity") == []


@pytest.mark.parametrize("left, band", [(25, 30), (10, 15), (5, 7)])
def test_policy_expiring_gives_one_renewal_task_from_the_right_band(crm: Any, left: int, band: int) -> None:
    cid = crm.customer()
    crm.add("insurance_policy", policy_no=f"P{left}", customer=cid, premium="5000", start_date=days(left - 365), end_date=days(left))
    crm.add("insurance_policy", policy_no="RENEWED", customer=cid, start_date=days(-300), end_date=days(left), renewal_status="renewed")
    crm.run()
    tasks = crm.rows("task")
    assert len(tasks) == 1 and f"{band}天内到期" in tasks[0]["title"], tasks
    assert crm.fired(f"policy_renewal_{band}") == 1


def test_policy_reminders_step_through_30_15_7_as_the_date_nears(crm: Any) -> None:
    cid = crm.customer()
    crm.add("insurance_policy", policy_no="P-STEP", customer=cid, start_date=days(-340), end_date=days(25))
    for offset in (0, 1, 5, 11, 12, 18, 19, 24):
        crm.run(NOW + dt.timedelta(days=offset))
    titles = [t["title"] for t in crm.rows("task") if t["title"].startswith("保单")]
    assert len(titles) == 3 and all(any(f"{n}天内到期" in t for t in titles) for n in (30, 15, 7)), titles


def test_opportunity_without_contact_for_3_days_escalates_to_the_supervisor(crm: Any) -> None:
    quiet, called = crm.customer(), crm.customer()
    crm.add("opportunity", title="定投计划", customer=quiet, stage="identified", owner=RM)
    crm.add("opportunity", title="基金配置", customer=called, stage="identified", owner=RM)
    crm.add("opportunity", title="已联系", customer=quiet, stage="contacted", owner=RM)
    crm.add("interaction", customer=called, channel="phone", occurred_at=at(-1), summary="电话沟通", owner=RM)
    # two days after creation: too early
    crm.run(utcnow() + dt.timedelta(days=2))
    assert crm.rows("task") == []
    crm.run()
    tasks = crm.rows("task")
    assert [(t["customer"], t["owner"]) for t in tasks] == [(quiet, SUP)]
    notes = crm.outbox(recipient_kind="user", recipient_id=SUP, source="trigger:opportunity_no_contact_escalation")
    assert len(notes) == 1 and notes[0].subject == "商机跟进超时" and notes[0].status == "pending"
    crm.run(NOW + dt.timedelta(days=1))
    assert len(crm.rows("task")) == 1


def test_low_nps_score_opens_a_remediation_ticket_at_once(crm: Any) -> None:
    detractor, promoter, other = crm.customer(), crm.customer(owner=RM2), crm.customer()
    crm.add("survey_response", customer=detractor, survey="nps", score=5, responded_at=at(0))
    crm.add("survey_response", customer=promoter, survey="nps", score=9, responded_at=at(0))
    crm.add("survey_response", customer=other, survey="service_followup", score=2, responded_at=at(0))
    crm.add("survey_response", customer=other, survey="nps", score=6, responded_at=at(0))  # 6 is still a detractor
    tickets = crm.rows("ticket")
    assert sorted(t["customer"] for t in tickets) == sorted([detractor, other])
    assert {(t["category"], t["department"], t["status"], t["owner"]) for t in tickets} == {("complaint", "customer_service", "new", RM)}
    crm.run()  # scheduled passes leave change triggers alone
    assert len(crm.rows("ticket")) == 2


def test_a_failing_change_trigger_rolls_back_the_write(crm: Any, runtime: Runtime, records: RecordService) -> None:
    cid = crm.customer()

    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("action failed")

    original = crm.engine.fire
    crm.engine.fire = boom
    try:
        with pytest.raises(RuntimeError):
            crm.add("survey_response", customer=cid, survey="nps", score=1, responded_at=at(0))
    finally:
        crm.engine.fire = original
    assert crm.rows("survey_response") == [] and crm.rows("ticket") == []


def test_churn_risk_gives_a_retention_task_and_a_tag(crm: Any, runtime: Runtime) -> None:
    silent_unhappy, active, silent_happy_now = crm.customer(), crm.customer(), crm.customer()
    for cid in (silent_unhappy, active, silent_happy_now):
        crm.add("transaction", customer=cid, amount="1000", direction="in", channel="atm", occurred_at=at(-120))
    crm.add("transaction", customer=active, amount="500", direction="out", channel="atm", occurred_at=at(-10))
    crm.add("interaction", customer=silent_unhappy, channel="phone", occurred_at=at(-40), satisfaction=3, owner=RM)
    crm.add("interaction", customer=active, channel="phone", occurred_at=at(-40), satisfaction=2, owner=RM)
    # the last score counts: a bad one long ago, a good one since
    crm.add("interaction", customer=silent_happy_now, channel="visit", occurred_at=at(-60), satisfaction=2, owner=RM)
    crm.add("interaction", customer=silent_happy_now, channel="visit", occurred_at=at(-20), satisfaction=5, owner=RM)
    crm.add("interaction", customer=silent_happy_now, channel="sms", occurred_at=at(-5), owner=RM)  # no score
    crm.run()
    assert [t["customer"] for t in crm.rows("task")] == [silent_unhappy]
    with runtime.engine.connect() as conn:
        tagged = conn.execute(select(tag_table.c.record_id, tag_table.c.source).where(tag_table.c.tag == "流失预警")).all()
    assert [tuple(r) for r in tagged] == [(silent_unhappy, "rule")]


def test_overdue_task_is_escalated_once_and_due_tasks_are_reminded(crm: Any) -> None:
    cid = crm.customer()
    late = crm.add("task", title="回访客户", customer=cid, due_at=at(-2), status="open", owner=RM)
    crm.add("task", title="昨天到期", customer=cid, due_at=at(-0.5), status="open", owner=RM)  # less than a day late
    crm.add("task", title="明早到期", customer=cid, due_at=at(0.5), status="open", owner=RM)
    crm.add("task", title="已完成", customer=cid, due_at=at(-5), status="done", owner=RM)
    crm.run()
    escalated = crm.rows("task", id=late)[0]
    assert (escalated["status"], escalated["priority"], escalated["version"]) == ("escalated", "high", 2)
    follow = crm.rows("task", owner=SUP)
    assert len(follow) == 1 and follow[0]["title"].startswith("督办")
    assert [r.subject for r in crm.outbox(recipient_id=SUP)] == ["任务逾期升级"]
    assert [r.subject for r in crm.outbox(recipient_id=RM)] == ["任务即将到期"]
    history = crm.engine.records.history(SYSTEM, "task", late)["items"]
    assert history[0]["actor"] == "system:trigger:task_overdue_escalation" and history[0]["detail"]["changes"]["status"] == {"from": "open", "to": "escalated"}
    crm.run(NOW + dt.timedelta(hours=2))
    assert len(crm.rows("task", owner=SUP)) == 1
    assert len(crm.outbox(recipient_id=SUP, source="trigger:task_overdue_escalation")) == 1
    assert len(crm.outbox(recipient_id=SUP, source="trigger:task_due_reminder")) == 1  # the follow-up task is due soon


def test_two_concurrent_workers_fire_each_record_once(crm: Any, runtime: Runtime, records: RecordService) -> None:
    customers = [crm.customer() for _ in range(30)]
    for cid in customers:
        crm.add("holding", customer=cid, product=crm.wealth, amount="10000", start_date=days(-30), maturity_date=days(7))
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def worker() -> None:
        # a second engine, as a second worker process would have
        other = TriggerEngine(runtime, RecordService(runtime, records.authz))
        barrier.wait()
        results.append(other.run("wealth_maturity_task", NOW))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["fired"] for r in results) == [0, 30]
    assert len(crm.rows("task")) == 30 and crm.fired("wealth_maturity_task") == 30


def test_the_condition_is_one_set_wise_statement(crm: Any, runtime: Runtime) -> None:
    """The claim is one INSERT … SELECT with grouped derived tables, whatever the row count."""
    trig = runtime.snapshot().automation.triggers["balance_surge_opportunity"]
    sql = str(crm.engine.matching(runtime.snapshot(), trig, NOW).compile(runtime.engine))
    # the 30-day and 360-day sums come from one scan of the transactions (FILTER per window)
    assert sql.count("GROUP BY") == 1 and sql.count("FILTER (WHERE") == 2
    assert "e_consent" in sql


def _docs_with(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return load_automation_documents() + list(extra)


def test_bad_trigger_metadata_is_refused_whole_with_every_error(runtime: Runtime) -> None:
    snap = runtime.snapshot()
    bad = {
        "kind": "trigger",
        "name": "broken",
        "label": {"zh": "坏的", "en": "Broken"},
        "entity": "customer",
        "on": "schedule",
        "condition": {"and": [{"field": "no_such_field", "op": "eq", "value": 1}, {"field": "aum", "op": "gt", "value": {"param": "missing"}}]},
        "actions": [{"type": "create_opportunity", "title": {"zh": "商机", "en": "Opportunity"}, "source": "no_such_source"}],
    }
    with pytest.raises(MetadataInvalid) as exc:
        build_automation(snap.registry, _docs_with(bad), condition_checker(snap, runtime.dialect))
    pointers = {d["pointer"] for d in exc.value.details}
    assert "/trigger/broken/condition/and/1/value" in pointers  # unknown parameter
    assert "/trigger/broken/actions/0/source" in pointers
    # schema errors are listed all at once too
    worse = {"kind": "trigger", "name": "Bad Name", "label": {"zh": "x"}, "entity": "customer", "on": "sometimes", "condition": {}, "actions": []}
    with pytest.raises(MetadataInvalid) as exc:
        build_automation(snap.registry, _docs_with(worse), condition_checker(snap, runtime.dialect))
    assert len(exc.value.details) >= 4
    unknown_field = copy.deepcopy(bad)
    unknown_field["condition"] = {"field": "no_such_field", "op": "eq", "value": 1}
    unknown_field["actions"] = [{"type": "set", "values": {"aum": "not money", "nope": 1}}]
    with pytest.raises(MetadataInvalid) as exc:
        build_automation(snap.registry, _docs_with(unknown_field), condition_checker(snap, runtime.dialect))
    messages = {d["pointer"]: d["message"] for d in exc.value.details}
    assert "no_such_field" in messages["/trigger/broken/condition"]
    assert {"/trigger/broken/actions/0/values/aum", "/trigger/broken/actions/0/values/nope"} <= set(messages)


def test_aggregates_are_refused_in_plain_list_filters(crm: Any, records: RecordService) -> None:
    with pytest.raises(InvalidFilter):
        records.list(SYSTEM, "customer", filter={"agg": {"relation": "transactions", "fn": "count"}, "op": "gt", "value": 0})


def test_amounts_are_compared_exactly(crm: Any) -> None:
    """Money stays Decimal end to end: 500,000.01 net is above 500,000, 500,000.00 is not."""
    above, exact = crm.customer(), crm.customer()
    for cid in (above, exact):
        consent(crm, cid)
        # a big inflow long ago: the k-times-average branch stays out of it
        crm.add("transaction", customer=cid, amount="6000000", direction="in", channel="counter", occurred_at=at(-200))
    crm.add("transaction", customer=above, amount=str(Decimal("500000.01")), direction="in", channel="online", occurred_at=at(-1))
    crm.add("transaction", customer=exact, amount="500000.00", direction="in", channel="online", occurred_at=at(-1))
    crm.add("transaction", customer=exact, amount="0.00", direction="out", channel="online", occurred_at=at(-1))
    crm.run()
    assert [o["customer"] for o in crm.rows("opportunity")] == [above]


# ------------------------------------------------------------------ through the web app


def test_change_trigger_runs_inside_an_api_write_and_row_scope_holds(client: Any, login: Any) -> None:
    """rm1 records a low NPS answer through the API: the remediation ticket exists when the
    response returns, rm1 sees it, rm2 does not (not in the list, 404 on the record)."""
    rm1, rm2 = login("rm1"), login("rm2")
    customer = client.post("/api/v1/records/customer", json={"name": "赵敏", "aum": "30000"}, headers=rm1)
    assert customer.status_code == 201, customer.get_data(as_text=True)
    cid = customer.json["id"]
    resp = client.post(
        "/api/v1/records/survey_response", json={"customer": cid, "survey": "nps", "score": 3, "responded_at": "2026-11-20T08:00:00Z"}, headers=rm1
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    mine = client.get("/api/v1/records/ticket", headers=rm1).json["items"]
    assert [(t["customer"], t["category"], t["status"]) for t in mine] == [(cid, "complaint", "new")]
    assert client.get("/api/v1/records/ticket", headers=rm2).json["items"] == []
    assert client.get(f"/api/v1/records/ticket/{mine[0]['id']}", headers=rm2).status_code == 404
    # a bad answer is refused whole: no response, no ticket
    bad = client.post("/api/v1/records/survey_response", json={"customer": cid, "survey": "nps", "score": 11}, headers=rm1)
    assert bad.status_code == 422 and bad.json["error"]["details"][0]["field"] == "score"
    assert len(client.get("/api/v1/records/ticket", headers=rm1).json["items"]) == 1


def test_a_trigger_may_not_set_a_field_a_flow_governs(runtime: Runtime) -> None:
    snap = runtime.snapshot()
    sneaky = {
        "kind": "trigger", "name": "auto_approve", "label": {"zh": "自动审批", "en": "Auto approve"},
        "entity": "loan_application", "on": "schedule", "condition": {"field": "amount", "op": "lt", "value": "1000"},
        "actions": [{"type": "set", "values": {"status": "approved"}}],
    }
    with pytest.raises(MetadataInvalid) as exc:
        build_automation(snap.registry, _docs_with(sneaky), condition_checker(snap, runtime.dialect))
    assert [d["pointer"] for d in exc.value.details] == ["/trigger/auto_approve/actions/0/values/status"]
