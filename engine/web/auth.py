"""Who is calling: a JWT bearer token or a browser session (with CSRF), resolved to a Principal.

The principal is cached per process, keyed by user id and policy version: a request costs no
user/role queries, and a role change (which moves the policy stamp) is seen on the next request.
Cookie-authenticated API calls that change state must carry the session's CSRF token, because
Flask-AppBuilder's REST base is CSRF-exempt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import current_app, g, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from flask_login import current_user
from flask_wtf.csrf import validate_csrf
from wtforms import ValidationError as CSRFError

from ..errors import Forbidden, NotAuthenticated
from ..security.principal import Principal
from .context import services

__all__ = ["current_principal", "principal_for_user_id", "forget_principals"]

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def principal_for_user_id(user_id: int, policy_version: int) -> Principal | None:
    cache = services().principal_cache
    key = (user_id, policy_version)
    if key in cache:
        return cache[key]  # type: ignore[no-any-return]
    sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
    user = sm.get_user_by_id(user_id)
    principal = None
    if user is not None and user.is_active:
        principal = Principal(
            user_id=user.id,
            username=user.username,
            roles=frozenset(r.name for r in user.roles),
        )
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = principal
    return principal


def forget_principals() -> None:
    services().principal_cache.clear()


def current_principal() -> Principal:
    """The authenticated principal of this request, or :class:`NotAuthenticated` (401)."""
    cached = g.get("fincrm_principal")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    if "fincrm_stamps" not in g:
        g.fincrm_stamps = services().runtime.stamps()
    meta_version, policy_version = g.fincrm_stamps
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("use 'Authorization: Bearer <access token>'")
        try:
            claims: dict[str, Any] = decode_token(token.strip())
        except (JWTExtendedException, PyJWTError, ValueError) as exc:
            raise NotAuthenticated("the access token is invalid or expired; log in again") from exc
        if claims.get("type") != "access":
            raise NotAuthenticated("a refresh token cannot be used to call the API")
        try:
            user_id = int(claims["sub"])
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
    else:
        raise NotAuthenticated("log in first: POST /api/v1/security/login")
    principal = principal_for_user_id(user_id, policy_version)
    if principal is None:
        raise NotAuthenticated("this account is disabled or no longer exists")
    principal = replace(principal, ip=request.remote_addr)
    g.fincrm_principal = principal
    return principal
