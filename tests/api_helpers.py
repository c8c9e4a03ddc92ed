"""Small helpers shared by the API and page tests: app configuration, a second worker on the
same database, a module-wide app for read-mostly matrices, logins and row counts."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, delete, text

from tests.conftest import TEST_DB_URL, TEST_MASTER_KEY, TEST_PASSWORD, reset_postgres

SECRET_KEY = "test-secret-key-0123456789abcdef"
LABEL = {"zh": "测试", "en": "Test"}
STAFF = (("admin", "admin"), ("rm1", "relationship_manager"), ("rm2", "relationship_manager"), ("ops1", "operations"))


def app_config(data_dir: str, db_url: str) -> dict[str, Any]:
    """The same configuration as conftest's ``app`` fixture."""
    return {
        "FINCRM_DATA_DIR": data_dir,
        "FINCRM_DATABASE_URL": db_url,
        "FINCRM_MASTER_KEY": TEST_MASTER_KEY,
        "FINCRM_SECRET_KEY": SECRET_KEY,
        "FINCRM_PASSWORD_HASH": "scrypt:16384:8:1",
        "TESTING": True,
        "RATELIMIT_ENABLED": False,
    }


def dispose(app: Any) -> None:
    app.extensions["fincrm"].runtime.dispose()
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


@contextlib.contextmanager
def second_worker(app: Any) -> Iterator[Any]:
    """Another app process on the same database, data dir and keys (a second gunicorn worker)."""
    from app import create_app

    settings = app.config["FINCRM_SETTINGS"]
    other = create_app(app_config(str(settings.data_dir), str(app.extensions["fincrm"].runtime.url)))
    try:
        yield other
    finally:
        dispose(other)


def _shared_postgres_url() -> str:
    """A schema of its own for a module-wide app, so function-scoped fixtures (which reset the
    per-process test schema) never drop its tables."""
    return reset_postgres(TEST_DB_URL, f"fincrm_m{os.getpid()}")


def _drop_shared_postgres() -> None:
    engine = create_engine(TEST_DB_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "fincrm_m{os.getpid()}" CASCADE'))
    engine.dispose()


def add_staff(application: Any) -> None:
    """The usual staff accounts (``STAFF``), those not there yet."""
    with application.app_context():
        sm = application.appbuilder.sm
        for username, role in STAFF:
            if sm.find_user(username=username) is None:
                sm.add_user(username, username, "Test", f"{username}@test.local", [sm.find_role(role)], password=TEST_PASSWORD)


@contextlib.contextmanager
def module_app(tmp: Path) -> Iterator[Any]:
    """A full app with the usual staff accounts, for a whole test module."""
    from app import create_app

    url = _shared_postgres_url() if TEST_DB_URL else f"sqlite:///{tmp / 'fincrm-module.db'}"
    application = create_app(app_config(str(tmp / "data"), url))
    add_staff(application)
    try:
        yield application
    finally:
        dispose(application)
        if TEST_DB_URL:
            _drop_shared_postgres()


def wipe_records(app: Any) -> None:
    """Delete every record and tag (metadata, users and the audit trail stay): a clean slate
    for the next test without the cost of a new app."""
    from engine.store.tables import tag_table

    runtime = app.extensions["fincrm"].runtime
    snap = runtime.cached_snapshot()
    entity_tables = set(snap.tables.values())
    with runtime.begin() as conn:
        conn.execute(delete(tag_table))
        for table in reversed(snap.metadata.sorted_tables):
            if table in entity_tables:
                conn.execute(delete(table))


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with module_app(tmp_path_factory.mktemp("module-app")) as application:
        application.fincrm_test_logins = {}  # type: ignore[attr-defined]
        yield application


@pytest.fixture
def app(shared_app: Any) -> Any:
    """Overrides conftest's ``app`` in the modules that import it: the module's app, emptied."""
    wipe_records(shared_app)
    return shared_app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def login(app: Any, client: Any) -> "Logins":
    return Logins(client, app.fincrm_test_logins)


class Logins:
    """Bearer headers per user, logged in once through the public login endpoint."""

    def __init__(self, client: Any, tokens: dict[str, dict[str, str]] | None = None) -> None:
        self.client = client
        self.tokens: dict[str, dict[str, str]] = {} if tokens is None else tokens

    def __call__(self, username: str = "admin") -> dict[str, str]:
        if username not in self.tokens:
            resp = self.client.post(
                "/api/v1/security/login", json={"username": username, "password": TEST_PASSWORD, "provider": "db", "refresh": True}
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self.tokens[username] = {"Authorization": f"Bearer {resp.json['access_token']}"}
        return self.tokens[username]


def count(client: Any, headers: dict[str, str], entity: str = "customer") -> int:
    """How many records of ``entity`` the caller sees (the admin sees them all)."""
    resp = client.get(f"/api/v1/records/{entity}?count=1&limit=1", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return int(resp.json["count"])


def error_fields(resp: Any) -> list[str]:
    return [d.get("field") for d in resp.json["error"].get("details", [])]


def assert_error(resp: Any, status: int, code: str | None = None, field: str | None = None) -> None:
    """The documented error envelope, with the status, code and (optionally) the field named."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == "application/json", resp.mimetype
    err = resp.json["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert field in error_fields(resp), err


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def page_login(client: Any, username: str, password: str = TEST_PASSWORD) -> Any:
    """Log in through Flask-AppBuilder's form, as a browser does."""
    form = client.get("/login/")
    assert form.status_code == 200
    return client.post("/login/", data={"username": username, "password": password, "csrf_token": csrf_token(form.get_data(as_text=True))})
