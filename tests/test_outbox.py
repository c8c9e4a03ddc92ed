"""The outbox from the sender's and the reader's side: inbox delivery, plugin channels that
resolve addresses only when they send, backoff and dead letters, the operations view, and each
user's own notifications (API and page)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Iterator

import pytest
from sqlalchemy import delete, select

from engine import plugins
from engine.flows.outbox import LEASE, MAX_ATTEMPTS, backoff, deliver_pending, enqueue_many
from engine.flows.tables import outbox_table
from engine.security.audit import audit_table
from engine.security.principal import Principal
from tests.api_helpers import ChannelPlugin, assert_error, client, csrf_token, login, page_login, shared_app, wipe_records  # noqa: F401  (module-wide app)

NOW = dt.datetime(2026, 1, 5, 1, 0, 0)  # naive UTC, as the engine keeps time
MOBILE = "13800138000"
EMAIL = "wang.xm@example.com"
SYSTEM = Principal.system("test")


def _note(recipient_id: int, *, channel: str = "inbox", kind: str = "user", subject: str = "任务即将到期", at: dt.datetime = NOW, **extra: Any) -> dict[str, Any]:
    return {
        "channel": channel, "recipient_kind": kind, "recipient_id": recipient_id, "subject": subject, "body": "请及时跟进。",
        "source": "trigger:test", "entity": extra.pop("entity", None), "record_id": extra.pop("record_id", None), "created_at": at, **extra,
    }


def _rows(runtime: Any, **where: Any) -> list[Any]:
    t = outbox_table
    stmt = select(t).where(*(t.c[k] == v for k, v in where.items())).order_by(t.c.id)
    with runtime.engine.connect() as conn:
        return list(conn.execute(stmt).all())


class Recorder:
    """A plugin channel that keeps what it was asked to send and the contact data it resolved."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.sent: list[tuple[Any, dict[str, Any]]] = []
        self.fail_with = fail_with

    def send(self, message: plugins.OutboundMessage, resolve: plugins.Resolve) -> None:
        contact = resolve(message.recipient_kind, message.recipient_id)
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((message, contact))


@pytest.fixture
def plugin() -> Iterator[Any]:
    """Register channels through the process's pluggy manager for one test: ``plugin(sms=…)``."""
    registered: list[Any] = []

    def _register(**channels: Any) -> ChannelPlugin:
        p = ChannelPlugin(**channels)
        plugins.register(p)
        registered.append(p)
        return p

    yield _register
    for p in registered:
        if plugins.plugin_manager().is_registered(p):
            plugins.unregister(p)


@pytest.fixture
def app(shared_app: Any) -> Any:
    """The module's app with no records and an empty outbox."""
    wipe_records(shared_app)
    runtime = shared_app.extensions["fincrm"].runtime
    with runtime.begin() as conn:
        conn.execute(delete(outbox_table))
    return shared_app


@pytest.fixture
def svc(app: Any) -> Any:
    return app.extensions["fincrm"]


def _uid(app: Any, username: str) -> int:
    with app.app_context():
        return int(app.appbuilder.sm.find_user(username=username).id)


def _enqueue(svc: Any, *rows: dict[str, Any]) -> list[int]:
    with svc.runtime.begin() as conn:
        enqueue_many(conn, list(rows))
    return [r.id for r in _rows(svc.runtime)][-len(rows):]


def _customer(svc: Any) -> int:
    record = svc.records.create(SYSTEM, "customer", {"name": "王小明", "aum": "1000.00", "mobile": MOBILE, "email": EMAIL})
    return int(record["id"])


# ------------------------------------------------------------------ delivery


def test_inbox_messages_are_shown_in_one_pass_and_only_once(svc: Any) -> None:
    _enqueue(svc, _note(7), _note(8), _note(9, at=NOW + dt.timedelta(hours=1)))  # the last is not due yet
    counts = deliver_pending(svc.runtime, svc.records, NOW)
    assert counts == {"claimed": 2, "shown": 2, "sent": 0, "failed": 0, "dead": 0}
    shown = _rows(svc.runtime, status="shown")
    assert [r.recipient_id for r in shown] == [7, 8]
    assert all(r.sent_at == NOW and r.attempts == 1 and r.next_attempt_at is None for r in shown)
    assert deliver_pending(svc.runtime, svc.records, NOW)["claimed"] == 0
    assert deliver_pending(svc.runtime, svc.records, NOW + dt.timedelta(hours=1))["shown"] == 1


