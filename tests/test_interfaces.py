"""Outbound interfaces: a data connector against a fake third party on loopback that times out
and fails, retried with growing backoff and parked in the dead-letter list, then replayed once
the third party recovers; notification sends in the same call log; nothing personal in any of
it; and the interfaces API closed to relationship managers."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Iterator

import pytest
from sqlalchemy import select

import plugins.provident_fund as provident_fund
from engine import plugins
from engine.flows.interfaces import RetryPolicy, interface_call_table, interface_dead_letter_table, redact, summarize
from engine.flows.outbox import deliver_pending, enqueue_many
from engine.security.audit import audit_table
from tests.api_helpers import ChannelPlugin, app, assert_error, client, login, shared_app  # noqa: F401  (module-wide app)
from tests.http_fake import HttpFake, Reply

ID_NUMBER = "11010519491231002X"
MOBILE = "13800138000"
FUND_KEY = "shared-key-with-the-fund-centre"
CALLS = "/api/v1/interfaces/calls"
LETTERS = "/api/v1/interfaces/dead-letters"
ENRICH = "/api/v1/interfaces/connectors/provident_fund/enrich"
TIMEOUT = 0.3  # seconds each attempt gets
BACKOFF = 0.05  # seconds before the second attempt; doubled before each further one


class FakeFund(HttpFake):
    """The fund centre's gateway on 127.0.0.1 (tests/http_fake.py): ``play("slow", "503", …)``
    scripts its next answers (``slow`` answers after the caller's timeout, a number is that
    HTTP status, ``ok`` the member's status); ``received`` is what it got."""

    OK = Reply(200, {"status": "正常缴存", "monthly_base": "12000.00"})

    def __init__(self) -> None:
        super().__init__(default=self.OK)
        self.url += "/v1/provident-fund/query"

    def play(self, *steps: Any) -> "FakeFund":
        replies = {"slow": Reply(200, {"status": "正常缴存", "monthly_base": "1.00"}, delay=TIMEOUT * 2), "ok": self.OK}
        super().play(*(replies.get(s) or Reply(int(s), {"error": "unavailable"}) for s in steps))
        return self

    @property
    def received(self) -> list[dict[str, Any]]:
        return [{"raw": r.text, "body": r.json, "at": r.at} for r in self.requests]


@pytest.fixture
def fund(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFund]:
    """The fake gateway, the example plugin switched on against it, and a tiny retry policy."""
    fake = FakeFund()
    monkeypatch.setenv("FINCRM_PROVIDENT_FUND_URL", fake.url)
    monkeypatch.setenv("FINCRM_PROVIDENT_FUND_KEY", FUND_KEY)
    monkeypatch.setenv("FINCRM_INTERFACE_ATTEMPTS", "3")
    monkeypatch.setenv("FINCRM_INTERFACE_BACKOFF", str(BACKOFF))
    monkeypatch.setenv("FINCRM_INTERFACE_TIMEOUT", str(TIMEOUT))
    plugins.register(provident_fund)
    try:
        yield fake
    finally:
        plugins.unregister(provident_fund)
        fake.close()


def _fund_fields(client: Any, admin: dict[str, str]) -> None:
    """The two customer fields the connector fills, added the way a business user would."""
    have = client.get("/api/v1/meta/entities/customer/schema", headers=admin).json["properties"]
    for field in (
        {"name": "provident_fund_status", "type": "string", "label": {"zh": "公积金缴存状态", "en": "Provident fund status"}, "max_length": 100},
        {"name": "provident_fund_base", "type": "decimal", "label": {"zh": "公积金缴存基数", "en": "Provident fund base"}, "sensitivity": "C2"},
    ):
        if field["name"] not in have:
            resp = client.post("/api/v1/meta/entities/customer/fields", json=field, headers=admin)
            assert resp.status_code == 201, resp.json


def _customer(client: Any, admin: dict[str, str], *, consent: bool = True) -> int:
    made = client.post("/api/v1/records/customer", json={"name": "王小明", "id_number": ID_NUMBER, "mobile": MOBILE}, headers=admin)
    assert made.status_code == 201, made.json
    if consent:
        granted = client.post(
            "/api/v1/records/consent",
            json={"customer": made.json["id"], "purpose": "data_sharing", "granted_at": "2025-01-01T00:00:00Z", "channel": "counter"},
            headers=admin,
        )
        assert granted.status_code == 201, granted.json
    return int(made.json["id"])


def _rows(app: Any, table: Any) -> list[dict[str, Any]]:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id)).all()]


def _at(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.rstrip("Z"))


