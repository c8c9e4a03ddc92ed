"""Prometheus metrics: the metric objects, the helpers engine code counts with, and the text a
scrape returns. No Flask here: jobs, imports, triggers and the outbox count through this module
wherever they run (a gunicorn worker, ``fincrm worker``, Celery, the CLI).

Several processes, one set of numbers. Under gunicorn each worker counts in its own memory, and
a scrape reaches one worker only. With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client's
multiprocess mode keeps every process's values in memory-mapped files in that directory and a
scrape adds them up across workers. The mode is chosen once per process, when prometheus-client
is first imported, so the variable must be set before that: this module imports it only when
the first metric is built (:func:`metric_set`), and ``fincrm serve`` sets the variable, empties
the directory (:func:`prepare_multiprocess_dir`) and marks dead workers
(:func:`mark_worker_dead`) before and while it forks workers.

Values read at scrape time (the audit chain's length, the last run of each job, the database
pools' sizes) come from :class:`ScrapeCollector`; they are read by the worker that answers the
scrape, from the database, so they cover every process on every host.

Labels never carry a record id, a value or a concrete path: routes are URL rule templates
(``/api/v1/records/<entity>/<record_id>``), entities, jobs, triggers and channels are names from
metadata or code.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import Engine, event, select
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

__all__ = [
    "metric_set",
    "MetricSet",
    "count_request",
    "count_job",
    "count_import_rows",
    "count_trigger_firing",
    "count_delivery",
    "count_read_route",
    "watch_pool",
    "EngineState",
    "read_engine_state",
    "ScrapeCollector",
    "exposition",
    "multiprocess_dir",
    "multiprocess_problem",
    "prepare_multiprocess_dir",
    "mark_worker_dead",
    "HTTP_METHODS",
    "UNMATCHED_ROUTE",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"  # a 404 or 405 that matched no URL rule: never the path itself
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0)
IMPORT_OUTCOMES = {"inserted": "inserted", "updated": "updated", "skipped": "skipped", "errors": "error"}


@dataclass(frozen=True)
class MetricSet:
    """The process's metric objects (one set per process, built by :func:`metric_set`)."""

    registry: "CollectorRegistry"
    requests: "Counter"
    request_seconds: "Histogram"
    job_runs: "Counter"
    job_seconds: "Histogram"
    import_rows: "Counter"
    trigger_firings: "Counter"
    outbox_deliveries: "Counter"
    pool_checked_out: "Gauge"
    read_routes: "Counter"
    # (method, route, status) → the two label children: labels() costs more than the count
    request_children: dict[tuple[str, str, str], tuple[Any, Any]] = field(default_factory=dict)


_lock = threading.Lock()
_metrics: MetricSet | None = None


def metric_set() -> MetricSet:
    """This process's metrics, built (and prometheus-client imported) on first use."""
    global _metrics
    built = _metrics
    if built is not None:
        return built
    with _lock:
        if _metrics is None:
            _metrics = _build()
        return _metrics


def _build() -> MetricSet:
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)  # values live in files there from the first metric on
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import disable_created_metrics, gc_collector, platform_collector, process_collector

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: Prometheus does not need them and they double the output
    registry = CollectorRegistry()
    if multiprocess_dir() is None:
        # per-process facts; in multiprocess mode they would describe only the scraped worker
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
    return MetricSet(
        registry=registry,
        requests=Counter(
            "fincrm_http_requests", "HTTP requests answered, by method, URL rule template and status",
            ["method", "route", "status"], registry=registry,
        ),
        request_seconds=Histogram(
            "fincrm_http_request_duration_seconds", "Time from the first before-request hook to the response, by method, route template and status",
            ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=registry,
        ),
        job_runs=Counter("fincrm_job_runs", "Background job runs by job and status (ok or failed)", ["job", "status"], registry=registry),
        job_seconds=Histogram("fincrm_job_duration_seconds", "Background job run time by job", ["job"], buckets=JOB_BUCKETS, registry=registry),
        import_rows=Counter(
            "fincrm_import_rows", "Rows of finished imports by entity and outcome (inserted, updated, skipped, error); dry runs are not counted",
            ["entity", "outcome"], registry=registry,
        ),
        trigger_firings=Counter(
            "fincrm_trigger_firings", "Records a trigger fired for (one per record and cycle), by trigger", ["trigger"], registry=registry
        ),
        outbox_deliveries=Counter(
            "fincrm_outbox_deliveries", "Outbox messages settled by channel and outcome (shown, sent, failed, dead)",
            ["channel", "outcome"], registry=registry,
        ),
        pool_checked_out=Gauge(
            "fincrm_db_pool_checked_out", "Database connections checked out of each pool (summed over live processes)",
            ["pool"], registry=registry, multiprocess_mode="livesum",
        ),
        read_routes=Counter(
            "fincrm_db_read_routes", "Requests whose reads were routed, by target (primary, replica1, replica2…)", ["target"], registry=registry
        ),
    )


