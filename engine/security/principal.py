"""Who is acting: a user resolved once per request (from a per-process cache), or the system."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["Principal", "Grant", "SYSTEM"]


@dataclass(frozen=True)
class Grant:
    """An approved break-glass request: these fields of this record, in clear, until expiry."""

    request_id: int
    entity: str
    record_id: int
    fields: frozenset[str]
    expires_at: dt.datetime


@dataclass(frozen=True)
class Principal:
    user_id: int | None
    username: str
    roles: frozenset[str] = frozenset()
    branch_id: int | None = None
    team: str | None = None
    supervisor_id: int | None = None
    is_system: bool = False
    team_ids: frozenset[int] = frozenset()  # staff on my team or reporting to me (me included)
    branch_ids: frozenset[int] = frozenset()  # my branch and every branch below it
    branch_staff_ids: frozenset[int] = frozenset()  # staff of those branches
    ip: str | None = None  # the request's client address, for the audit trail
    grants: tuple[Grant, ...] = ()

    @classmethod
    def system(cls, purpose: str) -> "Principal":
        """Background work (demo seeding, jobs, imports run by IT) acts as an explicit principal."""
        return cls(user_id=None, username=f"system:{purpose}", roles=frozenset({"system"}), is_system=True)

    @property
    def actor(self) -> str:
        return self.username


SYSTEM = Principal.system("engine")
