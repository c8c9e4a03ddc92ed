"""Approval flows at run time: transitions, approval votes, the state guard and SLA escalation.

A flow's state lives in two places that must agree: the record's enum field (what everyone
reads, filters and reports on) and ``fincrm_flow_state`` (when the state was entered, by whom,
who submitted the record into its approval chain, whether its SLA has been escalated). Both
change together in one transaction, only here: a transition writes the field with a version
bump, moves the state row, records the vote, appends the audit entry and runs the target
state's ``on_enter`` actions — or does none of it. The ``after_write`` hook refuses any other
write that would make them disagree (a PATCH of the state field), so the flow cannot be
bypassed.

Who may take a transition: a principal holding one of its ``roles``, whose grants allow the
underlying action on this record (``approve`` for an approval step's decisions, ``update``
otherwise — row scope included), while the record meets the transition's condition. Approval
decisions also need an approver slot the principal fills, and nobody decides a record they
submitted, own or created.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from sqlalchemy import Boolean, Column, Connection, Integer, MetaData, String, Table, and_, insert, inspect, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..errors import BadRequest, Conflict, FinCRMError, Forbidden, NotFound, ValidationFailed, VersionConflict
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import EntitySpec, FieldSpec
from ..runtime import Runtime, Snapshot, utcnow
from ..security import audit
from ..security.org import staff_table
from ..security.principal import Principal
from ..store.query import field_expr
from .actions import Target, load_targets, run_actions
from .conditions import compiled_condition
from .flowspec import ApproverSpec, FlowSpec, StateSpec, TransitionSpec
from .outbox import DEFAULT_CHANNEL, enqueue_many
from .tables import flow_state_table, flow_vote_table

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = ["FlowEngine", "COMMENT_MAX"]

COMMENT_MAX = 2000

# Membership lives in Flask-AppBuilder's tables; the engine reads them with Core (it never
# imports Flask). Not part of the system metadata: FAB creates and owns them.
_fab = MetaData()
ab_user_table = Table("ab_user", _fab, Column("id", Integer, primary_key=True), Column("username", String(64)), Column("active", Boolean))
_ab_role = Table("ab_role", _fab, Column("id", Integer, primary_key=True), Column("name", String(64)))
_ab_user_role = Table("ab_user_role", _fab, Column("id", Integer, primary_key=True), Column("user_id", Integer), Column("role_id", Integer))


def _dump(value: dt.datetime | None) -> str | None:
    return FIELD_TYPES["datetime"].dump(value) if value is not None else None


class FlowEngine:
    def __init__(self, runtime: Runtime, records: "RecordService") -> None:
        self.runtime = runtime
        self.records = records

    def install(self) -> "FlowEngine":
        """Guard every create/update of records with a flow (inside their transaction)."""
        if self.on_write not in self.records.after_write:
            self.records.after_write.append(self.on_write)
        return self

    # ------------------------------------------------------------------ lookups

    @staticmethod
    def flows(snap: Snapshot, entity: str) -> list[FlowSpec]:
        return sorted(snap.automation.flows_for(entity), key=lambda f: f.name)

    def _find(self, snap: Snapshot, entity: str, name: str) -> tuple[FlowSpec, TransitionSpec]:
        flows = self.flows(snap, entity)
        if not flows:
            raise NotFound(f"{entity} has no approval flow")
        for flow in flows:
            t = flow.transition(name)
            if t is not None:
                return flow, t
        raise NotFound(f"unknown transition {name[:64]!r} on {entity}", [{"field": "transition", "message": "unknown transition"}])

    def _state_value(self, snap: Snapshot, spec: EntitySpec, flow: FlowSpec, row: Mapping[str, Any]) -> str | None:
        f = spec.field(flow.field)
        assert f is not None
        if f.storage == "column":
            return row.get(f.name)
        ext = row.get("ext") or {}
        return ext.get(f.name)

    # ------------------------------------------------------------------ checks (raise)

    @staticmethod
    def _require_roles(principal: Principal, t: TransitionSpec) -> None:
        if not principal.is_system and not (principal.roles & t.roles):
            raise Forbidden(f"your role may not take the {t.name!r} transition")

    def _require_scope(self, conn: Connection, principal: Principal, spec: EntitySpec, table: Table, rid: int, action: str) -> None:
        clause = self.records.authz.scope_clause(principal, spec, table, action)
        if clause is not None and conn.execute(select(table.c.id).where(table.c.id == rid, clause)).first() is None:
            raise Forbidden(f"your role may not {action} this {spec.name}")

    def _holds(self, conn: Connection, snap: Snapshot, spec: EntitySpec, rid: int, condition: Mapping[str, Any], now: dt.datetime) -> bool:
        """Whether record ``rid`` meets ``condition`` now — evaluated by the database."""
        cond, joins = compiled_condition(snap, spec, condition, dialect=self.runtime.dialect, blind_index=self.records.blind_index_for, now=now)
        base = snap.tables[spec.name]
        return conn.execute(select(base.c.id).select_from(joins.from_clause()).where(base.c.id == rid, cond)).first() is not None

    def _require_condition(self, conn: Connection, snap: Snapshot, spec: EntitySpec, rid: int, t: TransitionSpec, now: dt.datetime) -> None:
        if t.condition is not None and not self._holds(conn, snap, spec, rid, t.condition, now):
            raise ValidationFailed(
                f"this {spec.name} does not meet the conditions of the {t.name!r} transition",
                [{"field": "transition", "message": "the record does not meet this transition's conditions"}],
            )

    @staticmethod
    def _matches(principal: Principal, approver: ApproverSpec, target: Target) -> bool:
        if approver.supervisor:
            return target.supervisor_id is not None and target.supervisor_id == principal.user_id
        return approver.role in principal.roles

    def _decision_slots(
        self, principal: Principal, spec: EntitySpec, state: StateSpec, decision: str, target: Target, created_by: int | None,
        submitted_by: int | None, votes: Sequence[Any],
    ) -> list[int]:
        """The approver slots ``principal`` may fill with ``decision`` now (first is used);
        raises Forbidden/Conflict saying why not."""
        assert state.approval is not None
        if principal.user_id is None:
            raise Forbidden("approval decisions are made by people, not by the system")
        me = principal.user_id
        if me in {submitted_by, target.owner_id, created_by} - {None}:
            raise Forbidden(
                f"you cannot {decision} a {spec.name} you submitted, own or created: another approver must decide",
                [{"field": "approver", "message": "no self-approval"}],
            )
        slots = [i for i, a in enumerate(state.approval.approvers) if self._matches(principal, a, target)]
        if not slots:
            raise Forbidden(f"you are not an approver of the {state.name!r} step", [{"field": "approver", "message": "not an approver of this step"}])
        if decision == "reject" or state.approval.mode != "all":
            return slots
        if any(v.user_id == me and v.decision == "approve" for v in votes):
            raise Conflict("you have already approved this step; it needs another approver", [{"field": "approver", "message": "already approved"}])
        filled = {v.slot for v in votes if v.decision == "approve"}
        free = [s for s in slots if s not in filled]
        if not free:
            raise Conflict("your approver slot of this step is already approved by someone else", [{"field": "approver", "message": "slot already approved"}])
        return free

    @staticmethod
    def _comment(comment: Any, t: TransitionSpec) -> str | None:
        if comment is not None and not isinstance(comment, str):
            raise ValidationFailed("comment must be a string", [{"field": "comment", "message": "must be a string"}])
        text = (comment or "").strip()
        if len(text) > COMMENT_MAX:
            raise ValidationFailed(f"comment is longer than {COMMENT_MAX} characters", [{"field": "comment", "message": f"is longer than {COMMENT_MAX} characters"}])
        if t.comment_required and not text:
            raise ValidationFailed(f"the {t.name!r} transition needs a comment", [{"field": "comment", "message": "is required"}])
        return text or None

    # ------------------------------------------------------------------ state rows

    @staticmethod
    def _state_row(conn: Connection, flow: FlowSpec, rid: int, *, lock: bool = False) -> Any:
        fs = flow_state_table
        stmt = select(fs).where(fs.c.flow == flow.name, fs.c.record_id == rid)
        return conn.execute(stmt.with_for_update() if lock else stmt).first()

    @staticmethod
    def _votes(conn: Connection, flow: FlowSpec, rid: int, state: str, entry: int) -> list[Any]:
        v = flow_vote_table
        return list(
            conn.execute(
                select(v).where(v.c.flow == flow.name, v.c.record_id == rid, v.c.state == state, v.c.entry == entry).order_by(v.c.id)
            )
        )

    # ------------------------------------------------------------------ transitions

    def transition(
        self,
        principal: Principal,
        entity: str,
        record_id: Any,
        name: str,
        comment: Any = None,
        now: dt.datetime | None = None,
        *,
        expected_version: Any = None,
    ) -> dict[str, Any]:
        """Take transition ``name`` on the record (or cast this principal's vote on an all-of
        approval step). Returns ``{"transition": what happened, "record", "flow"}``."""
        now = now or utcnow()
        snap = self.runtime.cached_snapshot()
        spec = snap.registry.entity(entity)
        flow, t = self._find(snap, entity, name)
        self._require_roles(principal, t)
        rid = int(self.records.get(principal, entity, record_id, fields=[])["id"])  # 404 outside the reader's scope
        table = snap.tables[entity]
        f = spec.field(flow.field)
        assert f is not None
        with self.runtime.begin() as conn:
            row = conn.execute(select(table).where(table.c.id == rid, table.c.retained_at.is_(None)).with_for_update()).first()
            if row is None:
                raise NotFound(f"{entity} {rid} not found")
            if expected_version is not None and row.version != _version(expected_version):
                raise VersionConflict(
                    f"{entity} {rid} was changed by someone else (version {row.version}); reload and try again",
                    [{"field": "version", "message": f"current version is {row.version}"}],
                )
            current = self._state_value(snap, spec, flow, row._mapping)
            if current not in t.sources:
                raise Conflict(
                    f"{entity} {rid} is in state {current!r}: the {name!r} transition does not leave it",
                    [{"field": flow.field, "message": f"is {current!r}"}],
                )
            text = self._comment(comment, t)
            decision = flow.decision(current, name)
            self._require_scope(conn, principal, spec, table, rid, "approve" if decision else "update")
            self._require_condition(conn, snap, spec, rid, t, now)
            entry, submitted_by = self._current_entry(conn, flow, rid, current, row.created_at)
            (target,) = load_targets(conn, snap, entity, [rid]) or [Target(rid, None, None, None)]
            state = flow.state(current)
            assert state is not None
            vote: dict[str, Any] | None = None
            moved = True
            to = current or ""
            if decision is not None:
                votes = self._votes(conn, flow, rid, current or "", entry)
                slot = self._decision_slots(principal, spec, state, decision, target, row.created_by, submitted_by, votes)[0]
                conn.execute(
                    insert(flow_vote_table).values(
                        flow=flow.name, record_id=rid, state=current, entry=entry, slot=slot, user_id=principal.user_id,
                        decision=decision, comment=text, created_at=now,
                    )
                )
                assert state.approval is not None
                approved = {v.slot for v in votes if v.decision == "approve"} | ({slot} if decision == "approve" else set())
                pending = [i for i in range(len(state.approval.approvers)) if i not in approved]
                vote = {"decision": decision, "slot": slot, "pending": pending if decision == "approve" else []}
                if decision == "approve" and state.approval.mode == "all" and pending:
                    # one vote of an all-of step: recorded and audited, the state stays
                    audit.append(
                        conn,
                        audit.AuditEntry(
                            actor=principal.username, actor_id=principal.user_id, action="flow_vote", entity=entity, record_id=rid, ip=principal.ip,
                            detail={"flow": flow.name, "transition": name, "state": current, "decision": decision, "slot": slot, "pending": len(pending), "comment": text},
                        ),
                        now=now,
                    )
                    moved = False
            if moved:
                to = self._route(conn, snap, spec, t, rid, now)
                self._move(conn, principal, snap, spec, flow, row, current, to, entry, submitted_by, now)
                audit.append(
                    conn,
                    audit.AuditEntry(
                        actor=principal.username, actor_id=principal.user_id, action="transition", entity=entity, record_id=rid, ip=principal.ip,
                        detail={
                            "flow": flow.name, "transition": name, "from": current, "to": to, "comment": text, "version": row.version + 1,
                            "changes": {flow.field: {"from": current, "to": to}},
                        },
                    ),
                    now=now,
                )
                to_state = flow.state(to)
                assert to_state is not None
                if to_state.on_enter:
                    run_actions(conn, self.records, snap, entity, to_state.on_enter, [target], now=now, source=f"flow:{flow.name}", label=to_state.label)
                for hook in self.records.after_write:  # a state change is an update: change triggers see it
                    hook(conn, snap, entity, [rid], "update", principal)
        result = {"flow": flow.name, "transition": name, "moved": moved, "from": current, "to": to if moved else current, "vote": vote}
        return self._answer(principal, entity, rid, result, now)

    def _answer(self, principal: Principal, entity: str, rid: int, result: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        # read after commit, as the caller may see it now (an approver keeps read access)
        try:
            record: dict[str, Any] | None = self.records.get(principal, entity, rid)
            state: dict[str, Any] | None = self.available(principal, entity, rid, now)
        except NotFound:
            record = state = None
        return {"transition": result, "record": record, "flow": state}

    def _current_entry(self, conn: Connection, flow: FlowSpec, rid: int, current: str | None, created_at: dt.datetime) -> tuple[int, int | None]:
        """(entry, submitted_by) of the record's visit to ``current``; a record whose state
        was never recorded (bulk-loaded) gets its row now, as if it had been there since creation."""
        fs = flow_state_table
        known = self._state_row(conn, flow, rid, lock=True)
        if known is not None and known.state == current:
            return int(known.entry), known.submitted_by
        if known is None:
            conn.execute(insert(fs).values(flow=flow.name, record_id=rid, entity=flow.entity, state=current, entry=1, entered_at=created_at))
            return 1, None
        # the field was changed behind the flow's back (e.g. by a trigger action): a new visit
        entry = int(known.entry) + 1
        conn.execute(
            update(fs).where(fs.c.flow == flow.name, fs.c.record_id == rid).values(state=current, entry=entry, escalated_at=None, submitted_by=None)
        )
        return entry, None

    def _route(self, conn: Connection, snap: Snapshot, spec: EntitySpec, t: TransitionSpec, rid: int, now: dt.datetime) -> str:
        for route in t.routes:
            if route.when is None or self._holds(conn, snap, spec, rid, route.when, now):
                return route.state
        raise Conflict(f"no route of the {t.name!r} transition matches this {spec.name}")  # freeze makes the last route a default

    def _move(
        self, conn: Connection, principal: Principal, snap: Snapshot, spec: EntitySpec, flow: FlowSpec, row: Any, current: str | None, to: str,
        entry: int, submitted_by: int | None, now: dt.datetime,
    ) -> None:
        table = snap.tables[spec.name]
        f = spec.field(flow.field)
        assert f is not None
        v = self.records.view(Principal.system(f"flow:{flow.name}"), spec.name, snap)
        stored: dict[str, Any] = self.records._row_values(v, row.id, {f.name: to}, row.ext) if f.storage == "json" else {f.name: to}
        stored.update(version=row.version + 1, updated_at=now, updated_by=principal.user_id)
        res = conn.execute(update(table).where(table.c.id == row.id, table.c.version == row.version).values(**stored))
        if res.rowcount != 1:
            raise VersionConflict(f"{spec.name} {row.id} was changed by someone else; reload and try again")
        from_state, to_state = flow.state(current), flow.state(to)
        entering_chain = to_state is not None and to_state.approval is not None and (from_state is None or from_state.approval is None)
        fs = flow_state_table
        conn.execute(
            update(fs)
            .where(fs.c.flow == flow.name, fs.c.record_id == row.id)
            .values(
                state=to, entry=entry + 1, entered_at=now, entered_by=principal.user_id, escalated_at=None,
                submitted_by=principal.user_id if entering_chain else submitted_by,
            )
        )

    # ------------------------------------------------------------------ what may be done now

    def available(self, principal: Principal, entity: str, record_id: Any, now: dt.datetime | None = None) -> dict[str, Any]:
        """The record's flow as ``principal`` sees it: state, SLA due time, votes so far and the
        transitions this principal may take now (the buttons to show)."""
        now = now or utcnow()
        rid = int(self.records.get(principal, entity, record_id, fields=[])["id"])
        snap = self.runtime.cached_snapshot()
        spec = snap.registry.entity(entity)
        flows = self.flows(snap, entity)
        if not flows:
            raise NotFound(f"{entity} has no approval flow")
        table = snap.tables[entity]
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == rid)).first()
            if row is None:
                raise NotFound(f"{entity} {rid} not found")
            (target,) = load_targets(conn, snap, entity, [rid]) or [Target(rid, None, None, None)]
            described = [self._describe(conn, principal, snap, spec, flow, row, target, now) for flow in flows]
        out = dict(described[0])
        if len(described) > 1:
            out["flows"] = described
        return out

    def _describe(
        self, conn: Connection, principal: Principal, snap: Snapshot, spec: EntitySpec, flow: FlowSpec, row: Any, target: Target, now: dt.datetime
    ) -> dict[str, Any]:
        table = snap.tables[spec.name]
        current = self._state_value(snap, spec, flow, row._mapping)
        known = self._state_row(conn, flow, row.id)
        fresh = known is None
        if known is not None and known.state != current:
            known = None
        entry = int(known.entry) if known is not None else 1
        entered_at = known.entered_at if known is not None else (row.created_at if fresh else None)
        submitted_by = known.submitted_by if known is not None else None
        state = flow.state(current)
        votes = self._votes(conn, flow, row.id, current or "", entry) if (known is not None and state is not None and state.approval) else []
        due = entered_at + dt.timedelta(hours=state.sla_hours) if state is not None and state.sla_hours and entered_at else None
        scope_ok: dict[str, bool] = {}
        transitions = []
        for t in flow.from_state(current):
            decision = flow.decision(current, t.name)
            action = "approve" if decision else "update"
            try:
                self._require_roles(principal, t)
                if action not in scope_ok:
                    try:
                        self._require_scope(conn, principal, spec, table, row.id, action)
                        scope_ok[action] = True
                    except Forbidden:
                        scope_ok[action] = False
                if not scope_ok[action]:
                    continue
                self._require_condition(conn, snap, spec, row.id, t, now)
                if decision is not None and state is not None:
                    self._decision_slots(principal, spec, state, decision, target, row.created_by, submitted_by, votes)
            except FinCRMError:
                continue
            transitions.append(
                {"name": t.name, "label": t.label.to_dict(), "comment_required": t.comment_required, "decision": decision, "to": list(t.targets)}
            )
        approval = None
        if state is not None and state.approval is not None:
            approved = {v.slot for v in votes if v.decision == "approve"}
            approval = {**state.approval.to_dict(), "pending": [i for i in range(len(state.approval.approvers)) if i not in approved]}
        return {
            "flow": flow.name,
            "label": flow.label.to_dict(),
            "field": flow.field,
            "state": {"name": current, "label": state.label.to_dict() if state else None},
            "entered_at": _dump(entered_at),
            "sla_due": _dump(due),
            "overdue": bool(due is not None and due < now),
            "escalated_at": _dump(known.escalated_at) if known is not None else None,
            "approval": approval,
            "votes": [
                {"user_id": v.user_id, "slot": v.slot, "decision": v.decision, "comment": v.comment, "at": _dump(v.created_at)} for v in votes
            ],
            "transitions": transitions,
            "states": [{"name": s.name, "label": s.label.to_dict()} for s in flow.states],
        }

    # ------------------------------------------------------------------ the guard (after_write hook)

    def on_write(self, conn: Connection, snap: Snapshot, entity: str, ids: list[int], event: str, principal: Principal) -> None:
        """``RecordService.after_write``: record the initial state of new records, and refuse
        any write that changed a flow's field outside a transition (the write rolls back)."""
        flows = snap.automation.flows_for(entity)
        if not flows or not ids:
            return
        spec = snap.registry.entity(entity)
        table = snap.tables[entity]
        now = utcnow()
        fs = flow_state_table
        for flow in sorted(flows, key=lambda x: x.name):
            f = spec.field(flow.field)
            assert f is not None
            value = field_expr(table, f)
            rows = conn.execute(
                select(table.c.id, table.c.created_at, value.label("value"), fs.c.state.label("known"))
                .select_from(table.outerjoin(fs, and_(fs.c.record_id == table.c.id, fs.c.flow == flow.name)))
                .where(table.c.id.in_(list(ids)))
            ).all()
            if event == "create":
                self._on_create(conn, snap, spec, f, flow, rows, principal, now)
                continue
            bad = []
            new_rows = []
            for r in rows:
                if r.known is not None:
                    if r.value != r.known:
                        bad.append(r.id)
                elif self._changed_by_this_write(conn, entity, r.id, f.name):
                    bad.append(r.id)
                elif r.value is not None:  # a bulk-loaded record: its state is recorded from now on
                    new_rows.append({"flow": flow.name, "record_id": r.id, "entity": entity, "state": r.value, "entry": 1, "entered_at": r.created_at})
            if bad:
                raise _guarded(flow)
            if new_rows:
                conn.execute(insert(fs), new_rows)

    def _on_create(
        self, conn: Connection, snap: Snapshot, spec: EntitySpec, f: FieldSpec, flow: FlowSpec, rows: Sequence[Any], principal: Principal, now: dt.datetime
    ) -> None:
        table = snap.tables[spec.name]
        # people start at the initial state; system work (imports of history, seeding) may
        # load a record in any state of the flow
        allowed = {s.name for s in flow.states} if principal.is_system else {flow.initial}
        if any(r.value is not None and r.value not in allowed for r in rows):
            raise ValidationFailed(
                f"a new {spec.name} starts in {flow.initial!r}: {f.name} is changed only through the flow's transitions",
                [{"field": f.name, "message": f"starts as {flow.initial!r} and is changed only through the flow's transitions"}],
            )
        for r in rows:
            if r.value is None:  # no default and none given: the flow's initial state
                if f.storage == "column":
                    conn.execute(update(table).where(table.c.id == r.id).values({f.name: flow.initial}))
                else:
                    ext = conn.execute(select(table.c.ext).where(table.c.id == r.id)).scalar()
                    v = self.records.view(Principal.system(f"flow:{flow.name}"), spec.name, snap)
                    conn.execute(update(table).where(table.c.id == r.id).values(**self.records._row_values(v, r.id, {f.name: flow.initial}, ext)))
        states = {r.id: (r.value or flow.initial) for r in rows}
        fresh = [r for r in rows if r.known is None]
        if fresh:
            conn.execute(
                insert(flow_state_table),
                [
                    {"flow": flow.name, "record_id": r.id, "entity": spec.name, "state": states[r.id], "entry": 1, "entered_at": now, "entered_by": principal.user_id}
                    for r in fresh
                ],
            )
        if principal.is_system:
            return  # loading history notifies nobody
        state = flow.state(flow.initial)
        if state is not None and state.on_enter:
            targets = load_targets(conn, snap, spec.name, [r.id for r in fresh])
            if targets:
                run_actions(conn, self.records, snap, spec.name, state.on_enter, targets, now=now, source=f"flow:{flow.name}", label=state.label)

    @staticmethod
    def _changed_by_this_write(conn: Connection, entity: str, rid: int, field: str) -> bool:
        """For a record whose state was never recorded: the update's own audit entry (appended
        just before the hook, in this transaction, under the audit head lock) names its changes."""
        t = audit.audit_table
        detail = conn.execute(
            select(t.c.detail).where(t.c.entity == entity, t.c.record_id == rid).order_by(t.c.seq.desc()).limit(1)
        ).scalar()
        changes = detail.get("changes") if isinstance(detail, dict) else None
        return isinstance(changes, dict) and field in changes

    # ------------------------------------------------------------------ SLA escalation (jobs)

    def escalate_overdue(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """One pass: every record that has stayed in a state longer than its SLA is escalated
        once per visit — a task and a notification for the owner's supervisor (or the staff of
        a role), an audit entry. Set-wise: one claiming UPDATE per state. A second pass finds
        nothing new."""
        now = now or utcnow()
        snap = self.runtime.snapshot()
        results = []
        for flow in sorted(snap.automation.flows.values(), key=lambda x: x.name):
            sla_states = [s for s in flow.states if s.sla_hours]
            if not sla_states:
                continue
            with self.runtime.begin() as conn:
                self._backfill(conn, snap, flow)
                for state in sla_states:
                    claimed = self._claim_overdue(conn, snap, flow, state, now)
                    if claimed:
                        counts = self._escalate(conn, snap, flow, state, claimed, now)
                        results.append({"flow": flow.name, "state": state.name, "escalated": len(claimed), **counts})
        return {
            "escalated": sum(r["escalated"] for r in results),
            "tasks": sum(r["tasks"] for r in results),
            "notifications": sum(r["notifications"] for r in results),
            "steps": results,
        }

    def _backfill(self, conn: Connection, snap: Snapshot, flow: FlowSpec) -> None:
        """State rows for records loaded in bulk (imports, seeding): in their state since creation."""
        spec = snap.registry.entity(flow.entity)
        table = snap.tables[flow.entity]
        f = spec.field(flow.field)
        assert f is not None
        fs = flow_state_table
        value = field_expr(table, f)
        rows = select(
            literal(flow.name, String).label("flow"), table.c.id, literal(flow.entity, String).label("entity"), value, literal(1, Integer).label("entry"),
            table.c.created_at,
        ).where(
            table.c.retained_at.is_(None),
            value.in_([s.name for s in flow.states]),
            ~select(fs.c.record_id).where(fs.c.flow == flow.name, fs.c.record_id == table.c.id).exists(),
        )
        make = pg_insert if self.runtime.dialect == "postgresql" else sqlite_insert
        conn.execute(
            make(fs).from_select(["flow", "record_id", "entity", "state", "entry", "entered_at"], rows).on_conflict_do_nothing(index_elements=["flow", "record_id"])
        )

    def _claim_overdue(self, conn: Connection, snap: Snapshot, flow: FlowSpec, state: StateSpec, now: dt.datetime) -> list[Any]:
        assert state.sla_hours is not None
        spec = snap.registry.entity(flow.entity)
        table = snap.tables[flow.entity]
        f = spec.field(flow.field)
        assert f is not None
        fs = flow_state_table
        cutoff = now - dt.timedelta(hours=state.sla_hours)
        live = select(table.c.id).where(field_expr(table, f) == state.name, table.c.retained_at.is_(None))
        stmt = (
            update(fs)
            .where(fs.c.flow == flow.name, fs.c.state == state.name, fs.c.escalated_at.is_(None), fs.c.entered_at < cutoff, fs.c.record_id.in_(live))
            .values(escalated_at=now)
            .returning(fs.c.record_id, fs.c.entry, fs.c.entered_at)
        )
        return sorted(conn.execute(stmt).all(), key=lambda r: r.record_id)

    def _escalate(self, conn: Connection, snap: Snapshot, flow: FlowSpec, state: StateSpec, claimed: Sequence[Any], now: dt.datetime) -> dict[str, int]:
        spec = snap.registry.entity(flow.entity)
        targets = {t.record_id: t for t in load_targets(conn, snap, flow.entity, [r.record_id for r in claimed])}
        if state.escalate_role:
            recipients = self._role_recipients(conn, snap, state.escalate_role, list(targets.values()))
        else:
            recipients = {rid: [t.supervisor_id] if t.supervisor_id is not None else [] for rid, t in targets.items()}
        actor = Principal.system(f"flow:{flow.name}")
        task_spec = snap.registry.entity("task")
        due = FIELD_TYPES["datetime"].dump(now + dt.timedelta(days=1))
        tasks: list[dict[str, Any]] = []
        notes: list[dict[str, Any]] = []
        for r in claimed:
            t = targets.get(r.record_id)
            people = recipients.get(r.record_id, [])
            overdue_h = int((now - r.entered_at).total_seconds() // 3600)
            subject = f"审批超时：{flow.label.zh} · {state.label.zh}"
            where = f"{spec.label.zh} #{r.record_id}"
            body = f"{where} 已在「{state.label.zh}」停留 {overdue_h} 小时，超过时限 {state.sla_hours:g} 小时，请督办。/e/{spec.name}/{r.record_id}"
            for user_id in people:
                tasks.append(
                    {
                        k: v
                        for k, v in {
                            "title": f"{subject} · {where}"[:200],
                            "customer": t.customer_id if t else None,
                            "due_at": due,
                            "status": "open",
                            "priority": "high",
                            "owner": user_id,
                            "notes": body,
                        }.items()
                        if v is not None and task_spec.live_field(k) is not None
                    }
                )
                notes.append(
                    {
                        "channel": DEFAULT_CHANNEL, "recipient_kind": "user", "recipient_id": user_id, "subject": subject[:200], "body": body,
                        "source": f"flow:{flow.name}"[:100], "entity": flow.entity, "record_id": r.record_id, "created_at": now,
                    }
                )
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=actor.username, action="flow_escalated", entity=flow.entity, record_id=r.record_id,
                    detail={
                        "flow": flow.name, "state": state.name, "entry": r.entry, "entered_at": _dump(r.entered_at), "sla_hours": state.sla_hours,
                        "escalate": state.escalate_to, "recipients": people,
                    },
                ),
                now=now,
            )
        if tasks:
            self.records.bulk_insert(actor, "task", tasks, conn=conn, in_transaction_ids=True)
        return {"tasks": len(tasks), "notifications": enqueue_many(conn, notes)}

    def _role_recipients(self, conn: Connection, snap: Snapshot, role: str, targets: Iterable[Target]) -> dict[int, list[int]]:
        """Active staff holding ``role`` for each record: those whose branch is the owner's or
        above it, else every holder of the role (never the owner themself)."""
        if not inspect(conn).has_table("ab_user_role"):
            return {}
        holders = [
            r.id
            for r in conn.execute(
                select(ab_user_table.c.id)
                .join(_ab_user_role, _ab_user_role.c.user_id == ab_user_table.c.id)
                .join(_ab_role, _ab_role.c.id == _ab_user_role.c.role_id)
                .where(_ab_role.c.name == role, ab_user_table.c.active.is_not(False))
                .order_by(ab_user_table.c.id)
            )
        ]
        targets = list(targets)
        people = sorted(set(holders) | {t.owner_id for t in targets if t.owner_id is not None})
        s = staff_table
        branch_of = {r.user_id: r.branch_id for r in conn.execute(select(s.c.user_id, s.c.branch_id).where(s.c.user_id.in_(people)))} if people else {}
        parents = self._branch_parents(conn, snap)
        out: dict[int, list[int]] = {}
        for t in targets:
            line = _ancestry(branch_of.get(t.owner_id) if t.owner_id is not None else None, parents)
            near = [u for u in holders if branch_of.get(u) in line and u != t.owner_id]
            out[t.record_id] = near or [u for u in holders if u != t.owner_id]
        return out

    @staticmethod
    def _branch_parents(conn: Connection, snap: Snapshot) -> dict[int, int | None]:
        if "branch" not in snap.tables or snap.registry.entity("branch").live_field("parent") is None:
            return {}
        b = snap.tables["branch"]
        return {r.id: r.parent for r in conn.execute(select(b.c.id, b.c.parent))}


def _ancestry(branch: int | None, parents: Mapping[int, int | None]) -> set[int]:
    """``branch`` and every branch above it."""
    line: set[int] = set()
    while branch is not None and branch not in line:
        line.add(branch)
        branch = parents.get(branch)
    return line


def _guarded(flow: FlowSpec) -> ValidationFailed:
    return ValidationFailed(
        f"{flow.field} is changed only through the flow's transitions ({flow.label.en})",
        [{"field": flow.field, "message": "is changed only through the flow's transitions"}],
    )


def _version(value: Any) -> int:
    try:
        return int(str(value).strip().strip('"').removeprefix("W/").strip('"'))
    except (TypeError, ValueError):
        raise BadRequest("version must be an integer", [{"field": "version", "message": "must be an integer"}]) from None