def test_a_connector_that_times_out_then_fails_is_dead_lettered_and_replays_once_the_third_party_recovers(
    app: Any, client: Any, login: Any, fund: FakeFund, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    admin, ops = login("admin"), login("ops1")
    _fund_fields(client, admin)
    cid = _customer(client, admin)
    outputs: list[str] = []

    # 1. the gateway first hangs past the timeout, then answers 503 twice
    fund.play("slow", "503", "503")
    failed = client.post(ENRICH, json={"customer_id": cid}, headers=ops)
    assert failed.status_code == 202, failed.json
    outputs.append(failed.get_data(as_text=True))
    assert failed.json["ok"] is False and failed.json["attempts"] == 3 and failed.json["http_status"] == 503
    letter = failed.json["dead_letter"]
    assert letter["status"] == "open" and letter["attempts"] == 3 and letter["last_status"] == "error" and letter["last_http_status"] == 503
    assert letter["replay"] == {"customer_id": cid, "connector": "provident_fund"}  # a reference, not the payload
    assert letter["created_by"] == "ops1"

    # the call log: three attempts, each with its latency, waiting longer before each retry
    log = client.get(f"{CALLS}?target=provident_fund&limit=3", headers=ops)
    assert log.status_code == 200
    outputs.append(log.get_data(as_text=True))
    attempts = sorted(log.json["items"], key=lambda c: c["id"])
    assert [(c["attempt"], c["status"], c["http_status"]) for c in attempts] == [(1, "timeout", None), (2, "error", 503), (3, "error", 503)]
    assert all(c["kind"] == "connector" and c["operation"] == "fetch" and c["dead_letter_id"] == letter["id"] for c in attempts)
    assert attempts[0]["latency_ms"] >= TIMEOUT * 1000 * 0.9  # it waited for the timeout, not longer
    assert attempts[0]["latency_ms"] < TIMEOUT * 1000 * 2
    delays = [c["delay_ms"] for c in attempts]
    assert delays == [0, BACKOFF * 1000, BACKOFF * 2000]
    for before, after in zip(attempts, attempts[1:]):
        gap_ms = (_at(after["created_at"]) - _at(before["created_at"])).total_seconds() * 1000
        assert gap_ms >= before["latency_ms"] + after["delay_ms"] - 5, (before, after)
    # what was sent is summarised masked; the gateway got a keyed token, never the ID number
    assert "110***********002X" in attempts[0]["payload"]
    assert len(fund.received) == 3
    token = provident_fund.id_token(FUND_KEY.encode(), ID_NUMBER)
    assert all(r["body"]["id_token"] == token and ID_NUMBER not in r["raw"] and "1949" not in r["raw"] for r in fund.received)

    letters = client.get(f"{LETTERS}?status=open", headers=ops)
    assert letters.status_code == 200 and letter["id"] in [x["id"] for x in letters.json["items"]]
    outputs.append(letters.get_data(as_text=True))
    customer = client.get(f"/api/v1/records/customer/{cid}", headers=admin).json
    assert customer.get("provident_fund_status") is None  # nothing stored from the failed call

    # 2. the gateway recovers: the replay succeeds in one attempt, the letter is resolved
    fund.play("ok")
    replayed = client.post(f"{LETTERS}/{letter['id']}/replay", headers=ops)
    assert replayed.status_code == 200, replayed.json
    outputs.append(replayed.get_data(as_text=True))
    assert replayed.json["ok"] is True
    done = replayed.json["letter"]
    assert done["status"] == "resolved" and done["attempts"] == 4 and done["resolved_by"] == "ops1" and done["resolved_at"]
    assert replayed.json["result"]["fields"] == ["provident_fund_base", "provident_fund_status"]

    customer = client.get(f"/api/v1/records/customer/{cid}", headers=admin).json
    assert customer["provident_fund_status"] == "正常缴存" and customer["provident_fund_base"] == "12000.00"
    history = client.get(f"/api/v1/records/customer/{cid}/history", headers=admin).json["items"]
    assert any(h["actor"] == "ops1" and h["action"] == "update" for h in history)  # stored as the replaying user, audited

    # the letter's whole story: three failures and the success, each with its latency
    story = client.get(f"{CALLS}?dead_letter={letter['id']}", headers=ops)
    outputs.append(story.get_data(as_text=True))
    rows = sorted(story.json["items"], key=lambda c: c["id"])
    assert [(c["attempt"], c["status"]) for c in rows] == [(1, "timeout"), (2, "error"), (3, "error"), (4, "ok")]
    assert all(isinstance(c["latency_ms"], int) and c["latency_ms"] >= 0 for c in rows)
    assert letter["id"] not in [x["id"] for x in client.get(f"{LETTERS}?status=open", headers=ops).json["items"]]
    assert_error(client.post(f"{LETTERS}/{letter['id']}/replay", headers=ops), 409, "conflict")  # resolved: nothing to replay

    # 3. no ID number or mobile in clear anywhere: API output, the log tables, the log lines
    stored = json.dumps([_rows(app, interface_call_table), _rows(app, interface_dead_letter_table)], default=str, ensure_ascii=False)
    for text in [*outputs, stored, caplog.text]:
        assert ID_NUMBER not in text and MOBILE not in text and ID_NUMBER.lower() not in text
    a = audit_table
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        reads = conn.execute(select(a.c.actor).where(a.c.action == "connector_read", a.c.record_id == cid)).scalars().all()
        replays = [json.loads(d) if isinstance(d, str) else d for d in conn.execute(select(a.c.detail).where(a.c.action == "interface_replay")).scalars()]
    assert reads == ["ops1", "ops1"]  # the clear ID number was read for the connector twice, on ops1's behalf
    assert [r for r in replays if r["dead_letter_id"] == letter["id"]] == [{"dead_letter_id": letter["id"], "kind": "connector", "ok": True}]


def test_a_replay_that_fails_keeps_the_letter_with_one_more_attempt(app: Any, client: Any, login: Any, fund: FakeFund) -> None:
    admin, ops = login("admin"), login("ops1")
    _fund_fields(client, admin)
    cid = _customer(client, admin)
    fund.play("503", "503", "503", "503")
    letter = client.post(ENRICH, json={"customer_id": cid}, headers=ops).json["dead_letter"]
    again = client.post(f"{LETTERS}/{letter['id']}/replay", headers=ops)
    assert again.status_code == 200 and again.json["ok"] is False
    assert again.json["letter"]["status"] == "open" and again.json["letter"]["attempts"] == letter["attempts"] + 1 == 4
    assert "HTTP 503" in again.json["error"]
    calls = client.get(f"{CALLS}?dead_letter={letter['id']}", headers=ops).json["items"]
    assert sorted(c["attempt"] for c in calls) == [1, 2, 3, 4] and len(fund.received) == 4  # a replay is one attempt


def test_a_client_error_is_not_retried_but_still_dead_lettered(app: Any, client: Any, login: Any, fund: FakeFund) -> None:
    admin, ops = login("admin"), login("ops1")
    _fund_fields(client, admin)
    cid = _customer(client, admin)
    fund.play("400")
    failed = client.post(ENRICH, json={"customer_id": cid}, headers=ops)
    assert failed.status_code == 202 and failed.json["attempts"] == 1 and failed.json["http_status"] == 400
    assert len(fund.received) == 1  # a retry cannot fix a refused request
    assert failed.json["dead_letter"]["status"] == "open"


def test_without_consent_nothing_is_sent(app: Any, client: Any, login: Any, fund: FakeFund) -> None:
    admin, ops = login("admin"), login("ops1")
    _fund_fields(client, admin)
    cid = _customer(client, admin, consent=False)
    before = len(client.get(CALLS, headers=ops).json["items"])
    refused = client.post(ENRICH, json={"customer_id": cid}, headers=ops)
    assert_error(refused, 409, "conflict")
    assert "data_sharing" in refused.json["error"]["message"]
    assert fund.received == [] and len(client.get(CALLS, headers=ops).json["items"]) == before


def test_the_interfaces_api_is_for_operations_and_admins_only(app: Any, client: Any, login: Any, fund: FakeFund) -> None:
    admin, ops, rm = login("admin"), login("ops1"), login("rm1")
    cid = _customer(client, admin)
    for path in (CALLS, LETTERS, "/api/v1/interfaces/connectors"):
        assert_error(client.get(path, headers=rm), 403, "forbidden")
        assert client.get(path, headers=ops).status_code == 200
        assert client.get(path, headers=admin).status_code == 200
    assert_error(client.post(f"{LETTERS}/1/replay", headers=rm), 403, "forbidden")
    assert_error(client.post(ENRICH, json={"customer_id": cid}, headers=rm), 403, "forbidden")
    assert fund.received == []
    connectors = client.get("/api/v1/interfaces/connectors", headers=ops).json["items"]
    assert connectors == [{"name": "provident_fund", "reads": ["id_number"], "purpose": "data_sharing"}]
    assert_error(client.get(f"{CALLS}?status=maybe", headers=ops), 400)
    assert_error(client.post(f"{LETTERS}/999999/replay", headers=ops), 404)


class Channel:
    """A plugin SMS channel: reads the customer's mobile when it sends; optionally fails saying it."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[str] = []

    def send(self, message: plugins.OutboundMessage, resolve: plugins.Resolve) -> None:
        mobile = resolve(message.recipient_kind, message.recipient_id)["mobile"]
        if self.fail:
            raise ConnectionError(f"SMS gateway refused {mobile}")
        self.sent.append(mobile)


def test_notification_channel_sends_are_in_the_call_log_and_keep_the_outbox_retries(app: Any, client: Any, login: Any) -> None:
    admin, ops = login("admin"), login("ops1")
    cid = _customer(client, admin, consent=False)
    sms, broken = Channel(), Channel(fail=True)
    plugin = ChannelPlugin(sms=sms, sms_backup=broken)
    plugins.register(plugin)
    svc = app.extensions["fincrm"]
    now = dt.datetime(2026, 1, 5, 1, 0, 0)
    try:
        with svc.runtime.begin() as conn:
            enqueue_many(conn, [
                {"channel": ch, "recipient_kind": "customer", "recipient_id": cid, "subject": "理财产品到期提醒", "body": "您的理财产品将于15天后到期。",
                 "source": "trigger:test", "entity": "customer", "record_id": cid, "created_at": now}
                for ch in ("sms", "sms_backup")
            ])
        counts = deliver_pending(svc.runtime, svc.records, now)
    finally:
        plugins.unregister(plugin)
    assert counts["sent"] == 1 and counts["failed"] == 1 and sms.sent == [MOBILE]
    newest = client.get(f"{CALLS}?kind=channel&limit=2", headers=ops).json["items"]
    ok, failed = (next(c for c in newest if c["target"] == name) for name in ("sms", "sms_backup"))
    assert (ok["kind"], ok["operation"], ok["status"], ok["attempt"]) == ("channel", "send", "ok", 1)
    assert f"recipient=customer:{cid}" in ok["payload"] and isinstance(ok["latency_ms"], int)
    assert (failed["status"], failed["attempt"]) == ("error", 1) and failed["error"].startswith("ConnectionError: SMS gateway refused")
    assert MOBILE not in json.dumps([ok, failed], ensure_ascii=False)
    # the outbox keeps its own retries and dead letters: the interface list gets no letter for a send
    assert [x for x in client.get(LETTERS, headers=ops).json["items"] if x["kind"] == "channel"] == []


def test_fincrm_plugins_switches_on_the_example_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINCRM_PROVIDENT_FUND_URL", raising=False)
    pm = plugins.build_plugin_manager(plugins.env_plugin_modules("plugins.provident_fund"), entry_points=False)
    assert plugins.data_connectors(pm) == {}  # not configured: not offered
    monkeypatch.setenv("FINCRM_PROVIDENT_FUND_URL", "https://gateway.example/v1/query")
    monkeypatch.setenv("FINCRM_PROVIDENT_FUND_KEY", FUND_KEY)
    found = plugins.data_connectors(pm)
    assert list(found) == ["provident_fund"] and isinstance(found["provident_fund"], plugins.DataConnector)
    with pytest.raises(plugins.PluginError, match="cannot be imported"):
        plugins.build_plugin_manager(["plugins.no_such_plugin"], entry_points=False)
    monkeypatch.setenv("FINCRM_PROVIDENT_FUND_URL", "file:///etc/passwd")
    with pytest.raises(ValueError, match="http"):
        plugins.data_connectors(pm)


def test_summaries_and_errors_show_no_more_than_the_mask() -> None:
    masks = {"id_number": "id", "mobile": "mobile", "name": "name"}
    text = summarize({"id": 7, "id_number": ID_NUMBER, "mobile": MOBILE, "name": "欧阳娜娜", "note": f"call {MOBILE} or mail wang@example.com"}, masks)
    assert "110***********002X" in text and "138****8000" in text and "欧***" in text and "id=7" in text
    assert MOBILE not in text and ID_NUMBER not in text and "wang@example.com" not in text
    error = redact(f"gateway said: no member 王小明 {ID_NUMBER}, call 138 0013 8000", ["王小明"])
    assert "王小明" not in error and ID_NUMBER not in error and "0013" not in error
    with pytest.raises(ValueError, match="FINCRM_INTERFACE_ATTEMPTS"):
        RetryPolicy.from_env({"FINCRM_INTERFACE_ATTEMPTS": "0"})
    assert [RetryPolicy(base_delay=0.5, max_delay=1.5).delay(n) for n in (1, 2, 3, 4)] == [0.0, 0.5, 1.0, 1.5]
