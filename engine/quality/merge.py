"""Merge duplicate records into a golden record, and undo a merge exactly.

One transaction per merge: the golden values are chosen field by field (the entity's ``merge``
survivorship rules, then per-request overrides ``{field: source record id}``); a unique value
that moves to the survivor is first cleared on the record it comes from; the survivor is
updated (version + 1) and must still pass the entity's rules and stay in the actor's scope;
every reference to a merged record is re-pointed to the survivor; the merged records' tags move
to the survivor; the merged records are hidden (``retained_at``, like a retained deletion: gone
from every read, kept in the database); an undo record (:data:`merge_table`) and audit entries
(``merge``, with the survivor's masked field-level before/after) are written.

Undo (one transaction) puts back the stored values of every column the merge wrote — raw, so an
encrypted value is restored as the very ciphertext it was — re-points exactly the references
it moved, restores tags and shows the merged records again; versions move forward (a restored
record is a new version with the old values). It is refused (409) once the survivor has changed
since the merge: undoing would silently throw that change away.

Who may merge: ``update`` and ``import`` on the entity, with the survivor and every merged
record in the actor's update scope (see docs/data-quality.md).
"""

from __future__ import annotations

import builtins
import datetime as dt
from decimal import Decimal
from typing import Any, Mapping, Sequence

from sqlalchemy import BigInteger, Column, Connection, Date, DateTime, Numeric, Table, Text, delete, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from ..errors import BadRequest, Conflict, NotFound, ValidationFailed, VersionConflict
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import EntitySpec, FieldSpec, MergeSpec
from ..runtime import utcnow
from ..security.principal import Principal
from ..services.records import RecordService
from ..sqltypes import Money
from ..store.query import field_expr
from ..store.tables import tag_table
from .rules import check_written
from .tables import merge_table

__all__ = ["merge_records", "undo_merge", "merge_info", "golden_values", "MAX_MERGED"]

MAX_MERGED = 20
CHUNK = 1000
# written by every update; restored values never include them (versions only move forward)
_BOOKKEEPING = ("version", "updated_at", "updated_by")


# ---------------------------------------------------------------- survivorship


def golden_values(
    spec: EntitySpec,
    values: Mapping[int, Mapping[str, Any]],
    order: Sequence[int],
    updated_at: Mapping[int, Any],
    overrides: Mapping[str, int] | None = None,
    keep: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, int]]:
    """(golden value per live field, the record each came from). ``order`` starts with the
    survivor; ``keep`` fields always keep the survivor's value."""
    rules = spec.merge or MergeSpec()
    survivor = order[0]
    golden: dict[str, Any] = {}
    sources: dict[str, int] = {}
    for f in spec.live_fields:
        if overrides and f.name in overrides:
            src = overrides[f.name]
        elif f.name in keep or f.readonly:
            src = survivor
        else:
            src = _pick(rules.rule_for(f.name), f.name, values, order, updated_at)
        golden[f.name] = values[src][f.name]
        sources[f.name] = src
    return golden, sources


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def _pick(rule: str, name: str, values: Mapping[int, Mapping[str, Any]], order: Sequence[int], updated_at: Mapping[int, Any]) -> int:
    survivor = order[0]
    if rule == "survivor":
        return survivor
    have = [rid for rid in order if not _empty(values[rid][name])]
    if not have:
        return survivor
    if rule == "non_empty":
        return have[0]
    if rule == "most_recent":  # ties go to the record listed first (the survivor, then merged in order)
        return max(have, key=lambda rid: (updated_at[rid], -order.index(rid)))
    if rule == "max":  # max/min keep the first of equal values, so the survivor wins ties
        return max(have, key=lambda rid: values[rid][name])
    if rule == "min":
        return min(have, key=lambda rid: values[rid][name])
    if rule == "longest":
        return max(have, key=lambda rid: len(str(values[rid][name])))
    raise ValueError(f"unknown survivorship rule {rule!r}")  # the meta-schema admits no other


# ---------------------------------------------------------------- merge


