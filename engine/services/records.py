"""The records service: every read and write of entity records goes through here.

Pages, the REST API, exports, reports and jobs all call it; none reads tables directly. Each
call: spec from the snapshot → authorizer decision → scope clause + compiled filter → one SQL
statement → rows → field policy (decrypt / mask / hide) → plain dicts.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import json
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import orjson

from sqlalchemy import Connection, Table, and_, bindparam, delete, false, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from ..errors import (
    BadRequest,
    Conflict,
    DuplicateValue,
    FieldError,
    Forbidden,
    NotFound,
    ValidationFailed,
    VersionConflict,
)
from ..fieldtypes import FIELD_TYPES, normalize_text
from ..meta.spec import SYSTEM_FIELDS, EntitySpec, FieldSpec
from ..runtime import POLICY_VERSION, Runtime, Snapshot, utcnow
from ..security import audit
from ..security.authz import Authorizer, FieldAccess, effective_mask
from ..security.consent import consent_clause
from ..security.crypto import Keyring, aad_for
from ..security.masking import MASKS, mask_value
from ..quality.rules import check_written
from ..security.principal import Principal
from ..store.query import (
    FilterContext,
    compile_filter,
    decode_cursor,
    encode_cursor,
    field_expr,
    keyset_clause,
    order_by,
    parse_sort,
)
from ..store.tables import tag_table

__all__ = ["RecordService", "Page", "MAX_LIMIT", "COUNT_CAP"]

MAX_LIMIT = 500
COUNT_CAP = 10_000
_FIRST_FIELD = 6  # id, version, created_at, updated_at, created_by, updated_by come first
_IDENTITY = FIELD_TYPES["string"].dump
TAG_MAX = 64


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    count: int | None = None
    count_capped: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "next_cursor": self.next_cursor}
        if self.count is not None:
            out["count"] = self.count
            out["count_capped"] = self.count_capped
        return out


# (names of the output fields, in order; (row position, name, encrypted, dump, masked, mask) of
# each field that is not output as it comes from the row; ``mask``: the field's masking
# function, None if its rule shows the value)
_FieldPlan = tuple[tuple[str, ...], tuple[tuple[int, str, bool, Any, bool, Callable[[str], str] | None], ...]]


def _field_plan(access: Mapping[str, FieldAccess], fields: Sequence[FieldSpec]) -> _FieldPlan:
    """How ``serialize_many`` outputs ``fields`` (read by position after the six system columns)."""
    special = []
    for i, f in enumerate(fields):
        masked = access[f.name].view == "masked"
        dump = None if f.encrypted else FIELD_TYPES[f.type].dump if f.storage == "column" else _json_reader(f)
        if dump is _IDENTITY:
            dump = None
        if masked or f.encrypted or dump is not None:
            rule = effective_mask(f) if masked else None
            mask = MASKS[rule] if rule not in (None, "none") else None  # as mask_value() does; an unknown rule fails here
            special.append((_FIRST_FIELD + i, f.name, f.encrypted, dump, masked, mask))
    return tuple(f.name for f in fields), tuple(special)


class _Shape:
    """The part of a view that depends only on the metadata snapshot, the policy version and
    the principal (not on the clock or the request): built once and shared by that principal's
    later views of the entity, so a get or a list page does not ask the authorizer about every
    field again, nor work out how to serialise them."""

    __slots__ = ("spec", "table", "access", "visible", "visible_names", "key", "_plans")

    def __init__(self, authz: Authorizer, principal: Principal, snap: Snapshot, entity: str) -> None:
        self.spec: EntitySpec = snap.registry.entity(entity)
        self.table: Table = snap.tables[entity]
        self.access: Mapping[str, FieldAccess] = MappingProxyType({f.name: authz.field_access(principal, self.spec, f) for f in self.spec.live_fields})
        self.visible = tuple(f for f in self.spec.live_fields if self.access[f.name].view != "hidden")
        self.visible_names = tuple(f.name for f in self.visible)
        # the principal without client address and grants: statements are cached under it
        self.key = replace(principal, ip=None, grants=())
        self._plans: dict[tuple[str, ...], _FieldPlan] = {}

    def plan(self, fields: Sequence[FieldSpec]) -> _FieldPlan:
        """``serialize_many``'s plan for these output fields."""
        key = tuple(f.name for f in fields)
        plan = self._plans.get(key)
        if plan is None:
            plan = _field_plan(self.access, fields)
            if len(self._plans) >= 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan


class _View:
    """Per-call view of one entity for one principal: field policy, table, filter context."""

    def __init__(self, svc: "RecordService", principal: Principal, snap: Snapshot, entity: str, shape: _Shape | None = None) -> None:
        if shape is None:
            shape = _Shape(svc.authz, principal, snap, entity)
        self.shape = shape
        self.spec: EntitySpec = shape.spec
        self.table: Table = shape.table
        self.snap = snap
        self.principal = principal
        self.svc = svc
        self.access: Mapping[str, FieldAccess] = shape.access
        self.grants: dict[int, tuple[frozenset[str], int]] = {}
        if principal.grants:  # break-glass grants expire: checked on every call
            now = utcnow()
            self.grants = {g.record_id: (g.fields, g.request_id) for g in principal.grants if g.entity == entity and g.expires_at > now}
        self.unmasked: list[dict[str, Any]] = []  # reads under a break-glass grant, audited after

    def visible(self) -> list[FieldSpec]:
        return list(self.shape.visible)

    def clear(self, f: FieldSpec) -> bool:
        return f.name in ("id", "version", "created_at", "updated_at", "created_by", "updated_by") or (
            f.name in self.access and self.access[f.name].clear
        )

    def filter_context(self) -> FilterContext:
        return FilterContext(
            spec=self.spec,
            table=self.table,
            dialect=self.svc.runtime.dialect,
            blind_index=self.svc.blind_index_for(self.spec),
            readable=self.clear,
        )

    def scope(self, action: str = "read") -> ColumnElement[bool]:
        """Rows this principal may ``action``: the role's scope, never retained records."""
        clause = self.svc.authz.scope_clause(self.principal, self.spec, self.table, action)
        live = self.table.c.retained_at.is_(None)
        return and_(live, clause) if clause is not None else live


