"""Actions of triggers and flow states, executed for a set of records inside the caller's
transaction: tasks, opportunities and tickets are inserted in one batch through the records
service (validated, encrypted, audited), tags and field updates are set-wise SQL, and
notifications go to the outbox. Plugin actions (:class:`engine.plugins.TriggerAction`) run for
the whole set too: what they return is queued in ``fincrm_action_queue`` in the same transaction
and sent after the commit by :func:`deliver_actions` (a job of the jobs pass), through
:mod:`engine.flows.interfaces` — every attempt logged, retried with backoff, what still fails a
dead letter that operations replay. Nothing outbound ever runs inside the transaction.

Who gets the work: the record's owner (for records without one — holdings, transactions — the
owner of their customer), or that owner's supervisor. Work meant for a supervisor is not
created when the owner has none (escalating to the owner would loop: the owner's own overdue
task escalated back to them). Marketing actions skip customers without active marketing consent.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import Connection, Select, and_, delete, insert, literal, select, update
from sqlalchemy.sql.elements import ColumnElement

from ..fieldtypes import FIELD_TYPES
from ..errors import Conflict
from ..meta.spec import EntitySpec, Label
from ..plugins import ActionContext, ActionTarget, PluginError, TriggerAction, trigger_actions
from ..runtime import Runtime, utcnow
from ..security import audit
from ..security.consent import consent_clause
from ..security.org import staff_table
from ..security.principal import Principal
from ..store.query import field_expr
from ..store.tables import tag_table
from .conditions import local_today
from .interfaces import Call, Caller, CallFailed, Interfaces, summarize
from .outbox import DEFAULT_CHANNEL, enqueue_many
from .spec import CREATES, ActionSpec, customer_field
from .tables import action_queue_table

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = ["Target", "targets_query", "load_targets", "run_actions", "deliver_actions", "action_replayer", "MAX_DELIVERY"]

log = logging.getLogger("fincrm.actions")

CHUNK = 5000
MAX_DELIVERY = 64 * 1024  # bytes of JSON a plugin action may queue per delivery
DELIVERY_LEASE = dt.timedelta(minutes=10)  # a claimed delivery not settled by then is due again
HOLD_BACK = dt.timedelta(minutes=5)  # wait of deliveries held back (action failing, plugin missing)

# One record an action runs for (the plugin contract's type: built-in and plugin actions alike).
Target = ActionTarget


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
        elif action.plugin:
            n = _queue_plugin_action(conn, action, entity, todo, now=now, source=source, label=label)
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


# ---------------------------------------------------------------------- plugin actions


def _queue_plugin_action(
    conn: Connection, action: ActionSpec, entity: str, targets: Sequence[Target], *, now: dt.datetime, source: str, label: Label
) -> int:
    """Run a plugin action for ``targets`` and queue what it returns, in ``conn``'s transaction
    (a rolled-back firing queues nothing). Returns the number of deliveries queued."""
    if not targets:
        return 0
    found = trigger_actions().get(action.type)
    if found is None:
        raise PluginError(f"no installed plugin provides action {action.type!r} any more ({source}); install it or change the metadata")
    context = ActionContext(
        action=action.type, source=source[:100], entity=entity, targets=tuple(targets), params=copy.deepcopy(dict(action.params)),
        now=now, label={"zh": label.zh, "en": label.en},
    )
    deliveries = found.run(context)
    if isinstance(deliveries, Mapping) or not isinstance(deliveries, Sequence):
        raise PluginError(f"action {action.type!r}: run() must return a list of deliveries, not {type(deliveries).__name__}")
    rows = []
    for delivery in deliveries:
        if not isinstance(delivery, Mapping):
            raise PluginError(f"action {action.type!r}: each delivery must be a JSON object, not {type(delivery).__name__}")
        try:
            text = json.dumps(delivery, ensure_ascii=False, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"action {action.type!r}: a delivery is not plain JSON ({exc})") from None
        if len(text.encode("utf-8")) > MAX_DELIVERY:
            raise PluginError(f"action {action.type!r}: a delivery is larger than {MAX_DELIVERY} bytes; split it")
        rows.append(
            {
                "action": action.type, "source": source[:100], "entity": entity, "records": len(targets), "delivery": json.loads(text),
                "status": "pending", "attempts": 0, "created_at": now, "next_attempt_at": now,
            }
        )
    if rows:
        conn.execute(insert(action_queue_table), rows)
    return len(rows)


def _call(row: Any) -> Call:
    """The interface call of one delivery: its references (never its content) are logged, and a
    dead letter replays it by the queue row's id."""
    return Call(
        "action", row.action, "send",
        summarize({"delivery": row.id, "source": row.source, "entity": row.entity, "records": row.records}),
        {"delivery_id": int(row.id), "action": row.action},
        f"system:{row.source}"[:150],
    )