def merge_records(records: RecordService, principal: Principal, entity: str, payload: Any) -> dict[str, Any]:
    v = records.view(principal, entity)
    _require(records, principal, entity)
    spec, t, snap = v.spec, v.table, v.snap
    if spec.merge is None and spec.dedupe is None:
        raise BadRequest(f"{entity} records cannot be merged: the entity declares no dedupe or merge rules", [{"field": "entity", "message": "not mergeable"}])
    survivor, merged, overrides, expected = _parse(v, payload)
    ids = [survivor, *merged]
    keep = frozenset(fl.field for fl in snap.automation.flows_for(entity))  # flow states change only through transitions
    names = [f.name for f in spec.live_fields]
    now = utcnow()
    with records.runtime.begin() as conn:
        rows = {int(r.id): r._mapping for r in conn.execute(select(t).where(t.c.id.in_(ids), v.scope("update")).with_for_update())}
        missing = [rid for rid in ids if rid not in rows]
        if missing:
            raise NotFound(
                f"{entity} {missing[0]} not found",
                [{"field": "survivor" if rid == survivor else "merged", "message": f"no {entity} {rid} you may update"} for rid in missing],
            )
        current = rows[survivor]
        if expected is not None and current["version"] != expected:
            raise VersionConflict(
                f"{entity} {survivor} was changed by someone else (version {current['version']}); reload and try again",
                [{"field": "version", "message": f"current version is {current['version']}"}],
            )
        values = {rid: records._stored_values(v, rows[rid], names) for rid in ids}
        golden, sources = golden_values(spec, values, ids, {rid: rows[rid]["updated_at"] for rid in ids}, overrides, keep)
        changes = {n: golden[n] for n in names if golden[n] != values[survivor][n]}

        merged_before: dict[int, dict[str, Any]] = {rid: {} for rid in merged}
        for name in changes:  # a unique value moving to the survivor first leaves where it was
            f = spec.field(name)
            src = sources[name]
            if f is not None and f.unique and changes[name] is not None and src != survivor:
                cols = _columns_of(f)
                merged_before[src].update({c: _dump(rows[src][c]) for c in cols})
                conn.execute(update(t).where(t.c.id == src).values({c: None for c in cols}))

        row = records._row_values(v, survivor, changes, current["ext"]) if changes else {}
        row.update(version=current["version"] + 1, updated_at=now, updated_by=principal.user_id)
        survivor_before = {c: _dump(current[c]) for c in row}
        conn.execute(update(t).where(t.c.id == survivor).values(**row))
        records._ensure_in_scope(conn, v, survivor, "update")
        check_written(conn, snap, spec, t, survivor, changes.keys())

        repointed = _repoint(conn, snap, entity, survivor, merged, ids)
        tags = _move_tags(conn, entity, survivor, merged)
        for rid in merged:
            merged_before[rid].update(retained_at=_dump(rows[rid]["retained_at"]), version=rows[rid]["version"])
        conn.execute(update(t).where(t.c.id.in_(merged)).values(retained_at=now, version=t.c.version + 1))

        audit_changes = records._changes(v, values[survivor], changes)
        merge_id = int(
            conn.execute(
                insert(merge_table)
                .values(
                    entity=entity,
                    survivor=survivor,
                    merged=merged,
                    survivor_version=current["version"] + 1,
                    survivor_before=survivor_before,
                    merged_before={str(rid): b for rid, b in merged_before.items()},
                    repointed=repointed,
                    tags=tags,
                    changes=audit_changes,
                    actor=principal.username,
                    actor_id=principal.user_id,
                    created_at=now,
                )
                .returning(merge_table.c.id)
            ).scalar_one()
        )
        summary = {f"{r['entity']}.{r['field']}": sum(len(x) for x in r["ids"].values()) for r in repointed}
        records.audit(
            conn,
            principal,
            "merge",
            entity,
            survivor,
            {"merge_id": merge_id, "merged": merged, "version": current["version"] + 1, "changes": audit_changes, "repointed": summary, "tags_added": tags["added"]},
        )
        for rid in merged:
            records.audit(conn, principal, "merge", entity, rid, {"merge_id": merge_id, "merged_into": survivor, "version": rows[rid]["version"] + 1})
        info = _info_row(conn, merge_id)
    return {"merge": info, "record": records.get(principal, entity, survivor)}