class RecordService:
    def __init__(self, runtime: Runtime, authz: Authorizer) -> None:
        self.runtime = runtime
        self.authz = authz
        # Statements reused per (metadata, policy, principal, query): a get binds its id, a first
        # list page with the same filter/search/sort is the same statement. The hot path then
        # skips compiling the filter and scope and building a new SELECT.
        self._statements: dict[Any, Any] = {}
        # View shapes of the current snapshot and policy version, per (entity, principal); a
        # new snapshot or policy version starts an empty cache (see ``view``).
        self._shapes: tuple[Snapshot | None, Any, dict[tuple[str, Principal], _Shape]] = (None, None, {})
        # Called inside every create/update transaction with (conn, snapshot, entity, ids, event,
        # principal): on-change triggers and flows hook in here, so their effects commit (or roll
        # back) with the change itself.
        self.after_write: builtins.list[Callable[[Connection, Snapshot, str, builtins.list[int], str, Principal], None]] = []

    # ------------------------------------------------------------------ helpers

    def view(self, principal: Principal, entity: str, snap: Snapshot | None = None) -> _View:
        if snap is not None and snap is not self._shapes[0]:
            # a snapshot passed in (a candidate being published, a job's): not cached
            return _View(self, principal, snap, entity)
        current = snap if snap is not None else self.runtime.cached_snapshot()
        policy = getattr(self.authz, "version", None)
        shapes = self._shapes
        if shapes[0] is not current or shapes[1] != policy:
            # metadata or policy moved: shapes built on the old ones are never used again
            shapes = (current, policy, {})
            self._shapes = shapes
        cache = shapes[2]
        key = (entity, principal)
        shape = cache.get(key)
        if shape is None:
            shape = _Shape(self.authz, principal, current, entity)
            if len(cache) >= 1024:
                cache.clear()
            cache[key] = shape
        return _View(self, principal, current, entity, shape)

    def blind_index_for(self, spec: EntitySpec) -> Any:
        keyring = self.runtime.keyring

        def index(f: FieldSpec, normalized: Any) -> str:
            return keyring.blind_index(f"{spec.name}.{f.name}", str(normalized))

        return index

    def _columns_for(self, v: _View, names: Iterable[str] | None) -> list[FieldSpec]:
        fields = v.visible()
        if names is None:
            return fields
        wanted = []
        by_name = {f.name: f for f in fields}
        for n in names:
            if n in ("id", "version"):
                continue
            if n not in by_name:
                raise BadRequest(f"unknown field {n[:64]!r} in fields", [{"field": n[:64], "message": "unknown field"}])
            wanted.append(by_name[n])
        return wanted

    def _select_columns(self, v: _View, fields: list[FieldSpec]) -> list[Any]:
        """System columns plus one output column per field. JSON-stored fields are extracted
        in SQL (their stored JSON form as text, integers and booleans typed), so no row's whole
        ``ext`` document is shipped and parsed just to read a few keys."""
        t = v.table
        cols: list[Any] = [t.c.id, t.c.version, t.c.created_at, t.c.updated_at, t.c.created_by, t.c.updated_by]
        for f in fields:
            if f.storage == "column":
                cols.append(t.c[f.name])
            elif f.type == "multi_enum":
                cols.append(t.c.ext[f.name].label(f.name))
            elif f.type in ("integer", "boolean", "ref", "user") and not f.encrypted:
                cols.append(field_expr(t, f).label(f.name))
            else:
                cols.append(t.c.ext[f.name].as_string().label(f.name))
        return cols

    def serialize(self, v: _View, row: Sequence[Any], fields: list[FieldSpec]) -> dict[str, Any]:
        return self.serialize_many(v, [row], fields)[0]

    def serialize_many(self, v: _View, rows: Iterable[Sequence[Any]], fields: list[FieldSpec]) -> builtins.list[dict[str, Any]]:
        """Rows (as selected by ``_select_columns``: six system columns, then ``fields`` in
        order, read by position) → output dicts through each field's policy: decrypt, dump,
        mask or show.

        The per-field plan is worked out once per view shape and set of fields (not per call,
        not per row): values copied as they are go into each dict in one step, and only the
        rest (dumped: dates, decimals; decrypted or masked) are worked on field by field. List
        pages are the hot path of the whole product.
        """
        dump_dt = FIELD_TYPES["datetime"].dump
        decrypt = self.runtime.keyring.decrypt
        table = v.table.name
        names, special = v.shape.plan(fields)
        end = _FIRST_FIELD + len(names)
        grants = v.grants
        out_rows = []
        for row in rows:
            rid = row[0]
            created, updated = row[2], row[3]
            # stored naive UTC: the common case skips the timezone checks of dump(); a record
            # never updated has the same instant twice, written once
            created_at = _utc_text(created) if created.tzinfo is None else dump_dt(created)
            if updated.tzinfo is None:
                updated_at = created_at if updated == created else _utc_text(updated)
            else:
                updated_at = dump_dt(updated)
            out: dict[str, Any] = {"id": rid, "version": row[1], "created_at": created_at, "updated_at": updated_at}
            out.update(zip(names, row[_FIRST_FIELD:end]))  # field order; the special ones are replaced in place below
            granted = grants.get(rid) if grants else None
            for idx, name, encrypted, dump, masked, mask in special:
                raw = row[idx]
                if raw is not None:
                    if encrypted:
                        raw = decrypt(raw, aad_for(table, name, rid))
                    elif dump is not None:
                        raw = dump(raw)
                if masked:
                    if granted is not None and name in granted[0]:
                        v.unmasked.append({"record_id": rid, "field": name, "request": granted[1]})
                    elif mask is not None and raw is not None:
                        raw = mask(str(raw))
                out[name] = raw
            out_rows.append(out)
        return out_rows

    def _audit_unmasked(self, v: _View) -> None:
        """Every read that showed a value in clear under a break-glass grant leaves an entry."""
        if not v.unmasked:
            return
        by_record: dict[int, dict[str, Any]] = {}
        for u in v.unmasked:
            entry = by_record.setdefault(u["record_id"], {"fields": [], "request": u["request"]})
            entry["fields"].append(u["field"])
        with self.runtime.begin() as conn:
            for rid, detail in by_record.items():
                self.audit(conn, v.principal, "unmasked_read", v.spec.name, rid, detail)
        v.unmasked.clear()

    def audit(self, conn: Connection, principal: Principal, action: str, entity: str | None, rid: int | None, detail: Mapping[str, Any] | None = None) -> None:
        audit.append(
            conn,
            audit.AuditEntry(
                actor=principal.username, actor_id=principal.user_id, action=action, entity=entity, record_id=rid, detail=detail, ip=principal.ip
            ),
        )

    @staticmethod
    def audit_value(f: FieldSpec, value: Any) -> Any:
        """A value as the audit trail keeps it: JSON form, masked if the field has a mask."""
        dumped = FIELD_TYPES[f.type].dump(value) if value is not None else None
        return mask_value(effective_mask(f), dumped)

    def _changes(self, v: _View, before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, new in after.items():
            f = v.spec.field(name)
            if f is None:
                continue
            old = before.get(name)
            if old != new:
                out[name] = {"from": self.audit_value(f, old), "to": self.audit_value(f, new)}
        return out

    def _stored_values(self, v: _View, row: Mapping[Any, Any], names: Iterable[str]) -> dict[str, Any]:
        """Current values (normalised Python form) of ``names`` from a full row, decrypted."""
        out: dict[str, Any] = {}
        ext = row.get("ext") or {}
        for name in names:
            f = v.spec.field(name)
            if f is None:
                continue
            raw = row.get(name) if f.storage == "column" else ext.get(name)
            if f.encrypted and raw is not None:
                raw = self.runtime.keyring.decrypt(raw, aad_for(v.table.name, f.name, row["id"]))
            if raw is not None and (f.encrypted or f.storage == "json"):
                raw = FIELD_TYPES[f.type].normalize(raw, replace(f, min=None, max=None, max_length=None, pattern=None))
            out[name] = raw
        return out

    def history(self, principal: Principal, entity: str, record_id: Any, *, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """The record's audit trail, newest first (readable only if the record is)."""
        self.get(principal, entity, record_id, fields=[])
        t = audit.audit_table
        stmt = select(t).where(t.c.entity == entity, t.c.record_id == int(record_id))
        if before is not None:
            stmt = stmt.where(t.c.seq < before)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(t.c.seq.desc()).limit(limit + 1)).all()
        v = self.view(principal, entity)
        items = [
            {"seq": r.seq, "ts": FIELD_TYPES["datetime"].dump(r.ts), "actor": r.actor, "action": r.action, "detail": self._history_detail(v, r.detail)}
            for r in rows[:limit]
        ]
        return {"items": items, "next_before": rows[limit - 1].seq if len(rows) > limit else None}

    @staticmethod
    def _history_detail(v: _View, detail: Any) -> Any:
        """An audit entry as this reader may see it: changes to fields hidden from them are left
        out, fields they see masked are masked (the trail keeps field-rule masks already)."""
        if not isinstance(detail, dict) or not isinstance(detail.get("changes"), dict):
            return detail
        changes = {}
        for name, change in detail["changes"].items():
            access = v.access.get(name)
            f = v.spec.field(name)
            if access is None or f is None or access.view == "hidden":
                continue
            if access.view == "masked" and isinstance(change, dict):
                rule = effective_mask(f) or "full"
                change = {k: mask_value(rule, val) if isinstance(val, (str, int, float)) and not isinstance(val, bool) else val for k, val in change.items()}
            changes[name] = change
        return {**detail, "changes": changes}

    def personal_data(self, principal: Principal, customer_id: Any) -> dict[str, Any]:
        """Everything held about one data subject (PIPL access/portability), as the principal
        may see it; the export itself is audited."""
        self.authz.require(principal, "customer", "export")
        record = self.get(principal, "customer", customer_id)
        snap = self.runtime.cached_snapshot()
        related: dict[str, list[dict[str, Any]]] = {}
        for spec, f in snap.registry.referrers("customer"):
            try:
                self.authz.require(principal, spec.name, "read")
            except Forbidden:
                continue
            items: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = self.list(principal, spec.name, filter={"field": f.name, "op": "eq", "value": record["id"]}, limit=MAX_LIMIT, cursor=cursor)
                items += page.items
                cursor = page.next_cursor
                if cursor is None:
                    break
            related[f"{spec.name}.{f.name}"] = items
        with self.runtime.begin() as conn:
            tags = [r.tag for r in conn.execute(select(tag_table.c.tag).where(tag_table.c.entity == "customer", tag_table.c.record_id == record["id"]))]
            self.audit(conn, principal, "personal_data_export", "customer", record["id"], {"sections": sorted(related)})
        return {"subject": record, "tags": sorted(tags), "related": related, "generated_at": FIELD_TYPES["datetime"].dump(utcnow())}

    # ------------------------------------------------------------------ reads

    def list(
        self,
        principal: Principal,
        entity: str,
        *,
        filter: Any = None,
        sort: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        fields: Iterable[str] | None = None,
        q: str | None = None,
        with_count: bool = False,
        snap: Snapshot | None = None,
        consent: str | None = None,
    ) -> Page:
        """One page of records in the principal's scope. ``consent`` (customers only) keeps
        just those with active consent for that purpose: outbound and marketing lists use it."""
        v = self.view(principal, entity, snap)
        self.authz.require(principal, entity, "read")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", [{"field": "limit", "message": "out of range"}])
        keys = parse_sort(v.spec, sort, v.clear)
        stamps = self.runtime.stamp_columns()
        ckey = self._list_key(v, filter, q, sort, fields, limit, bool(stamps)) if not (cursor or with_count or consent) else None
        stmt = self._statements.get(ckey) if ckey is not None else None
        # a reused statement already holds the compiled filter and scope
        where = and_(v.scope(), self.where(v, filter, q)) if stmt is None else true()
        if consent is not None:
            if not isinstance(consent, str):
                raise BadRequest("consent must be a purpose name", [{"field": "consent", "message": "must be a string"}])
            if entity != "customer":
                raise BadRequest("consent filtering applies to customers", [{"field": "consent", "message": "customers only"}])
            where = and_(where, consent_clause(v.snap, v.table.c.id, consent))
        out_fields = self._columns_for(v, fields)
        sort_fields = [k.field for k in keys if k.field.name not in ("id", "created_at", "updated_at")]
        select_fields = out_fields + [f for f in sort_fields if f not in out_fields]
        if stmt is None:
            stmt = select(*self._select_columns(v, select_fields), *stamps).where(where)
            if cursor:
                stmt = stmt.where(keyset_clause(v.table, keys, decode_cursor(self.runtime.secret, keys, cursor)))
            stmt = stmt.order_by(*order_by(v.table, keys)).limit(limit + 1)
            if ckey is not None:
                self._remember(ckey, stmt)
        # a first page may settle on a generic plan like a read by id; a keyset page's bounds
        # (aum <= $1 …) need a plan made with their values
        with (self.runtime.engine if cursor else self.runtime.point_reads).connect() as conn:
            rows = conn.execute(stmt).all()
            count = capped = None
            if with_count:
                sub = select(v.table.c.id).where(where).limit(COUNT_CAP + 1).subquery()
                count = int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
                capped = count > COUNT_CAP
                count = min(count, COUNT_CAP)
        if rows:
            self.runtime.confirm_stamps(rows[0]._mapping)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]._mapping
            values = [self._sort_value(v, k.field, last) for k in keys]
            next_cursor = encode_cursor(self.runtime.secret, keys, values)
        items = self.serialize_many(v, rows, out_fields)
        self._audit_unmasked(v)
        return Page(items, next_cursor, count, bool(capped))

    def _remember(self, key: Any, stmt: Any) -> None:
        if len(self._statements) >= 4096:
            self._statements.clear()
        self._statements[key] = stmt

    def _list_key(self, v: _View, filter: Any, q: Any, sort: Any, fields: Any, limit: int, stamps: bool) -> Any:
        """Cache key of a first list page, or None when its SQL would embed the clock (relative
        date filters) or the filter is not plain JSON."""
        try:
            query = json.dumps([filter, q, sort, list(fields) if fields is not None else None], sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError):
            return None
        if "within_" in query:
            return None
        return ("list", v.snap.version, getattr(self.authz, "version", None), v.spec.name, v.shape.key, query, limit, stamps)

    def _sort_value(self, v: _View, f: FieldSpec, row: Mapping[Any, Any]) -> Any:
        raw = row[f.name]
        if raw is None or f.storage == "column" or f.name in ("id", "created_at", "updated_at"):
            return raw
        return FIELD_TYPES[f.type].normalize(raw, replace(f, min=None, max=None, max_length=None, pattern=None))

    def where(self, v: _View, filter: Any, q: str | None) -> ColumnElement[bool]:
        clause: ColumnElement[bool] = true()
        if filter is not None:
            clause = compile_filter(v.filter_context(), filter)
        if q:
            clause = and_(clause, self._search(v, q))
        return clause

    def _search(self, v: _View, q: str) -> ColumnElement[bool]:
        """Quick search over the entity's search fields (exact match for encrypted ones)."""
        text = normalize_text(q) if isinstance(q, str) else ""
        if not text or len(text) > 100:
            raise BadRequest("search text must be 1 to 100 characters", [{"field": "q", "message": "bad length"}])
        parts: builtins.list[ColumnElement[bool]] = []
        ctx = v.filter_context()
        for name in v.spec.search_fields:
            f = v.spec.live_field(name)
            if f is None or not v.clear(f):
                continue
            op = "eq" if f.encrypted or "contains" not in FIELD_TYPES[f.type].ops else "contains"
            try:
                parts.append(compile_filter(ctx, {"field": name, "op": op, "value": text}))
            except BadRequest:
                continue  # e.g. text that is no valid ID number cannot match the ID field
        return or_(*parts) if parts else false()

    def get(self, principal: Principal, entity: str, record_id: Any, *, fields: Iterable[str] | None = None) -> dict[str, Any]:
        v = self.view(principal, entity)
        self.authz.require(principal, entity, "read")
        rid = _record_id(record_id)
        out_fields = self._columns_for(v, fields)
        stamps = self.runtime.stamp_columns()
        names = v.shape.visible_names if fields is None else tuple(f.name for f in out_fields)
        key = ("get", v.snap.version, getattr(self.authz, "version", None), entity, v.shape.key, names, bool(stamps))
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = select(*self._select_columns(v, out_fields), *stamps).where(v.table.c.id == bindparam("fincrm_rid"), v.scope())
            self._remember(key, stmt)
        with self.runtime.point_reads.connect() as conn:
            row = conn.execute(stmt, {"fincrm_rid": rid}).first()
        if row is None:
            raise NotFound(f"{entity} {rid} not found")
        self.runtime.confirm_stamps(row._mapping)
        out = self.serialize(v, row, out_fields)  # one row: the same per-field plan
        self._audit_unmasked(v)
        return out

    def count(self, principal: Principal, entity: str, *, filter: Any = None) -> int:
        v = self.view(principal, entity)
        self.authz.require(principal, entity, "read")
        stmt = select(func.count()).select_from(v.table).where(v.scope(), self.where(v, filter, None))
        with self.runtime.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def related(self, principal: Principal, entity: str, record_id: Any, *, limit: int = 20) -> dict[str, Any]:
        """Customer-360: the record plus up to ``limit`` records of each relation it declares.

        One query for the record and one per relation, each carrying the reader's row scope.
        """
        record = self.get(principal, entity, record_id)
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        out: dict[str, Any] = {"record": record, "relations": {}}
        for rel in spec.relations:
            try:
                self.authz.require(principal, rel.entity, "read")
            except Forbidden:
                continue  # relations the reader may not see are left out, not an error
            page = self.list(principal, rel.entity, filter={"field": rel.field, "op": "eq", "value": record["id"]}, limit=limit)
            out["relations"][rel.name] = {
                "entity": rel.entity,
                "label": rel.label.to_dict(),
                "items": page.items,
                "more": page.next_cursor is not None,
            }
        return out

    # ------------------------------------------------------------------ writes

    def _check_payload(self, v: _View, payload: Any, *, creating: bool) -> dict[str, Any]:
        """Normalised values of the payload's fields; every problem collected, fields named."""
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object")
        errors: builtins.list[dict[str, str]] = []
        values: dict[str, Any] = {}
        for key, raw in payload.items():
            if key == "version" and not creating:
                continue  # the optimistic-lock token of an update, checked by the caller
            if key in SYSTEM_FIELDS or key == "ext":
                errors.append({"field": key, "message": "is read-only"})
                continue
            f = v.spec.live_field(key) if isinstance(key, str) else None
            if f is None:
                errors.append({"field": str(key)[:64], "message": "unknown field"})
                continue
            acc = v.access[f.name]
            if not acc.write or f.readonly:
                errors.append({"field": key, "message": "is read-only for you"})
                continue
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if f.required:
                    errors.append({"field": key, "message": "is required"})
                else:
                    values[key] = None
                continue
            try:
                values[key] = FIELD_TYPES[f.type].normalize(raw, f)
            except FieldError as exc:
                errors.append({"field": key, "message": str(exc)})
            else:
                if values[key] is None and f.required:
                    errors.append({"field": key, "message": "is required"})
        if creating:
            self.complete_for_create(v, values, payload, errors)
        if errors:
            raise ValidationFailed(f"{v.spec.name} has invalid values", errors)
        return values

    @staticmethod
    def complete_for_create(
        v: _View, values: dict[str, Any], given: Mapping[str, Any], errors: builtins.list[dict[str, str]], defaults: Mapping[str, Any] | None = None
    ) -> None:
        """Fields a new record gets without being given: defaults, the creator as owner;
        required ones missing are errors. ``defaults``: the normalised defaults, if known."""
        for name, value in creation_fills(v.spec, v.principal.user_id, defaults):
            if name in given:
                continue
            if value is REQUIRED:
                errors.append({"field": name, "message": "is required"})
            else:
                values[name] = value

    def _check_refs(self, conn: Connection, v: _View, values: Mapping[str, Any]) -> None:
        errors = []
        for name, value in values.items():
            f = v.spec.live_field(name)
            if f is None or f.type != "ref" or value is None:
                continue
            target = v.snap.tables[f.ref or ""]
            found = conn.execute(select(target.c.id).where(target.c.id == value, target.c.retained_at.is_(None))).first()
            if found is None:
                errors.append({"field": name, "message": f"no {f.ref} with this id"})
        if errors:
            raise ValidationFailed(f"{v.spec.name} refers to missing records", errors)

    def _check_unique(self, conn: Connection, v: _View, values: Mapping[str, Any], exclude_id: int | None) -> None:
        errors = []
        for name, value in values.items():
            f = v.spec.live_field(name)
            if f is None or not f.unique or value is None:
                continue
            if f.encrypted:
                cond = v.table.c[f.blind_index_column] == self.blind_index_for(v.spec)(f, value)
            else:
                cond = v.table.c[f.name] == value
            stmt = select(v.table.c.id).where(cond)
            if exclude_id is not None:
                stmt = stmt.where(v.table.c.id != exclude_id)
            if conn.execute(stmt.limit(1)).first() is not None:
                errors.append({"field": name, "message": "is already used by another record"})
        if errors:
            raise DuplicateValue(f"{v.spec.name} would duplicate a unique value", errors)

    def _row_values(
        self, v: _View, rid: int, values: Mapping[str, Any], ext: dict[str, Any] | None, known_index: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Column values (with encryption and blind indexes) and the merged ``ext`` document.
        ``known_index``: blind indexes already computed for these values, by field name."""
        return stored_values(v.spec.field, v.spec.name, v.table.name, self.runtime.keyring, rid, values, ext, known_index)

    def create(self, principal: Principal, entity: str, payload: Any) -> dict[str, Any]:
        v = self.view(principal, entity)
        self.authz.require(principal, entity, "create")
        values = self._check_payload(v, payload, creating=True)
        (rid,) = self.runtime.ids.take(entity, 1)  # before the write transaction (SQLite: one writer)
        now = utcnow()
        row = self._row_values(v, rid, values, None)
        row.update(id=rid, version=1, created_at=now, updated_at=now, created_by=principal.user_id, updated_by=principal.user_id)
        with self._write(v) as conn:
            self._check_refs(conn, v, values)
            self._check_unique(conn, v, values, None)
            conn.execute(insert(v.table).values(**row))
            self._ensure_in_scope(conn, v, rid, "create")
            check_written(conn, v.snap, v.spec, v.table, rid)  # cross-field rules, one statement
            self.audit(conn, principal, "create", entity, rid, {"changes": self._changes(v, {}, values)})
            self._org_changed(conn, entity)
            self._after_write(conn, v, [rid], "create")
        return self.get(principal, entity, rid)

    def update(self, principal: Principal, entity: str, record_id: Any, payload: Any, expected_version: Any) -> dict[str, Any]:
        v = self.view(principal, entity)
        self.authz.require(principal, entity, "update")
        rid = _record_id(record_id)
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object")
        version = expected_version if expected_version is not None else payload.get("version")
        version = _version(version)
        values = self._check_payload(v, payload, creating=False)
        with self._write(v) as conn:
            current = conn.execute(select(v.table).where(v.table.c.id == rid, v.scope("update"))).first()
            if current is None:
                raise NotFound(f"{entity} {rid} not found")
            if current.version != version:
                raise VersionConflict(
                    f"{entity} {rid} was changed by someone else (version {current.version}); reload and try again",
                    [{"field": "version", "message": f"current version is {current.version}"}],
                )
            self._check_refs(conn, v, values)
            self._check_unique(conn, v, values, rid)
            row = self._row_values(v, rid, values, current.ext)
            row.update(version=version + 1, updated_at=utcnow(), updated_by=principal.user_id)
            res = conn.execute(update(v.table).where(v.table.c.id == rid, v.table.c.version == version).values(**row))
            if res.rowcount != 1:
                raise VersionConflict(f"{entity} {rid} was changed by someone else; reload and try again")
            self._ensure_in_scope(conn, v, rid, "update")
            check_written(conn, v.snap, v.spec, v.table, rid, values.keys())  # rules reading a changed field
            before = self._stored_values(v, current._mapping, values.keys())
            changes = self._changes(v, before, values)
            self.audit(conn, principal, "update", entity, rid, {"version": version + 1, "changes": changes})
            self._org_changed(conn, entity)
            self._after_write(conn, v, [rid], "update")
        return self.get(principal, entity, rid)

    def delete(self, principal: Principal, entity: str, record_id: Any, expected_version: Any = None) -> None:
        v = self.view(principal, entity)
        self.authz.require(principal, entity, "delete")
        rid = _record_id(record_id)
        with self._write(v) as conn:
            current = conn.execute(select(v.table).where(v.table.c.id == rid, v.scope("delete"))).first()
            if current is None:
                raise NotFound(f"{entity} {rid} not found")
            if expected_version is not None and current.version != _version(expected_version):
                raise VersionConflict(f"{entity} {rid} was changed by someone else; reload and try again")
            if v.spec.retention_years:
                # kept for the legal period: restricted, hidden from every read, not erased
                conn.execute(update(v.table).where(v.table.c.id == rid).values(retained_at=utcnow(), version=current.version + 1))
                self.audit(conn, principal, "retain", entity, rid, {"version": current.version + 1, "retention_years": v.spec.retention_years})
                return
            for spec, f in v.snap.registry.referrers(entity):
                t = v.snap.tables[spec.name]
                used = conn.execute(select(t.c.id).where(field_expr(t, f) == rid).limit(1)).first()
                if used is not None and not (spec.name == entity and used.id == rid):
                    raise Conflict(
                        f"{entity} {rid} is still referenced by {spec.name} records",
                        [{"field": f"{spec.name}.{f.name}", "message": "still references this record"}],
                    )
            conn.execute(delete(tag_table).where(tag_table.c.entity == entity, tag_table.c.record_id == rid))
            conn.execute(delete(v.table).where(v.table.c.id == rid))
            names = [f.name for f in v.spec.live_fields]
            snapshot = self._changes(v, self._stored_values(v, current._mapping, names), {n: None for n in names})
            self.audit(conn, principal, "delete", entity, rid, {"version": current.version, "changes": snapshot})
            self._org_changed(conn, entity)

    def _org_changed(self, conn: Connection, entity: str) -> None:
        """The branch tree feeds every cached principal's branch scope: reload them."""
        if entity == "branch":
            self.runtime.bump(conn, POLICY_VERSION)

    def _after_write(self, conn: Connection, v: _View, ids: builtins.list[int], event: str) -> None:
        for hook in self.after_write:
            hook(conn, v.snap, v.spec.name, ids, event, v.principal)

    def _ensure_in_scope(self, conn: Connection, v: _View, rid: int, action: str) -> None:
        """A write must not move a record out of the writer's own scope (owner/branch hijack)."""
        clause = self.authz.scope_clause(v.principal, v.spec, v.table, action, strict=True)
        if clause is None:
            return
        if conn.execute(select(v.table.c.id).where(v.table.c.id == rid, clause)).first() is None:
            raise Forbidden(f"this change would put the {v.spec.name} outside what you may {action}")

    class _WriteTx:
        def __init__(self, svc: "RecordService", v: _View) -> None:
            self.svc, self.v = svc, v

        def __enter__(self) -> Connection:
            self.cm = self.svc.runtime.begin()
            conn: Connection = self.cm.__enter__()
            return conn

        def __exit__(self, et: Any, ev: Any, tb: Any) -> Any:
            try:
                return self.cm.__exit__(et, ev, tb)
            except IntegrityError as exc:
                raise _integrity_error(self.v, exc) from exc

    def _write(self, v: _View) -> "_WriteTx":
        return self._WriteTx(self, v)

    # ------------------------------------------------------------------ tags

    def tags(self, principal: Principal, entity: str, record_id: Any) -> builtins.list[str]:
        self.get(principal, entity, record_id, fields=[])
        t = tag_table
        with self.runtime.engine.connect() as conn:
            return [r.tag for r in conn.execute(select(t.c.tag).where(t.c.entity == entity, t.c.record_id == int(record_id)).order_by(t.c.tag))]

    def add_tag(self, principal: Principal, entity: str, record_id: Any, tag: Any, source: str = "manual") -> builtins.list[str]:
        self.authz.require(principal, entity, "update")
        self.get(principal, entity, record_id, fields=[])
        name = _tag_name(tag)
        t = tag_table
        with self.runtime.begin() as conn:
            exists_ = conn.execute(
                select(t.c.tag).where(t.c.entity == entity, t.c.record_id == int(record_id), t.c.tag == name)
            ).first()
            if exists_ is None:
                conn.execute(
                    insert(t).values(entity=entity, record_id=int(record_id), tag=name, source=source, created_at=utcnow(), created_by=principal.user_id)
                )
                self.audit(conn, principal, "tag_add", entity, int(record_id), {"tag": name, "source": source})
        return self.tags(principal, entity, record_id)

    def remove_tag(self, principal: Principal, entity: str, record_id: Any, tag: Any) -> builtins.list[str]:
        self.authz.require(principal, entity, "update")
        self.get(principal, entity, record_id, fields=[])
        name = _tag_name(tag)
        t = tag_table
        with self.runtime.begin() as conn:
            res = conn.execute(delete(t).where(t.c.entity == entity, t.c.record_id == int(record_id), t.c.tag == name))
            if res.rowcount == 0:
                raise NotFound(f"tag {name!r} is not on this record")
            self.audit(conn, principal, "tag_remove", entity, int(record_id), {"tag": name})
        return self.tags(principal, entity, record_id)

    # ------------------------------------------------------------------ bulk

    def bulk_insert(
        self,
        principal: Principal,
        entity: str,
        payloads: builtins.list[dict[str, Any]],
        conn: Connection | None = None,
        *,
        in_transaction_ids: bool = False,
        snap: Snapshot | None = None,
    ) -> builtins.list[int]:
        """Validate every payload, then insert them all in one executemany (all or nothing).

        ``in_transaction_ids``: take the ids through ``conn`` (a caller already inside a write
        transaction: jobs and triggers), not in a transaction of their own. ``snap``: the
        metadata to write with, when the caller's transaction is changing it (a package publish)."""
        v = self.view(principal, entity, snap)
        self.authz.require(principal, entity, "create")
        errors = []
        checked = []
        for i, payload in enumerate(payloads):
            try:
                checked.append(self._check_payload(v, payload, creating=True))
            except ValidationFailed as exc:
                errors += [{"field": f"[{i}].{d['field']}", "message": d["message"]} for d in exc.details]
        if errors:
            raise ValidationFailed(f"{len(errors)} invalid values in {entity} rows", errors[:200])
        if in_transaction_ids:
            assert conn is not None
            ids = self.runtime.ids.take_in(conn, entity, len(checked))
        else:
            ids = self.runtime.ids.take(entity, len(checked))
        now = utcnow()
        rows = []
        columns: set[str] = set()
        for rid, values in zip(ids, checked):
            row = self._row_values(v, rid, values, None)
            row.update(id=rid, version=1, created_at=now, updated_at=now, created_by=principal.user_id, updated_by=principal.user_id)
            rows.append(row)
            columns |= row.keys()
        for row in rows:  # executemany needs the same keys in every row
            for name in columns:
                row.setdefault(name, None)
        if rows:
            detail = {"rows": len(rows), "first_id": ids[0], "last_id": ids[-1]}
            if conn is not None:
                conn.execute(insert(v.table), rows)
                self.audit(conn, principal, "bulk_create", entity, None, detail)
            else:
                with self._write(v) as c:
                    c.execute(insert(v.table), rows)
                    self.audit(c, principal, "bulk_create", entity, None, detail)
        return ids


class _Fill(enum.Enum):
    REQUIRED = "required"  # pickles by name: the same object in an import worker


REQUIRED = _Fill.REQUIRED  # creation_fills: a required field without a default


def creation_fills(spec: EntitySpec, user_id: int | None, defaults: Mapping[str, Any] | None = None) -> builtins.list[tuple[str, Any]]:
    """(field, value) for what a new record gets when it is not given: its default, or the
    creator as owner; ``REQUIRED`` for required fields with neither. ``defaults``: the
    normalised defaults, if known."""
    out: builtins.list[tuple[str, Any]] = []
    for f in spec.live_fields:
        if f.default is not None:
            out.append((f.name, defaults[f.name] if defaults is not None else FIELD_TYPES[f.type].normalize(f.default, f)))
        elif f.name == spec.owner_field and user_id is not None:
            out.append((f.name, user_id))
        elif f.required:
            out.append((f.name, REQUIRED))
    return out


def stored_values(
    field: Callable[[str], FieldSpec | None],
    entity: str,
    table: str,
    keyring: Keyring,
    rid: int,
    values: Mapping[str, Any],
    ext: dict[str, Any] | None,
    known_index: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A record's column values: encrypted (the table, column and id are the associated data)
    and blind-indexed, json-stored fields merged into ``ext``. A plain function of its inputs,
    so import workers in other processes build rows exactly as the service does."""
    row: dict[str, Any] = {}
    new_ext = dict(ext or {})
    ext_touched = False
    for name, value in values.items():
        f = field(name)
        assert f is not None
        stored: Any = value
        if f.encrypted and value is not None:
            dumped = FIELD_TYPES[f.type].dump(value)
            stored = keyring.encrypt(str(dumped), aad_for(table, f.name, rid))
        if f.storage == "column":
            row[f.name] = stored
            if f.encrypted and f.searchable:
                known = known_index.get(f.name) if known_index else None
                row[f.blind_index_column] = None if value is None else known or keyring.blind_index(f"{entity}.{f.name}", str(value))
        else:
            ext_touched = True
            dumped = stored if f.encrypted else FIELD_TYPES[f.type].dump(value)
            if dumped is None:
                new_ext.pop(f.name, None)
            else:
                new_ext[f.name] = dumped
    if ext_touched or ext is None:
        row["ext"] = new_ext
    return row


def _record_id(value: Any) -> int:
    try:
        rid = int(value)
    except (TypeError, ValueError):
        raise NotFound("record not found") from None
    if rid <= 0 or rid > 2**63 - 1:
        raise NotFound("record not found")
    return rid


_NAIVE_AS_Z = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _utc_text(stamp: dt.datetime) -> str:
    """A naive UTC timestamp as ``isoformat() + "Z"`` writes it (seconds, microseconds if any),
    at less than half the cost: CPython's isoformat goes through printf, and list pages write
    two timestamps per row."""
    return orjson.dumps(stamp, option=_NAIVE_AS_Z)[1:-1].decode()


def _json_reader(f: FieldSpec) -> Any:
    """JSON-stored values come back as text; decimals are re-scaled so a value written before a
    safe integer → decimal change reads like one written after it."""
    if f.type != "decimal":
        return None
    quantum = Decimal(1).scaleb(-f.scale)
    return lambda raw: str(Decimal(raw).quantize(quantum))


def _version(value: Any) -> int:
    if value is None:
        raise BadRequest(
            "updates need the record's version: send If-Match: <version> or \"version\" in the body",
            [{"field": "version", "message": "is required"}],
        )
    try:
        text = str(value).strip().strip('"').removeprefix("W/").strip('"')
        n = int(text)
    except (TypeError, ValueError):
        raise BadRequest("version must be an integer", [{"field": "version", "message": "must be an integer"}]) from None
    return n


def _tag_name(tag: Any) -> str:
    try:
        name = normalize_text(tag)
    except FieldError:
        name = ""
    if not name or len(name) > TAG_MAX:
        raise ValidationFailed("invalid tag", [{"field": "tag", "message": f"must be 1 to {TAG_MAX} characters"}])
    return name


def _integrity_error(v: _View, exc: IntegrityError) -> Exception:
    text = str(exc.orig).lower()
    for f in v.spec.fields:
        if f.unique and (f.name in text or f.blind_index_column in text) and ("unique" in text or "duplicate" in text):
            return DuplicateValue(f"{v.spec.name} would duplicate a unique value", [{"field": f.name, "message": "is already used by another record"}])
    if "foreign key" in text:
        return Conflict(f"{v.spec.name} change conflicts with related records")
    return Conflict(f"{v.spec.name} change conflicts with existing data")
