"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``, never a bare 500.

``engine.errors`` maps each error to its status; this module is the one place that turns them
(and Werkzeug's HTTP errors) into responses. Unexpected exceptions are logged with a reference
and answered with a 500 that reveals nothing of the request's data.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Flask, Response, json, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from ..errors import FinCRMError

__all__ = ["register_error_handlers", "error_response", "wants_json"]

log = logging.getLogger("fincrm.web")

_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return Response(json.dumps({"error": body}), status=status, mimetype="application/json")


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(FinCRMError)
    def _fincrm(exc: FinCRMError) -> Any:
        if exc.status >= 500:
            return _internal(exc)
        if not wants_json():
            return Response(
                f"<!doctype html><meta charset=utf-8><title>{exc.status}</title><h1>{exc.status}</h1><p>{escape(exc.message)}</p>",
                status=exc.status,
                mimetype="text/html",
            )
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        if not wants_json():
            return exc
        status = exc.code or 500
        return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)

    @app.after_request
    def _envelope(resp: Response) -> Response:
        """Flask-AppBuilder's own API views (login, refresh) answer errors as ``{"message": ...}``;
        give them the documented envelope so clients parse one format."""
        if resp.status_code < 400 or not request.path.startswith("/api/") or resp.mimetype != "application/json":
            return resp
        body = resp.get_json(silent=True)
        if isinstance(body, dict) and "error" not in body:
            message = body.get("message") or body.get("msg") or resp.status
            wrapped = error_response(resp.status_code, _HTTP_CODES.get(resp.status_code, "http_error"), str(message))
            resp.set_data(wrapped.get_data())
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return _http(exc)
        return _internal(exc)


def _internal(exc: Exception) -> Response:
    ref = uuid.uuid4().hex[:12]
    log.exception("unhandled error %s on %s %s", ref, request.method, request.path)
    message = f"an internal error occurred (reference {ref}); it has been logged"
    if not wants_json():
        page = f"<!doctype html><meta charset=utf-8><title>500</title><h1>系统错误 / Internal error</h1><p>{message}</p>"
        return Response(page, status=500, mimetype="text/html")
    return error_response(500, "internal_error", message)
