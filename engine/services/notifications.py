"""Notifications: a user's own in-app messages (the outbox's ``inbox`` channel) and, for
operations, the outbox itself with its dead letters.

A user sees only messages addressed to them (``recipient_kind = 'user'``, their id) on the
inbox channel, as soon as the change that queued them has committed — the delivery pass then
marks them ``shown``. Reading the outbox and retrying dead letters need the ``outbox`` area
(``read``, ``update``), granted by name to operations and administrators; ``*`` never covers it.
The operations view leaves message bodies out: the subject, the recipient reference and the
delivery state are what a failed delivery is diagnosed by.
"""

from __future__ import annotations

import builtins
import threading
import time
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest, Conflict, NotFound
from ..fieldtypes import FIELD_TYPES
from ..flows.outbox import DEFAULT_CHANNEL, STATUSES
from ..flows.tables import outbox_table
from ..runtime import Runtime, utcnow
from ..security import audit
from ..security.authz import Authorizer
from ..security.principal import Principal

__all__ = ["Notifications", "OUTBOX_AREA"]

OUTBOX_AREA = "outbox"  # permission area: read (list), update (retry)
VISIBLE = ("pending", "shown")  # inbox messages a recipient sees (pending ones are shown by the next pass)
MAX_LIMIT = 200
BADGE_SECONDS = 30.0  # how old the navbar's unread count may be (it costs no statement on most pages)


def _dump(value: Any) -> str | None:
    return FIELD_TYPES["datetime"].dump(value) if value is not None else None


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", [{"field": "limit", "message": "out of range"}])
    return limit


