"""Saved list views: a named filter + search + sort per user, optionally shared with everyone.

A view stores the *query*, never rows: opening a shared view runs it under the opener's own
role, so row scope and masking apply to them, not to the author. The filter is validated by
compiling it against the entity (same DSL, same refusals as the API) before it is stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, and_, delete, insert, or_, select

from ..errors import BadRequest, Forbidden, NotFound
from ..security.principal import Principal
from ..store.tables import system_metadata
from ..runtime import utcnow
from ..sqltypes import JsonDoc
from .records import RecordService

__all__ = ["SavedViews", "saved_view_table"]

saved_view_table = Table(
    "fincrm_saved_view",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("entity", String(63), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("owner_id", Integer, nullable=False),
    Column("owner_name", String(150), nullable=False),
    Column("shared", Boolean, nullable=False, default=False),
    Column("query", JsonDoc, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

MAX_VIEWS_PER_USER = 50


class SavedViews:
    def __init__(self, records: RecordService) -> None:
        self.records = records
        self.runtime = records.runtime

    def list(self, principal: Principal, entity: str) -> list[dict[str, Any]]:
        """The caller's own views and everyone's shared ones, for ``entity``."""
        self.records.view(principal, entity)  # 404 for unknown entities, 403 without read
        t = saved_view_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(
                select(t).where(t.c.entity == entity, or_(t.c.owner_id == principal.user_id, t.c.shared.is_(True))).order_by(t.c.name, t.c.id)
            ).mappings()
            return [_out(r, principal) for r in rows]

    def get(self, principal: Principal, view_id: int) -> dict[str, Any]:
        t = saved_view_table
        with self.runtime.engine.connect() as conn:
            row = conn.execute(
                select(t).where(t.c.id == view_id, or_(t.c.owner_id == principal.user_id, t.c.shared.is_(True)))
            ).mappings().first()
        if row is None:
            raise NotFound(f"no saved view {view_id}")
        return _out(row, principal)

    def save(self, principal: Principal, entity: str, name: Any, query: dict[str, Any], shared: bool = False) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100:
            raise BadRequest("a view needs a name of 1–100 characters", [{"field": "name", "message": "1–100 characters"}])
        clean = {k: query.get(k) for k in ("filter", "q", "sort") if query.get(k) not in (None, "", [])}
        # compile it now: a view that cannot run is refused when saved, not when opened
        self.records.list(principal, entity, filter=clean.get("filter"), sort=clean.get("sort"), q=clean.get("q"), limit=1)
        t = saved_view_table
        with self.runtime.begin() as conn:
            mine = conn.execute(select(t.c.id).where(t.c.owner_id == principal.user_id)).all()
            if len(mine) >= MAX_VIEWS_PER_USER:
                raise BadRequest(f"at most {MAX_VIEWS_PER_USER} saved views per user", [{"field": "name", "message": "too many views"}])
            res = conn.execute(
                insert(t).values(
                    entity=entity, name=name.strip(), owner_id=principal.user_id, owner_name=principal.username,
                    shared=bool(shared), query=clean, created_at=utcnow(),
                )
            )
            view_id = int(res.inserted_primary_key[0])
        return self.get(principal, view_id)

    def delete(self, principal: Principal, view_id: int) -> None:
        """Owners delete their views; admins may remove a shared view of anyone's."""
        view = self.get(principal, view_id)
        if not view["mine"] and "admin" not in principal.roles:
            raise Forbidden("only the owner can delete this view")
        t = saved_view_table
        with self.runtime.begin() as conn:
            conn.execute(delete(t).where(and_(t.c.id == view_id)))


def _out(row: Any, principal: Principal) -> dict[str, Any]:
    return {
        "id": row["id"],
        "entity": row["entity"],
        "name": row["name"],
        "shared": bool(row["shared"]),
        "owner": row["owner_name"],
        "mine": row["owner_id"] == principal.user_id,
        "query": row["query"],
    }
