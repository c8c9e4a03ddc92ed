"""Automation: approval flows, triggers, tasks and SLA escalation, the outbox and the jobs
that run them. Everything here is driven by ``flow`` and ``trigger`` metadata and executed as
SQL in the database; nothing in this package knows about Flask."""
