"""``GET /api/v1/tasks/mine``: the caller's open tasks in the same groups as the My work page."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.fieldtypes import LOCAL_TZ
from engine.security.principal import Principal
from tests.api_helpers import app, assert_error, client, login, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

SYSTEM = Principal.system("test")


def _uid(app: Any, username: str) -> int:
    with app.app_context():
        return int(app.appbuilder.sm.find_user(username=username).id)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_my_tasks_are_grouped_overdue_today_upcoming_and_only_mine(app: Any, client: Any, login: Any) -> None:
    rm1, rm2 = _uid(app, "rm1"), _uid(app, "rm2")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    local_today = now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).date()
    day_end = dt.datetime.combine(local_today + dt.timedelta(days=1), dt.time(), LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
    later_today = now + (day_end - now) / 2
    records = app.extensions["fincrm"].records
    rows = [
        {"title": "逾期回访", "status": "open", "due_at": _iso(now - dt.timedelta(days=2)), "owner": rm1},
        {"title": "今日回访", "status": "open", "due_at": _iso(later_today), "owner": rm1},
        {"title": "下周回访", "status": "escalated", "due_at": _iso(day_end + dt.timedelta(days=3)), "owner": rm1},
        {"title": "很久以后", "status": "open", "due_at": _iso(day_end + dt.timedelta(days=40)), "owner": rm1},
        {"title": "已办完", "status": "done", "due_at": _iso(now - dt.timedelta(days=1)), "owner": rm1},
        {"title": "别人的任务", "status": "open", "due_at": _iso(now - dt.timedelta(days=1)), "owner": rm2},
    ]
    with app.app_context():
        records.bulk_insert(SYSTEM, "task", rows)
    resp = client.get("/api/v1/tasks/mine", headers=login("rm1"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.json
    assert [t["title"] for t in body["overdue"]] == ["逾期回访"]
    assert [t["title"] for t in body["today"]] == (["今日回访"] if later_today < day_end else [])
    assert [t["title"] for t in body["upcoming"]] == ["下周回访"]
    assert body["more"] == {"overdue": False, "upcoming": False}
    assert "别人的任务" not in resp.get_data(as_text=True)
    theirs = client.get("/api/v1/tasks/mine", headers=login("rm2")).json
    assert [t["title"] for t in theirs["overdue"]] == ["别人的任务"] and theirs["today"] == theirs["upcoming"] == []


def test_a_role_that_cannot_read_tasks_is_refused(app: Any, client: Any, login: Any) -> None:
    sm = app.appbuilder.sm
    with app.app_context():
        if sm.find_user(username="auditor9") is None:
            sm.add_user("auditor9", "auditor9", "Test", "auditor9@test.local", [sm.find_role("auditor")], password=TEST_PASSWORD)
    assert_error(client.get("/api/v1/tasks/mine", headers=login("auditor9")), 403, "forbidden")
    assert_error(client.get("/api/v1/tasks/mine"), 401)
