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


def reset_postgres(url: str, schema: str | None = None) -> str:
    """Give this test process its own empty schema in the test database; return its URL.

    A schema per process (``search_path`` set through the connection options) lets several
    test runs share one PostgreSQL database without dropping each other's tables.
    """
    schema = schema or f"fincrm_t{os.getpid()}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def fresh_db_url(tmp_path: Path) -> str:
    """A database with nothing in it: a new schema in the PostgreSQL test database, or a new file."""
    if TEST_DB_URL:
        return reset_postgres(TEST_DB_URL)
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


# ------------------------------------------------------------------ web app fixtures

TEST_PASSWORD = "Fincrm-test-pw-1"


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[object]:
    """A full app (Flask-AppBuilder shell + API) on a fresh database, with staff accounts:
    ``admin`` (admin), ``rm1``/``rm2`` (relationship_manager), ``ops1`` (operations)."""
    from app import create_app

    application = create_app(
        {
            "FINCRM_DATA_DIR": str(tmp_path / "data"),
            "FINCRM_DATABASE_URL": db_url,
            "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
            "FINCRM_SECRET_KEY": "test-secret-key-0123456789abcdef",
            "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",  # fast in tests; production default is N=2^17
            "TESTING": True,
            "RATELIMIT_ENABLED": False,
        }
    )
    with application.app_context():
        sm = application.appbuilder.sm  # type: ignore[attr-defined]
        for username, role in (("admin", "admin"), ("rm1", "relationship_manager"), ("rm2", "relationship_manager"), ("ops1", "operations")):
            sm.add_user(username, username, "Test", f"{username}@test.local", [sm.find_role(role)], password=TEST_PASSWORD)
    yield application
    application.extensions["fincrm"].runtime.dispose()
    with application.app_context():
        application.extensions["sqlalchemy"].engine.dispose()


@pytest.fixture
def client(app: object) -> object:
    return app.test_client()  # type: ignore[attr-defined]


@pytest.fixture
def login(client: object):  # type: ignore[no-untyped-def]
    """``login("rm1")`` → headers with a bearer token for that user (cached per test)."""
    tokens: dict[str, dict[str, str]] = {}

    def _login(username: str = "admin") -> dict[str, str]:
        if username not in tokens:
            resp = client.post(  # type: ignore[attr-defined]
                "/api/v1/security/login",
                json={"username": username, "password": TEST_PASSWORD, "provider": "db", "refresh": True},
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            tokens[username] = {"Authorization": f"Bearer {resp.json['access_token']}"}
        return tokens[username]

    return _login
