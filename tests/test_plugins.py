"""Plugins (issue #8): each hook's contract — a broken plugin is a PluginError naming it — and
each documented example against a local HTTP fake: the ``cn_uscc`` field type end to end
through the API, the ``webhook`` trigger action queued in the trigger's transaction and sent
after it (success, a 500 retried, a dead letter replayed), the ``sms`` channel through the
real outbox (the mobile in clear to the gateway only), and the ``http_quotes`` feed checking
every value it is given."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
from decimal import Decimal
from typing import Any, Iterator

import pytest
from sqlalchemy import String, delete, select

import plugins.cn_uscc as cn_uscc
import plugins.http_quotes as http_quotes
import plugins.sms_gateway as sms_gateway
import plugins.webhook_action as webhook_action
from engine import plugins
from engine.errors import MetadataInvalid
from engine.fieldtypes import FIELD_TYPES, TEXT_OPS, FieldType
from engine.flows import jobs
from engine.flows.actions import deliver_actions, load_targets, run_actions
from engine.flows.conditions import condition_checker
from engine.flows.interfaces import interface_call_table, interface_dead_letter_table
from engine.flows.outbox import deliver_pending, enqueue_many
from engine.flows.spec import ActionSpec, build_automation, load_automation_documents
from engine.flows.tables import action_queue_table, outbox_table, trigger_fire_table
from engine.flows.triggers import TriggerEngine
from engine.meta.spec import FieldSpec, Label
from engine.runtime import utcnow
from engine.security.audit import audit_table
from engine.security.authz import effective_mask
from engine.security.masking import mask_value
from tests.api_helpers import Logins, assert_error, module_app, wipe_records
from tests.http_fake import HttpFake, Reply, Request

USCC = "91110000600037341L"  # the GB 32100 sample code (stdnum's doctest)
ID_NUMBER = "11010519491231002X"
MOBILE = "13800138000"
SIGN = "【测试银行】"
LABEL = {"zh": "测试", "en": "Test"}
CALLS = "/api/v1/interfaces/calls"
LETTERS = "/api/v1/interfaces/dead-letters"
VIP = {"field": "aum", "op": "gte", "value": "1000000"}


# ---------------------------------------------------------------------- the module's app


@pytest.fixture(scope="module")
def hooks() -> Iterator[HttpFake]:
    with HttpFake(default=Reply(200, {"received": True})) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway() -> Iterator[HttpFake]:
    with HttpFake(default=Reply(200, {"code": 0, "message": "accepted"})) as fake:
        yield fake


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory, hooks: HttpFake, gateway: HttpFake) -> Iterator[Any]:
    """The example plugins switched on against the fakes, then an app (so its metadata may use
    them from the start), with a tiny retry policy."""
    examples = (cn_uscc, webhook_action, sms_gateway)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINCRM_WEBHOOK_URL", hooks.url + "/crm/events")
        mp.setenv("FINCRM_WEBHOOK_ALLOW", hooks.url + "/crm/")
        mp.setenv("FINCRM_WEBHOOK_SECRET", "webhook-signing-secret")
        mp.setenv("FINCRM_SMS_URL", gateway.url + "/sms/send")
        mp.setenv("FINCRM_SMS_SIGN", SIGN)
        mp.setenv("FINCRM_INTERFACE_ATTEMPTS", "3")
        mp.setenv("FINCRM_INTERFACE_BACKOFF", "0.01")
        mp.setenv("FINCRM_INTERFACE_TIMEOUT", "2")
        for module in examples:
            plugins.register(module)
        try:
            with module_app(tmp_path_factory.mktemp("plugins-app")) as application:
                application.fincrm_test_logins = {}
                yield application
        finally:
            for module in examples:
                plugins.unregister(module)


@pytest.fixture
def app(plugged: Any, hooks: HttpFake, gateway: HttpFake) -> Any:
    """The module's app with no records, deliveries, calls or outbox messages left over."""
    wipe_records(plugged)
    with plugged.extensions["fincrm"].runtime.begin() as conn:
        for table in (action_queue_table, interface_call_table, interface_dead_letter_table, outbox_table, trigger_fire_table):
            conn.execute(delete(table))
    hooks.reset()
    gateway.reset()
    return plugged


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def login(app: Any, client: Any) -> Logins:
    return Logins(client, app.fincrm_test_logins)


def _rows(app: Any, table: Any, *where: Any) -> list[dict[str, Any]]:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).where(*where).order_by(*table.primary_key.columns)).all()]


