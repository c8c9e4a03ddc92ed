"""Reading the audit trail: search (auditors and admins) and chain verification."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ..errors import BadRequest, FieldError
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import FieldSpec, Label
from ..runtime import Runtime
from ..security import audit
from ..security.authz import Authorizer
from ..security.principal import Principal

__all__ = ["AuditLog"]

_MOMENT = FieldSpec("since", "datetime", Label("时间", "Time"))


class AuditLog:
    def __init__(self, runtime: Runtime, authz: Authorizer) -> None:
        self.runtime = runtime
        self.authz = authz

    def search(
        self,
        principal: Principal,
        *,
        actor: str | None = None,
        action: str | None = None,
        entity: str | None = None,
        record_id: int | None = None,
        since: str | None = None,
        until: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        self.authz.require(principal, "audit", "read")
        t = audit.audit_table
        stmt = select(t)
        if actor:
            stmt = stmt.where(t.c.actor == actor)
        if action:
            stmt = stmt.where(t.c.action == action)
        if entity:
            stmt = stmt.where(t.c.entity == entity)
        if record_id:
            stmt = stmt.where(t.c.record_id == record_id)
        for name, raw, op in (("since", since, "ge"), ("until", until, "le")):
            if raw:
                try:
                    moment = FIELD_TYPES["datetime"].normalize(raw, _MOMENT)
                except FieldError as exc:
                    raise BadRequest(f"{name} must be an ISO date-time", [{"field": name, "message": str(exc)}]) from exc
                stmt = stmt.where(t.c.ts >= moment if op == "ge" else t.c.ts <= moment)
        if before:
            stmt = stmt.where(t.c.seq < before)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(t.c.seq.desc()).limit(limit + 1)).all()
        items = [
            {
                "seq": r.seq,
                "ts": FIELD_TYPES["datetime"].dump(r.ts),
                "actor": r.actor,
                "actor_id": r.actor_id,
                "action": r.action,
                "entity": r.entity,
                "record_id": r.record_id,
                "detail": r.detail,
                "ip": r.ip,
                "hash": r.hash,
            }
            for r in rows[:limit]
        ]
        return {"items": items, "next_before": rows[limit - 1].seq if len(rows) > limit else None}

    def verify(self, principal: Principal) -> dict[str, Any]:
        self.authz.require(principal, "audit", "read")
        return audit.verify(self.runtime.engine)
