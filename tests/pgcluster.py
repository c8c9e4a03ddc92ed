"""Throwaway PostgreSQL clusters for tests: a primary and a streaming replica of it, on loopback.

Each cluster has its own data directory under one temporary directory and its own free port;
the server binaries (``initdb``, ``pg_ctl``, ``pg_basebackup``) run as the ``postgres`` OS user
when the tests run as root (``initdb`` refuses root). Trust authentication on 127.0.0.1 only.
``require_binaries()`` skips the calling test module when PostgreSQL is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

PG_BIN = Path(os.environ.get("FINCRM_PG_BIN", "/usr/lib/postgresql/15/bin"))
TOOLS = ("initdb", "pg_ctl", "pg_basebackup")


def require_binaries() -> None:
    """Skip the calling test module unless the PostgreSQL server binaries can be run."""
    missing = [t for t in TOOLS if not (PG_BIN / t).exists()]
    if missing:
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} ({', '.join(missing)})", allow_module_level=True)
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres OS user to run PostgreSQL as", allow_module_level=True)
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user", allow_module_level=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], timeout: float = 120) -> str:
    done = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One running cluster: its data directory, port and SQLAlchemy URL."""

    name: str
    data: Path
    port: int
    log: Path
    running: bool = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])
        self.running = True
        wait_ready(self.url)

    def stop(self, mode: str = "fast") -> None:
        """``mode="immediate"`` is losing the machine: no checkpoint, no goodbye to clients."""
        if self.running:
            _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
            self.running = False

    def promote(self) -> None:
        """Turn a standby into a primary (waits until it accepts writes)."""
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote"])

    def sql(self, statement: str, **params: Any) -> Any:
        """Run one administrative statement (a fixed string from the test, never input)."""
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement), params)
                return result.all() if result.returns_rows else None
        finally:
            engine.dispose()


@dataclass
class Cluster:
    """A primary and its streaming replicas under one temporary directory."""

    root: Path
    primary: Node
    replicas: list[Node] = field(default_factory=list)

    def add_replica(self, name: str = "replica") -> Node:
        """A hot standby made with ``pg_basebackup -R`` (streaming, replication config written)."""
        node = Node(name, self.root / name, free_port(), self.root / f"{name}.log")
        _run(
            [
                str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                "-D", str(node.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
            ]
        )  # fmt: skip
        with open(node.data / "postgresql.conf", "a") as fh:  # later lines win over the copied port
            fh.write(f"\nport = {node.port}\ncluster_name = '{name}'\n")
        node.start()
        self.replicas.append(node)
        return node

    def lag_bytes(self, replica: Node) -> int:
        """How far the replica's replay trails the primary's current WAL position (replica read
        first, so the figure is never below the real lag)."""
        replayed = replica.sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]
        return int(self.primary.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:r AS pg_lsn))", r=replayed)[0][0])

    def wait_caught_up(self, replica: Node, timeout: float = 30) -> float:
        """Wait until the primary's ``pg_stat_replication`` shows the replica has replayed
        everything written so far; returns the seconds waited."""
        started = time.monotonic()
        target = self.primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        while time.monotonic() - started < timeout:
            rows = self.primary.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = :n AND replay_lsn >= CAST(:t AS pg_lsn)",
                n=replica.name,
                t=target,
            )
            if rows[0][0]:
                return time.monotonic() - started
            time.sleep(0.02)
        raise TimeoutError(f"{replica.name} did not replay up to {target} in {timeout}s")

    def close(self) -> None:
        for node in [*self.replicas, self.primary]:
            try:
                node.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # already gone: the directory is removed below either way
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def wait_ready(url: str, timeout: float = 60) -> None:
    engine = create_engine(url)
    started = time.monotonic()
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError:  # not accepting connections yet
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.1)
    finally:
        engine.dispose()


def start_primary(settings: dict[str, str] | None = None) -> Cluster:
    """initdb + start a primary ready to stream to replicas (``wal_level=replica``)."""
    root = Path(tempfile.mkdtemp(prefix="fincrm-pg-"))
    if os.geteuid() == 0:
        os.chown(root, *_postgres_ids())
    node = Node("primary", root / "primary", free_port(), root / "primary.log")
    _run([str(PG_BIN / "initdb"), "-D", str(node.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(node.port),
        "unix_socket_directories": f"'{root}'",
        "wal_level": "replica",
        "max_wal_senders": "5",
        "wal_keep_size": "'256MB'",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "shared_buffers": "'32MB'",
        "max_connections": "100",
        "cluster_name": "'primary'",
        **(settings or {}),
    }
    with open(node.data / "postgresql.conf", "a") as fh:
        fh.write("\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
    cluster = Cluster(root, node)
    try:
        node.start()
    except BaseException:
        cluster.close()
        raise
    return cluster