# ---------------------------------------------------------------------------------- counting


def count_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """One answered HTTP request. ``route`` is the URL rule template (None: no rule matched)."""
    m = metric_set()
    key = (method if method in HTTP_METHODS else "other", route or UNMATCHED_ROUTE, str(status))
    children = m.request_children.get(key)
    if children is None:
        children = (m.requests.labels(*key), m.request_seconds.labels(*key))
        m.request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def count_job(job: str, status: str, seconds: float) -> None:
    """One finished run of a background job (``status``: ok or failed)."""
    m = metric_set()
    m.job_runs.labels(job, status).inc()
    m.job_seconds.labels(job).observe(seconds)


def count_import_rows(entity: str, counts: Mapping[str, int], *, dry_run: bool = False) -> None:
    """The rows of one finished import, from its counts (inserted, updated, skipped, errors).
    A dry run imports nothing and counts nothing."""
    if dry_run:
        return
    m = metric_set()
    for key, outcome in IMPORT_OUTCOMES.items():
        m.import_rows.labels(entity, outcome).inc(int(counts.get(key) or 0))


def count_trigger_firing(trigger: str, records: int) -> None:
    if records:
        metric_set().trigger_firings.labels(trigger).inc(records)


def count_delivery(channel: str, outcome: str, n: int = 1) -> None:
    if n:
        metric_set().outbox_deliveries.labels(channel, outcome).inc(n)


def count_read_route(target: str) -> None:
    """A routed request's reads went to ``target``: ``primary`` or ``replica<N>`` (its position
    in FINCRM_DATABASE_REPLICA_URLS, from 1; never a host name)."""
    metric_set().read_routes.labels(target).inc()


def watch_pool(engine: Engine, name: str) -> None:
    """Count ``engine``'s checked-out connections under ``pool=name``, live, in every process.

    Events rather than a look at the pool at scrape time: a scrape reaches one worker, and
    ``pool.checkedout()`` there says nothing of the others (nor of a connection held by a long
    request in a sync worker, which answers no scrape meanwhile). The listeners survive
    ``dispose()`` (SQLAlchemy recreates the pool with the same listeners)."""
    gauge = metric_set().pool_checked_out.labels(name)
    if getattr(engine, "_fincrm_watched", None) == name:
        return

    def _out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        gauge.inc()

    def _in(dbapi_conn: Any, record: Any) -> None:
        gauge.dec()

    event.listen(engine, "checkout", _out)
    event.listen(engine, "checkin", _in)
    setattr(engine, "_fincrm_watched", name)


# ---------------------------------------------------------------------------------- scrape time


@dataclass(frozen=True)
class EngineState:
    """What a scrape reads from the database: the audit chain's length and each job's last
    finished run (its status and end time, as seconds since the epoch)."""

    audit_chain_length: int | None
    last_runs: Mapping[str, tuple[str, float]]


