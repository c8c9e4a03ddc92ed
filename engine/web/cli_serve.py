"""``fincrm serve``: the production server — the app under gunicorn (``fincrm run`` is an alias).

The app is built once in the master (``--preload``: metadata, policy and keys loaded and checked
before any worker exists; a broken installation fails here, not in the first request) and then
forked into workers of threads (``gthread``). Pools are re-opened in each worker after the fork
(:class:`engine.runtime.Runtime`), and every worker follows metadata and policy changes made in
any other through the version stamps (DESIGN §1), so a field added through one worker is served
by all of them on their next request.

Prometheus runs in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (default
``<data dir>/prometheus``) is emptied of stale ``*.db`` files and set before the app or any
worker exists, and gunicorn's ``child_exit`` hook marks each worker that goes away dead
(:mod:`engine.metrics`). Logs are FinCRM's JSON lines by default (``FINCRM_LOG_FORMAT``), gunicorn's
own lines included (:func:`engine.web.logs.gunicorn_logconfig`). Every option has an environment
variable; docs/serving.md has the table.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import click
from flask import Flask

from .logs import GUNICORN_ACCESS_FORMAT, LOG_FORMATS, gunicorn_logconfig

__all__ = [
    "add_commands",
    "serve_command",
    "ServeConfig",
    "run_gunicorn",
    "default_workers",
    "metrics_dir_for",
    "prepare_metrics_dir",
    "check_access_format",
    "MAX_AUTO_WORKERS",
]

MAX_AUTO_WORKERS = 12  # the automatic worker count stops here; more is a sizing decision (docs/serving.md)

# Access-log atoms that can carry customers' data or credentials: the request line and query
# string (filters, searches and cursors can hold ID numbers or mobiles), the referer (a URL with
# its query string), and the Authorization and Cookie headers.
_UNSAFE_ATOMS = re.compile(r"%\((r|q|f|\{(authorization|cookie)\}i)\)s", re.IGNORECASE)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(cores: int | None = None) -> int:
    """2 × cores + 1, at most :data:`MAX_AUTO_WORKERS`."""
    return min(2 * (cores or available_cores()) + 1, MAX_AUTO_WORKERS)


def check_access_format(fmt: str) -> str:
    """``fmt`` if it logs nothing that may hold personal data or credentials, else a usage error."""
    bad = _UNSAFE_ATOMS.search(fmt)
    if bad:
        raise click.BadParameter(
            f"{bad.group(0)} may log customers' data or credentials (query strings, referers, tokens); "
            "use %(U)s for the path without its query string",
            param_hint="--access-log-format / FINCRM_ACCESS_LOG_FORMAT",
        )
    return fmt


def metrics_dir_for(data_dir: Path) -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` if the operator set it, else ``<data dir>/prometheus``."""
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or data_dir / "prometheus").resolve()


