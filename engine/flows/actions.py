"""Actions of triggers and flow states, executed for a set of records inside the caller's
transaction: tasks, opportunities and tickets are inserted in one batch through the records
service (validated, encrypted, audited), tags and field updates are set-wise SQL, and
notifications go to the outbox.

Who gets the work: the record's owner (for records without one — holdings, transactions — the
owner of their customer), or that owner's supervisor. Work meant for a supervisor is not
created when the owner has none (escalating to the owner would loop: the owner's own overdue
task escalated back to them). Marketing actions skip customers without active marketing consent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sqlalchemy import Connection, Select, and_, delete, insert, literal, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..fieldtypes import FIELD_TYPES
from ..meta.spec import EntitySpec, Label
from ..security import audit
from ..security.consent import consent_clause
from ..security.org import staff_table
from ..security.principal import Principal
from ..store.query import field_expr
from ..store.tables import tag_table
from .conditions import local_today
from .outbox import DEFAULT_CHANNEL, enqueue_many
from .spec import CREATES, ActionSpec, customer_field

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = ["Target", "targets_query", "load_targets", "run_actions"]

CHUNK = 5000


@dataclass(frozen=True)
class Target:
    """One record an action runs for, with the people and customer it concerns."""

    record_id: int
    owner_id: int | None
    supervisor_id: int | None
    customer_id: int | None


def _owner_and_customer(snap: Any, spec: EntitySpec) -> tuple[Any, ColumnElement[Any] | None, ColumnElement[Any] | None]:
    """(FROM clause, owner expression, customer id expression) for ``spec``'s records."""
    base = snap.tables[spec.name]
    cf = customer_field(spec)
    customer = base.c.id if cf == "id" else field_expr(base, spec.field(cf)) if cf else None  # type: ignore[arg-type]
    if spec.owner_field:
        return base, field_expr(base, spec.field(spec.owner_field)), customer  # type: ignore[arg-type]
    if cf and cf != "id" and "customer" in snap.tables:
        cspec = snap.registry.entity("customer")
        ctable = snap.tables["customer"].alias("owner_customer")
        if cspec.owner_field:
            owner = ctable.c[cspec.owner_field]
            return base.outerjoin(ctable, ctable.c.id == customer), owner, customer
    return base, None, customer


def targets_query(snap: Any, entity: str) -> Select[Any]:
    """SELECT id, owner, supervisor, customer for ``entity``'s records; callers add the WHERE."""
    spec = snap.registry.entity(entity)
    base = snap.tables[entity]
    from_, owner, customer = _owner_and_customer(snap, spec)
    staff = staff_table.alias("owner_staff")
    owner_col = owner if owner is not None else literal(None)
    from_ = from_.outerjoin(staff, staff.c.user_id == owner_col) if owner is not None else from_
    return select(
        base.c.id.label("record_id"),
        owner_col.label("owner_id"),
        (staff.c.supervisor_id if owner is not None else literal(None)).label("supervisor_id"),
        (customer if customer is not None else literal(None)).label("customer_id"),
    ).select_from(from_)


def load_targets(conn: Connection, snap: Any, entity: str, record_ids: Sequence[int]) -> list[Target]:
    base = snap.tables[entity]
    out: list[Target] = []
    stmt = targets_query(snap, entity)
    for i in range(0, len(record_ids), CHUNK):
        chunk = list(record_ids[i : i + CHUNK])
        out += [Target(r.record_id, r.owner_id, r.supervisor_id, r.customer_id) for r in conn.execute(stmt.where(base.c.id.in_(chunk)))]
    return out


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _assignee(action: ActionSpec, t: Target) -> int | None:
    return t.supervisor_id if action.assign == "supervisor" else t.owner_id


def _consenting(conn: Connection, snap: Any, targets: Sequence[Target], now: dt.datetime) -> set[int]:
    """Customers among ``targets`` with active marketing consent (one SQL query per chunk)."""
    customers = sorted({t.customer_id for t in targets if t.customer_id is not None})
    ctable = snap.tables["customer"]
    ok: set[int] = set()
    for chunk in _chunks(customers):
        ok |= {
            r.id
            for r in conn.execute(select(ctable.c.id).where(ctable.c.id.in_(list(chunk)), consent_clause(snap, ctable.c.id, "marketing", now)))
        }
    return ok


def _only_fields(spec: EntitySpec, values: dict[str, Any]) -> dict[str, Any]:
    """Drop values for fields the target entity does not have (a bank may trim core entities)."""
    return {k: v for k, v in values.items() if v is not None and spec.live_field(k) is not None}