def _customer(client: Any, headers: dict[str, str], aum: str = "5000000", *, personal: bool = True) -> int:
    """A customer; with ``personal``, the one with the mobile and ID number the tests look for."""
    values = {"name": "王小明", "aum": aum, **({"mobile": MOBILE, "id_number": ID_NUMBER} if personal else {})}
    made = client.post("/api/v1/records/customer", json=values, headers=headers)
    assert made.status_code == 201, made.json
    return int(made.json["id"])


class Hooks:
    """Several plugins in one object, for contract tests on a private plugin manager."""

    def __init__(self, **provided: Any) -> None:
        self.provided = provided

    @plugins.hookimpl
    def fincrm_field_types(self) -> Any:
        return self.provided.get("field_types")

    @plugins.hookimpl
    def fincrm_trigger_actions(self) -> Any:
        return self.provided.get("actions")

    @plugins.hookimpl
    def fincrm_quote_feeds(self) -> Any:
        return self.provided.get("feeds")


def _manager(*objects: Any) -> Any:
    pm = plugins.build_plugin_manager(entry_points=False)
    for i, obj in enumerate(objects):
        pm.register(obj, f"broken_{i}")
    return pm


# ---------------------------------------------------------------------- field types


def test_a_cn_uscc_field_accepts_a_valid_code_refuses_a_bad_check_character_and_filters(client: Any, login: Any) -> None:
    admin = login("admin")
    doc = {
        "name": "corporate_client",
        "label": {"zh": "对公客户", "en": "Corporate client"},
        "title_field": "company",
        "fields": [
            {"name": "company", "type": "string", "label": {"zh": "企业名称", "en": "Company"}, "required": True},
            {"name": "uscc", "type": "cn_uscc", "label": {"zh": "统一社会信用代码", "en": "USCC"}, "unique": True},
        ],
    }
    if client.get("/api/v1/meta/entities/corporate_client", headers=admin).status_code == 404:
        made = client.post("/api/v1/meta/entities", json=doc, headers=admin)
        assert made.status_code == 201, made.json
    url = "/api/v1/records/corporate_client"
    # typed as people do: lower case, spaces, full-width digits — stored as the 18 characters
    ok = client.post(url, json={"company": "北京某某科技有限公司", "uscc": "９１１１ 0000 6000 3734 1l"}, headers=admin)
    assert ok.status_code == 201, ok.json
    assert ok.json["uscc"] == USCC
    second = "91310115MA1K3YJ12" + cn_uscc.uscc.calc_check_digit("91310115MA1K3YJ12")
    assert client.post(url, json={"company": "上海某某贸易有限公司", "uscc": second}, headers=admin).status_code == 201

    wrong = USCC[:-1] + ("X" if USCC[-1] != "X" else "Y")  # the right shape, the wrong check character
    bad = client.post(url, json={"company": "假公司", "uscc": wrong}, headers=admin)
    assert_error(bad, 422, field="uscc")
    detail = next(d for d in bad.json["error"]["details"] if d["field"] == "uscc")
    assert "GB 32100" in detail["message"] and wrong not in json.dumps(bad.json)  # the value is not echoed
    assert_error(client.post(url, json={"company": "假公司", "uscc": "12345"}, headers=admin), 422, field="uscc")
    assert_error(client.post(url, json={"company": "重复", "uscc": USCC}, headers=admin), 409)  # unique, as declared

    # filters: eq (the value folded like an input), and the type's text operators
    found = client.get(url, query_string={"filter": json.dumps({"field": "uscc", "op": "eq", "value": USCC.lower()})}, headers=admin)
    assert found.status_code == 200, found.json
    assert [r["uscc"] for r in found.json["items"]] == [USCC]
    starts = client.get(url, query_string={"filter": json.dumps({"field": "uscc", "op": "startswith", "value": "9131"})}, headers=admin)
    assert [r["uscc"] for r in starts.json["items"]] == [second]
    assert_error(client.get(url, query_string={"filter": json.dumps({"field": "uscc", "op": "gt", "value": USCC})}, headers=admin), 400)

    # the record's JSON Schema and the OpenAPI document show the type's schema
    schema = client.get("/api/v1/meta/entities/corporate_client/schema", headers=admin).json["properties"]["uscc"]
    assert schema["pattern"] == cn_uscc.PATTERN and schema["x-field-type"] == "cn_uscc"
    openapi = client.get("/api/v1/openapi.json").json["components"]["schemas"]
    assert openapi["corporate_client_input"]["properties"]["uscc"]["pattern"] == cn_uscc.PATTERN
    assert openapi["corporate_client_input"]["properties"]["uscc"]["maxLength"] == 18

    # the meta-schema knows the plugin's type by the one table: a typo lists it among the types
    typo = client.post("/api/v1/meta/entities/customer/fields", json={"name": "employer_code", "type": "cn_usc", "label": LABEL}, headers=admin)
    assert_error(typo, 422, "metadata_invalid")
    message = next(d["message"] for d in typo.json["error"]["details"] if d["pointer"] == "/type")
    assert "'cn_uscc'" in message and "'cn_mobile'" in message


