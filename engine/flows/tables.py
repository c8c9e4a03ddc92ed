"""System tables of the automation layer: trigger firings, flow state and votes, the outbox,
plugin actions' deliveries.

They live in the engine's system metadata, so ``Runtime.init_schema`` creates them with the
rest. Idempotency is a database fact, not a Python check: a trigger fires once per record per
cycle because ``(trigger, record_id, cycle_key)`` is a primary key that concurrent workers
claim with ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text

from ..sqltypes import JsonDoc
from ..store.tables import system_metadata

__all__ = ["trigger_fire_table", "flow_state_table", "flow_vote_table", "outbox_table", "action_queue_table", "job_run_table"]

# One row per (trigger, record, cycle): the claim that makes a firing happen exactly once.
trigger_fire_table = Table(
    "fincrm_trigger_fire",
    system_metadata,
    Column("trigger", String(63), primary_key=True),
    Column("record_id", BigInteger, primary_key=True),
    Column("cycle_key", String(64), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("fired_at", DateTime, nullable=False),
    Index("ix_fincrm_trigger_fire_run", "run_id"),
)

# Where each record stands in its approval flow: the state it entered, when, by whom, and
# whether its SLA escalation has been done for this entry. ``entry`` counts entries, so votes
# and escalations belong to one visit of a state.
flow_state_table = Table(
    "fincrm_flow_state",
    system_metadata,
    Column("flow", String(63), primary_key=True),
    Column("record_id", BigInteger, primary_key=True),
    Column("entity", String(63), nullable=False),
    Column("state", String(63), nullable=False),
    Column("entry", Integer, nullable=False, default=1),
    Column("entered_at", DateTime, nullable=False),
    Column("entered_by", Integer),
    Column("submitted_by", Integer),
    Column("escalated_at", DateTime),
    Index("ix_fincrm_flow_state_due", "flow", "state", "entered_at"),
)

# Approval votes of one entry of one approval state; an all-of step needs one per approver slot.
flow_vote_table = Table(
    "fincrm_flow_vote",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("flow", String(63), nullable=False),
    Column("record_id", BigInteger, nullable=False),
    Column("state", String(63), nullable=False),
    Column("entry", Integer, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("comment", Text),
    Column("created_at", DateTime, nullable=False),
    Index("ix_fincrm_flow_vote_entry", "flow", "record_id", "state", "entry"),
)

# Notifications waiting to go out (or kept and shown, the default channel). Recipients are
# references (a staff user id or a customer record id), never addresses: a channel resolves the
# address when it sends, so no mobile number or e-mail is copied into this table.
outbox_table = Table(
    "fincrm_outbox",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),
    Column("recipient_kind", String(16), nullable=False),  # user | customer
    Column("recipient_id", BigInteger, nullable=False),
    Column("subject", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("source", String(100)),  # trigger:<name> | flow:<name> | task reminder …
    Column("entity", String(63)),
    Column("record_id", BigInteger),
    Column("status", String(16), nullable=False, default="pending"),  # pending | sent | shown | failed | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(500)),
    Column("created_at", DateTime, nullable=False),
    Column("next_attempt_at", DateTime),
    Column("sent_at", DateTime),
    Column("read_at", DateTime),
    Index("ix_fincrm_outbox_due", "status", "next_attempt_at"),
    Index("ix_fincrm_outbox_recipient", "recipient_kind", "recipient_id", "id"),
)

# What plugin actions (engine.plugins.TriggerAction) queued inside a trigger's or flow's
# transaction, sent after the commit by the jobs pass (engine.flows.actions.deliver_actions).
# A delivery holds what the plugin's run() returned: record ids and names, never personal data.
action_queue_table = Table(
    "fincrm_action_queue",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),
    Column("source", String(100), nullable=False),  # trigger:<name> | flow:<name>
    Column("entity", String(63), nullable=False),
    Column("records", Integer, nullable=False),  # how many records the firing covered
    Column("delivery", JsonDoc, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending | sending | sent | dead
    Column("attempts", Integer, nullable=False, default=0),  # delivery passes that tried it
    Column("last_error", String(500)),
    Column("dead_letter_id", BigInteger),  # the interface dead letter it ended in
    Column("created_at", DateTime, nullable=False),
    Column("next_attempt_at", DateTime),
    Column("sent_at", DateTime),
    Index("ix_fincrm_action_queue_due", "status", "next_attempt_at"),
)

# One row per job pass (trigger runs, SLA checks, deliveries): what ran, when, what it did.
job_run_table = Table(
    "fincrm_job_run",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(100), nullable=False),
    Column("worker", String(100)),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),  # running | ok | failed
    Column("detail", JsonDoc),
    Index("ix_fincrm_job_run_job", "job", "id"),
)
