"""Data-quality endpoints on the API blueprint: the rules and completeness report, duplicate
groups, merges into a golden record and their undo (docs/data-quality.md).

    GET  /api/v1/quality/<entity>                  rules report + completeness (read)
    GET  /api/v1/quality/<entity>/duplicates       ?rule=&limit=&cursor= (read)
    POST /api/v1/quality/<entity>/merge            {"survivor", "merged", "overrides", "version"} → 201
    GET  /api/v1/quality/merges/<id>               the merge (update + import on the entity)
    POST /api/v1/quality/merges/<id>/undo          → 200, or 409 if the survivor changed since
"""

from __future__ import annotations

from flask import Response, current_app, request

from ..quality.service import QualityService
from .api import _int_arg, _json, _object_body, api
from .auth import current_principal
from .context import services

__all__ = ["quality"]


def quality() -> QualityService:
    """One quality service per app, over the app's records service."""
    svc = current_app.extensions.get("fincrm_quality")
    if svc is None:
        svc = current_app.extensions["fincrm_quality"] = QualityService(services().records)
    assert isinstance(svc, QualityService)
    return svc


@api.get("/quality/<entity>")
def quality_report(entity: str) -> Response:
    return _json(quality().report(current_principal(), entity))


@api.get("/quality/<entity>/duplicates")
def quality_duplicates(entity: str) -> Response:
    args = request.args
    return _json(
        quality().duplicates(
            current_principal(), entity, rule=args.get("rule") or None, limit=_int_arg(args.get("limit"), "limit", 20), cursor=args.get("cursor") or None
        )
    )


@api.post("/quality/<entity>/merge")
def quality_merge(entity: str) -> Response:
    return _json(quality().merge(current_principal(), entity, _object_body()), 201)


@api.get("/quality/merges/<int:merge_id>")
def quality_merge_info(merge_id: int) -> Response:
    return _json(quality().merge_info(current_principal(), merge_id))


@api.post("/quality/merges/<int:merge_id>/undo")
def quality_merge_undo(merge_id: int) -> Response:
    return _json(quality().undo(current_principal(), merge_id))