def prepare_metrics_dir(data_dir: Path) -> Path:
    """The Prometheus multiprocess directory, created and emptied of metric files (``*.db``) left
    by an earlier run, and set in this process's environment before anything records a metric."""
    from engine.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    path = prepare_multiprocess_dir(metrics_dir_for(data_dir))
    os.environ[MULTIPROC_ENV] = str(path)
    if "prometheus_client.values" in sys.modules:
        # prometheus_client picks its value class when first imported; if something imported it
        # before the directory was set, switch it now, before the app creates its metrics
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``fincrm serve`` hands to gunicorn."""

    bind: tuple[str, ...]
    workers: int
    threads: int
    timeout: int
    graceful_timeout: int
    keep_alive: int
    max_requests: int
    max_requests_jitter: int
    log_format: str  # json | text | off (engine.web.logs)
    access_log: str | None  # gunicorn's own access log: a file or '-'; None = off
    error_log: str  # gunicorn's log when log_format is off
    access_log_format: str
    log_level: str
    forwarded_allow_ips: str | None
    metrics_dir: Path

    def gunicorn_settings(self) -> dict[str, Any]:
        metrics_dir = str(self.metrics_dir)

        def child_exit(server: Any, worker: Any) -> None:
            from engine.metrics import mark_worker_dead

            mark_worker_dead(worker.pid)

        def pre_fork(server: Any, worker: Any) -> None:
            # the preloaded app's objects go to the permanent GC generation before each fork
            # (Python's gc docs): workers do not touch their pages when they collect, so memory
            # stays shared, and a worker's exit does not copy the whole heap (seconds, measured)
            gc.freeze()

        def when_ready(server: Any) -> None:
            server.log.info(
                "FinCRM serving on %s: %d workers × %d threads (gthread), timeout %ds, metrics in %s",
                ", ".join(f"http://{b}" for b in self.bind), self.workers, self.threads, self.timeout, metrics_dir,
            )

        settings: dict[str, Any] = {
            "bind": list(self.bind),
            "workers": self.workers,
            "worker_class": "gthread",
            "threads": self.threads,
            "timeout": self.timeout,
            "graceful_timeout": self.graceful_timeout,
            "keepalive": self.keep_alive,
            "max_requests": self.max_requests,
            "max_requests_jitter": self.max_requests_jitter,
            "preload_app": True,
            "accesslog": self.access_log,
            "errorlog": self.error_log,
            "access_log_format": self.access_log_format,
            "loglevel": self.log_level,
            "proc_name": "fincrm",
            "child_exit": child_exit,
            "pre_fork": pre_fork,
            "when_ready": when_ready,
        }
        if Path("/dev/shm").is_dir():
            settings["worker_tmp_dir"] = "/dev/shm"  # heartbeats on tmpfs: a slow disk never looks like a hung worker
        if self.forwarded_allow_ips is not None:
            settings["forwarded_allow_ips"] = self.forwarded_allow_ips
        if self.log_format != "off":
            # gunicorn's own lines through FinCRM's handler (one JSON stream on stderr); its
            # access lines off, as the app's fincrm.access lines say more — unless a classic
            # access log was asked for, which keeps the handler gunicorn gives it
            logconfig = gunicorn_logconfig(self.log_format)
            logconfig["loggers"]["gunicorn.error"]["level"] = self.log_level.upper()
            if self.access_log is not None:
                del logconfig["loggers"]["gunicorn.access"]
            settings["logconfig_dict"] = logconfig
        return settings

    def describe(self) -> list[str]:
        return [
            f"bind: {', '.join(self.bind)}",
            f"workers: {self.workers} (gthread) × threads: {self.threads}",
            f"timeout: {self.timeout}s, graceful timeout: {self.graceful_timeout}s, keep-alive: {self.keep_alive}s",
            f"max requests: {self.max_requests} (+ up to {self.max_requests_jitter} jitter)" if self.max_requests else "max requests: off",
            "preload: yes",
            f"log format: {self.log_format}" + (" (FinCRM's lines and gunicorn's on stderr)" if self.log_format != "off" else ""),
            f"access log: {self.access_log} ({self.access_log_format})" if self.access_log else "access log: off (the app's fincrm.access lines)",
            f"error log: {self.error_log if self.log_format == 'off' else 'stderr'} at {self.log_level}",
            f"forwarded allow ips: {self.forwarded_allow_ips or 'gunicorn default'}",
            f"PROMETHEUS_MULTIPROC_DIR: {self.metrics_dir}",
        ]


def run_gunicorn(settings: Mapping[str, Any], build: Callable[[], Flask]) -> None:
    """Run gunicorn's arbiter with ``settings`` and the app ``build()`` makes (once, in the master)."""
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return build()

    _Server().run()


def _bind(binds: tuple[str, ...], host: str | None, port: int | None) -> tuple[str, ...]:
    if host is not None or port is not None:
        default_host, _, default_port = (binds[0] if binds else "127.0.0.1:5000").rpartition(":")
        return (f"{host or default_host}:{port or default_port}",)
    out = tuple(b.strip() for raw in binds for b in raw.split(",") if b.strip())
    return out or ("127.0.0.1:5000",)


