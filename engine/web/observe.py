"""Health, readiness, Prometheus metrics and the access log of every request.

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process answers; touches nothing else.
- ``GET /readyz``: 200 when the database answers a trivial SELECT, the master key encrypts and
  decrypts a probe and a metadata snapshot is loaded; else 503 naming the failed checks (by
  check name and error class only: no message, URL, host or key reaches the client).
- ``GET /metrics``: Prometheus text exposition (:mod:`engine.metrics`), from loopback (with no
  forwarding header: a reverse proxy on the same host must not open it to the world) or with
  ``Authorization: Bearer <FINCRM_METRICS_TOKEN>``; otherwise 401 (a token is configured) or 403.

None of them needs a login: load balancers and Prometheus call them.

Every request gets an id (a sane incoming ``X-Request-ID``, else a new one), echoed in the
``X-Request-ID`` response header and carried by every log line written while it runs; when it
is answered it is counted (method, URL rule template, status, duration) and one ``fincrm.access``
line is logged (at DEBUG for successful probes and scrapes, which would drown the rest).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Mapping

from flask import Blueprint, Flask, Response, current_app, g, json, request
from sqlalchemy import Engine, literal, select

from .. import metrics
from ..flows.jobs import JOBS
from ..runtime import Runtime
from .errors import error_response
from .logs import PLAIN, configure_logging, install_log_redaction, is_plain, log_format, request_user, sane_request_id

__all__ = ["register_observability", "observe", "CHECK_TIMEOUT", "QUIET_ROUTES"]

log = logging.getLogger("fincrm.observe")
access_log = logging.getLogger("fincrm.access")

CHECK_TIMEOUT = 2.0  # seconds a readiness or scrape-time database read may take
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_FORWARDED = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
_KEY_PROBE = "fincrm-readiness-probe"
_KEY_AAD = b"fincrm.readyz#0"

observe = Blueprint("fincrm_observe", __name__)


class _OneAtATime:
    """Runs a blocking call in a daemon thread and waits at most ``timeout`` for it. A caller
    arriving while the previous call of the same name still runs waits on that one instead of
    starting another, so a database that stopped answering ties up one thread, not one per
    probe (and never a worker beyond the timeout)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Thread, dict[str, Any]]] = {}

    def call(self, name: str, fn: Callable[[], Any], timeout: float) -> Any:
        with self._lock:
            current = self._running.get(name)
            if current is None or not current[0].is_alive():
                box: dict[str, Any] = {}

                def run() -> None:
                    try:
                        box["value"] = fn()
                    except BaseException as exc:  # handed to the waiting caller below
                        box["error"] = exc

                thread = threading.Thread(target=run, name=f"fincrm-{name}", daemon=True)
                current = (thread, box)
                self._running[name] = current
                thread.start()
        thread, box = current
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"no answer within {timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box.get("value")


_calls = _OneAtATime()
_last_failed: dict[str, bool] = {}


def _runtime() -> Runtime:
    return current_app.extensions["fincrm"].runtime  # type: ignore[no-any-return]


# ------------------------------------------------------------------ health and readiness


@observe.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"}, 200)


@observe.get("/readyz")
def readyz() -> Response:
    runtime = _runtime()
    checks: dict[str, dict[str, Any]] = {"master_key": _check("master_key", lambda: _key_roundtrip(runtime))}
    try:
        checks.update(_calls.call("readiness", lambda: _database_checks(runtime), CHECK_TIMEOUT))
    except TimeoutError:
        checks["database"] = _failed("database", f"TimeoutError (no answer within {CHECK_TIMEOUT:g}s)")
        checks["metadata"] = {"ok": False, "error": "not checked: waiting on the database"}
    failed = sorted(name for name, c in checks.items() if not c["ok"])
    body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
    return _json(body, 503 if failed else 200)