def test_a_c2_uscc_field_is_masked_by_the_types_rule(plugged: Any) -> None:
    f = FieldSpec("uscc", "cn_uscc", Label("统一社会信用代码", "USCC"), sensitivity="C2")
    assert effective_mask(f) == "id"
    assert mask_value(effective_mask(f), USCC) == "911***********341L"
    assert FIELD_TYPES["cn_uscc"] is cn_uscc.CN_USCC  # joined the one table when registered


def _ftype(name: str, **kw: Any) -> FieldType:
    return FieldType(name, lambda f: String(8), lambda v, f: v, lambda f: {"type": "string"}, TEXT_OPS, **kw)


@pytest.mark.parametrize(
    "provided,problem",
    [
        ({"Bad-Name": _ftype("Bad-Name")}, "must match"),
        ({"string": _ftype("string")}, "is built in"),
        ({"lei": "not a field type"}, "must be an engine.fieldtypes.FieldType"),
        ({"lei": _ftype("lei", widget="hologram")}, "widget must be one of"),
        ({"lei": _ftype("lei", mask="half")}, "mask must be one of"),
        ({"lei": _ftype("lei", json_as="float")}, "json_as must be one of"),
        ({"lei": _ftype("other")}, "is named 'other' inside"),
        (["lei"], "must return a dict"),
    ],
)
def test_a_broken_field_type_plugin_is_named(provided: Any, problem: str) -> None:
    with pytest.raises(plugins.PluginError, match=problem) as err:
        plugins.field_types(_manager(Hooks(field_types=provided)))
    assert "'broken_0'" in str(err.value)


def test_field_types_join_and_leave_the_table_with_their_plugin(plugged: Any) -> None:
    clash = Hooks(field_types={"lei": _ftype("lei")})
    with pytest.raises(plugins.PluginError, match="provided by another plugin too"):
        plugins.field_types(_manager(Hooks(field_types={"lei": _ftype("lei")}), clash))
    good = Hooks(field_types={"lei_code": _ftype("lei_code")})
    plugins.register(good, "lei_plugin")
    try:
        assert "lei_code" in FIELD_TYPES and FIELD_TYPES["cn_uscc"] is cn_uscc.CN_USCC
    finally:
        plugins.unregister(good)
    assert "lei_code" not in FIELD_TYPES and "cn_uscc" in FIELD_TYPES
    broken = Hooks(field_types={"text": _ftype("text")})
    with pytest.raises(plugins.PluginError, match="built in"):
        plugins.register(broken, "text_thief")
    assert not plugins.plugin_manager().is_registered(broken)  # refused whole: not left half-registered
    assert FIELD_TYPES["text"].widget == "textarea"


# ---------------------------------------------------------------------- trigger actions: metadata


def _vip_trigger(name: str = "vip_webhook", **action: Any) -> dict[str, Any]:
    return {
        "kind": "trigger", "name": name, "label": {"zh": "高净值客户通知", "en": "VIP customer webhook"}, "entity": "customer",
        "on": "change", "events": ["create", "update"], "condition": VIP,
        "actions": [{"type": "webhook", "params": {"event": "vip"}, **action}],
    }


