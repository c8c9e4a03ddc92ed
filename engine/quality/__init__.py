"""Data quality: cross-field rules (checked on every write, counted in reports), completeness,
duplicate groups, and merges of duplicates into a golden record that can be undone.

Only the parts the records service needs inside its writes are imported here (the rule check
and the merge table, which must join the system metadata before ``init_schema`` runs); the
reports, the duplicate scanner and merges work *through* the records service and are imported
from their modules (``engine.quality.service``) by the web layer.
"""

from __future__ import annotations

from .rules import check_written, rule_violation, violations
from .tables import merge_table

__all__ = ["check_written", "rule_violation", "violations", "merge_table"]
