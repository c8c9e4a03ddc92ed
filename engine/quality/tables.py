"""The system table of merges: enough to undo each one exactly.

A merge rewrites the survivor, hides the merged records, re-points every reference and moves
tags; its row keeps the stored (raw, still encrypted) values of every column it overwrote and
the exact rows it re-pointed, so an undo puts back what was there. Like the entity tables it
holds personal data (in the same form as they do) and is read only through the quality service.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table

from ..sqltypes import JsonDoc
from ..store.tables import system_metadata

__all__ = ["merge_table"]

merge_table = Table(
    "fincrm_merge",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(63), nullable=False),
    Column("survivor", BigInteger, nullable=False),
    Column("merged", JsonDoc, nullable=False),  # [record id, …] in the order given
    Column("survivor_version", Integer, nullable=False),  # the survivor's version right after the merge
    Column("survivor_before", JsonDoc, nullable=False),  # {column: stored value} of every column the merge wrote
    Column("merged_before", JsonDoc, nullable=False),  # {record id: {column: stored value}}
    Column("repointed", JsonDoc, nullable=False),  # [{"entity", "field", "ids": {old id: [referrer ids]}}]
    Column("tags", JsonDoc, nullable=False),  # {"added": [tags put on the survivor], "moved": [tag rows of the merged]}
    Column("changes", JsonDoc),  # field-level before/after of the survivor, masked as in the audit trail
    Column("actor", String(150), nullable=False),
    Column("actor_id", Integer),
    Column("created_at", DateTime, nullable=False),
    Column("undone_at", DateTime),
    Column("undone_by", String(150)),
    Index("ix_fincrm_merge_entity", "entity", "survivor"),
)
