"""Who is calling: a JWT bearer token or a browser session (with CSRF), resolved to a Principal.

The principal is cached per process, keyed by user id and policy version: a request costs no
user/role queries, and a role change (which moves the policy stamp) is seen on the next request.
Cookie-authenticated API calls that change state must carry the session's CSRF token, because
Flask-AppBuilder's REST base is CSRF-exempt.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Any, Callable

from flask import current_app, g, request, session
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from flask_login import current_user
from flask_wtf.csrf import validate_csrf
from wtforms import ValidationError as CSRFError

from ..errors import FinCRMError, Forbidden, NotAuthenticated
from ..runtime import StaleStamps
from ..security.org import OrgInfo, load_org
from ..services.access import active_grants
from ..security.principal import Principal
from .context import services

__all__ = ["current_principal", "principal_for_user_id", "forget_principals", "refresh_request_state", "optimistic_read"]

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def refresh_request_state() -> tuple[int, int]:
    """Once per request: read both stamps (one query) and reload metadata or policy if moved."""
    if "fincrm_stamps" not in g:
        svc = services()
        g.fincrm_stamps = svc.runtime.stamps()
        svc.runtime.snapshot(g.fincrm_stamps[0])
        svc.authz.refresh(g.fincrm_stamps[1])
    return g.fincrm_stamps  # type: ignore[no-any-return]


def assume_request_state() -> bool:
    """For a read-only request: assume the stamps this process last saw instead of reading them
    (see ``Runtime.expect_stamps``); False if there is nothing to assume yet."""
    svc = services()
    snap, policy = svc.runtime._snapshot, svc.authz.version
    if snap is None or policy is None:
        svc.runtime.expect_stamps(None)
        return False
    g.fincrm_stamps = (snap.version, policy)
    svc.runtime.expect_stamps(g.fincrm_stamps)
    return True


def optimistic_read(view: Callable[..., Any]) -> Callable[..., Any]:
    """Run a read-only view on assumed stamps; if no statement confirmed them and they moved
    (or a statement saw them move), reload and run the view once more on the current ones."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        svc = services()
        if not assume_request_state():
            return view(*args, **kwargs)
        try:
            try:
                result = view(*args, **kwargs)
            except StaleStamps:
                stale = True
            except FinCRMError:
                if svc.runtime.stamps_confirmed() or svc.runtime.stamps() == g.fincrm_stamps:
                    raise  # the error stands on current metadata and policy
                stale = True
            else:
                stale = not svc.runtime.stamps_confirmed() and svc.runtime.stamps() != g.fincrm_stamps
                if not stale:
                    return result
        finally:
            svc.runtime.expect_stamps(None)
        for key in ("fincrm_stamps", "fincrm_principal"):
            g.pop(key, None)
        refresh_request_state()
        return view(*args, **kwargs)

    return wrapper


def principal_for_user_id(user_id: int, policy_version: int) -> tuple[Principal, OrgInfo] | None:
    """The user's principal and organisation, cached per (user, policy version)."""
    svc = services()
    cache = svc.principal_cache
    key = (user_id, policy_version)
    if key in cache:
        return cache[key]  # type: ignore[no-any-return]
    sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
    user = sm.get_user_by_id(user_id)
    entry = None
    if user is not None and user.is_active:
        snap = svc.runtime.cached_snapshot()
        with svc.runtime.engine.connect() as conn:
            org = load_org(conn, user.id, snap.tables.get("branch"))
            grants = active_grants(conn, user.id)
        principal = Principal(
            user_id=user.id,
            username=user.username,
            roles=frozenset(r.name for r in user.roles),
            branch_id=org.branch_id,
            team=org.team,
            supervisor_id=org.supervisor_id,
            team_ids=org.team_ids,
            branch_ids=org.branch_ids,
            branch_staff_ids=org.branch_staff_ids,
            grants=grants,
        )
        entry = (principal, org)
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = entry
    return entry


def forget_principals() -> None:
    services().principal_cache.clear()


_CLAIMS: dict[str, dict[str, Any]] = {}


def _verified_claims(token: str) -> dict[str, Any]:
    """Claims of a signature-checked token; the check is remembered per token (its expiry is
    still checked on every use), so a busy client does not pay for HMAC + JSON each request."""
    claims = _CLAIMS.get(token)
    if claims is None:
        try:
            claims = decode_token(token)
        except (JWTExtendedException, PyJWTError, ValueError) as exc:
            raise NotAuthenticated("the access token is invalid or expired; log in again") from exc
        if len(_CLAIMS) > 10_000:
            _CLAIMS.clear()
        _CLAIMS[token] = claims
    if int(claims.get("exp", 0)) <= time.time():
        _CLAIMS.pop(token, None)
        raise NotAuthenticated("the access token has expired; log in again")
    return claims


def current_principal() -> Principal:
    """The authenticated principal of this request, or :class:`NotAuthenticated` (401)."""
    cached = g.get("fincrm_principal")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    meta_version, policy_version = refresh_request_state()
    epoch: int | None = None
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("use 'Authorization: Bearer <access token>'")
        claims = _verified_claims(token.strip())
        if claims.get("type") != "access":
            raise NotAuthenticated("a refresh token cannot be used to call the API")
        try:
            user_id = int(claims["sub"])
            epoch = int(claims["fincrm_epoch"]) if "fincrm_epoch" in claims else None
        except (KeyError, TypeError, ValueError) as exc:
            raise NotAuthenticated("the access token is invalid") from exc
    elif current_user and current_user.is_authenticated:
        if request.method in UNSAFE:
            try:
                validate_csrf(
                    request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
                )
            except CSRFError as exc:
                raise Forbidden("missing or invalid CSRF token for a cookie-authenticated request") from exc
        user_id = int(current_user.id)
        epoch = session.get("fincrm_epoch")
    else:
        raise NotAuthenticated("log in first: POST /api/v1/security/login")
    entry = principal_for_user_id(user_id, policy_version)
    if entry is None:
        raise NotAuthenticated("this account is disabled or no longer exists")
    principal, org = entry
    # tokens and sessions from before a logout, disable or role change are dead
    if epoch != org.session_epoch:
        raise NotAuthenticated("this session has ended (logged out or account changed); log in again")
    principal = _addressed(principal, request.remote_addr)
    g.fincrm_principal = principal
    return principal


def _addressed(principal: Principal, ip: str | None) -> Principal:
    """``principal`` calling from ``ip``: one object per (principal, address), so a client's
    requests share it and, with it, the views and statements the records service caches for it."""
    cache = services().principal_cache
    key = ("addressed", principal, ip)
    found = cache.get(key)
    if found is None:
        found = replace(principal, ip=ip)
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = found
    return found
