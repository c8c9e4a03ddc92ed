"""The outbox: notifications written in the same transaction as the change that caused them,
delivered afterwards by the jobs (so a rolled-back change never sends anything).

Delivery (:func:`deliver_pending`) claims due messages in one statement — ``UPDATE … WHERE id IN
(SELECT … FOR UPDATE SKIP LOCKED)`` on PostgreSQL, so two workers never take the same message
(SQLite has one writer at a time anyway). Messages of the built-in ``inbox`` channel are done by
the claim itself: stored and shown in the recipient's notifications (status ``shown``). Other
channels come from plugins (:func:`engine.plugins.notification_channels`); their messages are
claimed as ``sending`` with a lease, sent outside any transaction, and settled one by one:
``sent``, or ``failed`` and due again after an exponential backoff, or ``dead`` after
:data:`MAX_ATTEMPTS` attempts (dead letters are listed for operations, who can retry them). A
worker that dies mid-send leaves its messages ``sending`` until the lease runs out; then they
are due again (delivery is at least once). Each send is one attempt in the interface call log
(:mod:`engine.flows.interfaces`), numbered by the outbox's own attempt count.

Rows name recipients by reference (a staff user id or a customer record id). A channel gets
the address from ``resolve(kind, id)`` at send time — a customer's contact data is read through
the records service as the system principal, decrypted only then, and the read is audited — so
no address or unmasked C2 value is ever written to the table, an error message or a log line.

Statuses: pending → (inbox) shown | (other channels) sending → sent | failed → … | dead.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sqlalchemy import Boolean, Column, Connection, Integer, MetaData, String, Table, case, inspect, insert, null, or_, select, update

from .. import metrics
from ..plugins import NotificationChannel, OutboundMessage, notification_channels
from ..runtime import Runtime, utcnow
from ..security import audit
from ..security.principal import Principal
from .interfaces import Call, Interfaces, summarize
from .tables import outbox_table

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = [
    "enqueue_many",
    "deliver_pending",
    "ContactResolver",
    "backoff",
    "scrub",
    "DEFAULT_CHANNEL",
    "MAX_ATTEMPTS",
    "LEASE",
    "STATUSES",
]

log = logging.getLogger("fincrm.outbox")

DEFAULT_CHANNEL = "inbox"  # stored and shown in the recipient's notifications; no external send
MAX_ATTEMPTS = 5  # the fifth failed attempt makes a message a dead letter
BACKOFF = dt.timedelta(minutes=1)  # wait after failed attempt n: BACKOFF * 2**(n-1) → 1, 2, 4, 8 min
MAX_BACKOFF = dt.timedelta(hours=1)
LEASE = dt.timedelta(minutes=10)  # a claimed message not settled by then is due again
STATUSES = ("pending", "sending", "shown", "sent", "failed", "dead")
DUE_STATUSES = ("pending", "failed", "sending")  # "sending" only once its lease has run out

CONTACT_FIELDS = ("name", "mobile", "email")  # what resolve("customer", id) reads, if the entity has them

# Flask-AppBuilder's user table, read for a staff member's e-mail (its model lives in the web layer)
_fab = MetaData()
_ab_user = Table(
    "ab_user",
    _fab,
    Column("id", Integer, primary_key=True),
    Column("username", String(64)),
    Column("first_name", String(64)),
    Column("last_name", String(64)),
    Column("email", String(320)),
    Column("active", Boolean),
)


def enqueue_many(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Queue notifications inside the caller's transaction. Each row: channel, recipient_kind
    (user|customer), recipient_id, subject, body, source, entity, record_id, created_at."""
    if not rows:
        return 0
    conn.execute(
        insert(outbox_table),
        [{"status": "pending", "attempts": 0, "next_attempt_at": r["created_at"], **r} for r in rows],
    )
    return len(rows)


def backoff(attempts: int) -> dt.timedelta:
    """How long a message waits after its ``attempts``-th failed attempt."""
    return min(BACKOFF * (1 << max(attempts - 1, 0)), MAX_BACKOFF)


# ---------------------------------------------------------------------- contact data at send time


