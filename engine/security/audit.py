"""The audit trail: append-only and hash-chained.

Each entry holds the hash of the one before it (``prev_hash``) and its own hash over a canonical
JSON form of all its columns, so editing any entry breaks its own hash and deleting one breaks
the link of the next; the head row holds the last sequence number and hash, so dropping the
newest entries is found too. Entries are appended in the same transaction as the change they
record: a change without its audit entry cannot commit.

Appending takes the head row's lock first (``UPDATE … RETURNING``), which serialises audited
writes; that is the price of one chain, and it keeps sequence numbers gap-free.
Details are masked before they get here: the trail never holds a clear C2 value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from sqlalchemy import BigInteger, Column, Connection, DateTime, Engine, Index, Integer, String, Table, insert, select, update

from ..sqltypes import JsonDoc
from ..store.tables import system_metadata

__all__ = ["audit_table", "audit_head_table", "AuditEntry", "append", "verify", "entry_hash", "GENESIS"]

GENESIS = "0" * 64

audit_table = Table(
    "fincrm_audit",
    system_metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", DateTime, nullable=False),
    Column("actor", String(150), nullable=False),
    Column("actor_id", Integer),
    Column("action", String(40), nullable=False),
    Column("entity", String(63)),
    Column("record_id", BigInteger),
    Column("detail", JsonDoc),
    Column("ip", String(64)),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_fincrm_audit_record", "entity", "record_id", "seq"),
    Index("ix_fincrm_audit_actor", "actor", "seq"),
)

audit_head_table = Table(
    "fincrm_audit_head",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    actor_id: int | None = None
    entity: str | None = None
    record_id: int | None = None
    detail: Mapping[str, Any] | None = None
    ip: str | None = None


def _canonical(row: Mapping[Any, Any]) -> bytes:
    ts = row["ts"]
    body = {
        "seq": int(row["seq"]),
        "ts": ts.isoformat() if isinstance(ts, dt.datetime) else str(ts),
        "actor": row["actor"],
        "actor_id": row["actor_id"],
        "action": row["action"],
        "entity": row["entity"],
        "record_id": None if row["record_id"] is None else int(row["record_id"]),
        "detail": row["detail"],
        "ip": row["ip"],
        "prev_hash": row["prev_hash"],
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def entry_hash(row: Mapping[Any, Any]) -> str:
    return hashlib.sha256(_canonical(row)).hexdigest()


def ensure_head(conn: Connection) -> None:
    if conn.execute(select(audit_head_table.c.id).where(audit_head_table.c.id == 1)).first() is None:
        conn.execute(insert(audit_head_table).values(id=1, seq=0, hash=GENESIS))


def append(conn: Connection, entry: AuditEntry, now: dt.datetime | None = None) -> int:
    """Append ``entry`` inside the caller's transaction; returns its sequence number."""
    h = audit_head_table
    head = conn.execute(update(h).where(h.c.id == 1).values(seq=h.c.seq + 1).returning(h.c.seq, h.c.hash)).first()
    if head is None:
        ensure_head(conn)
        head = conn.execute(update(h).where(h.c.id == 1).values(seq=h.c.seq + 1).returning(h.c.seq, h.c.hash)).first()
    assert head is not None
    ts = (now or dt.datetime.now(dt.timezone.utc)).replace(tzinfo=None, microsecond=0)
    row: dict[str, Any] = {
        "seq": int(head.seq),
        "ts": ts,
        "actor": entry.actor[:150],
        "actor_id": entry.actor_id,
        "action": entry.action[:40],
        "entity": entry.entity,
        "record_id": entry.record_id,
        "detail": json.loads(json.dumps(dict(entry.detail or {}), default=str, ensure_ascii=False)),
        "ip": (entry.ip or None) and entry.ip[:64],
        "prev_hash": head.hash,
    }
    row["hash"] = entry_hash(row)
    conn.execute(insert(audit_table).values(**row))
    conn.execute(update(h).where(h.c.id == 1).values(hash=row["hash"]))
    return int(row["seq"])


def verify(engine: Engine, batch: int = 5000) -> dict[str, Any]:
    """Walk the chain: ``{"ok", "checked", "first_bad", "reason"}``; first_bad names the entry."""
    t = audit_table
    checked = 0
    prev_hash = GENESIS
    expected_seq = 1
    with engine.connect() as conn:
        # the chain as of this moment: entries appended while we walk are left for next time
        head = conn.execute(select(audit_head_table.c.seq, audit_head_table.c.hash)).first()
        limit = int(head.seq) if head is not None else None
        for row in _rows(conn, t, batch, limit):
            checked += 1
            if row["seq"] != expected_seq:
                return _bad(checked, expected_seq, f"entry {expected_seq} is missing (deleted)")
            if row["prev_hash"] != prev_hash:
                return _bad(checked, row["seq"], "its link to the previous entry is broken (an earlier entry was deleted or edited)")
            if entry_hash(row) != row["hash"]:
                return _bad(checked, row["seq"], "its content does not match its hash (edited)")
            prev_hash = row["hash"]
            expected_seq += 1
    if head is not None and (int(head.seq) != expected_seq - 1 or head.hash != prev_hash):
        return _bad(checked, expected_seq, f"the newest entries after {expected_seq - 1} are missing (deleted)")
    return {"ok": True, "checked": checked, "first_bad": None}


def _bad(checked: int, seq: int, reason: str) -> dict[str, Any]:
    return {"ok": False, "checked": checked, "first_bad": seq, "reason": reason}


def _rows(conn: Connection, t: Table, batch: int, limit: int | None) -> Iterator[Mapping[Any, Any]]:
    last = 0
    while True:
        stmt = select(t).where(t.c.seq > last)
        if limit is not None:
            stmt = stmt.where(t.c.seq <= limit)
        rows = conn.execute(stmt.order_by(t.c.seq).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield r._mapping
        last = rows[-1].seq