def _database_checks(runtime: Runtime) -> dict[str, dict[str, Any]]:
    # the primary (reads outside replica routing) and the write pool; replicas are optional
    # (reads fall back to the primary) and reported, not checked, here
    engines = {"reads": runtime.primary_engine, "writes": runtime.write_engine}
    distinct: dict[str, Engine] = {}
    for role, engine in engines.items():
        if all(str(engine.url) != str(other.url) for other in distinct.values()):
            distinct[role] = engine
    checks = {
        "database": _check("database", lambda: _select_one(distinct)),
        "metadata": _check("metadata", lambda: {"version": runtime.cached_snapshot().version}),
    }
    if checks["database"]["ok"]:
        checks["stored_data_key"] = _check("stored_data_key", lambda: _stored_key(runtime))
    if runtime.replicas:
        routes = runtime.read_routes()["replicas"]
        # counts only: a replica's name holds its host and user
        checks["database"]["replicas"] = {"configured": len(routes), "skipped": sum(1 for r in routes if r["skipped"])}
    return checks


def _select_one(engines: Mapping[str, Engine]) -> dict[str, Any]:
    for engine in engines.values():
        with engine.connect() as conn:
            conn.execute(select(literal(1))).scalar_one()
    return {}


_STORED_KEY_OK: dict[int, float] = {}  # metadata version → when stored data last decrypted
STORED_KEY_RECHECK = 300.0  # seconds a success is trusted


def _stored_key(runtime: Runtime) -> dict[str, Any]:
    """The loaded keys open what is stored: the newest value of every encrypted column is
    decrypted (a wrong or missing master key passes the round trip but fails here, so the
    instance is not put in service to answer every customer read with a 500)."""
    from ..security.crypto import aad_for
    from ..security.rotation import encrypted_columns

    snap = runtime.cached_snapshot()
    checked_at = _STORED_KEY_OK.get(snap.version)
    if checked_at is not None and time.monotonic() - checked_at < STORED_KEY_RECHECK:
        return {"cached": True}
    sampled = 0
    with runtime.primary_engine.connect() as conn:
        for _entity, t, field, col in encrypted_columns(snap):
            row = conn.execute(select(t.c.id, col).where(col.is_not(None)).order_by(t.c.id.desc()).limit(1)).first()
            if row is not None:
                runtime.keyring.decrypt(row[1], aad_for(t.name, field, row[0]))
                sampled += 1
    _STORED_KEY_OK.clear()
    _STORED_KEY_OK[snap.version] = time.monotonic()
    return {"sampled": sampled}


def _key_roundtrip(runtime: Runtime) -> dict[str, Any]:
    keyring = runtime.keyring
    if keyring.decrypt(keyring.encrypt(_KEY_PROBE, _KEY_AAD), _KEY_AAD) != _KEY_PROBE:
        raise ValueError("the keyring decrypted its probe to something else")
    return {}


def _check(name: str, fn: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        extra = dict(fn())
    except Exception as exc:  # a failed check is the answer: 503 names it, the log keeps the detail
        return _failed(name, type(exc).__name__, exc)
    if _last_failed.pop(name, False):
        log.info("readiness: %s is back", name)
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1), **extra}


def _failed(name: str, error: str, exc: BaseException | None = None) -> dict[str, Any]:
    if not _last_failed.get(name):  # once per outage, not on every probe
        _last_failed[name] = True
        log.warning("readiness: %s failed: %s", name, error, exc_info=exc)
    return {"ok": False, "error": error}


# ------------------------------------------------------------------ metrics


@observe.get("/metrics")
def metrics_view() -> Response:
    refused = _metrics_refusal()
    if refused is not None:
        return refused
    runtime = _runtime()
    state: metrics.EngineState | None = None
    try:
        state = _calls.call("scrape", lambda: metrics.read_engine_state(runtime.primary_engine, [name for name, *_ in JOBS]), CHECK_TIMEOUT)
    except Exception as exc:  # the rest of the scrape is still worth having; fincrm_scrape_database_ok says 0
        if not _last_failed.get("scrape"):  # once per outage, not on every scrape
            _last_failed["scrape"] = True
            log.warning("metrics: database gauges left out (%s)", type(exc).__name__, exc_info=exc)
    else:
        if _last_failed.pop("scrape", False):
            log.info("metrics: database gauges are back")
    skipped = {f"replica{i}": r["skipped"] for i, r in enumerate(runtime.read_routes()["replicas"], 1)} if runtime.replicas else {}
    body, content_type = metrics.exposition([metrics.ScrapeCollector(state, _pools(current_app), skipped)])
    return Response(body, status=200, content_type=content_type, headers={"Cache-Control": "no-store"})


