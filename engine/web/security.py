"""Flask-AppBuilder security glue: login audit, session and token revocation, password policy.

Flask-AppBuilder keeps users and roles; FinCRM adds what a bank needs around them:
- every login attempt (success or failure) is audited, with the client address;
- every browser session and JWT carries the user's session epoch at issue; logging out,
  disabling an account or changing its roles moves the epoch on (and the policy stamp), so every
  earlier session and token of that user is refused on its next request, in every process;
- passwords must be at least 10 characters with three of: lower, upper, digit, symbol.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from flask import Flask, current_app, has_request_context, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request
from flask_appbuilder.exceptions import PasswordComplexityValidationError
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_login import user_logged_in, user_logged_out
from sqlalchemy import event, inspect as sa_inspect

from ..runtime import POLICY_VERSION
from ..security import audit
from ..security.org import next_session_epoch, session_epoch

__all__ = [
    "FinCRMSecurityManager",
    "password_policy",
    "install_session_hooks",
    "revoke_user_sessions",
    "limit_api_login",
    "skip_limiter_hooks",
]


def password_policy(password: str) -> None:
    """Raise when ``password`` is too weak (used by FAB forms and the CLI alike)."""
    classes = sum(bool(re.search(p, password or "")) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))
    if len(password or "") < 10 or classes < 3:
        raise PasswordComplexityValidationError(
            "password must be at least 10 characters and mix three of: lower case, upper case, digits, symbols"
        )


def _ip() -> str | None:
    return request.remote_addr if has_request_context() else None


def current_epoch(app: Flask, user_id: int) -> int:
    with app.extensions["fincrm"].runtime.engine.connect() as conn:
        return session_epoch(conn, user_id)


def revoke_user_sessions(app: Flask, user_id: int, reason: str, actor: str = "system") -> None:
    """Kill every session and token of ``user_id`` issued before now; audited."""
    runtime = app.extensions["fincrm"].runtime
    with runtime.begin() as conn:
        epoch = next_session_epoch(conn, user_id)
        runtime.bump(conn, POLICY_VERSION)
        audit.append(conn, audit.AuditEntry(actor=actor, action="sessions_revoked", entity="user", record_id=user_id, detail={"reason": reason, "epoch": epoch}, ip=_ip()))


class FinCRMSecurityManager(SecurityManager):
    """One level below Flask-AppBuilder's manager: audits logins, nothing else changes."""

    def auth_user_db(self, username: str, password: str) -> Any:
        user = super().auth_user_db(username, password)
        runtime = current_app.extensions["fincrm"].runtime
        with runtime.begin() as conn:
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=(username or "")[:150] or "(empty)",
                    actor_id=user.id if user else None,
                    action="login" if user else "login_failed",
                    detail={"provider": "db"},
                    ip=_ip(),
                ),
            )
        return user


def limit_api_login(appbuilder: Any) -> None:
    """Flask-AppBuilder rate-limits its login form but not ``POST /api/v1/security/login``:
    put the API login under the same limit, or passwords could be guessed through the API."""
    from flask_appbuilder.security.api import SecurityApi

    sm = appbuilder.sm
    if not sm.is_auth_limited:
        return
    for view in appbuilder.baseviews:
        if isinstance(view, SecurityApi):
            sm.limiter.limit(sm.auth_rate_limit, methods=["POST"])(view.blueprint)


def skip_limiter_hooks(app: Flask, limiter: Any, blueprint: str) -> int:
    """Run Flask-Limiter's request hooks (check limits, add headers, reset its context) for
    every request but those of ``blueprint``, which has no limits of its own.

    Exempting the blueprint and a request filter already make the limiter decide "no limit"
    for those requests, but only after resolving the request's limits, meta limits and
    exemption scope, and its after-request and teardown hooks still run: about a tenth of the
    CPU of a get-by-id. The hooks are found by identity (Flask-Limiter registers a bound
    method, a ``partial`` of its header hook and a bound method); returns how many were
    wrapped (0 if a Flask-Limiter release registers them differently: they then run as before)."""

    def unless_blueprint(hook: Callable[..., Any], passthrough: bool) -> Callable[..., Any]:
        @functools.wraps(hook)
        def wrapper(*args: Any) -> Any:
            if request.blueprint == blueprint:
                return args[0] if passthrough else None
            return hook(*args)

        return wrapper

    wrapped = 0
    for funcs, is_limiter_hook, passthrough in (
        (app.before_request_funcs.get(None, []), lambda f: f == limiter._check_request_limit, False),
        (app.after_request_funcs.get(None, []), lambda f: isinstance(f, functools.partial) and f.args == (limiter,), True),
        (app.teardown_request_funcs.get(None, []), lambda f: getattr(f, "__self__", None) is limiter, False),
    ):
        for i, f in enumerate(funcs):
            if is_limiter_hook(f):
                funcs[i] = unless_blueprint(f, passthrough)
                wrapped += 1
    return wrapped


def install_session_hooks(app: Flask, db_session: Any) -> None:
    @user_logged_in.connect_via(app)
    def _logged_in(sender: Any, user: Any, **extra: Any) -> None:
        session["fincrm_epoch"] = current_epoch(app, int(user.id))

    jwt = app.extensions["flask-jwt-extended"]

    @jwt.additional_claims_loader
    def _epoch_claim(identity: Any) -> dict[str, Any]:
        try:
            return {"fincrm_epoch": current_epoch(app, int(identity))}
        except (TypeError, ValueError):
            return {}

    @user_logged_out.connect_via(app)
    def _logged_out(sender: Any, user: Any, **extra: Any) -> None:
        if user is not None and getattr(user, "id", None) is not None:
            revoke_user_sessions(app, int(user.id), "logout", actor=user.username)
        session.pop("fincrm_epoch", None)

    @event.listens_for(db_session, "after_flush")
    def _watch_users(sess: Any, flush_context: Any) -> None:
        user_model = app.appbuilder.sm.user_model  # type: ignore[attr-defined]
        for obj in sess.dirty:
            if isinstance(obj, user_model):
                state = sa_inspect(obj)
                if state.attrs.active.history.has_changes() or state.attrs.roles.history.has_changes():
                    sess.info.setdefault("fincrm_changed_users", set()).add(int(obj.id))
                if state.attrs.first_name.history.has_changes() or state.attrs.last_name.history.has_changes():
                    sess.info["fincrm_staff_changed"] = True
        if any(isinstance(obj, user_model) for obj in sess.new):
            sess.info["fincrm_staff_changed"] = True

    @event.listens_for(db_session, "after_commit")
    def _revoke_changed(sess: Any) -> None:
        changed = sess.info.pop("fincrm_changed_users", set())
        for user_id in sorted(changed):
            revoke_user_sessions(app, user_id, "account disabled or roles changed")
        if sess.info.pop("fincrm_staff_changed", False) and not changed and "fincrm" in app.extensions:
            # staff names are cached per policy version (pages show them): a new or renamed
            # user moves the stamp so every process reloads the directory
            runtime = app.extensions["fincrm"].runtime
            with runtime.begin() as conn:
                runtime.bump(conn, POLICY_VERSION)


class CookielessSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building the cookie signer for a request that
    carries no session cookie (an API call with a bearer token): it gets the empty session
    Flask would give it."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        name = self.get_cookie_name(app)
        cookies = request.cookies  # ``in`` first: ``get`` of an absent cookie raises and catches inside Werkzeug
        if app.secret_key and not (name in cookies and cookies[name]):
            return self.session_class()
        return super().open_session(app, request)