class ContactResolver:
    """``resolve(kind, id)`` for channels: contact data read when a message is sent, kept in
    memory for one delivery pass only. Remembers every value it handed out, so an error text
    can be scrubbed of them, and which customers' data was read (each read is audited)."""

    def __init__(self, runtime: Runtime, records: "RecordService") -> None:
        self.runtime = runtime
        self.records = records
        self.principal = Principal.system("outbox")
        self._cache: dict[tuple[str, int], dict[str, Any]] = {}
        self._has_staff: bool | None = None
        self.customers_read: set[int] = set()
        self.values: set[str] = set()

    def __call__(self, kind: str, rid: int) -> dict[str, Any]:
        key = (kind, int(rid))
        found = self._cache.get(key)
        if found is None:
            if kind == "customer":
                found = self._customer(int(rid))
            elif kind == "user":
                found = self._staff(int(rid))
            else:
                raise LookupError(f"unknown recipient kind {kind!r} (user or customer)")
            self._cache[key] = found
        if kind == "customer":
            self.customers_read.add(int(rid))
        self.values.update(str(v) for k, v in found.items() if k not in ("kind", "id") and v not in (None, ""))
        return dict(found)

    def _customer(self, rid: int) -> dict[str, Any]:
        spec = self.runtime.cached_snapshot().registry.entity("customer")
        fields = [n for n in CONTACT_FIELDS if spec.live_field(n) is not None]
        # the system principal reads in clear; retained customers are not found (never contacted)
        record = self.records.get(self.principal, "customer", rid, fields=fields)
        return {"kind": "customer", "id": rid, **{n: record.get(n) for n in fields}}

    def _staff(self, uid: int) -> dict[str, Any]:
        with self.runtime.engine.connect() as conn:
            if self._has_staff is None:
                self._has_staff = inspect(conn).has_table("ab_user")
            if not self._has_staff:
                raise LookupError("staff accounts are not available in this installation")
            u = _ab_user
            row = conn.execute(select(u.c.username, u.c.first_name, u.c.last_name, u.c.email, u.c.active).where(u.c.id == uid)).first()
        if row is None or row.active is False:
            raise LookupError(f"staff user {uid} does not exist or is disabled")
        name = f"{row.first_name or ''}{row.last_name or ''}".strip() or row.username
        return {"kind": "user", "id": uid, "username": row.username, "name": name, "email": row.email}

    def forget(self) -> None:
        self._cache.clear()
        self.values.clear()
        self.customers_read.clear()


_EMAIL = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+")
_DIGITS = re.compile(r"\d[\d\s-]{5,}\d")  # phone, ID and card numbers, however spaced


def scrub(text: str, values: Sequence[str] | set[str] = ()) -> str:
    """An error text with every resolved contact value, e-mail address and long number cut out,
    so it can be stored in ``last_error`` and logged."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 2:
            text = text.replace(value, "***")
    text = _EMAIL.sub("***@***", text)
    return _DIGITS.sub("***", text)[:500]


# ---------------------------------------------------------------------- delivery


def _claim(runtime: Runtime, now: dt.datetime, limit: int) -> list[Any]:
    """Take up to ``limit`` due messages; inbox ones are shown by this very statement."""
    t = outbox_table
    due = (
        select(t.c.id)
        .where(t.c.status.in_(DUE_STATUSES), or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now))
        .order_by(t.c.id)
        .limit(limit)
    )
    if runtime.dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    inbox = t.c.channel == DEFAULT_CHANNEL
    stmt = (
        update(t)
        .where(t.c.id.in_(due.scalar_subquery()))
        .values(
            status=case((inbox, "shown"), else_="sending"),
            attempts=t.c.attempts + 1,
            sent_at=case((inbox, now), else_=t.c.sent_at),
            next_attempt_at=case((inbox, null()), else_=now + LEASE),
            last_error=case((inbox, null()), else_=t.c.last_error),
        )
        .returning(
            t.c.id, t.c.channel, t.c.recipient_kind, t.c.recipient_id, t.c.subject, t.c.body, t.c.source, t.c.entity,
            t.c.record_id, t.c.created_at, t.c.attempts,
        )
    )
    with runtime.begin() as conn:
        rows = conn.execute(stmt).all()
    return sorted(rows, key=lambda r: r.id)


def _settle(
    runtime: Runtime, row: Any, now: dt.datetime, error: str | None, resolver: ContactResolver
) -> str:
    """Record one send's outcome (and audit the customer contact data it read); its status."""
    t = outbox_table
    if error is None:
        values: dict[str, Any] = {"status": "sent", "sent_at": now, "next_attempt_at": None, "last_error": None}
    elif row.attempts >= MAX_ATTEMPTS:
        values = {"status": "dead", "next_attempt_at": None, "last_error": error}
    else:
        values = {"status": "failed", "next_attempt_at": now + backoff(row.attempts), "last_error": error}
    with runtime.begin() as conn:
        # only while the claim is still ours (a lapsed lease may have passed it to another worker)
        conn.execute(update(t).where(t.c.id == row.id, t.c.status == "sending", t.c.attempts == row.attempts).values(**values))
        for cid in sorted(resolver.customers_read):
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=resolver.principal.username,
                    action="contact_resolved",
                    entity="customer",
                    record_id=cid,
                    detail={"outbox_id": row.id, "channel": row.channel, "source": row.source, "delivered": error is None},
                ),
            )
    return str(values["status"])


