"""The outbox: notifications written in the same transaction as the change that caused them,
delivered afterwards by the jobs (so a rolled-back change never sends anything)."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Connection, insert

from .tables import outbox_table

__all__ = ["enqueue_many", "DEFAULT_CHANNEL"]

DEFAULT_CHANNEL = "inbox"  # stored and shown in the recipient's notifications; no external send


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
