"""Shared fixtures: a fresh database per test (SQLite file, or PostgreSQL when
``FINCRM_TEST_DATABASE_URL`` is set), an engine runtime on it, and the records service."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from engine.runtime import Runtime
from engine.security.authz import BasicAuthorizer
from engine.security.crypto import Keyring
from engine.services.records import RecordService

TEST_DB_URL = os.environ.get("FINCRM_TEST_DATABASE_URL", "").strip()
TEST_MASTER_KEY = base64.b64encode(b"k" * 32).decode()


def reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def fresh_db_url(tmp_path: Path) -> str:
    """A database with nothing in it: the shared PostgreSQL test database reset, or a new file."""
    if TEST_DB_URL:
        reset_postgres(TEST_DB_URL)
        return TEST_DB_URL
    return f"sqlite:///{tmp_path / 'fincrm-test.db'}"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return fresh_db_url(tmp_path)


@pytest.fixture
def runtime(db_url: str) -> Iterator[Runtime]:
    rt = Runtime(db_url, Keyring(b"k" * 32), b"cursor-secret-for-tests")
    rt.init_schema()
    yield rt
    rt.dispose()


@pytest.fixture
def records(runtime: Runtime) -> RecordService:
    return RecordService(runtime, BasicAuthorizer())
