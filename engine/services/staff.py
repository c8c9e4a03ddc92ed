"""Staff organisation at runtime: who sits in which branch and team, and who supervises whom."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..errors import BadRequest, ValidationFailed
from ..runtime import POLICY_VERSION, Runtime
from ..security import audit
from ..security.org import set_staff, staff_table
from ..security.policy import CasbinAuthorizer
from ..security.principal import Principal

__all__ = ["StaffService"]

_FIELDS = ("branch_id", "team", "supervisor_id")


class StaffService:
    def __init__(self, runtime: Runtime, authz: CasbinAuthorizer) -> None:
        self.runtime = runtime
        self.authz = authz

    def get(self, principal: Principal, user_id: int) -> dict[str, Any]:
        self.authz.require(principal, "meta_roles", "configure")
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(staff_table).where(staff_table.c.user_id == user_id)).first()
        return {"user_id": user_id, **({k: getattr(row, k) for k in _FIELDS} if row else {k: None for k in _FIELDS})}

    def put(self, principal: Principal, user_id: int, data: Any) -> dict[str, Any]:
        """Set a staff member's branch, team and supervisor; every cached principal reloads."""
        self.authz.require(principal, "meta_roles", "configure")
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        errors = [{"field": str(k)[:64], "message": "unknown field"} for k in data if k not in _FIELDS]
        values: dict[str, Any] = {}
        snap = self.runtime.cached_snapshot()
        with self.runtime.begin() as conn:
            for key in _FIELDS:
                if key not in data:
                    continue
                value = data[key]
                if key == "team":
                    if value is not None and (not isinstance(value, str) or not 1 <= len(value.strip()) <= 64):
                        errors.append({"field": key, "message": "must be 1 to 64 characters or null"})
                    values[key] = value.strip() if isinstance(value, str) else None
                    continue
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                    errors.append({"field": key, "message": "must be an id or null"})
                    continue
                if key == "branch_id" and value is not None:
                    branches = snap.tables["branch"]
                    if conn.execute(select(branches.c.id).where(branches.c.id == value)).first() is None:
                        errors.append({"field": key, "message": "no branch with this id"})
                if key == "supervisor_id" and value == user_id:
                    errors.append({"field": key, "message": "nobody supervises themselves"})
                values[key] = value
            if errors:
                raise ValidationFailed("staff profile is invalid", errors)
            set_staff(conn, user_id, **values)
            self.runtime.bump(conn, POLICY_VERSION)
            audit.append(
                conn,
                audit.AuditEntry(actor=principal.username, actor_id=principal.user_id, action="staff_change", entity="user", record_id=user_id, detail=values, ip=principal.ip),
            )
        return self.get(principal, user_id)
