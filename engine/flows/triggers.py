"""Trigger evaluation: one set-wise SQL statement per trigger claims every record that meets
the condition in this cycle, then the actions run for exactly the claimed records.

The claim is ``INSERT INTO fincrm_trigger_fire (trigger, record_id, cycle_key, …) SELECT …
FROM <entity> LEFT JOIN <aggregates> WHERE <condition> ON CONFLICT DO NOTHING``: the condition
is evaluated by the database over the whole table (a million customers is normal), and the
primary key makes a firing happen once per record per cycle, whichever worker gets there
first. Claim and actions share one transaction, so a failed action un-claims its records and
the next pass tries again; a concurrent worker blocks on the uncommitted claims and then skips
them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Sequence

from sqlalchemy import Connection, String, cast, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from .. import metrics
from ..errors import NotFound
from ..runtime import Runtime, Snapshot, utcnow
from ..security import audit
from ..security.consent import consent_clause
from ..security.principal import Principal
from ..store.query import field_expr
from .actions import run_actions, targets_query, Target
from .conditions import compiled_condition
from .spec import TriggerSpec, customer_field
from .tables import trigger_fire_table

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = ["TriggerEngine"]

log = logging.getLogger("fincrm.triggers")


class TriggerEngine:
    def __init__(self, runtime: Runtime, records: "RecordService") -> None:
        self.runtime = runtime
        self.records = records

    # ------------------------------------------------------------------ SQL

    def matching(self, snap: Snapshot, trig: TriggerSpec, now: dt.datetime, ids: Sequence[int] | None = None) -> Any:
        """SELECT id, cycle_key of the records meeting ``trig``'s condition at ``now`` (not yet
        excluding earlier firings): the statement the claim inserts from."""
        spec = snap.registry.entity(trig.entity)
        base = snap.tables[trig.entity]
        cond, joins = compiled_condition(
            snap, spec, trig.condition, dialect=self.runtime.dialect, blind_index=self.records.blind_index_for, now=now
        )
        where: list[ColumnElement[bool]] = [base.c.retained_at.is_(None), cond]
        if trig.consent:
            cf = customer_field(spec)
            assert cf is not None  # checked when the trigger was frozen
            customer = base.c.id if cf == "id" else field_expr(base, spec.field(cf))  # type: ignore[arg-type]
            where.append(consent_clause(snap, customer, trig.consent, now))
        if ids is not None:
            where.append(base.c.id.in_(list(ids)))
        key: ColumnElement[Any] = literal(trig.cycle_period(now), String)
        if trig.cycle_field:
            f = spec.field(trig.cycle_field)
            assert f is not None
            key = key + literal(":", String) + func.coalesce(cast(field_expr(base, f), String), literal("", String))
        return select(base.c.id.label("record_id"), func.substr(key, 1, 64).label("cycle_key")).select_from(joins.from_clause()).where(*where)

    def _claim(self, conn: Connection, snap: Snapshot, trig: TriggerSpec, now: dt.datetime, run_id: str, ids: Sequence[int] | None) -> int:
        src = self.matching(snap, trig, now, ids).subquery("m")
        f = trigger_fire_table
        rows = select(
            literal(trig.name, String).label("trigger"), src.c.record_id, src.c.cycle_key, literal(run_id, String).label("run_id"), literal(now).label("fired_at")
        ).where(literal(True))  # SQLite: INSERT … SELECT … ON CONFLICT needs a WHERE to parse
        make = pg_insert if self.runtime.dialect == "postgresql" else sqlite_insert
        stmt = make(f).from_select(["trigger", "record_id", "cycle_key", "run_id", "fired_at"], rows).on_conflict_do_nothing(
            index_elements=["trigger", "record_id", "cycle_key"]
        )
        conn.execute(stmt)
        # (rowcount of INSERT … SELECT … ON CONFLICT is not reported by every driver: count the claims)
        return int(conn.execute(select(func.count()).select_from(f).where(f.c.run_id == run_id)).scalar_one())

    def _claimed_targets(self, conn: Connection, snap: Snapshot, trig: TriggerSpec, run_id: str) -> list[Target]:
        f = trigger_fire_table
        base = snap.tables[trig.entity]
        stmt = targets_query(snap, trig.entity).where(
            base.c.id.in_(select(f.c.record_id).where(f.c.run_id == run_id, f.c.trigger == trig.name))
        ).order_by(base.c.id)
        return [Target(r.record_id, r.owner_id, r.supervisor_id, r.customer_id) for r in conn.execute(stmt)]

    # ------------------------------------------------------------------ running

    def fire(self, conn: Connection, snap: Snapshot, trig: TriggerSpec, now: dt.datetime, ids: Sequence[int] | None = None) -> dict[str, Any]:
        """Claim and act inside ``conn``'s transaction; returns what happened."""
        started = time.perf_counter()
        run_id = uuid.uuid4().hex
        claimed = self._claim(conn, snap, trig, now, run_id, ids)
        counts: dict[str, int] = {}
        if claimed:
            targets = self._claimed_targets(conn, snap, trig, run_id)
            counts = run_actions(
                conn, self.records, snap, trig.entity, trig.actions, targets, now=now, source=f"trigger:{trig.name}", label=trig.label
            )
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=f"system:trigger:{trig.name}",
                    action="trigger_fired",
                    entity=trig.entity,
                    detail={"trigger": trig.name, "records": claimed, "actions": counts, "run_id": run_id, "first_ids": [t.record_id for t in targets[:20]]},
                ),
            )
        metrics.count_trigger_firing(trig.name, claimed)
        return {"trigger": trig.name, "fired": claimed, "actions": counts, "seconds": round(time.perf_counter() - started, 3)}

    def run(self, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
        """One pass of one trigger, in its own transaction."""
        now = now or utcnow()
        snap = self.runtime.snapshot()
        trig = snap.automation.triggers.get(name)
        if trig is None:
            raise NotFound(f"unknown trigger {name!r}")
        with self.runtime.begin() as conn:
            result = self.fire(conn, snap, trig, now)
        log.info("trigger %s fired for %d records in %.3fs", name, result["fired"], result["seconds"])
        return result

    def run_scheduled(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """One pass of every enabled scheduled trigger; each in its own transaction, so one
        failing trigger does not hold back the others (its error is reported)."""
        now = now or utcnow()
        snap = self.runtime.snapshot()
        results: list[dict[str, Any]] = []
        failed = 0
        for trig in sorted(snap.automation.triggers.values(), key=lambda t: t.name):
            if trig.on != "schedule" or not trig.enabled:
                continue
            try:
                results.append(self.run(trig.name, now))
            except Exception as exc:  # reported and counted; the pass goes on
                failed += 1
                log.exception("trigger %s failed", trig.name)
                results.append({"trigger": trig.name, "error": type(exc).__name__, "message": str(exc)[:300]})
        return {"triggers": results, "fired": sum(r.get("fired", 0) for r in results), "failed": failed}

    def count(self, name: str, now: dt.datetime | None = None) -> int:
        """How many records meet the trigger's condition now (a dry run: nothing is claimed)."""
        now = now or utcnow()
        snap = self.runtime.snapshot()
        trig = snap.automation.triggers.get(name)
        if trig is None:
            raise NotFound(f"unknown trigger {name!r}")
        sub = self.matching(snap, trig, now).subquery()
        with self.runtime.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())

    # ------------------------------------------------------------------ on change

    def on_change(self, conn: Connection, snap: Snapshot, entity: str, ids: list[int], event: str, principal: Principal) -> None:
        """``RecordService.after_write`` hook: change triggers of ``entity`` for these records,
        in the writer's transaction (the firing commits or rolls back with the change)."""
        for trig in snap.automation.triggers_for(entity, "change"):
            if event in trig.events:
                self.fire(conn, snap, trig, utcnow(), ids)

    def install(self) -> "TriggerEngine":
        if self.on_change not in self.records.after_write:
            self.records.after_write.append(self.on_change)
        return self
