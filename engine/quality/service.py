"""The data-quality service: what the web layer (and the CLI or jobs) call.

It holds no state of its own beyond the records service it works through, so every read keeps
the caller's row scope and field policy, and every change is audited the records' way.
"""

from __future__ import annotations

from typing import Any

from ..security.principal import Principal
from ..services.records import RecordService
from .duplicates import duplicate_groups
from .merge import merge_info, merge_records, undo_merge
from .report import quality_report

__all__ = ["QualityService"]


class QualityService:
    def __init__(self, records: RecordService) -> None:
        self.records = records

    def report(self, principal: Principal, entity: str) -> dict[str, Any]:
        """Rule violations (counts and sample ids) and completeness per field, in scope."""
        return quality_report(self.records, principal, entity)

    def duplicates(self, principal: Principal, entity: str, *, rule: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """Duplicate groups per dedupe rule, in scope, records masked as the reader sees them."""
        return duplicate_groups(self.records, principal, entity, rule=rule, limit=limit, cursor=cursor)

    def merge(self, principal: Principal, entity: str, payload: Any) -> dict[str, Any]:
        """Merge records into the survivor: ``{"merge": …, "record": golden record}``."""
        return merge_records(self.records, principal, entity, payload)

    def merge_info(self, principal: Principal, merge_id: int) -> dict[str, Any]:
        return merge_info(self.records, principal, merge_id)

    def undo(self, principal: Principal, merge_id: int) -> dict[str, Any]:
        """Undo a merge: ``{"merge": …, "record": the survivor as it was}``."""
        return undo_merge(self.records, principal, merge_id)
