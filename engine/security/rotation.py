"""Re-encrypt every encrypted value under the current data key, in resumable batches.

Rows still under an older key are found by the key id in the stored value, so an interrupted
run simply continues where it stopped; each batch commits on its own and updates a row only if
its value is unchanged since it was read (a concurrent edit wins).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from sqlalchemy import Column, Table, and_, not_, select, update

from ..runtime import Runtime, Snapshot
from .crypto import aad_for

__all__ = ["rotate_keys", "encrypted_columns"]


def encrypted_columns(snap: Snapshot) -> Iterator[tuple[str, Table, str, "Column[Any]"]]:
    """Every column that holds ciphertext: (entity, table, field, column). JSON-stored fields
    are never encrypted (encryption needs a column)."""
    for spec in snap.registry.entities.values():
        t = snap.tables[spec.name]
        for f in spec.fields:
            if f.encrypted and f.storage == "column":
                yield spec.name, t, f.name, t.c[f.name]


def rotate_keys(runtime: Runtime, batch: int = 500, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    keyring = runtime.keyring
    current = f"v1.{keyring.current_id}.%"
    snap = runtime.snapshot()
    done: dict[str, int] = {}
    for entity, t, field, col in encrypted_columns(snap):
        count = 0
        last_id = 0
        while True:
            with runtime.engine.connect() as conn:
                rows = conn.execute(
                    select(t.c.id, col)
                    .where(and_(col.is_not(None), not_(col.like(current)), t.c.id > last_id))
                    .order_by(t.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                break
            with runtime.begin() as conn:
                for row in rows:
                    aad = aad_for(t.name, field, row.id)
                    fresh = keyring.encrypt(keyring.decrypt(row[1], aad), aad)
                    res = conn.execute(update(t).where(t.c.id == row.id, col == row[1]).values({col: fresh}))
                    count += res.rowcount
            last_id = rows[-1].id
            if progress is not None:
                progress(f"{entity}.{field}", len(rows))
        done[f"{entity}.{field}"] = count
    return done


