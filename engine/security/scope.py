"""Row scope as SQL: the WHERE clause that limits a principal to own/team/branch/all rows.

How an entity is scoped is derived from its metadata, never coded per entity:
- its owner field (type ``user``): own → owner is me; team → owner on my team; branch → owner
  is staff of my branch subtree;
- a ``branch`` field referencing the branch entity: branch → in my branch subtree;
- a reference to an owned entity (e.g. ``customer`` on holdings or tickets): the referenced
  record is in scope (one level of ``IN (SELECT id …)``, compiled into the same statement).
Conditions that apply are OR-ed (a ticket I handle, or a ticket on my customer). An entity
with none of these has no way to be narrowed: a limited scope then sees nothing — grant
``all`` for shared reference data (products, branches).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, false, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ..meta.spec import EntitySpec, FieldSpec
from ..store.query import field_expr
from .principal import Principal

__all__ = ["scope_condition", "scope_parent", "branch_field"]


def branch_field(spec: EntitySpec) -> FieldSpec | None:
    f = spec.live_field("branch")
    return f if f is not None and f.type == "ref" and f.ref == "branch" else None


def scope_parent(spec: EntitySpec, snap: Any) -> FieldSpec | None:
    """The reference through which an entity without its own owner inherits scope."""
    for f in spec.live_fields:
        if f.type != "ref" or f.ref == spec.name or f.ref not in snap.registry.entities:
            continue
        target = snap.registry.entity(f.ref)
        if target.owner_field or branch_field(target):
            return f
    return None


def scope_condition(
    principal: Principal, scope: str, spec: EntitySpec, table: Table, snap: Any, depth: int = 0, *, strict: bool = False
) -> ColumnElement[bool] | None:
    """Rows of ``spec`` in ``scope`` for ``principal`` (None: no limit).

    Reads OR the applicable conditions; ``strict`` (used to check a row after a write) ANDs
    them, so a writer cannot move a record to an owner, branch or customer outside its scope.
    """
    if scope == "all" or principal.is_system:
        return None
    conds: list[ColumnElement[bool]] = []
    if spec.owner_field:
        owner = field_expr(table, spec.field(spec.owner_field))  # type: ignore[arg-type]
        if scope == "own":
            conds.append(owner == principal.user_id)
        elif scope == "team":
            conds.append(owner.in_(sorted(principal.team_ids or {principal.user_id or 0})))
        elif scope == "branch" and principal.branch_staff_ids:
            conds.append(owner.in_(sorted(principal.branch_staff_ids)))
    bf = branch_field(spec)
    if bf is not None and principal.branch_ids and (scope == "branch" or strict):
        col = field_expr(table, bf)
        cond = col.in_(sorted(principal.branch_ids))
        conds.append(or_(cond, col.is_(None)) if strict else cond)
    parent = scope_parent(spec, snap) if depth == 0 else None
    if parent is not None:
        pspec = snap.registry.entity(parent.ref)
        ptable = snap.tables[parent.ref]
        pcond = scope_condition(principal, scope, pspec, ptable, snap, depth + 1)
        if pcond is not None:
            pcol = field_expr(table, parent)
            in_parent = pcol.in_(select(ptable.c.id).where(pcond))
            conds.append(or_(in_parent, pcol.is_(None)) if strict and spec.owner_field else in_parent)
    if not conds:
        return false()
    if len(conds) == 1:
        return conds[0]
    return and_(*conds) if strict else or_(*conds)