def _sender(action: TriggerAction, delivery: Mapping[str, Any]) -> Callable[[float], None]:
    def send(timeout: float) -> None:
        action.send(copy.deepcopy(dict(delivery)), timeout=timeout)

    return send


def _claim_deliveries(runtime: Runtime, now: dt.datetime, limit: int) -> list[Any]:
    """Take up to ``limit`` due deliveries (pending ones, and claims whose lease ran out)."""
    q = action_queue_table
    due = select(q.c.id).where(q.c.status.in_(("pending", "sending")), q.c.next_attempt_at <= now).order_by(q.c.id).limit(limit)
    if runtime.dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(q)
        .where(q.c.id.in_(due.scalar_subquery()))
        .values(status="sending", attempts=q.c.attempts + 1, next_attempt_at=now + DELIVERY_LEASE)
        .returning(q.c.id, q.c.action, q.c.source, q.c.entity, q.c.records, q.c.delivery, q.c.attempts)
    )
    with runtime.begin() as conn:
        rows = conn.execute(stmt).all()
    return sorted(rows, key=lambda r: r.id)


def _settle_delivery(runtime: Runtime, row: Any, **values: Any) -> None:
    q = action_queue_table
    with runtime.begin() as conn:  # only while the claim is still ours
        conn.execute(update(q).where(q.c.id == row.id, q.c.status == "sending", q.c.attempts == row.attempts).values(**values))


def deliver_actions(
    runtime: Runtime,
    now: dt.datetime | None = None,
    limit: int = 200,
    *,
    actions: Mapping[str, TriggerAction] | None = None,
    interfaces: Interfaces | None = None,
) -> dict[str, int]:
    """Send the queued deliveries of plugin actions (after the transactions that queued them
    committed): each through :meth:`Interfaces.call` — logged, retried with backoff — and
    ``sent``, or ``dead`` with its dead letter. Once a delivery of an action is dead, the other
    deliveries of that action claimed in this pass are held back for :data:`HOLD_BACK` (its
    endpoint is failing: a pass does not spend every retry on it); so are deliveries whose
    plugin is not installed. Returns ``claimed``, ``sent``, ``dead``, ``held``."""
    now = now or utcnow()
    installed = trigger_actions() if actions is None else dict(actions)
    rows = _claim_deliveries(runtime, now, limit)
    counts = {"claimed": len(rows), "sent": 0, "dead": 0, "held": 0}
    calls = interfaces or Interfaces(runtime)
    failing: set[str] = set()
    for row in rows:
        action = installed.get(row.action)
        if action is None or row.action in failing:
            reason = f"no installed plugin provides action {row.action!r}" if action is None else f"held back: {row.action} deliveries are failing"
            _settle_delivery(runtime, row, status="pending", next_attempt_at=now + HOLD_BACK, last_error=reason)
            counts["held"] += 1
            continue
        try:
            calls.call(_call(row), _sender(action, row.delivery))
        except CallFailed as exc:
            failing.add(row.action)
            _settle_delivery(runtime, row, status="dead", next_attempt_at=None, last_error=exc.message[:500], dead_letter_id=exc.dead_letter_id)
            counts["dead"] += 1
            log.warning("action %s delivery %d is a dead letter: %s", row.action, row.id, exc.message)
            continue
        _settle_delivery(runtime, row, status="sent", sent_at=now, next_attempt_at=None, last_error=None)
        counts["sent"] += 1
    if rows:
        log.info("plugin actions: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def action_replayer(runtime: Runtime, actions: Callable[[], Mapping[str, TriggerAction]] = trigger_actions) -> Callable[..., Any]:
    """Replays an ``action`` dead letter: the delivery it names, sent again (one attempt); on
    success the delivery is ``sent``."""

    def replay(principal: Any, ref: Mapping[str, Any], caller: Caller) -> Any:
        q = action_queue_table
        delivery_id = ref.get("delivery_id")
        if not isinstance(delivery_id, int):
            raise Conflict("this dead letter does not say which delivery to replay")
        with runtime.engine.connect() as conn:
            row = conn.execute(select(q).where(q.c.id == delivery_id)).first()
        if row is None:
            raise Conflict(f"delivery {delivery_id} no longer exists")
        if row.status != "dead":
            raise Conflict(f"delivery {delivery_id} is {row.status}: only dead deliveries are replayed")
        action = actions().get(row.action)
        if action is None:
            raise Conflict(f"no installed plugin provides action {row.action!r}: install it to replay this delivery")
        caller.call(_call(row), _sender(action, row.delivery))
        with runtime.begin() as conn:
            conn.execute(
                update(q).where(q.c.id == delivery_id, q.c.status == "dead").values(status="sent", sent_at=utcnow(), last_error=None, attempts=q.c.attempts + 1)
            )
        return {"delivery_id": delivery_id, "action": row.action, "status": "sent"}

    return replay
