"""Small helpers shared by the API and page tests: app configuration, a second worker on the
same database, a module-wide app for read-mostly matrices, logins and row counts."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, delete, text

from engine import plugins

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


def signed_in(app: Any, username: str, *, english: bool = False) -> Any:
    """A test client signed in through the login form as ``username`` (pages in English if asked)."""
    client = app.test_client()
    resp = page_login(client, username)
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)[:300]
    if english:
        client.get("/lang/en")
    return client


def sample_package(name: str, prefix: str, version: str = "1.0.0", *, role: bool = True, extra_field: bool = False,
                   label: dict[str, str] | None = None) -> dict[str, Any]:
    """A small template package touching every kind: a new entity ``<prefix>_account``, a customer
    overlay (field ``<prefix>_segment`` and a tag set), a role (if ``role``), a change trigger, a
    report and seed records (two sales scripts, codes ``<PREFIX>-1`` and ``<PREFIX>-2``)."""
    code = prefix.upper()
    fields: list[dict[str, Any]] = [
        {"name": f"{prefix}_segment", "type": "enum", "label": {"zh": "细分", "en": "Segment"}, "indexed": True,
         "options": [{"value": "a", "label": {"zh": "甲", "en": "A"}}, {"value": "b", "label": {"zh": "乙", "en": "B"}}]}
    ]
    if extra_field:
        fields.append({"name": f"{prefix}_score", "type": "integer", "label": {"zh": "评分", "en": "Score"}, "min": 0, "max": 100})
    documents: list[dict[str, Any]] = [
        {"kind": "entity", "name": f"{prefix}_account", "label": {"zh": "测试账户", "en": "Test account"},
         "fields": [
             {"name": "customer", "type": "ref", "ref": "customer", "label": {"zh": "客户", "en": "Customer"}, "required": True, "indexed": True},
             {"name": "code", "type": "string", "label": {"zh": "账户编号", "en": "Account code"}, "required": True, "unique": True, "max_length": 32},
             {"name": "balance", "type": "decimal", "label": {"zh": "余额", "en": "Balance"}, "precision": 18, "scale": 2, "sensitivity": "C2"}],
         "list_columns": ["code", "customer", "balance"]},
        {"kind": "entity_overlay", "name": "customer", "fields": fields,
         "relations": [{"name": f"{prefix}_accounts", "entity": f"{prefix}_account", "field": "customer", "label": {"zh": "测试账户", "en": "Test accounts"}}],
         "tag_sets": [{"name": f"{prefix}_tags", "label": {"zh": "测试标签", "en": "Test tags"}, "tags": [{"value": "甲类", "label": {"zh": "甲类", "en": "Class A"}}]}]},
    ]
    if role:
        documents.append({"kind": "role", "name": f"{prefix}_clerk", "label": {"zh": "测试岗", "en": "Test clerk"},
                          "grants": [{"entity": f"{prefix}_account", "actions": ["read"], "scope": "all"}]})
    documents += [
        {"kind": "trigger", "name": f"{prefix}_big_account", "label": {"zh": "大额账户", "en": "Big account"}, "entity": f"{prefix}_account", "on": "change",
         "condition": {"field": "balance", "op": "gte", "value": "1000000"},
         "actions": [{"type": "create_task", "title": {"zh": "大额账户回访", "en": "Call the big account"}, "assign": "owner"}]},
        {"kind": "report", "name": f"{prefix}_accounts", "label": {"zh": "账户数", "en": "Accounts"}, "entity": f"{prefix}_account",
         "columns": [{"name": "n", "label": {"zh": "数量", "en": "Count"}, "agg": "count"}]},
        {"kind": "seed", "name": f"{prefix}_scripts", "entity": "sales_script", "key": "code",
         "records": [{"code": f"{code}-1", "title": "开场白", "scenario": "opening", "body": "您好，我是您的专属客户经理。"},
                     {"code": f"{code}-2", "title": "甲类客户推荐", "scenario": "recommend", "match_tag": "甲类", "body": "根据您的情况推荐稳健型产品。"}]},
    ]
    return {"kind": "package", "name": name, "version": version, "label": label or {"zh": "测试模板", "en": "Test template"}, "documents": documents}


def finished_import(client: Any, headers: dict[str, str], resp: Any) -> dict[str, Any]:
    """The import job an upload started (``POST /api/v1/import/…``), polled until it has finished."""
    assert resp.status_code in (201, 202), resp.get_json()
    job = resp.get_json()
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/api/v1/import/jobs/{job['id']}", headers=headers).get_json()
    return job  # type: ignore[no-any-return]


class ChannelPlugin:
    """A plugin providing the given notification channels (registered in code by a test)."""

    def __init__(self, **channels: Any) -> None:
        self.channels = channels

    @plugins.hookimpl
    def fincrm_notification_channels(self) -> dict[str, Any]:
        return self.channels


def publish_vertical(app: Any, name: str, **kw: Any) -> dict[str, Any]:
    """Publish a template package as the system (the shipped vertical ``name`` unless ``doc`` or
    ``version`` says otherwise) and give its roles their Flask-AppBuilder roles, as the API does."""
    from engine.security.principal import Principal
    from engine.web.packages_api import _sync_fab_roles

    with app.app_context():
        plan: dict[str, Any] = app.extensions["fincrm"].packages.publish(Principal.system("test"), name, **kw)
        _sync_fab_roles()
    return plan
