"""The organisation: each staff member's branch (a tree), team and supervisor.

Row scopes are computed from it: ``team`` means records owned by the people on one's team or
reporting to one; ``branch`` means records of one's branch and every branch below it. A
principal carries the resolved id sets, computed once per policy version and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Integer, String, Table, insert, or_, select, update

from ..store.tables import system_metadata

__all__ = ["staff_table", "OrgInfo", "load_org", "set_staff", "branch_subtree", "session_epoch", "next_session_epoch"]

staff_table = Table(
    "fincrm_staff",
    system_metadata,
    Column("user_id", Integer, primary_key=True, autoincrement=False),
    Column("branch_id", BigInteger),
    Column("team", String(64)),
    Column("supervisor_id", Integer),
    # every session and token carries the epoch it was issued in; logout, disable and role
    # change move the epoch on, so all earlier ones are refused
    Column("session_epoch", Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class OrgInfo:
    branch_id: int | None
    team: str | None
    supervisor_id: int | None
    team_ids: frozenset[int]
    branch_ids: frozenset[int]
    branch_staff_ids: frozenset[int]
    session_epoch: int


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
        return OrgInfo(None, None, None, frozenset({user_id}), frozenset(), frozenset({user_id}), 0)
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
        session_epoch=int(me.session_epoch or 0),
    )


def set_staff(conn: Connection, user_id: int, **values: Any) -> None:
    """Create or update a staff profile (branch_id, team, supervisor_id)."""
    s = staff_table
    allowed = {k: v for k, v in values.items() if k in ("branch_id", "team", "supervisor_id")}
    if conn.execute(select(s.c.user_id).where(s.c.user_id == user_id)).first() is None:
        conn.execute(insert(s).values(user_id=user_id, **allowed))
    elif allowed:
        conn.execute(update(s).where(s.c.user_id == user_id).values(**allowed))


def session_epoch(conn: Connection, user_id: int) -> int:
    value = conn.execute(select(staff_table.c.session_epoch).where(staff_table.c.user_id == user_id)).scalar()
    return int(value or 0)


def next_session_epoch(conn: Connection, user_id: int) -> int:
    """End every session and token of ``user_id`` by moving its epoch on; returns the new one."""
    set_staff(conn, user_id)
    conn.execute(update(staff_table).where(staff_table.c.user_id == user_id).values(session_epoch=staff_table.c.session_epoch + 1))
    return session_epoch(conn, user_id)