def run_actions(
    conn: Connection,
    records: "RecordService",
    snap: Any,
    entity: str,
    actions: Sequence[ActionSpec],
    targets: Sequence[Target],
    *,
    now: dt.datetime,
    source: str,
    label: Label,
) -> dict[str, int]:
    """Run ``actions`` for ``targets`` inside ``conn``'s transaction; returns counts per action."""
    counts: dict[str, int] = {}
    if not targets:
        return counts
    actor = Principal.system(source)
    today = local_today(now)
    consenting: set[int] | None = None
    for action in actions:
        todo = list(targets)
        if action.marketing:
            if consenting is None:
                consenting = _consenting(conn, snap, targets, now)
            todo = [t for t in todo if t.customer_id in consenting]
        n = 0
        if action.type in CREATES:
            spec = snap.registry.entity(CREATES[action.type])
            payloads = [_only_fields(spec, v) for t in todo if (v := _new_record(action, label, t, now, today)) is not None]
            n = _bulk(records, actor, spec.name, payloads, conn)
        elif action.type in ("add_tag", "remove_tag"):
            n = _tags(conn, snap, entity, action, todo, now)
        elif action.type == "notify":
            rows = []
            for t in todo:
                kind, rid = ("customer", t.customer_id) if action.to == "customer" else ("user", t.supervisor_id if action.to == "supervisor" else t.owner_id)
                if rid is None:
                    continue
                rows.append(
                    {
                        "channel": action.channel or DEFAULT_CHANNEL,
                        "recipient_kind": kind,
                        "recipient_id": rid,
                        "subject": (action.title or label).zh[:200],
                        "body": action.body.zh if action.body else "",
                        "source": source[:100],
                        "entity": entity,
                        "record_id": t.record_id,
                        "created_at": now,
                    }
                )
            n = enqueue_many(conn, rows)
        elif action.type == "set":
            n = _set_values(conn, records, snap, entity, action, todo, now, actor)
        counts[action.type] = counts.get(action.type, 0) + n
    return counts


def _new_record(action: ActionSpec, label: Label, t: Target, now: dt.datetime, today: dt.date) -> dict[str, Any] | None:
    """The task, opportunity or ticket a create action makes for ``t`` (None: none for this one:
    supervisor work when the owner has no supervisor, an opportunity without a customer)."""
    if action.assign == "supervisor" and t.supervisor_id is None:
        return None
    title = (action.title or label).zh
    body = action.body.zh if action.body else None
    common = {"customer": t.customer_id, "owner": _assignee(action, t)}
    if action.type == "create_task":
        due = now + dt.timedelta(days=action.due_in_days) if action.due_in_days is not None else None
        due_at = FIELD_TYPES["datetime"].dump(due) if due else None
        return {**common, "title": title, "due_at": due_at, "status": "open", "priority": action.priority, "notes": body}
    if action.type == "create_opportunity":
        if t.customer_id is None:
            return None
        due_date = today + dt.timedelta(days=action.due_in_days) if action.due_in_days is not None else None
        return {**common, "title": title, "stage": "identified", "source": action.source, "due_date": due_date.isoformat() if due_date else None}
    return {
        **common,
        "subject": title,
        "category": action.category,
        "department": action.department,
        "status": "new",
        "description": body,
        "opened_at": FIELD_TYPES["datetime"].dump(now),
    }


def _bulk(records: "RecordService", actor: Principal, entity: str, payloads: list[dict[str, Any]], conn: Connection) -> int:
    if not payloads:
        return 0
    for chunk in _chunks(payloads):
        records.bulk_insert(actor, entity, list(chunk), conn=conn, in_transaction_ids=True)
    return len(payloads)


def _tags(conn: Connection, snap: Any, entity: str, action: ActionSpec, targets: Sequence[Target], now: dt.datetime) -> int:
    on_customer = action.target == "customer" and entity != "customer"
    tag_entity = "customer" if on_customer or entity == "customer" else entity
    ids = sorted({(t.customer_id if on_customer else t.record_id) for t in targets} - {None})  # type: ignore[type-var]
    t_ = tag_table
    n = 0
    for chunk in _chunks(ids):
        where = and_(t_.c.entity == tag_entity, t_.c.record_id.in_(list(chunk)), t_.c.tag == action.tag)
        if action.type == "remove_tag":
            n += conn.execute(delete(t_).where(where, t_.c.source == "rule")).rowcount or 0
            continue
        have = {r.record_id for r in conn.execute(select(t_.c.record_id).where(where))}
        rows = [{"entity": tag_entity, "record_id": rid, "tag": action.tag, "source": "rule", "created_at": now} for rid in chunk if rid not in have]
        if rows:
            conn.execute(insert(t_), rows)
        n += len(rows)
    return n


def _set_values(
    conn: Connection, records: "RecordService", snap: Any, entity: str, action: ActionSpec, targets: Sequence[Target], now: dt.datetime, actor: Principal
) -> int:
    """Set constant values on the records (e.g. a task's status to escalated): version bumped,
    each change audited field by field, like an edit."""
    spec = snap.registry.entity(entity)
    table = snap.tables[entity]
    fields = {name: spec.live_field(name) for name in action.values}
    values = {name: FIELD_TYPES[f.type].normalize(action.values[name], f) for name, f in fields.items() if f is not None}
    json_values = {k: v for k, v in values.items() if getattr(fields[k], "storage", None) == "json"}
    col_values = {k: v for k, v in values.items() if k not in json_values}
    n = 0
    names = list(values)
    v = records.view(actor, entity, snap)
    for chunk in _chunks([t.record_id for t in targets]):
        rows = conn.execute(select(table).where(table.c.id.in_(list(chunk)))).all()
        for row in rows:
            before = records._stored_values(v, row._mapping, names)
            changes = records._changes(v, before, values)
            if not changes:
                continue
            stored = records._row_values(v, row.id, values, row.ext) if json_values else dict(col_values)
            stored.update(version=row.version + 1, updated_at=now, updated_by=None)
            conn.execute(update(table).where(table.c.id == row.id).values(**stored))
            audit.append(
                conn,
                audit.AuditEntry(actor=actor.username, action="update", entity=entity, record_id=row.id, detail={"version": row.version + 1, "changes": changes}),
            )
            n += 1
    return n