def test_a_plugin_channel_gets_the_address_at_send_time_and_the_table_never_holds_it(app: Any, svc: Any, plugin: Any) -> None:
    sms = Recorder()
    plugin(sms=sms)
    cid = _customer(svc)
    rm = _uid(app, "rm1")
    (mid_customer, mid_staff) = _enqueue(svc, _note(cid, channel="sms", kind="customer", subject="您的工单已受理"), _note(rm, channel="sms"))
    counts = deliver_pending(svc.runtime, svc.records, NOW)
    assert counts["sent"] == 2 and counts["claimed"] == 2
    (to_customer, contact), (to_staff, staff) = sms.sent
    assert to_customer.id == mid_customer and to_customer.subject == "您的工单已受理" and to_customer.attempt == 1
    assert contact["mobile"] == MOBILE and contact["email"] == EMAIL and contact["name"] == "王小明"
    assert to_staff.id == mid_staff and staff["email"] == "rm1@test.local"
    for row in _rows(svc.runtime):
        assert row.status == "sent" and row.sent_at == NOW
        assert not any(MOBILE in str(v) or EMAIL in str(v) for v in row), row
    # decrypting a customer's contact data to send is a sensitive read: audited, without the values
    with svc.runtime.engine.connect() as conn:
        entries = conn.execute(select(audit_table).where(audit_table.c.action == "contact_resolved")).all()
    assert [(e.entity, e.record_id, e.detail["channel"], e.detail["outbox_id"]) for e in entries] == [("customer", cid, "sms", mid_customer)]
    assert MOBILE not in str(entries[0].detail)


def test_a_failing_channel_backs_off_then_the_message_is_a_dead_letter(svc: Any, plugin: Any, client: Any, login: Any) -> None:
    failing = plugin(sms=Recorder(fail_with=ConnectionError(f"gateway refused {MOBILE} <{EMAIL}>")))
    cid = _customer(svc)
    (mid,) = _enqueue(svc, _note(cid, channel="sms", kind="customer"))
    moment, waits = NOW, []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if attempt > 1:  # not before its backoff is over
            assert deliver_pending(svc.runtime, svc.records, moment - dt.timedelta(seconds=1))["claimed"] == 0
        counts = deliver_pending(svc.runtime, svc.records, moment)
        (row,) = _rows(svc.runtime)
        assert row.attempts == attempt
        assert MOBILE not in row.last_error and EMAIL not in row.last_error and row.last_error.startswith("ConnectionError: gateway refused")
        if attempt < MAX_ATTEMPTS:
            assert counts["failed"] == 1 and row.status == "failed"
            waits.append(row.next_attempt_at - moment)
            moment = row.next_attempt_at
        else:
            assert counts["dead"] == 1 and row.status == "dead" and row.next_attempt_at is None
    assert waits == [backoff(n) for n in range(1, MAX_ATTEMPTS)] and waits == sorted(waits) and waits[0] < waits[-1]
    assert deliver_pending(svc.runtime, svc.records, moment + dt.timedelta(days=30))["claimed"] == 0  # dead stays dead

    # operations see the dead letter (without its body) and send it again; an RM may not
    dead = client.get("/api/v1/outbox?status=dead", headers=login("ops1"))
    assert dead.status_code == 200
    assert [(i["id"], i["status"], i["attempts"], i["recipient_kind"]) for i in dead.json["items"]] == [(mid, "dead", MAX_ATTEMPTS, "customer")]
    assert "body" not in dead.json["items"][0] and MOBILE not in dead.get_data(as_text=True)
    assert_error(client.get("/api/v1/outbox?status=dead", headers=login("rm1")), 403, "forbidden")
    assert_error(client.post(f"/api/v1/outbox/{mid}/retry", headers=login("rm1")), 403, "forbidden")
    assert_error(client.get("/api/v1/outbox?status=lost", headers=login("ops1")), 400, field="status")
    retried = client.post(f"/api/v1/outbox/{mid}/retry", headers=login("ops1"))
    assert retried.status_code == 200 and retried.json["status"] == "pending" and retried.json["attempts"] == 0
    assert_error(client.post(f"/api/v1/outbox/{mid}/retry", headers=login("ops1")), 409, "conflict")
    assert_error(client.post("/api/v1/outbox/999999/retry", headers=login("admin")), 404, "not_found")
    plugins.unregister(failing)
    fixed = Recorder()
    plugin(sms=fixed)
    assert deliver_pending(svc.runtime, svc.records)["sent"] == 1 and len(fixed.sent) == 1
    assert _rows(svc.runtime)[0].status == "sent"