def test_plugin_actions_are_checked_when_frozen_with_pointers(app: Any, client: Any, login: Any) -> None:
    runtime = app.extensions["fincrm"].runtime
    snap = runtime.snapshot()
    check = condition_checker(snap, runtime.dialect)
    docs = load_automation_documents()

    def pointers(*actions: dict[str, Any]) -> dict[str, str]:
        doc = {**_vip_trigger("t"), "actions": list(actions)}
        with pytest.raises(MetadataInvalid) as exc:
            build_automation(snap.registry, [*docs, doc], check)
        return {d["pointer"]: d["message"] for d in exc.value.details}

    found = pointers(
        {"type": "webhok", "params": {}},
        {"type": "webhook", "params": {"event": "has spaces", "colour": "red"}},
        {"type": "webhook", "params": {"url": "https://evil.example/crm/steal"}},
        {"type": "webhook", "params": {"url": "http://127.0.0.1:1/crm/x"}},
        {"type": "webhook", "title": LABEL},
        {"type": "notify", "title": LABEL, "body": LABEL, "to": "owner", "params": {"x": 1}},
    )
    assert "webhook" in found["/trigger/t/actions/0/type"] and "create_task" in found["/trigger/t/actions/0/type"]
    assert "/trigger/t/actions/1/params/event" in found and "/trigger/t/actions/1/params" in found  # bad value, unknown key
    assert "FINCRM_WEBHOOK_ALLOW" in found["/trigger/t/actions/2/params/url"]
    assert "/trigger/t/actions/3/params/url" in found  # another port on an allowed host: not allowed
    assert "/trigger/t/actions/4/title" in found
    assert "only plugin actions take params" in found["/trigger/t/actions/5/params"]
    # a good one freezes, with its params
    built = build_automation(snap.registry, [*docs, _vip_trigger()], check)
    action = built.triggers["vip_webhook"].actions[0]
    assert (action.type, action.plugin, dict(action.params)) == ("webhook", True, {"event": "vip"})

    # the same through the API: refused whole, every error pointed at
    admin = login("admin")
    bad = client.put("/api/v1/meta/triggers/bad_hook", json={**_vip_trigger("bad_hook"), "actions": [{"type": "webhook", "params": {"url": "ftp://x"}}]}, headers=admin)
    assert_error(bad, 422, "metadata_invalid")
    assert any(d["pointer"].startswith("/trigger/bad_hook/actions/0/params/url") for d in bad.json["error"]["details"])
    assert client.get("/api/v1/meta/triggers/bad_hook", headers=admin).status_code == 404


class Action:
    params_schema: dict[str, Any] = {"type": "object"}

    def run(self, context: plugins.ActionContext) -> list[dict[str, Any]]:
        return []

    def send(self, delivery: Any, *, timeout: float) -> None:
        pass


class NoSend:
    params_schema: dict[str, Any] = {"type": "object"}

    def run(self, context: plugins.ActionContext) -> list[dict[str, Any]]:
        return []


class BadSchema(Action):
    params_schema = {"type": "no-such-type"}


@pytest.mark.parametrize(
    "provided,problem",
    [
        ({"notify": Action()}, "is built in"),
        ({"Web-Hook": Action()}, "must match"),
        ({"half": NoSend()}, "no send"),
        ({"odd": BadSchema()}, "params_schema is not a JSON Schema"),
        ({"odd": object()}, "no run"),
        ("webhook", "must return a dict"),
    ],
)
def test_a_broken_trigger_action_plugin_is_named(provided: Any, problem: str) -> None:
    with pytest.raises(plugins.PluginError, match=problem) as err:
        plugins.trigger_actions(_manager(Hooks(actions=provided)))
    assert "'broken_0'" in str(err.value)
    with pytest.raises(plugins.PluginError, match="provided by another plugin too"):
        plugins.trigger_actions(_manager(Hooks(actions={"ping": Action()}), Hooks(actions={"ping": Action()})))


# ---------------------------------------------------------------------- the webhook action


def _put_trigger(client: Any, admin: dict[str, str], doc: dict[str, Any]) -> None:
    saved = client.put(f"/api/v1/meta/triggers/{doc['name']}", json=doc, headers=admin)
    assert saved.status_code == 200, saved.json


def _queue(app: Any) -> list[dict[str, Any]]:
    return _rows(app, action_queue_table)