def _parse(v: Any, payload: Any) -> tuple[int, builtins.list[int], dict[str, int], int | None]:
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = set(payload) - {"survivor", "merged", "overrides", "version"}
    if unknown:
        name = str(sorted(unknown)[0])[:64]
        raise BadRequest(f"unknown key {name!r}", [{"field": name, "message": "unknown key"}])
    errors: builtins.list[dict[str, str]] = []
    survivor = _record_id(payload.get("survivor"))
    if survivor is None:
        errors.append({"field": "survivor", "message": "must be a record id"})
    raw = payload.get("merged")
    merged: builtins.list[int] = []
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_MERGED:
        errors.append({"field": "merged", "message": f"must be a list of 1 to {MAX_MERGED} record ids"})
    else:
        for item in raw:
            rid = _record_id(item)
            if rid is None:
                errors.append({"field": "merged", "message": "must hold record ids only"})
                break
            if rid in merged or rid == survivor:
                errors.append({"field": "merged", "message": "lists a record twice or the survivor itself"})
                break
            merged.append(rid)
    overrides: dict[str, int] = {}
    raw_overrides = payload.get("overrides") or {}
    if not isinstance(raw_overrides, dict):
        errors.append({"field": "overrides", "message": "must map field names to record ids"})
        raw_overrides = {}
    for name, source in raw_overrides.items():
        f = v.spec.live_field(name) if isinstance(name, str) else None
        label = f"overrides.{str(name)[:64]}"
        if f is None:
            errors.append({"field": label, "message": "unknown field"})
        elif f.readonly or not v.access[f.name].write:
            errors.append({"field": label, "message": "is read-only for you"})
        elif _record_id(source) not in (survivor, *merged):
            errors.append({"field": label, "message": "must be the survivor or one of the merged records"})
        else:
            overrides[f.name] = int(source)
    version = payload.get("version")
    if version is not None and (_record_id(version) is None):
        errors.append({"field": "version", "message": "must be an integer"})
    if errors:
        raise ValidationFailed("the merge request is invalid", errors)
    assert survivor is not None
    return survivor, merged, overrides, None if version is None else int(version)


def _record_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 0 < value < 2**63:
        return None
    return value


def _require(records: RecordService, principal: Principal, entity: str) -> None:
    """Merging is data stewardship: the right to update the records and to bulk-load (import,
    whose upsert already overwrites matched records) the entity."""
    records.authz.require(principal, entity, "update")
    records.authz.require(principal, entity, "import")


def _columns_of(f: FieldSpec) -> builtins.list[str]:
    return [f.name, f.blind_index_column] if f.encrypted and f.searchable else [f.name]


# ---------------------------------------------------------------- references and tags


def _set_ref(rt: Table, f: FieldSpec, target: int, dialect: str) -> dict[str, Any]:
    """The SET clause pointing ``f`` (a column or a key of ``ext``) at ``target``."""
    if f.storage == "column":
        return {f.name: target}
    if dialect == "postgresql":
        return {"ext": func.jsonb_set(rt.c.ext, literal([f.name], ARRAY(Text())), func.to_jsonb(literal(target, BigInteger())))}
    return {"ext": func.json_set(rt.c.ext, literal(f'$."{f.name}"'), literal(target, BigInteger()))}


def _repoint(conn: Connection, snap: Any, entity: str, survivor: int, merged: builtins.list[int], involved: builtins.list[int]) -> builtins.list[dict[str, Any]]:
    """Point every reference to a merged record at the survivor (retained rows included: they
    belong to the same customer). Returns exactly which rows moved from which record."""
    out = []
    for rspec, f in snap.registry.referrers(entity):
        rt = snap.tables[rspec.name]
        expr = field_expr(rt, f)
        where = [expr.in_(merged)]
        if rspec.name == entity:
            where.append(rt.c.id.not_in(involved))  # the merged records themselves are hidden as they are
        found = conn.execute(select(rt.c.id, expr).where(*where)).all()
        if not found:
            continue
        by_old: dict[str, builtins.list[int]] = {}
        for rid, old in found:
            by_old.setdefault(str(int(old)), []).append(int(rid))
        moved = sorted(int(r[0]) for r in found)
        for start in range(0, len(moved), CHUNK):
            conn.execute(update(rt).where(rt.c.id.in_(moved[start : start + CHUNK])).values(_set_ref(rt, f, survivor, conn.dialect.name)))
        out.append({"entity": rspec.name, "field": f.name, "ids": by_old})
    return out