def test_an_unknown_channel_fails_with_a_clear_error(svc: Any) -> None:
    _enqueue(svc, _note(7, channel="fax"))
    counts = deliver_pending(svc.runtime, svc.records, NOW)
    assert counts["failed"] == 1
    (row,) = _rows(svc.runtime)
    assert row.status == "failed" and "unknown channel 'fax'" in row.last_error and "inbox" in row.last_error


def test_a_claimed_message_whose_worker_died_is_sent_after_its_lease(app: Any, svc: Any, plugin: Any) -> None:
    sms = Recorder()
    plugin(sms=sms)
    (mid,) = _enqueue(svc, _note(_uid(app, "rm1"), channel="sms"))
    with svc.runtime.begin() as conn:  # as a worker leaves it when it dies mid-send
        conn.execute(outbox_table.update().where(outbox_table.c.id == mid).values(status="sending", attempts=1, next_attempt_at=NOW + LEASE))
    assert deliver_pending(svc.runtime, svc.records, NOW)["claimed"] == 0
    assert deliver_pending(svc.runtime, svc.records, NOW + LEASE)["sent"] == 1
    assert _rows(svc.runtime)[0].attempts == 2


def test_two_workers_never_claim_the_same_message(app: Any, svc: Any, plugin: Any) -> None:
    """PostgreSQL: messages another worker holds (its claim not yet committed) are skipped,
    neither waited for nor taken twice. (SQLite has one writer at a time.)"""
    if svc.runtime.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL only (SQLite serialises writers)")
    sms = Recorder()
    plugin(sms=sms)
    rm1 = _uid(app, "rm1")
    ids = _enqueue(svc, *[_note(rm1, channel="sms", subject=f"第{i}条") for i in range(4)])
    t = outbox_table
    with svc.runtime.begin() as other:  # another worker, mid-claim on the first two
        held = other.execute(select(t.c.id).where(t.c.id.in_(ids[:2])).with_for_update()).scalars().all()
        assert held == ids[:2]
        counts = deliver_pending(svc.runtime, svc.records, NOW)
    assert counts["claimed"] == 2 and [m.id for m, _ in sms.sent] == ids[2:]
    assert [r.status for r in _rows(svc.runtime)] == ["pending", "pending", "sent", "sent"]
    assert deliver_pending(svc.runtime, svc.records, NOW)["sent"] == 2 and len(sms.sent) == 4


def test_plugins_may_not_take_the_inbox_name_or_share_a_channel(plugin: Any) -> None:
    plugin(sms=Recorder())
    plugin(sms=Recorder())
    with pytest.raises(plugins.PluginError, match="'sms'"):
        plugins.notification_channels()


def test_plugins_may_not_replace_the_inbox(plugin: Any) -> None:
    plugin(inbox=Recorder())
    with pytest.raises(plugins.PluginError, match="built in"):
        plugins.notification_channels()


# ------------------------------------------------------------------ my notifications


