"""Template package endpoints on the API blueprint (DESIGN §3; needs ``configure`` on the
``packages`` area, and on ``meta_roles`` for a package that changes roles):

    GET  /api/v1/meta/packages                         shipped and stored packages, active versions
    POST /api/v1/meta/packages                         upload a package (JSON) → 201 its stored version
    GET  /api/v1/meta/packages/<name>                  its version history
    POST /api/v1/meta/packages/<name>/publish          ?dry_run=1 → the plan only; ?version= a stored version
    POST /api/v1/meta/packages/<name>/rollback         back to the previously published version
    GET  /api/v1/meta/packages/<name>/export           ?version= → the current customisation as a package
"""

from __future__ import annotations

from flask import Response, request

from ..errors import BadRequest
from .api import _json, _object_body, api
from .auth import current_principal
from .context import ensure_fab_role, services

__all__: list[str] = []


def _flag(name: str) -> bool:
    raw = (request.args.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0", [{"field": name, "message": "must be 1 or 0"}])


def _version_arg() -> str | None:
    raw = request.args.get("version")
    if raw is None or raw == "":
        return None
    if len(raw) > 32:
        raise BadRequest("version is too long", [{"field": "version", "message": "at most 32 characters"}])
    return raw


def _sync_fab_roles() -> None:
    """Every role document has a Flask-AppBuilder role (membership lives there)."""
    for doc in services().roles.documents():
        ensure_fab_role(doc["name"])


@api.get("/meta/packages")
def packages_list() -> Response:
    return _json({"items": services().packages.list(current_principal())})


@api.post("/meta/packages")
def packages_upload() -> Response:
    return _json(services().packages.upload(current_principal(), _object_body()), 201)


@api.get("/meta/packages/<name>")
def packages_history(name: str) -> Response:
    return _json({"name": name, "versions": services().packages.history(current_principal(), name)})


@api.post("/meta/packages/<name>/publish")
def packages_publish(name: str) -> Response:
    plan = services().packages.publish(current_principal(), name, dry_run=_flag("dry_run"), version=_version_arg())
    if not plan["dry_run"] and not plan["noop"]:
        _sync_fab_roles()
    return _json(plan)


@api.post("/meta/packages/<name>/rollback")
def packages_rollback(name: str) -> Response:
    return _json(services().packages.rollback(current_principal(), name))


@api.get("/meta/packages/<name>/export")
def packages_export(name: str) -> Response:
    doc = services().packages.export(current_principal(), name, _version_arg())
    return _json(doc, headers={"Content-Disposition": f'attachment; filename="{doc["name"]}-{doc["version"]}.json"'})