def _move_tags(conn: Connection, entity: str, survivor: int, merged: builtins.list[int]) -> dict[str, Any]:
    tt = tag_table
    rows = conn.execute(select(tt).where(tt.c.entity == entity, tt.c.record_id.in_(merged)).order_by(tt.c.record_id, tt.c.tag)).all()
    have = {r.tag for r in conn.execute(select(tt.c.tag).where(tt.c.entity == entity, tt.c.record_id == survivor))}
    added: builtins.list[str] = []
    for r in rows:
        if r.tag in have or r.tag in added:
            continue
        conn.execute(insert(tt).values(entity=entity, record_id=survivor, tag=r.tag, source=r.source, created_at=r.created_at, created_by=r.created_by))
        added.append(r.tag)
    if rows:
        conn.execute(delete(tt).where(tt.c.entity == entity, tt.c.record_id.in_(merged)))
    moved = [
        {"record_id": int(r.record_id), "tag": r.tag, "source": r.source, "created_at": r.created_at.isoformat(), "created_by": r.created_by}
        for r in rows
    ]
    return {"added": added, "moved": moved}


# ---------------------------------------------------------------- undo


def undo_merge(records: RecordService, principal: Principal, merge_id: int) -> dict[str, Any]:
    _known_id(merge_id)
    now = utcnow()
    with records.runtime.begin() as conn:
        m = conn.execute(select(merge_table).where(merge_table.c.id == merge_id).with_for_update()).first()
        if m is None:
            raise NotFound(f"merge {merge_id} not found")
        entity = m.entity
        v = records.view(principal, entity)
        _require(records, principal, entity)
        spec, t, snap = v.spec, v.table, v.snap
        current = conn.execute(select(t).where(t.c.id == m.survivor, v.scope("update")).with_for_update()).first()
        if current is None:
            raise NotFound(f"merge {merge_id} not found")  # its survivor is outside what you may update
        if m.undone_at is not None:
            raise Conflict(f"merge {merge_id} was already undone", [{"field": "merge", "message": "already undone"}])
        if current.version != m.survivor_version:
            raise VersionConflict(
                f"{entity} {m.survivor} has changed since the merge (version {m.survivor_version} → {current.version}); undoing would lose that change",
                [{"field": "version", "message": f"the merge left version {m.survivor_version}, the record is at {current.version}"}],
            )
        merged = [int(x) for x in m.merged]
        scope = records.authz.scope_clause(principal, spec, t, "update")
        query = select(t).where(t.c.id.in_(merged))
        if scope is not None:
            query = query.where(scope)
        mrows = {int(r.id): r._mapping for r in conn.execute(query.with_for_update())}
        before = m.merged_before
        for rid in merged:
            r = mrows.get(rid)
            if r is None:
                raise NotFound(f"{entity} {rid} (merged by merge {merge_id}) is outside what you may update", [{"field": "merged", "message": f"{rid} not found"}])
            if r["retained_at"] is None or r["version"] != before[str(rid)]["version"] + 1:
                raise Conflict(f"{entity} {rid} has changed since the merge", [{"field": "merged", "message": f"{rid} changed since the merge"}])

        # the survivor first: it may hold a unique value that goes back to a merged record
        restored = _loaded(t, m.survivor_before)
        conn.execute(update(t).where(t.c.id == m.survivor).values(**restored, version=current.version + 1, updated_at=now, updated_by=principal.user_id))
        for rid in merged:
            conn.execute(update(t).where(t.c.id == rid).values(**_loaded(t, before[str(rid)]), version=mrows[rid]["version"] + 1))
        moved_back = _repoint_back(conn, snap, m.survivor, m.repointed)
        _restore_tags(conn, entity, m.survivor, m.tags)
        conn.execute(update(merge_table).where(merge_table.c.id == merge_id).values(undone_at=now, undone_by=principal.username))

        names = [f.name for f in spec.live_fields]
        golden = records._stored_values(v, current._mapping, names)
        previous = records._stored_values(v, {**dict(current._mapping), **restored}, names)
        changes = records._changes(v, golden, {n: previous[n] for n in names if previous[n] != golden[n]})
        records.audit(
            conn,
            principal,
            "merge_undo",
            entity,
            m.survivor,
            {"merge_id": merge_id, "merged": merged, "version": current.version + 1, "changes": changes, "repointed_back": moved_back, "tags_removed": m.tags["added"]},
        )
        for rid in merged:
            records.audit(conn, principal, "merge_undo", entity, rid, {"merge_id": merge_id, "version": mrows[rid]["version"] + 1})
        info = _info_row(conn, merge_id)
    return {"merge": info, "record": records.get(principal, entity, m.survivor)}


