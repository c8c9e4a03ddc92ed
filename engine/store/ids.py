"""Hi/lo id allocation shared by every process through one counter row per entity.

Ids are known before INSERT: encryption binds each value to its row id, and bulk loads link
rows without a round trip each. A block is taken in its own short transaction; callers must
take ids *before* opening a write transaction (SQLite allows one writer at a time).
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from .tables import id_alloc_table

__all__ = ["IdAllocator"]


class IdAllocator:
    def __init__(self, engine: Engine, block: int = 1000) -> None:
        self.engine = engine
        self.block = block
        self._lock = threading.Lock()
        self._ranges: dict[str, tuple[int, int]] = {}  # name -> (next, end exclusive)

    def take(self, name: str, n: int = 1, *, ahead: int = 0) -> list[int]:
        """``n`` ids; a reservation this needs covers at least ``ahead`` ids (a bulk load passes the
        rows it has still to come: one short transaction for the run, not one per batch)."""
        out: list[int] = []
        with self._lock:
            while len(out) < n:
                nxt, end = self._ranges.get(name, (0, 0))
                if nxt >= end:
                    want = max(self.block, n - len(out), ahead)
                    end = self._reserve(name, want)
                    nxt = end - want
                k = min(end - nxt, n - len(out))
                out.extend(range(nxt, nxt + k))
                self._ranges[name] = (nxt + k, end)
        return out

    def cached(self, name: str) -> int:
        """How many ids ``take`` can give for ``name`` without a reservation."""
        with self._lock:
            nxt, end = self._ranges.get(name, (0, 0))
            return max(end - nxt, 0)

    def take_in(self, conn: Connection, name: str, n: int) -> list[int]:
        """``n`` ids reserved through the caller's open write transaction (jobs and triggers that
        insert inside one): they are not cached, as a rollback gives them back."""
        if n <= 0:
            return []
        end = _advance(conn, name, n)
        if end is None:
            conn.execute(insert(id_alloc_table).values(name=name, next_id=1 + n))
            end = 1 + n
        return list(range(end - n, end))

    def _reserve(self, name: str, count: int) -> int:
        """Advance the shared counter by ``count``; returns the new (exclusive) end."""
        t = id_alloc_table
        for _ in range(3):
            with self.engine.begin() as conn:
                end = _advance(conn, name, count)
                if end is not None:
                    return end
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(t).values(name=name, next_id=1 + count))
                    return 1 + count
            except IntegrityError:
                continue  # another process created the row first: retry the update
        raise RuntimeError(f"could not allocate ids for {name}")  # pragma: no cover

    def bump_past(self, name: str, max_id: int) -> None:
        """Make sure future ids for ``name`` are above ``max_id`` (after a restore or COPY)."""
        t = id_alloc_table
        with self.engine.begin() as conn:
            current = conn.execute(select(t.c.next_id).where(t.c.name == name)).scalar()
            if current is None:
                conn.execute(insert(t).values(name=name, next_id=max_id + 1))
            elif current <= max_id:
                conn.execute(update(t).where(t.c.name == name).values(next_id=max_id + 1))
        with self._lock:
            self._ranges.pop(name, None)


def _advance(conn: Connection, name: str, count: int) -> int | None:
    """Move ``name``'s counter on by ``count``; the new (exclusive) end, or None if it has no row yet."""
    t = id_alloc_table
    row = conn.execute(update(t).where(t.c.name == name).values(next_id=t.c.next_id + count).returning(t.c.next_id)).first()
    return None if row is None else int(row[0])
