"""The organisation: each staff member's branch (a tree), team and supervisor.

Row scopes are computed from it: ``team`` means records owned by the people on one's team or
reporting to one; ``branch`` means records of one's branch and every branch below it. A
principal carries the resolved id sets, computed once per policy version and cached.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, DateTime, Integer, String, Table, insert, or_, select, update

from ..store.tables import system_metadata

__all__ = ["staff_table", "OrgInfo", "load_org", "set_staff", "branch_subtree"]

staff_table = Table(
    "fincrm_staff",
    system_metadata,
    Column("user_id", Integer, primary_key=True, autoincrement=False),
    Column("branch_id", BigInteger),
    Column("team", String(64)),
    Column("supervisor_id", Integer),
    # tokens and sessions issued before this moment are refused (logout, disable, role change)
    Column("tokens_valid_after", DateTime),
)


@dataclass(frozen=True)
class OrgInfo:
    branch_id: int | None
    team: str | None
    supervisor_id: int | None
    team_ids: frozenset[int]
    branch_ids: frozenset[int]
    branch_staff_ids: frozenset[int]
    tokens_valid_after: dt.datetime | None


def branch_subtree(conn: Connection, branch_table: Table | None, root: int | None) -> frozenset[int]:
    """``root`` and every branch below it (walked level by level; branch trees are shallow)."""
    if root is None or branch_table is None:
        return frozenset()
    seen = {root}
    frontier = [root]
    while frontier:
        rows = conn.execute(select(branch_table.c.id).where(branch_table.c.parent.in_(frontier))).all()
        frontier = [r.id for r in rows if r.id not in seen]
        seen.update(frontier)
    return frozenset(seen)


def load_org(conn: Connection, user_id: int, branch_table: Table | None) -> OrgInfo:
    s = staff_table
    me = conn.execute(select(s).where(s.c.user_id == user_id)).first()
    if me is None:
        return OrgInfo(None, None, None, frozenset({user_id}), frozenset(), frozenset({user_id}), None)
    conds = [s.c.supervisor_id == user_id]
    if me.team:
        conds.append(s.c.team == me.team)
    team = {r.user_id for r in conn.execute(select(s.c.user_id).where(or_(*conds)))} | {user_id}
    branches = branch_subtree(conn, branch_table, me.branch_id)
    staff = {r.user_id for r in conn.execute(select(s.c.user_id).where(s.c.branch_id.in_(sorted(branches))))} if branches else set()
    return OrgInfo(
        branch_id=me.branch_id,
        team=me.team,
        supervisor_id=me.supervisor_id,
        team_ids=frozenset(team),
        branch_ids=branches,
        branch_staff_ids=frozenset(staff | {user_id}),
        tokens_valid_after=me.tokens_valid_after,
    )


def set_staff(conn: Connection, user_id: int, **values: Any) -> None:
    """Create or update a staff profile (branch_id, team, supervisor_id, tokens_valid_after)."""
    s = staff_table
    allowed = {k: v for k, v in values.items() if k in ("branch_id", "team", "supervisor_id", "tokens_valid_after")}
    if conn.execute(select(s.c.user_id).where(s.c.user_id == user_id)).first() is None:
        conn.execute(insert(s).values(user_id=user_id, **allowed))
    elif allowed:
        conn.execute(update(s).where(s.c.user_id == user_id).values(**allowed))
