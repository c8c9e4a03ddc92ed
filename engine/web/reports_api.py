"""Report endpoints on the API blueprint (DESIGN §3), and the scheduled-report pass.

    GET  /api/v1/reports                     reports the caller may run
    GET  /api/v1/reports/<name>              ?<param>=…&filter=&limit=&lang= → {"columns", "rows", …}
                                             ?format=csv|xlsx → the file (export permission, audited)
    GET  /api/v1/reports/runs/<id>           a scheduled report's file, to its recipient
    GET  /api/v1/meta/reports[/<name>]       report documents (configure)
    PUT  /api/v1/meta/reports/<name>         create or replace (configure; refused whole if invalid)
    POST /api/v1/meta/reports                create, name in the body
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Flask, Response, current_app, request

from ..errors import BadRequest, Conflict
from ..insight.reports import ReportService
from ..io.export import FORMATS
from ..security.principal import Principal
from .api import _filter_arg, _int_arg, _json, _object_body, api
from .auth import current_principal, principal_for_user_id
from .context import services

__all__ = ["reports", "deliver_scheduled_reports"]


def reports() -> ReportService:
    """One report service per app, over the app's records service."""
    svc = current_app.extensions.get("fincrm_reports")
    if svc is None:
        svc = current_app.extensions["fincrm_reports"] = ReportService(services().records)
    assert isinstance(svc, ReportService)
    return svc


def _lang() -> str:
    return "en" if request.args.get("lang") == "en" else "zh"


@api.get("/reports")
def report_list() -> Response:
    return _json({"items": reports().list(current_principal())})


@api.get("/reports/<name>")
def report_run(name: str) -> Response:
    args = request.args
    extra = _filter_arg(args.get("filter"))
    fmt = args.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadRequest("format must be csv or xlsx", [{"field": "format", "message": "csv or xlsx"}])
        content, _ = reports().export(current_principal(), name, fmt, args, lang=_lang(), filter=extra)
        return Response(
            content,
            mimetype=FORMATS[fmt].split(";")[0],
            headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"', "Cache-Control": "no-store"},
        )
    limit = _int_arg(args.get("limit"), "limit", 0) or None
    return _json(reports().run(current_principal(), name, args, limit=limit, filter=extra))


@api.get("/reports/runs/<int:run_id>")
def report_stored_run(run_id: int) -> Response:
    content, fmt, filename = reports().stored_run(current_principal(), run_id)
    return Response(
        content,
        mimetype=FORMATS[fmt].split(";")[0],
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


@api.get("/meta/reports")
def meta_reports() -> Response:
    return _json({"items": services().automation.list(current_principal(), "report")})


@api.get("/meta/reports/<name>")
def meta_report(name: str) -> Response:
    return _json(services().automation.get(current_principal(), "report", name))


@api.put("/meta/reports/<name>")
def meta_report_put(name: str) -> Response:
    return _json(services().automation.put(current_principal(), "report", name, _object_body()))


@api.post("/meta/reports")
def meta_report_create() -> Response:
    body = _object_body()
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("the report needs a name", [{"field": "name", "message": "required"}])
    if (("report", name)) in services().automation._documents():
        raise Conflict(f"report {name[:64]!r} exists: PUT /api/v1/meta/reports/{name[:64]} replaces it")
    return _json(services().automation.put(current_principal(), "report", name, body), 201)


def deliver_scheduled_reports(app: Flask, now: dt.datetime | None = None) -> dict[str, Any]:
    """The jobs pass's scheduled reports (``fincrm jobs run``, ``fincrm worker``): each due
    report is made as each recipient, with their own scope and masking."""
    from ..runtime import utcnow
    from .imports_api import load_current_state

    with app.app_context():
        policy_version = load_current_state()
        sm = app.appbuilder.sm  # type: ignore[attr-defined]

        def principal_for(username: str) -> Principal | None:
            user = sm.find_user(username=username)
            if user is None:
                return None
            entry = principal_for_user_id(user.id, policy_version)
            return entry[0] if entry else None

        return reports().deliver_scheduled(now or utcnow(), principal_for)
