"""create_app(): the Flask + Flask-AppBuilder shell. The only place wiring happens."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from flask import Flask, request
from flask_appbuilder import AppBuilder
from flask_appbuilder.const import AUTH_DB
from flask_appbuilder.models.sqla.base import SQLA

from engine.config import Settings
from engine.runtime import Runtime
from engine.security.policy import CasbinAuthorizer
from engine.web.api import api
from engine.web import analytics_api, imports_api, interfaces_api, packages_api, quality_api, reports_api, text_api  # noqa: F401  (their routes join the api blueprint)
from engine.web.c360 import register_c360
from engine.web.context import Services, ensure_fab_role
from engine.web.errors import register_error_handlers
from engine.web.logs import install_log_redaction
from engine.web.import_page import ImportPage
from engine.web.insight_pages import InsightPages
from engine.web.packages_page import PackagesPage
from engine.web.notifications import NotificationsPage
from engine.web.observe import register_observability
from engine.web.pages import HomeView, RecordPages, register_page_helpers
from engine.web.replica import register_replica_routing
from engine.web.security import CookielessSessions, FinCRMSecurityManager, install_session_hooks, limit_api_login, password_policy, skip_limiter_hooks
from engine.web.workbench import WorkbenchView

ROOT = Path(__file__).resolve().parent


def flask_config(settings: Settings) -> dict[str, Any]:
    engine_options: dict[str, Any] = {"pool_pre_ping": True}
    if settings.database_url.startswith("sqlite"):
        engine_options = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        "SECRET_KEY": settings.secret_key,
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "APP_NAME": "FinCRM 金融客户关系管理",
        "APP_THEME": "",
        "AUTH_TYPE": AUTH_DB,
        "AUTH_ROLE_ADMIN": "admin",
        "AUTH_ROLE_PUBLIC": "public",
        "AUTH_USER_REGISTRATION": False,
        # Flask-AppBuilder defaults a bank must not run with (DESIGN §4)
        "FAB_ADD_SECURITY_API": False,
        "FAB_PASSWORD_HASH_METHOD": settings.password_hash,
        "FAB_PASSWORD_COMPLEXITY_ENABLED": True,
        "FAB_PASSWORD_COMPLEXITY_VALIDATOR": password_policy,
        "AUTH_RATE_LIMITED": True,
        "RATELIMIT_ENABLED": True,
        "AUTH_RATE_LIMIT": settings.login_rate_limit,
        "RATELIMIT_STORAGE_URI": "memory://",
        "FAB_API_SWAGGER_UI": False,
        "JWT_ACCESS_TOKEN_EXPIRES": dt.timedelta(minutes=settings.jwt_minutes),
        "JWT_REFRESH_TOKEN_EXPIRES": dt.timedelta(hours=12),
        "BABEL_DEFAULT_LOCALE": "zh",
        "LANGUAGES": {"zh": {"flag": "cn", "name": "简体中文"}, "en": {"flag": "gb", "name": "English"}},
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "WTF_CSRF_TIME_LIMIT": 8 * 3600,
        "FINCRM_SETTINGS": settings,
    }


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` may hold FINCRM_* settings and Flask config overrides."""
    config = dict(config or {})
    settings = Settings.load({k: v for k, v in config.items() if k.startswith("FINCRM_")})
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"), static_url_path="/static")
    app.config.update(flask_config(settings))
    app.config.update({k: v for k, v in config.items() if not k.startswith("FINCRM_")})
    logging.getLogger("fincrm").setLevel(logging.INFO)
    install_log_redaction()

    db = SQLA(app)
    runtime = Runtime(
        settings.database_url,
        settings.keyring(),
        hashlib.sha256(b"fincrm-cursor\x00" + settings.secret_key.encode()).digest(),
    )
    with app.app_context():
        if settings.auto_init:
            runtime.init_schema()
        services = Services(runtime, CasbinAuthorizer(runtime))
        app.extensions["fincrm"] = services
        fab_engine = db.engine
        os.register_at_fork(after_in_child=lambda: fab_engine.dispose(close=False))
        appbuilder = AppBuilder(
            app, db.session, indexview=HomeView, base_template="fincrm/base.html", security_manager_class=FinCRMSecurityManager
        )
        install_session_hooks(app, db.session)
        limit_api_login(appbuilder)
        if settings.auto_init:
            services.roles.sync()
            for doc in services.roles.documents():
                ensure_fab_role(doc["name"])
        appbuilder.add_view_no_menu(RecordPages())
        appbuilder.add_view_no_menu(WorkbenchView())
        appbuilder.add_view_no_menu(NotificationsPage())
        appbuilder.add_view_no_menu(ImportPage())
        appbuilder.add_view_no_menu(InsightPages())
        appbuilder.add_view_no_menu(PackagesPage())
        register_c360(app, appbuilder)
    app.register_blueprint(api)
    # the record API has no request limits of its own (logins are limited on their own
    # blueprints): skip the limiter's per-request bookkeeping on the hot path. Its hooks do not
    # run for the API's requests; the exemption and the request filter stay as the fallback
    # (``exempt`` alone still resolves the limits on every request, ~5% of a get-by-id).
    limiter = appbuilder.sm.limiter
    limiter.exempt(api)
    limiter.request_filter(lambda: request.blueprint == api.name)
    skip_limiter_hooks(app, limiter, api.name)
    app.session_interface = CookielessSessions()
    register_error_handlers(app)
    register_page_helpers(app)
    register_observability(app)
    register_replica_routing(app)
    from engine.web.cli import register_cli

    register_cli(app)
    return app