def deliver_pending(
    runtime: Runtime,
    records: "RecordService",
    now: dt.datetime | None = None,
    limit: int = 500,
    *,
    channels: Mapping[str, NotificationChannel] | None = None,
) -> dict[str, Any]:
    """One delivery pass over the due messages (at most ``limit``); returns the counts:
    ``claimed``, ``shown`` (inbox), ``sent``, ``failed`` (will be retried), ``dead``."""
    now = now or utcnow()
    # plugins first: a broken plugin setup fails the pass before anything is claimed
    plugins = notification_channels() if channels is None else dict(channels)
    rows = _claim(runtime, now, limit)
    counts = {"claimed": len(rows), "shown": 0, "sent": 0, "failed": 0, "dead": 0}
    external = [r for r in rows if r.channel != DEFAULT_CHANNEL]
    counts["shown"] = len(rows) - len(external)
    metrics.count_delivery(DEFAULT_CHANNEL, "shown", counts["shown"])
    if external:
        resolver = ContactResolver(runtime, records)
        calls = Interfaces(runtime)
        for row in external:
            resolver.customers_read.clear()
            error = _send(row, plugins, resolver, calls)
            status = _settle(runtime, row, now, error, resolver)
            counts[status] += 1
            metrics.count_delivery(row.channel, status)
            if error is not None:
                log.warning("outbox message %d via %s: attempt %d failed (%s): %s", row.id, row.channel, row.attempts, status, error)
        resolver.forget()
    if rows:
        log.info("outbox: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def _send(row: Any, plugins: Mapping[str, NotificationChannel], resolver: ContactResolver, calls: Interfaces) -> str | None:
    """Hand one message to its channel, as one attempt in the interface call log (numbered by the
    outbox, which does the retrying); the scrubbed error text, or None when it went out."""
    channel = plugins.get(row.channel)
    if channel is None:
        known = ", ".join(sorted({DEFAULT_CHANNEL, *plugins}))
        return f"unknown channel {row.channel[:32]!r}: no installed plugin provides it (channels: {known})"
    message = OutboundMessage(
        id=row.id, channel=row.channel, recipient_kind=row.recipient_kind, recipient_id=int(row.recipient_id), subject=row.subject,
        body=row.body, source=row.source, entity=row.entity, record_id=row.record_id, created_at=row.created_at, attempt=int(row.attempts),
    )
    sent = Call(
        "channel", row.channel, "send",
        summarize({"message": row.id, "recipient": f"{row.recipient_kind}:{row.recipient_id}", "source": row.source}),
    )
    try:
        calls.attempt(sent, lambda timeout: channel.send(message, resolver), attempt=int(row.attempts), scrub=resolver.values)
    except Exception as exc:  # any failure of a plugin is a failed attempt: recorded, retried
        return scrub(f"{type(exc).__name__}: {exc}", resolver.values)
    return None