class Notifications:
    def __init__(self, runtime: Runtime, authz: Authorizer) -> None:
        self.runtime = runtime
        self.authz = authz
        # the navbar badge per user: (when counted, unread count). Pages keep their statement
        # budget; a new message shows on the badge within BADGE_SECONDS, and this process's own
        # list and mark-read calls set it exactly.
        self._badges: dict[int, tuple[float, int]] = {}
        self._badge_lock = threading.Lock()

    def _remember_badge(self, principal: Principal, count: int | None) -> None:
        if principal.user_id is None:
            return
        with self._badge_lock:
            if count is None:
                self._badges.pop(principal.user_id, None)
                return
            if len(self._badges) > 10_000:
                self._badges.clear()
            self._badges[principal.user_id] = (time.monotonic(), count)

    # ------------------------------------------------------------------ my notifications

    @staticmethod
    def _mine(principal: Principal) -> ColumnElement[bool]:
        t = outbox_table
        return and_(
            t.c.recipient_kind == "user",
            t.c.recipient_id == (principal.user_id if principal.user_id is not None else -1),
            t.c.channel == DEFAULT_CHANNEL,
            t.c.status.in_(VISIBLE),
        )

    @staticmethod
    def _item(r: Any) -> dict[str, Any]:
        return {
            "id": r.id,
            "subject": r.subject,
            "body": r.body,
            "source": r.source,
            "entity": r.entity,
            "record_id": r.record_id,
            "created_at": _dump(r.created_at),
            "read_at": _dump(r.read_at),
            "read": r.read_at is not None,
        }

    def list(self, principal: Principal, *, unread: bool = False, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        """My notifications, newest first, a page at a time (``before`` = the previous page's
        ``next_before``); ``unread`` is how many I have not read in all."""
        t = outbox_table
        mine = self._mine(principal)
        stmt = select(t.c.id, t.c.subject, t.c.body, t.c.source, t.c.entity, t.c.record_id, t.c.created_at, t.c.read_at).where(mine)
        if unread:
            stmt = stmt.where(t.c.read_at.is_(None))
        if before is not None:
            stmt = stmt.where(t.c.id < before)
        limit = _limit(limit)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(t.c.id.desc()).limit(limit + 1)).all()
            count = conn.execute(select(func.count()).select_from(t).where(mine, t.c.read_at.is_(None))).scalar_one()
        self._remember_badge(principal, int(count))
        return {
            "items": [self._item(r) for r in rows[:limit]],
            "next_before": rows[limit - 1].id if len(rows) > limit else None,
            "unread": int(count),
        }

    def unread_count(self, principal: Principal, cap: int = 99) -> int:
        """How many unread notifications I have, counted up to ``cap + 1`` (a badge shows 99+)."""
        t = outbox_table
        if principal.user_id is None:
            return 0
        sub = select(t.c.id).where(self._mine(principal), t.c.read_at.is_(None)).limit(cap + 1).subquery()
        with self.runtime.engine.connect() as conn:
            count = int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
        self._remember_badge(principal, count)
        return count

    def unread_badge(self, principal: Principal, max_age: float = BADGE_SECONDS) -> int:
        """The unread count for the navbar: remembered for up to ``max_age`` seconds."""
        if principal.user_id is None:
            return 0
        seen = self._badges.get(principal.user_id)
        if seen is not None and time.monotonic() - seen[0] < max_age:
            return seen[1]
        return self.unread_count(principal)

    def mark_read(self, principal: Principal, notification_id: int) -> dict[str, Any]:
        """Mark one of my notifications read (again is harmless); someone else's is not found."""
        t = outbox_table
        mine = and_(self._mine(principal), t.c.id == notification_id)
        with self.runtime.begin() as conn:
            conn.execute(update(t).where(mine, t.c.read_at.is_(None)).values(read_at=utcnow()))
            row = conn.execute(
                select(t.c.id, t.c.subject, t.c.body, t.c.source, t.c.entity, t.c.record_id, t.c.created_at, t.c.read_at).where(mine)
            ).first()
        if row is None:
            raise NotFound(f"notification {notification_id} not found")
        self._remember_badge(principal, None)
        return self._item(row)

    def mark_all_read(self, principal: Principal) -> dict[str, Any]:
        t = outbox_table
        with self.runtime.begin() as conn:
            result = conn.execute(update(t).where(self._mine(principal), t.c.read_at.is_(None)).values(read_at=utcnow()))
        self._remember_badge(principal, 0)
        return {"marked": int(result.rowcount or 0)}

    # ------------------------------------------------------------------ operations

    @staticmethod
    def _outbox_item(r: Any) -> dict[str, Any]:
        return {
            "id": r.id,
            "channel": r.channel,
            "recipient_kind": r.recipient_kind,
            "recipient_id": r.recipient_id,
            "subject": r.subject,
            "source": r.source,
            "entity": r.entity,
            "record_id": r.record_id,
            "status": r.status,
            "attempts": r.attempts,
            "last_error": r.last_error,
            "created_at": _dump(r.created_at),
            "next_attempt_at": _dump(r.next_attempt_at),
            "sent_at": _dump(r.sent_at),
        }

    def _outbox_columns(self) -> builtins.list[Any]:
        t = outbox_table
        return [
            t.c.id, t.c.channel, t.c.recipient_kind, t.c.recipient_id, t.c.subject, t.c.source, t.c.entity, t.c.record_id,
            t.c.status, t.c.attempts, t.c.last_error, t.c.created_at, t.c.next_attempt_at, t.c.sent_at,
        ]

    def outbox(self, principal: Principal, *, status: str | None = None, before: int | None = None, limit: int = 100) -> dict[str, Any]:
        """The outbox for operations, newest first; ``status="dead"`` lists the dead letters."""
        self.authz.require(principal, OUTBOX_AREA, "read")
        t = outbox_table
        stmt = select(*self._outbox_columns())
        if status:
            if status not in STATUSES:
                raise BadRequest(f"status must be one of {', '.join(STATUSES)}", [{"field": "status", "message": "unknown status"}])
            stmt = stmt.where(t.c.status == status)
        if before is not None:
            stmt = stmt.where(t.c.id < before)
        limit = _limit(limit)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(t.c.id.desc()).limit(limit + 1)).all()
        return {"items": [self._outbox_item(r) for r in rows[:limit]], "next_before": rows[limit - 1].id if len(rows) > limit else None}

    def retry(self, principal: Principal, message_id: int) -> dict[str, Any]:
        """Send a dead (or failing) message again on the next pass, with a fresh set of attempts."""
        self.authz.require(principal, OUTBOX_AREA, "update")
        t = outbox_table
        now = utcnow()
        with self.runtime.begin() as conn:
            row = conn.execute(select(t.c.status).where(t.c.id == message_id)).first()
            if row is None:
                raise NotFound(f"outbox message {message_id} not found")
            if row.status not in ("dead", "failed"):
                raise Conflict(f"outbox message {message_id} is {row.status}: only dead or failed messages can be retried")
            conn.execute(update(t).where(t.c.id == message_id).values(status="pending", attempts=0, next_attempt_at=now))
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=principal.username, actor_id=principal.user_id, action="outbox_retry", entity=None, record_id=None,
                    detail={"outbox_id": message_id, "was": row.status}, ip=principal.ip,
                ),
            )
            out = conn.execute(select(*self._outbox_columns()).where(t.c.id == message_id)).one()
        return self._outbox_item(out)
