"""Break-glass access to sensitive values: request → approve/deny → time-limited, revocable grant.

Risk staff ask to see named masked fields of one record with a reason; a supervisor or admin
who can see the record (never the requester) decides; an approved grant shows those fields in
clear to the requester until it expires (default 2 hours) or is revoked. Every step and every
unmasked read under a grant is audited. Grants reach the requester's principal through the
policy stamp, so approval and revocation take effect on the next request in every process.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, Text, insert, select, update

from ..errors import BadRequest, Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from ..fieldtypes import FIELD_TYPES, normalize_text
from ..runtime import POLICY_VERSION, Runtime, utcnow
from ..security import audit
from ..security.principal import Grant, Principal
from ..sqltypes import JsonDoc
from ..store.tables import system_metadata
from .records import RecordService

__all__ = ["access_request_table", "AccessRequests", "active_grants", "DEFAULT_MINUTES"]

DEFAULT_MINUTES = 120
MAX_MINUTES = 24 * 60

access_request_table = Table(
    "fincrm_access_request",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(63), nullable=False),
    Column("record_id", BigInteger, nullable=False),
    Column("fields", JsonDoc, nullable=False),
    Column("reason", Text, nullable=False),
    Column("minutes", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | denied | revoked
    Column("requester_id", Integer, nullable=False),
    Column("requester", String(150), nullable=False),
    Column("approver_id", Integer),
    Column("approver", String(150)),
    Column("created_at", DateTime, nullable=False),
    Column("decided_at", DateTime),
    Column("expires_at", DateTime),
)


def active_grants(conn: Any, user_id: int, now: dt.datetime | None = None) -> tuple[Grant, ...]:
    t = access_request_table
    now = now or utcnow()
    rows = conn.execute(
        select(t.c.id, t.c.entity, t.c.record_id, t.c.fields, t.c.expires_at).where(
            t.c.requester_id == user_id, t.c.status == "approved", t.c.expires_at > now
        )
    ).all()
    return tuple(Grant(r.id, r.entity, int(r.record_id), frozenset(r.fields or ()), r.expires_at) for r in rows)


@dataclass
class AccessRequests:
    runtime: Runtime
    records: RecordService

    @property
    def authz(self) -> Any:
        return self.records.authz

    def _out(self, r: Any) -> dict[str, Any]:
        dump = FIELD_TYPES["datetime"].dump
        return {
            "id": r.id,
            "entity": r.entity,
            "record_id": r.record_id,
            "fields": list(r.fields),
            "reason": r.reason,
            "minutes": r.minutes,
            "status": "expired" if r.status == "approved" and r.expires_at and r.expires_at <= utcnow() else r.status,
            "requester": r.requester,
            "approver": r.approver,
            "created_at": dump(r.created_at),
            "decided_at": dump(r.decided_at),
            "expires_at": dump(r.expires_at),
        }

    def create(self, principal: Principal, data: Any) -> dict[str, Any]:
        self.authz.require(principal, "access_requests", "create")
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = set(data) - {"entity", "record_id", "fields", "reason", "minutes"}
        if unknown:
            name = sorted(unknown)[0][:64]
            raise ValidationFailed(f"unknown field {name!r}", [{"field": name, "message": "unknown field"}])
        entity = data.get("entity")
        if not isinstance(entity, str):
            raise ValidationFailed("entity is required", [{"field": "entity", "message": "is required"}])
        v = self.records.view(principal, entity)
        self.records.get(principal, entity, data.get("record_id"), fields=[])  # must be able to see the record
        errors = []
        fields = data.get("fields")
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            errors.append({"field": "fields", "message": "must be a non-empty list of field names"})
        else:
            for name in fields:
                acc = v.access.get(name)
                if acc is None or acc.view != "masked":
                    errors.append({"field": "fields", "message": f"{name[:64]!r} is not a masked field of {entity}"})
        try:
            reason = normalize_text(data.get("reason"), multiline=True)
        except FieldError:
            reason = ""
        if not 10 <= len(reason) <= 1000:
            errors.append({"field": "reason", "message": "must explain the need in 10 to 1000 characters"})
        minutes = data.get("minutes", DEFAULT_MINUTES)
        if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= MAX_MINUTES:
            errors.append({"field": "minutes", "message": f"must be between 1 and {MAX_MINUTES}"})
        if errors:
            raise ValidationFailed("access request is invalid", errors)
        t = access_request_table
        rid = int(data["record_id"])
        with self.runtime.begin() as conn:
            new_id = conn.execute(
                insert(t)
                .values(
                    entity=entity, record_id=rid, fields=sorted(set(fields or ())), reason=reason, minutes=minutes, status="pending",
                    requester_id=principal.user_id, requester=principal.username, created_at=utcnow(),
                )
                .returning(t.c.id)
            ).scalar_one()
            self.records.audit(conn, principal, "access_request", entity, rid, {"request": new_id, "fields": sorted(set(fields or ())), "reason": reason[:200]})
        return self.get(principal, new_id)

    def get(self, principal: Principal, request_id: Any) -> dict[str, Any]:
        row = self._row(request_id)
        if row.requester_id != principal.user_id:
            self._check_approver(principal, row)
        return self._out(row)

    def _row(self, request_id: Any) -> Any:
        try:
            rid = int(request_id)
        except (TypeError, ValueError):
            raise NotFound("access request not found") from None
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(access_request_table).where(access_request_table.c.id == rid)).first()
        if row is None:
            raise NotFound("access request not found")
        return row

    def _check_approver(self, principal: Principal, row: Any) -> None:
        self.authz.require(principal, "access_requests", "approve")
        if row.requester_id == principal.user_id:
            raise Forbidden("you cannot decide your own access request")
        # the approver must be able to see the record within their own scope
        self.records.get(principal, row.entity, row.record_id, fields=[])

    def list(self, principal: Principal, status: str | None = None) -> dict[str, Any]:
        t = access_request_table
        stmt = select(t).order_by(t.c.id.desc()).limit(200)
        try:
            self.authz.require(principal, "access_requests", "approve")
            can_approve = True
        except Forbidden:
            can_approve = False
        if not can_approve:
            stmt = stmt.where(t.c.requester_id == principal.user_id)
        if status:
            stmt = stmt.where(t.c.status == status)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        items = []
        for r in rows:
            if can_approve and r.requester_id != principal.user_id:
                try:
                    self.records.get(principal, r.entity, r.record_id, fields=[])
                except (NotFound, Forbidden):
                    continue  # outside the approver's scope
            items.append(self._out(r))
        return {"items": items}

    def decide(self, principal: Principal, request_id: Any, decision: str) -> dict[str, Any]:
        """approve | deny (pending requests) or revoke (approved ones; requester may revoke too)."""
        row = self._row(request_id)
        if decision == "revoke" and row.requester_id == principal.user_id:
            pass
        else:
            self._check_approver(principal, row)
        t = access_request_table
        now = utcnow()
        if decision in ("approve", "deny"):
            if row.status != "pending":
                raise Conflict(f"access request is already {row.status}")
            values: dict[str, Any] = {"status": "approved" if decision == "approve" else "denied", "approver_id": principal.user_id, "approver": principal.username, "decided_at": now}
            if decision == "approve":
                values["expires_at"] = now + dt.timedelta(minutes=row.minutes)
            expected = "pending"
        elif decision == "revoke":
            if row.status != "approved":
                raise Conflict(f"only approved requests can be revoked (this one is {row.status})")
            values = {"status": "revoked", "expires_at": now}
            expected = "approved"
        else:
            raise NotFound(f"unknown decision {decision!r}")
        with self.runtime.begin() as conn:
            res = conn.execute(update(t).where(t.c.id == row.id, t.c.status == expected).values(**values))
            if res.rowcount != 1:
                raise Conflict("access request was decided by someone else")
            self.records.audit(conn, principal, f"access_{decision}", row.entity, row.record_id, {"request": row.id, "fields": list(row.fields)})
            self.runtime.bump(conn, POLICY_VERSION)  # grants reach principals through the policy stamp
        return self._out(self._row(row.id))