@click.command("serve")
@click.option("--bind", "-b", "binds", multiple=True, envvar="FINCRM_BIND", help="host:port (or unix:/path) to listen on; repeat or comma-separate  [default: 127.0.0.1:5000]")
@click.option("--host", default=None, help="listen on this host (with --port; the `fincrm run` spelling)")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="listen on this port")
@click.option("--workers", "-w", type=click.IntRange(1, 256), default=None, envvar="FINCRM_WORKERS", help=f"worker processes  [default: 2 × cores + 1, at most {MAX_AUTO_WORKERS}]")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True, envvar="FINCRM_THREADS", help="threads per worker")
@click.option("--timeout", type=click.IntRange(1, 3600), default=30, show_default=True, envvar="FINCRM_TIMEOUT", help="seconds before a silent worker is killed and replaced")
@click.option("--graceful-timeout", type=click.IntRange(1, 3600), default=30, show_default=True, envvar="FINCRM_GRACEFUL_TIMEOUT", help="seconds workers get to finish their requests on stop or restart")
@click.option("--keep-alive", type=click.IntRange(0, 600), default=5, show_default=True, envvar="FINCRM_KEEP_ALIVE", help="seconds an idle client connection stays open")
@click.option("--max-requests", type=click.IntRange(0, 10_000_000), default=2000, show_default=True, envvar="FINCRM_MAX_REQUESTS", help="restart a worker after this many requests (0: never)")
@click.option("--max-requests-jitter", type=click.IntRange(0, 10_000_000), default=200, show_default=True, envvar="FINCRM_MAX_REQUESTS_JITTER", help="random extra requests, so workers do not restart together")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="json", show_default=True, envvar="FINCRM_LOG_FORMAT", help="FinCRM's log lines (and gunicorn's): json, text, or off (gunicorn's classic logs)")
@click.option("--access-log", default=None, envvar="FINCRM_ACCESS_LOG", help="gunicorn's classic access log: a file, or '-' for stdout  [default: off; stdout with --log-format off]")
@click.option("--access-log-format", default=GUNICORN_ACCESS_FORMAT, envvar="FINCRM_ACCESS_LOG_FORMAT", help="format of that access log (no query strings: %(U)s, never %(r)s or %(q)s)")
@click.option("--error-log", default="-", show_default=True, envvar="FINCRM_ERROR_LOG", help="file for gunicorn's log with --log-format off ('-': stderr)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"]), default="info", show_default=True, envvar="FINCRM_LOG_LEVEL")
@click.option("--forwarded-allow-ips", default=None, envvar="FINCRM_FORWARDED_ALLOW_IPS", help="proxies trusted for X-Forwarded-* (comma-separated; '*' only behind a proxy you control)")
@click.option("--print-config", is_flag=True, help="print the effective configuration and exit")
def serve_command(
    binds: tuple[str, ...],
    host: str | None,
    port: int | None,
    workers: int | None,
    threads: int,
    timeout: int,
    graceful_timeout: int,
    keep_alive: int,
    max_requests: int,
    max_requests_jitter: int,
    log_format: str,
    access_log: str | None,
    access_log_format: str,
    error_log: str,
    log_level: str,
    forwarded_allow_ips: str | None,
    print_config: bool,
) -> None:
    """Serve FinCRM under gunicorn: the production command (docs/serving.md).

    Background jobs (triggers, SLA escalation, notification delivery) are not run here: start
    `fincrm worker` beside it."""
    from engine.config import Settings

    settings = Settings.load()
    config = ServeConfig(
        bind=_bind(binds, host, port),
        workers=workers or default_workers(),
        threads=threads,
        timeout=timeout,
        graceful_timeout=graceful_timeout,
        keep_alive=keep_alive,
        max_requests=max_requests,
        max_requests_jitter=max_requests_jitter if max_requests else 0,
        log_format=log_format,
        access_log=access_log or ("-" if log_format == "off" and access_log is None else None),
        error_log=error_log,
        access_log_format=check_access_format(access_log_format),
        log_level=log_level,
        forwarded_allow_ips=forwarded_allow_ips,
        metrics_dir=metrics_dir_for(settings.data_dir),
    )
    if print_config:
        for line in config.describe():
            click.echo(line)
        return
    prepare_metrics_dir(settings.data_dir)
    os.environ["FINCRM_LOG_FORMAT"] = log_format  # the app (built next, in this process) logs so too

    def build() -> Flask:
        from app import create_app

        return create_app()

    run_gunicorn(config.gunicorn_settings(), build)


def add_commands(group: click.Group) -> None:
    """``serve``, and ``run`` as its alias (the name earlier releases documented)."""
    group.add_command(serve_command)
    group.add_command(serve_command, "run")