def read_engine_state(engine: Engine, jobs: Sequence[str]) -> EngineState:
    """A handful of primary-key and index reads; no scan grows with the tables."""
    from .flows.tables import job_run_table as j
    from .security.audit import audit_head_table as h

    with engine.connect() as conn:
        seq = conn.execute(select(h.c.seq).where(h.c.id == 1)).scalar()
        last: dict[str, tuple[str, float]] = {}
        for job in jobs:
            row = conn.execute(
                select(j.c.status, j.c.finished_at).where(j.c.job == job, j.c.finished_at.is_not(None)).order_by(j.c.id.desc()).limit(1)
            ).first()
            if row is not None:
                # naive UTC in the table (engine.runtime.utcnow)
                last[job] = (str(row.status), row.finished_at.replace(tzinfo=dt.timezone.utc).timestamp())
    return EngineState(None if seq is None else int(seq), last)


class ScrapeCollector:
    """Gauges computed when scraped: from an :class:`EngineState` (None when the database did
    not answer in time: those gauges are left out and ``fincrm_scrape_database_ok`` is 0), the
    sizes of the named pools and which read replicas the scraping process skips."""

    def __init__(self, state: EngineState | None, pools: Mapping[str, Engine], replicas_skipped: Mapping[str, bool] | None = None) -> None:
        self.state = state
        self.pools = pools
        self.replicas_skipped = replicas_skipped or {}

    def collect(self) -> Iterator["Metric"]:
        from prometheus_client.core import GaugeMetricFamily

        ok = GaugeMetricFamily("fincrm_scrape_database_ok", "1 when this scrape could read the database-derived gauges in time")
        ok.add_metric([], 0.0 if self.state is None else 1.0)
        yield ok
        if self.state is not None:
            if self.state.audit_chain_length is not None:
                chain = GaugeMetricFamily("fincrm_audit_chain_length", "Entries in the hash-chained audit trail (the head's sequence number)")
                chain.add_metric([], float(self.state.audit_chain_length))
                yield chain
            runs = GaugeMetricFamily(
                "fincrm_job_last_run_timestamp_seconds", "When each job's most recent run finished, labelled with its status (any worker, any host)",
                labels=["job", "status"],
            )
            for job, (status, finished) in sorted(self.state.last_runs.items()):
                runs.add_metric([job, status], finished)
            yield runs
        sizes = GaugeMetricFamily("fincrm_db_pool_size", "Configured connections kept by each pool, per process", labels=["pool"])
        for name, engine in sorted(self.pools.items()):
            pool = engine.pool
            if isinstance(pool, QueuePool):
                sizes.add_metric([name], float(pool.size()))
        yield sizes
        if self.replicas_skipped:
            skipped = GaugeMetricFamily(
                "fincrm_replica_skipped", "1 while this process skips a read replica after a failure (its reads go to the primary)", labels=["replica"]
            )
            for name, down in sorted(self.replicas_skipped.items()):
                skipped.add_metric([name], 1.0 if down else 0.0)
            yield skipped


class _InProcess:
    """This process's own registry, as one collector of a scrape's registry."""

    def __init__(self, registry: "CollectorRegistry") -> None:
        self.registry = registry

    def collect(self) -> Iterable["Metric"]:
        return self.registry.collect()


def exposition(extra: Sequence["Collector"] = ()) -> tuple[bytes, str]:
    """The text a scrape returns, and its content type: every process's values in multiprocess
    mode (read from the directory's files), else this process's; plus ``extra`` collectors."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    m = metric_set()
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_InProcess(m.registry))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------------- several processes


def multiprocess_dir() -> str | None:
    """The shared directory when this process counts in multiprocess mode, else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path or multiprocess_problem() is not None:
        return None
    return path


def multiprocess_problem() -> str | None:
    """Why ``PROMETHEUS_MULTIPROC_DIR`` is set but this process cannot use it (None: no problem)."""
    import sys

    if not os.environ.get(MULTIPROC_ENV):
        return None
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        return (
            f"{MULTIPROC_ENV} was set after prometheus_client was imported: this process counts in its own memory "
            "and /metrics shows only the worker that answers; set it before the app is imported (fincrm serve does)"
        )
    return None


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> Path:
    """Create the directory and remove the files of earlier runs (their live gauges would be
    counted as if their processes still ran). Call once in the server's master process,
    before any worker starts and before the app is built."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def mark_worker_dead(pid: int) -> None:
    """A worker exited: drop its live gauges (its counters stay in the totals). gunicorn's
    ``child_exit`` hook calls this."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