def test_the_webhook_is_queued_in_the_write_and_posted_after_it_by_the_jobs_pass(app: Any, client: Any, login: Any, hooks: HttpFake) -> None:
    admin = login("admin")
    _put_trigger(client, admin, _vip_trigger())
    vip = _customer(client, admin)
    _customer(client, admin, aum="20000", personal=False)  # below the condition: not in any summary
    # the write committed with its delivery queued; nothing was posted inside it
    queued = [q for q in _queue(app) if q["status"] == "pending"]
    assert [(q["action"], q["source"], q["entity"], q["records"]) for q in queued] == [("webhook", "trigger:vip_webhook", "customer", 1)]
    assert hooks.requests == []

    svc = app.extensions["fincrm"]
    report = jobs.run_pass(svc.runtime, svc.records, worker="test")
    delivery = next(j for j in report["jobs"] if j["job"] == "action_delivery")
    assert delivery["status"] == "ok" and delivery["detail"]["sent"] == 1
    assert len(hooks.requests) == 1
    got = hooks.requests[0]
    assert (got.method, got.path, got.headers["content-type"]) == ("POST", "/crm/events", "application/json")
    body = got.json
    assert {k: body[k] for k in ("event", "source", "trigger", "entity", "record_ids", "count", "batch", "batches")} == {
        "event": "vip", "source": "trigger:vip_webhook", "trigger": "vip_webhook", "entity": "customer",
        "record_ids": [vip], "count": 1, "batch": 1, "batches": 1,
    }
    signature = hmac.new(b"webhook-signing-secret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["x-fincrm-signature"] == f"sha256={signature}"
    for personal in ("王小明", MOBILE, ID_NUMBER, "5000000"):
        assert personal not in got.text  # ids and names only, never personal data
    assert [q["status"] for q in _queue(app)] == ["sent"]
    calls = _rows(app, interface_call_table, interface_call_table.c.kind == "action")
    assert [(c["target"], c["operation"], c["status"], c["attempt"]) for c in calls] == [("webhook", "send", "ok", 1)]
    assert MOBILE not in json.dumps(calls, default=str) and "王小明" not in json.dumps(calls, default=str, ensure_ascii=False)
    # a second pass has nothing left to send
    assert deliver_actions(svc.runtime)["claimed"] == 0 and len(hooks.requests) == 1


def test_a_500_is_retried_with_the_same_delivery_and_then_succeeds(app: Any, client: Any, login: Any, hooks: HttpFake) -> None:
    admin = login("admin")
    _put_trigger(client, admin, _vip_trigger())
    vip = _customer(client, admin)
    hooks.play(Reply(500, {"error": "busy"}))
    counts = deliver_actions(app.extensions["fincrm"].runtime)
    assert counts == {"claimed": 1, "sent": 1, "dead": 0, "held": 0}
    assert [r.json["record_ids"] for r in hooks.requests] == [[vip], [vip]]
    assert hooks.requests[0].json["id"] == hooks.requests[1].json["id"]  # one delivery: the receiver can deduplicate
    calls = _rows(app, interface_call_table, interface_call_table.c.kind == "action")
    assert [(c["attempt"], c["status"], c["http_status"]) for c in calls] == [(1, "error", 500), (2, "ok", None)]
    assert calls[1]["delay_ms"] == 10  # the backoff before the retry
    assert [q["status"] for q in _queue(app)] == ["sent"]


def test_a_permanent_failure_is_a_dead_letter_that_operations_replay(app: Any, client: Any, login: Any, hooks: HttpFake) -> None:
    admin, ops = login("admin"), login("ops1")
    _put_trigger(client, admin, _vip_trigger())
    first, second = _customer(client, admin), _customer(client, admin, personal=False)
    hooks.play(*[Reply(500, {"error": "down"})] * 3)
    counts = deliver_actions(app.extensions["fincrm"].runtime)
    # the first delivery used its three attempts; the other is held back for a later pass
    assert counts == {"claimed": 2, "sent": 0, "dead": 1, "held": 1}
    assert len(hooks.requests) == 3
    dead, held = _queue(app)
    assert dead["status"] == "dead" and dead["dead_letter_id"] and "HTTP 500" in dead["last_error"]
    assert held["status"] == "pending" and "held back" in held["last_error"] and held["next_attempt_at"] > utcnow()

    letters = client.get(f"{LETTERS}?status=open", headers=ops).json["items"]
    letter = next(x for x in letters if x["id"] == dead["dead_letter_id"])
    assert (letter["kind"], letter["target"], letter["attempts"], letter["last_http_status"]) == ("action", "webhook", 3, 500)
    assert letter["replay"] == {"delivery_id": dead["id"], "action": "webhook"}  # a reference, not the payload

    replayed = client.post(f"{LETTERS}/{letter['id']}/replay", headers=ops)
    assert replayed.status_code == 200 and replayed.json["ok"] is True, replayed.json
    assert replayed.json["letter"]["status"] == "resolved" and replayed.json["letter"]["attempts"] == 4
    assert len(hooks.requests) == 4 and hooks.requests[3].json == hooks.requests[0].json  # the same summary again
    assert hooks.requests[0].json["record_ids"] == [first]
    assert [q["status"] for q in _queue(app)] == ["sent", "pending"]
    assert_error(client.post(f"{LETTERS}/{letter['id']}/replay", headers=ops), 409)

    # the held delivery goes out once its wait is over
    later = deliver_actions(app.extensions["fincrm"].runtime, utcnow() + dt.timedelta(minutes=6))
    assert later["sent"] == 1 and hooks.requests[-1].json["record_ids"] == [second]


def test_a_rolled_back_firing_queues_nothing(app: Any, client: Any, login: Any, hooks: HttpFake) -> None:
    admin = login("admin")
    _put_trigger(client, admin, _vip_trigger())
    small = _customer(client, admin, aum="20000", personal=False)
    svc = app.extensions["fincrm"]
    snap = svc.runtime.snapshot()
    trig = dataclasses.replace(snap.automation.triggers["vip_webhook"], condition={"field": "id", "op": "eq", "value": small})
    engine = TriggerEngine(svc.runtime, svc.records)
    with pytest.raises(RuntimeError, match="after the action"):
        with svc.runtime.begin() as conn:
            assert engine.fire(conn, snap, trig, utcnow(), [small])["actions"] == {"webhook": 1}
            raise RuntimeError("the transaction fails after the action ran")
    assert _queue(app) == []
    with svc.runtime.begin() as conn:
        engine.fire(conn, snap, trig, utcnow(), [small])
    assert [q["status"] for q in _queue(app)] == ["pending"] and hooks.requests == []


def test_a_flow_state_runs_the_action_too_and_the_summary_names_the_flow(app: Any, client: Any, login: Any, hooks: HttpFake) -> None:
    cid = _customer(client, login("admin"), aum="20000", personal=False)  # no VIP trigger firing of its own
    svc = app.extensions["fincrm"]
    snap = svc.runtime.snapshot()
    action = ActionSpec.of({"type": "webhook", "params": {"event": "loan_approved"}})
    with svc.runtime.begin() as conn:
        targets = load_targets(conn, snap, "customer", [cid])
        counts = run_actions(conn, svc.records, snap, "customer", [action], targets, now=utcnow(), source="flow:loan_approval", label=Label("已批准", "Approved"))
    assert counts == {"webhook": 1}
    assert deliver_actions(svc.runtime)["sent"] == 1
    body = hooks.requests[0].json
    assert (body["flow"], body["source"], body["event"], body["record_ids"]) == ("loan_approval", "flow:loan_approval", "loan_approved", [cid])
    assert "trigger" not in body


# ---------------------------------------------------------------------- the SMS channel


def test_sms_through_the_outbox_sends_the_mobile_only_to_the_gateway(app: Any, client: Any, login: Any, gateway: HttpFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = login("admin")
    cid = _customer(client, admin)
    svc = app.extensions["fincrm"]
    now = utcnow()
    with svc.runtime.begin() as conn:
        enqueue_many(conn, [
            {"channel": "sms", "recipient_kind": "customer", "recipient_id": cid, "subject": "保单到期提醒", "body": "您的保单将于7天后到期，请及时续保。",
             "source": "trigger:policy_renewal_7", "entity": "customer", "record_id": cid, "created_at": now},
        ])
    # the gateway fails once (quoting the number back, as some do), then accepts
    gateway.play(Reply(503, {"error": f"number {MOBILE} is busy"}))
    first = deliver_pending(svc.runtime, svc.records, now)
    assert (first["sent"], first["failed"]) == (0, 1)
    row = _rows(app, outbox_table)[0]
    assert row["status"] == "failed" and "503" in row["last_error"] and MOBILE not in row["last_error"]
    again = deliver_pending(svc.runtime, svc.records, row["next_attempt_at"])
    assert again["sent"] == 1 and _rows(app, outbox_table)[0]["status"] == "sent"

    assert len(gateway.requests) == 2
    sent = gateway.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/sms/send")
    assert sent.json == {"to": MOBILE, "text": SIGN + "您的保单将于7天后到期，请及时续保。", "ref": f"fincrm-{row['id']}"}
    assert gateway.requests[0].json == sent.json  # the same message on the retry

    # in clear to the gateway only: not in the outbox, the call log, the audit trail or the logs
    stored = json.dumps(
        [_rows(app, outbox_table), _rows(app, interface_call_table), _rows(app, interface_dead_letter_table), _rows(app, audit_table)],
        default=str, ensure_ascii=False,
    )
    assert MOBILE not in stored and MOBILE not in caplog.text
    calls = _rows(app, interface_call_table, interface_call_table.c.kind == "channel")
    assert [(c["target"], c["status"], c["http_status"], c["attempt"]) for c in calls] == [("sms", "error", 503, 1), ("sms", "ok", None, 2)]
    resolved = _rows(app, audit_table, audit_table.c.action == "contact_resolved", audit_table.c.record_id == cid)
    assert len(resolved) == 2  # each read of the customer's contact data is audited


def test_sms_to_a_staff_member_without_a_mobile_fails_without_a_send(app: Any, gateway: HttpFake) -> None:
    channel = plugins.notification_channels()["sms"]
    message = plugins.OutboundMessage(1, "sms", "user", 7, "提醒", "任务逾期", None, None, None, utcnow(), 1)
    with pytest.raises(LookupError, match="no mobile"):
        channel.send(message, lambda kind, rid: {"kind": kind, "id": rid, "email": "rm@example.com"})
    assert gateway.requests == []


# ---------------------------------------------------------------------- quote feeds


def _quote_service(extra: list[Any] | None = None) -> Any:
    """A quote service that answers for the symbols asked (and whatever ``extra`` adds)."""
    book = {
        "600519.SH": {"price": "1688.00", "prev_close": "1675.50", "time": "2026-01-05T14:59:58+08:00"},
        "000001.SZ": {"price": Decimal("11.23"), "prev_close": Decimal("11.30"), "time": "2026-01-05T06:59:58Z"},
    }

    def answer(request: Request) -> Reply:
        asked = request.query["symbols"][0].split(",")
        items = [{"symbol": s, **{k: (float(v) if isinstance(v, Decimal) else v) for k, v in book[s].items()}} for s in asked if s in book]
        return Reply(200, items + (extra or []))

    return answer


def test_the_http_quote_feed_checks_every_value() -> None:
    with HttpFake() as service:
        service.default = _quote_service([{"symbol": "AAPL.O", "price": "1", "prev_close": "1", "time": "2026-01-05T00:00:00Z"}])
        feed = http_quotes.HttpQuoteFeed(service.url + "/v1/quotes?market=cn")
        quotes = feed.quotes(["600519.SH", "000001.SZ", "688981.SH"], timeout=2)
        assert service.requests[0].query == {"market": ["cn"], "symbols": ["600519.SH,000001.SZ,688981.SH"]}
        assert set(quotes) == {"600519.SH", "000001.SZ"}  # unknown to the service: missing; not asked: ignored
        moutai = quotes["600519.SH"]
        assert (moutai.price, moutai.prev_close, moutai.at) == (Decimal("1688.00"), Decimal("1675.50"), dt.datetime(2026, 1, 5, 6, 59, 58))
        pingan = quotes["000001.SZ"]
        assert (pingan.price, pingan.prev_close) == (Decimal("11.23"), Decimal("11.30"))  # JSON numbers read exactly
        assert isinstance(pingan.price, Decimal) and pingan.at == dt.datetime(2026, 1, 5, 6, 59, 58)

        bad_answers = [
            ({"600519.SH": {"price": "1"}}, "not a JSON list"),
            (["600519.SH"], "not an object with a symbol"),
            ([{"symbol": "600519.SH", "price": "-1", "prev_close": "1", "time": "2026-01-05T00:00:00Z"}], "positive"),
            ([{"symbol": "600519.SH", "price": "abc", "prev_close": "1", "time": "2026-01-05T00:00:00Z"}], "not a number"),
            ([{"symbol": "600519.SH", "price": "NaN", "prev_close": "1", "time": "2026-01-05T00:00:00Z"}], "positive"),
            ([{"symbol": "600519.SH", "price": True, "prev_close": "1", "time": "2026-01-05T00:00:00Z"}], "not a number"),
            ([{"symbol": "600519.SH", "price": "1", "prev_close": "1", "time": "yesterday"}], "ISO 8601"),
            ([{"symbol": "600519.SH", "price": "1", "prev_close": "1", "time": "2026-01-05T00:00:00Z"}] * 2, "quoted twice"),
        ]
        for body, problem in bad_answers:
            service.play(Reply(200, body))
            with pytest.raises(ValueError, match=problem):
                feed.quotes(["600519.SH"], timeout=2)
        service.play(Reply(200, "<html>maintenance</html>"))
        with pytest.raises(ValueError, match="not JSON"):
            feed.quotes(["600519.SH"], timeout=2)
        service.play(Reply(502, {"error": "upstream"}))
        with pytest.raises(Exception) as err:
            feed.quotes(["600519.SH"], timeout=2)
        assert getattr(err.value, "code", None) == 502  # raised: the interface wrapper retries it
        with pytest.raises(ValueError, match="not a symbol"):
            feed.quotes(["600519.SH&x=1"], timeout=2)

        # many symbols: several requests of at most BATCH
        service.reset()
        many = [f"{600000 + i}.SH" for i in range(http_quotes.BATCH + 20)]
        assert feed.quotes(many, timeout=2) == {}
        assert [len(r.query["symbols"][0].split(",")) for r in service.requests] == [http_quotes.BATCH, 20]


class Feed:
    def quotes(self, symbols: Any, *, timeout: float) -> dict[str, plugins.Quote]:
        return {}


@pytest.mark.parametrize(
    "provided,problem",
    [({"Bad Feed": Feed()}, "must match"), ({"level2": object()}, "no quotes"), (["x"], "must return a dict")],
)
def test_a_broken_quote_feed_plugin_is_named(provided: Any, problem: str) -> None:
    with pytest.raises(plugins.PluginError, match=problem) as err:
        plugins.quote_feeds(_manager(Hooks(feeds=provided)))
    assert "'broken_0'" in str(err.value)
    with pytest.raises(plugins.PluginError, match="another plugin too"):
        plugins.quote_feeds(_manager(Hooks(feeds={"sse": Feed()}), Hooks(feeds={"sse": Feed()})))


# ---------------------------------------------------------------------- switching the examples on


def test_fincrm_plugins_switches_on_every_example(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FINCRM_QUOTES_URL", "FINCRM_SMS_URL", "FINCRM_PROVIDENT_FUND_URL"):
        monkeypatch.delenv(name, raising=False)
    modules = plugins.env_plugin_modules("plugins.cn_uscc, plugins.webhook_action plugins.sms_gateway,plugins.http_quotes,plugins.provident_fund")
    pm = plugins.build_plugin_manager(modules, entry_points=False)
    assert list(plugins.field_types(pm)) == ["cn_uscc"] and list(plugins.trigger_actions(pm)) == ["webhook"]
    # the outbound examples offer nothing until they know where to go
    assert (plugins.notification_channels(pm), plugins.quote_feeds(pm), plugins.data_connectors(pm)) == ({}, {}, {})
    monkeypatch.setenv("FINCRM_QUOTES_URL", "https://quotes.example/v1/quotes")
    monkeypatch.setenv("FINCRM_SMS_URL", "https://sms.example/send")
    feeds, channels = plugins.quote_feeds(pm), plugins.notification_channels(pm)
    assert list(feeds) == ["http_quotes"] and isinstance(feeds["http_quotes"], plugins.QuoteFeed)
    assert list(channels) == ["sms"] and isinstance(channels["sms"], plugins.NotificationChannel)
    assert isinstance(plugins.trigger_actions(pm)["webhook"], plugins.TriggerAction)
    monkeypatch.setenv("FINCRM_QUOTES_URL", "file:///etc/passwd")
    with pytest.raises(ValueError, match="http"):
        plugins.quote_feeds(pm)


def test_the_webhook_allow_list_matches_scheme_host_port_and_path() -> None:
    allow = "https://hooks.bank.example/crm/,http://127.0.0.1:8080/in"
    ok = ["https://hooks.bank.example/crm/vip", "https://hooks.bank.example:443/crm/a/b", "http://127.0.0.1:8080/in", "http://127.0.0.1:8080/in/x"]
    refused = [
        "https://hooks.bank.example.evil.com/crm/vip", "http://hooks.bank.example/crm/vip", "https://hooks.bank.example/crmx",
        "https://hooks.bank.example:8443/crm/vip", "http://127.0.0.1:8080/inbox", "https://user:pw@hooks.bank.example/crm/x",
        "ftp://hooks.bank.example/crm/x",
    ]
    assert all(webhook_action.allowed(u, "", allow) for u in ok)
    assert not any(webhook_action.allowed(u, "", allow) for u in refused)
    assert webhook_action.allowed("https://x.example/only", "https://x.example/only", "")  # the configured URL itself
