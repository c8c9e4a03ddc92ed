"""Read routing for the web layer: which requests may read from a replica, and read-your-writes.

With ``FINCRM_DATABASE_REPLICA_URLS`` set, every request gets a route (``engine.runtime.ReadRoute``,
kept in ``g``: a streamed export reads after the view has returned and still finds it).
The read-only endpoints below — record lists and gets, history, related records, exports,
reports, analytics, search, audit reads — may be answered by a replica; everything else reads
the primary, so read-modify-write paths (a PATCH reads the record first) never act on a lagging
copy. When a request wrote, its user's write position is stored on the primary after it
(``Runtime.remember_write``), and that user's later reads — in any worker — go to a replica only
once it has replayed that far. The rules themselves live in ``engine.runtime``.
"""

from __future__ import annotations

import logging

from flask import Flask, g, has_app_context, request
from sqlalchemy.exc import SQLAlchemyError

from ..runtime import ReadRoute, Runtime

__all__ = ["REPLICA_READS", "register_replica_routing"]

log = logging.getLogger("fincrm.replica")

# endpoints that only read (a write inside one, e.g. an export's audit entry, still goes to the
# primary, and the reads after it in that request too)
REPLICA_READS = frozenset(
    {
        "fincrm_api.list_records",
        "fincrm_api.query_records",
        "fincrm_api.get_record",
        "fincrm_api.record_history",
        "fincrm_api.related_records",
        "fincrm_api.list_tags",
        "fincrm_api.export_records",
        "fincrm_api.report_run",
        "fincrm_api.analytics_rfm",
        "fincrm_api.analytics_churn",
        "fincrm_api.analytics_cross_sell",
        "fincrm_api.analytics_cross_sell_targets",
        "fincrm_api.analytics_channels",
        "fincrm_api.analytics_kpis",
        "fincrm_api.analytics_nps",
        "fincrm_api.insight_keywords",
        "fincrm_api.kb_search",
        "fincrm_api.audit_list",
        "fincrm_api.audit_verify",
        "fincrm_api.quality_report",
        "fincrm_api.quality_duplicates",
        "RecordPages.list",
        "RecordPages.detail",
        "Customer360Pages.customer",
        "InsightPages.dashboard",
        "InsightPages.report",
    }
)


def _current_route() -> ReadRoute | None:
    return g.get("fincrm_read_route") if has_app_context() else None


def _caller() -> int | None:
    principal = g.get("fincrm_principal")
    return None if principal is None else int(principal.user_id)


def register_replica_routing(app: Flask) -> None:
    """Route eligible reads to the configured replicas (nothing to do without any)."""
    settings = app.config["FINCRM_SETTINGS"]
    if not settings.replica_urls:
        return
    runtime: Runtime = app.extensions["fincrm"].runtime
    runtime.use_replicas(settings.replica_urls, max_lag=settings.replica_max_lag)
    runtime.route_source(_current_route)

    @app.before_request
    def _route_reads() -> None:
        g.fincrm_read_route = ReadRoute(_caller, request.endpoint in REPLICA_READS)

    @app.teardown_request
    def _remember_writes(_exc: BaseException | None) -> None:
        # Flask runs teardown after the view and, for a streamed response, again after the
        # stream (an export writes its audit entry at the end): record each write once
        route = _current_route()
        if route is None or not route.unrecorded:
            return
        route.unrecorded = False
        user_id = _caller()
        if user_id is None:
            return
        try:
            runtime.remember_write(user_id)
        except SQLAlchemyError as exc:
            # the write itself is committed; only this user's next reads may lag for a moment
            log.error("could not record the write position of user %s (%s): their next reads may miss this write on a replica", user_id, type(exc).__name__)