def test_each_user_sees_only_their_own_notifications(app: Any, svc: Any, client: Any, login: Any) -> None:
    rm1, rm2 = _uid(app, "rm1"), _uid(app, "rm2")
    first, second, theirs = _enqueue(svc, _note(rm1, subject="第一条"), _note(rm1, subject="第二条"), _note(rm2, subject="别人的通知"))
    _enqueue(svc, _note(rm1, channel="sms", subject="短信不在收件箱"), _note(rm1, kind="customer", subject="客户的消息"))
    deliver_pending(svc.runtime, svc.records, NOW)
    mine = client.get("/api/v1/notifications", headers=login("rm1"))
    assert mine.status_code == 200
    assert [i["subject"] for i in mine.json["items"]] == ["第二条", "第一条"] and mine.json["unread"] == 2
    assert "别人的通知" not in mine.get_data(as_text=True)
    page1 = client.get("/api/v1/notifications?limit=1", headers=login("rm1")).json
    assert [i["id"] for i in page1["items"]] == [second] and page1["next_before"] == second
    page2 = client.get(f"/api/v1/notifications?limit=1&before={page1['next_before']}", headers=login("rm1")).json
    assert [i["id"] for i in page2["items"]] == [first] and page2["next_before"] is None
    assert_error(client.post(f"/api/v1/notifications/{theirs}/read", headers=login("rm1")), 404, "not_found")
    read = client.post(f"/api/v1/notifications/{second}/read", headers=login("rm1"))
    assert read.status_code == 200 and read.json["read"] is True and read.json["read_at"]
    unread = client.get("/api/v1/notifications?unread=1", headers=login("rm1")).json
    assert [i["id"] for i in unread["items"]] == [first] and unread["unread"] == 1
    assert client.post("/api/v1/notifications/read-all", headers=login("rm1")).json == {"marked": 1}
    assert client.get("/api/v1/notifications?unread=1", headers=login("rm1")).json["items"] == []
    assert client.get("/api/v1/notifications?unread=1", headers=login("rm2")).json["unread"] == 1  # rm2's untouched
    assert_error(client.get("/api/v1/notifications?limit=0", headers=login("rm1")), 400, field="limit")


def test_a_new_notification_is_visible_before_the_delivery_pass(app: Any, svc: Any, client: Any, login: Any) -> None:
    _enqueue(svc, _note(_uid(app, "rm1"), subject="刚刚发生"))
    assert [i["subject"] for i in client.get("/api/v1/notifications", headers=login("rm1")).json["items"]] == ["刚刚发生"]


def test_the_notifications_page_marks_unread_and_reads(app: Any, svc: Any, client: Any) -> None:
    rm1 = _uid(app, "rm1")
    cid = _customer(svc)
    about, other = _enqueue(svc, _note(rm1, subject="客户生日提醒", entity="customer", record_id=cid), _note(rm1, subject="系统维护通知"))
    _enqueue(svc, _note(_uid(app, "rm2"), subject="不是你的"))
    assert page_login(client, "rm1").status_code in (302, 303)
    resp = client.get("/notifications/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "通知" in html and "未读 2 条" in html and "客户生日提醒" in html and "系统维护通知" in html and "不是你的" not in html
    assert re.search(rf'data-id="{about}" data-read="0"', html)
    assert 'data-nav="notifications"' in html and 'data-unread="2"' in html  # the navbar's badge
    token = csrf_token(html)
    refused = client.post(f"/notifications/{other}/read", data={})
    assert refused.status_code == 400  # no CSRF token
    done = client.post(f"/notifications/{other}/read", data={"csrf_token": token})
    assert done.status_code in (302, 303)
    opened = client.post(f"/notifications/{about}/read", data={"csrf_token": token, "open": "1"})
    assert opened.status_code in (302, 303) and opened.headers["Location"].endswith(f"/e/customer/{cid}")
    html = client.get("/notifications/").get_data(as_text=True)
    assert "未读 0 条" in html and re.search(rf'data-id="{about}" data-read="1"', html)
    assert "没有未读通知" in client.get("/notifications/?unread=1").get_data(as_text=True)
    client.get("/lang/en")
    assert "0 unread" in client.get("/notifications/").get_data(as_text=True)


def test_the_notifications_page_needs_a_login(client: Any) -> None:
    resp = client.get("/notifications/")
    assert resp.status_code in (302, 303) and "/login" in resp.headers["Location"]
