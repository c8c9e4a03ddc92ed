"""The notifications page in Chromium: the navbar's unread badge, unread messages marked, "mark
read" and "open" (which leads to the record). A screenshot is kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.flows.outbox import deliver_pending, enqueue_many
from engine.runtime import utcnow
from tests.ui.conftest import screenshot


def test_rm1_reads_their_notifications(ui_app: Any, api: Any, page_as: Any) -> None:
    client, login = api
    customer = client.post("/api/v1/records/customer", json={"name": "周通知", "aum": "80000"}, headers=login("rm1"))
    assert customer.status_code == 201
    cid = customer.json["id"]
    with ui_app.app_context():
        sm = ui_app.appbuilder.sm
        rm1, rm2 = sm.find_user(username="rm1").id, sm.find_user(username="rm2").id
    svc = ui_app.extensions["fincrm"]
    now = utcnow()
    note = {"channel": "inbox", "recipient_kind": "user", "source": "trigger:test", "entity": None, "record_id": None}
    with svc.runtime.begin() as conn:
        enqueue_many(conn, [
            {**note, "recipient_id": rm1, "subject": "任务即将到期", "body": "回访周通知的任务将在 24 小时内到期，请及时跟进。",
             "entity": "customer", "record_id": cid, "created_at": now - dt.timedelta(hours=2)},
            {**note, "recipient_id": rm1, "subject": "商机跟进超时", "body": "理财到期续作商机已 3 天未联系客户，已通知主管。", "created_at": now - dt.timedelta(hours=1)},
            {**note, "recipient_id": rm2, "subject": "别人的通知", "body": "", "created_at": now},
        ])
    deliver_pending(svc.runtime, svc.records, now)
    page = page_as("rm1")
    page.goto("/notifications/")
    assert page.locator("[data-nav=notifications] .badge").inner_text().strip() == "2"
    items = page.locator(".fincrm-notification")
    assert items.locator(".fincrm-notification-subject").all_inner_texts() == ["商机跟进超时", "任务即将到期"]
    assert page.locator(".fincrm-notification.fincrm-unread").count() == 2 and "别人的通知" not in page.content()
    screenshot(page, "notifications")
    page.locator(".fincrm-notification").first.locator(".fincrm-notification-mark").click()
    page.wait_for_load_state("networkidle")
    assert page.locator(".fincrm-notification.fincrm-unread").count() == 1
    assert page.locator("[data-nav=notifications] .badge").inner_text().strip() == "1"
    page.locator(".fincrm-notification.fincrm-unread .fincrm-notification-open").click()
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(f"/e/customer/{cid}")
    assert page.locator("[data-nav=notifications] .badge").count() == 0
    assert page.errors == []