def _setting(name: str) -> str:
    return str(current_app.config.get(name) or os.environ.get(name) or "").strip()


def _metrics_refusal() -> Response | None:
    token = _setting("FINCRM_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, given = header.partition(" ")
        if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return _unauthorized(token)
    if _from_loopback():
        return None
    if token:
        return _unauthorized(token)
    return error_response(
        403, "forbidden", "metrics are served to loopback only; set FINCRM_METRICS_TOKEN to scrape from elsewhere with a bearer token"
    )


def _unauthorized(token: str) -> Response:
    message = "send 'Authorization: Bearer <FINCRM_METRICS_TOKEN>'" if token else "no metrics token is configured; scrape from loopback"
    resp = error_response(401, "unauthenticated", message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return resp


def _from_loopback() -> bool:
    if any(h in request.headers for h in _FORWARDED):
        return False  # relayed by a proxy: the real client is elsewhere
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def _pools(app: Flask) -> dict[str, Engine]:
    """Every pool by its label: ``read`` (the primary's read pool), ``write``, ``replica1``…
    (in the order of FINCRM_DATABASE_REPLICA_URLS; never a host name) and ``fab``."""
    runtime: Runtime = app.extensions["fincrm"].runtime
    pools = {"read": runtime.primary_engine, "write": runtime.write_engine}
    pools.update({f"replica{i}": r.engine for i, r in enumerate(runtime.replicas, 1)})
    fab = app.extensions.get("fincrm_observe_fab_engine")
    if isinstance(fab, Engine):
        pools["fab"] = fab
    return pools


_watching = threading.Lock()
_WATCHED = "fincrm_observe_pools_watched"


def _watch_pools(app: Flask) -> None:
    """Watch every pool of ``app``. Replica pools appear after this module is wired (read
    routing is set up later), so the app's first request watches them; no replica connection
    can be out before it, since only requests read from replicas. (Idempotent per engine.)"""
    with _watching:
        for name, engine in _pools(app).items():
            metrics.watch_pool(engine, name)
        app.extensions[_WATCHED] = True


# ------------------------------------------------------------------ every request


def _start() -> None:
    if _WATCHED not in current_app.extensions:
        _watch_pools(current_app)
    g.fincrm_started = time.perf_counter()
    g.fincrm_request_id = sane_request_id(request.headers.get("X-Request-ID")) or uuid.uuid4().hex


def _finish(resp: Response) -> Response:
    started = g.get("fincrm_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    request_id = g.get("fincrm_request_id") or uuid.uuid4().hex
    resp.headers["X-Request-ID"] = request_id
    rule = request.url_rule
    route = rule.rule if rule is not None else None
    status = resp.status_code
    metrics.count_request(request.method, route, status, seconds)
    level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
    if access_log.isEnabledFor(level):
        method = request.method if request.method in metrics.HTTP_METHODS else "other"
        shown = route or metrics.UNMATCHED_ROUTE
        access_log.log(
            level, "%s %s %s", method, shown, status,
            extra={
                "request_id": request_id, "user": request_user(), "route": shown, "method": method,
                "status": status, "duration_ms": round(seconds * 1000, 1),
                # a method, a URL rule template and a status: masking is checked once per line
                PLAIN: is_plain(f"{method} {shown} {status}"),
            },
        )
    return resp


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers={"Cache-Control": "no-store"})


def register_observability(app: Flask) -> None:
    """Logging (``FINCRM_LOG_FORMAT``), the three routes, request ids, request metrics and
    access lines, and the pool gauges of the runtime's and Flask-AppBuilder's engines."""
    configure_logging(log_format())
    install_log_redaction()
    problem = metrics.multiprocess_problem()
    if problem is not None:
        log.error("metrics: %s", problem)
    metrics.metric_set()  # built now: in a preloading server, before the workers fork
    with app.app_context():
        app.extensions["fincrm_observe_fab_engine"] = app.extensions["sqlalchemy"].engine
    for name, engine in _pools(app).items():
        metrics.watch_pool(engine, name)
    app.register_blueprint(observe)
    # first, so the clock and the request id start before any other hook can answer (limits, logins)
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