def _repoint_back(conn: Connection, snap: Any, survivor: int, repointed: builtins.list[dict[str, Any]]) -> dict[str, int]:
    """Rows the merge re-pointed go back to the record they pointed at, if they still point at
    the survivor (a row changed or deleted since keeps its present state)."""
    out: dict[str, int] = {}
    for entry in repointed:
        spec = snap.registry.entities.get(entry["entity"])
        f = spec.field(entry["field"]) if spec is not None else None
        if spec is None or f is None:
            continue  # the entity or field is gone: nothing left to point back
        rt = snap.tables[spec.name]
        n = 0
        for old, ids in entry["ids"].items():
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                res = conn.execute(
                    update(rt).where(rt.c.id.in_(chunk), field_expr(rt, f) == survivor).values(_set_ref(rt, f, int(old), conn.dialect.name))
                )
                n += res.rowcount
        out[f"{entry['entity']}.{entry['field']}"] = n
    return out


def _restore_tags(conn: Connection, entity: str, survivor: int, tags: Mapping[str, Any]) -> None:
    tt = tag_table
    if tags["added"]:
        conn.execute(delete(tt).where(tt.c.entity == entity, tt.c.record_id == survivor, tt.c.tag.in_(tags["added"])))
    for r in tags["moved"]:
        exists = conn.execute(select(tt.c.tag).where(tt.c.entity == entity, tt.c.record_id == r["record_id"], tt.c.tag == r["tag"])).first()
        if exists is None:
            conn.execute(
                insert(tt).values(
                    entity=entity,
                    record_id=r["record_id"],
                    tag=r["tag"],
                    source=r["source"],
                    created_at=dt.datetime.fromisoformat(r["created_at"]),
                    created_by=r["created_by"],
                )
            )


# ---------------------------------------------------------------- stored values and merge info


def _dump(value: Any) -> Any:
    """A stored column value in JSON form (dates ISO, decimals as text, the rest as is)."""
    if value is None:
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _load(col: Column[Any], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(col.type, DateTime):
        return dt.datetime.fromisoformat(value)
    if isinstance(col.type, Date):
        return dt.date.fromisoformat(value)
    if isinstance(col.type, (Money, Numeric)):
        return Decimal(value)
    return value


def _loaded(t: Table, stored: Mapping[str, Any]) -> dict[str, Any]:
    return {c: _load(t.c[c], value) for c, value in stored.items() if c not in _BOOKKEEPING and c in t.c}


def merge_info(records: RecordService, principal: Principal, merge_id: int) -> dict[str, Any]:
    """A merge as its data steward sees it: who, when, which records, the survivor's masked
    changes, how many references moved; never the stored values."""
    _known_id(merge_id)
    with records.runtime.engine.connect() as conn:
        m = conn.execute(select(merge_table.c.entity, merge_table.c.survivor).where(merge_table.c.id == merge_id)).first()
        if m is None:
            raise NotFound(f"merge {merge_id} not found")
        v = records.view(principal, m.entity)
        _require(records, principal, m.entity)
        if conn.execute(select(v.table.c.id).where(v.table.c.id == m.survivor, v.scope("update"))).first() is None:
            raise NotFound(f"merge {merge_id} not found")
        return _info_row(conn, merge_id)


def _known_id(merge_id: Any) -> None:
    """Merge ids are 32-bit serials: anything else names no merge (and must not reach SQL)."""
    if isinstance(merge_id, bool) or not isinstance(merge_id, int) or not 0 < merge_id < 2**31:
        raise NotFound(f"merge {str(merge_id)[:20]} not found")


def _info_row(conn: Connection, merge_id: int) -> dict[str, Any]:
    m = conn.execute(select(merge_table).where(merge_table.c.id == merge_id)).one()
    dump = FIELD_TYPES["datetime"].dump
    return {
        "id": int(m.id),
        "entity": m.entity,
        "survivor": int(m.survivor),
        "merged": [int(x) for x in m.merged],
        "survivor_version": int(m.survivor_version),
        "changes": m.changes or {},
        "repointed": [{"entity": r["entity"], "field": r["field"], "count": sum(len(x) for x in r["ids"].values())} for r in m.repointed],
        "tags_added": list(m.tags["added"]),
        "actor": m.actor,
        "created_at": dump(m.created_at),
        "undone_at": dump(m.undone_at) if m.undone_at is not None else None,
        "undone_by": m.undone_by,
    }
