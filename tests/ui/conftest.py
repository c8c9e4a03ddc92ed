"""Browser tests: the real app served on loopback by Werkzeug, driven by Debian's Chromium
through Playwright's Python API (launched by ``executable_path``: nothing is downloaded).

The app is one per module (same database kinds as the rest of the suite: SQLite file, or a
PostgreSQL schema when ``FINCRM_TEST_DATABASE_URL`` is set). Screenshots go to
``docs/screenshots`` (committed, linked from the README); ``FINCRM_SCREENSHOTS`` moves them.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from werkzeug.serving import make_server

from tests.api_helpers import Logins, module_app
from tests.conftest import TEST_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("FINCRM_SCREENSHOTS", ROOT / "docs" / "screenshots"))


def chromium_path() -> str:
    """Debian's chromium: the real binary behind the /usr/bin/chromium wrapper script."""
    for candidate in (os.environ.get("FINCRM_CHROMIUM", ""), "/usr/lib/chromium/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("browser tests need Debian's chromium: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def ui_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with module_app(tmp_path_factory.mktemp("ui-app")) as application:
        yield application


@pytest.fixture(scope="module")
def live_server(ui_app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, ui_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def api(ui_app: Any) -> tuple[Any, Logins]:
    """A test client and bearer logins on the same app, to seed data through the public API."""
    client = ui_app.test_client()
    return client, Logins(client)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
    try:
        yield browser
    finally:
        browser.close()
        pw.stop()


@pytest.fixture
def page_as(chromium: Any, live_server: str) -> Iterator[Callable[..., Any]]:
    """``page_as("rm1")`` → a fresh browser context (zh-CN) logged in through the login form."""
    contexts: list[Any] = []

    def _open(username: str, *, locale: str = "zh-CN") -> Any:
        ctx = chromium.new_context(base_url=live_server, locale=locale, viewport={"width": 1366, "height": 900})
        ctx.set_default_timeout(15000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
        page.goto("/login/")
        page.fill("#username", username)
        page.fill("#password", TEST_PASSWORD)
        page.locator("form [type=submit]").first.click()
        page.wait_for_load_state("networkidle")
        assert "/login" not in page.url, f"{username} could not log in: {page.url}"
        return page

    yield _open
    for ctx in contexts:
        ctx.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
