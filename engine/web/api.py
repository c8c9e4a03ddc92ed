"""The REST API (DESIGN §3): one blueprint serves every entity, so new entities need no routes.

Views only translate HTTP to service calls: parse and check the request, resolve the
principal, call the records or metadata service, shape the response. No view reads a table.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from flask import Blueprint, Response, current_app, request, stream_with_context, url_for

from ..errors import BadRequest, InvalidFilter
from ..io.export import FORMATS, export_csv, export_xlsx
from ..services.customer360 import MyWork
from .auth import current_principal, optimistic_read, refresh_request_state
from .context import ensure_fab_role, services
from .openapi import openapi_document, record_schema
from .security import revoke_user_sessions

__all__ = ["api"]

api = Blueprint("fincrm_api", __name__, url_prefix="/api/v1")


OPTIMISTIC = frozenset({"fincrm_api.list_records", "fincrm_api.query_records", "fincrm_api.get_record"})


@api.before_request
def _stamps() -> None:
    # One read gives both version stamps; metadata and policy reload only if they moved.
    # Read-only record views check them inside their own statement instead (optimistic_read).
    if request.endpoint not in OPTIMISTIC:
        refresh_request_state()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: UTF-8 as is (like ensure_ascii=False), compact, and 3-5x faster than json.dumps on
    # list pages, where encoding was a tenth of the request's CPU time
    body = orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status=status, mimetype="application/json", headers=headers)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def body() -> Any:
    """The request's JSON body (decimals kept exact), or a 400 that says what is wrong."""
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("the request needs a JSON body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the request body must be UTF-8 encoded JSON") from exc
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {str(exc)[:120]}") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object_body() -> dict[str, Any]:
    data = body()
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _args() -> dict[str, str]:
    """The query string's parameters (first value of each) as a plain dict: Werkzeug's
    ``MultiDict.get`` raises and catches an HTTP exception for every absent key (~1.5 µs; a
    list request asks for half a dozen that are usually absent)."""
    return request.args.to_dict()


def _int_arg(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer", [{"field": name, "message": "must be an integer"}])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer", [{"field": name, "message": "must be an integer"}]) from None


def _filter_arg(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidFilter("filter is not valid JSON", [{"field": "filter", "message": "not valid JSON"}]) from exc


def _fields_arg(raw: Any) -> list[str] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        return [p.strip() for p in raw.split(",") if p.strip()]
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        return raw
    raise BadRequest("fields must be a comma-separated list", [{"field": "fields", "message": "bad format"}])


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true", "yes")


def _etag(record: dict[str, Any]) -> dict[str, str]:
    return {"ETag": f'"{record["version"]}"'}


# ------------------------------------------------------------------------------ session


@api.post("/security/logout")
def logout() -> Response:
    """End every session and token of the caller (JWTs cannot be recalled one by one)."""
    principal = current_principal()
    revoke_user_sessions(current_app._get_current_object(), int(principal.user_id or 0), "logout", actor=principal.username)  # type: ignore[attr-defined]
    return _json({"logged_out": True})


# ------------------------------------------------------------------------------ records


@api.get("/records/<entity>")
@optimistic_read
def list_records(entity: str) -> Response:
    args = _args()
    page = services().records.list(
        current_principal(),
        entity,
        filter=_filter_arg(args.get("filter")),
        sort=args.get("sort"),
        limit=_int_arg(args.get("limit"), "limit", 50),
        cursor=args.get("cursor") or None,
        fields=_fields_arg(args.get("fields")),
        q=args.get("q") or None,
        with_count=_flag(args.get("count")),
        consent=args.get("consent") or None,
    )
    return _json(page.to_dict())


@api.post("/records/<entity>/query")
@optimistic_read
def query_records(entity: str) -> Response:
    data = _object_body()
    unknown = set(data) - {"filter", "sort", "limit", "cursor", "fields", "q", "count", "consent"}
    if unknown:
        name = sorted(unknown)[0][:64]
        raise BadRequest(f"unknown query key {name!r}", [{"field": name, "message": "unknown key"}])
    sort = data.get("sort")
    if isinstance(sort, list):
        sort = ",".join(str(s) for s in sort)
    if sort is not None and not isinstance(sort, str):
        raise BadRequest("sort must be a string or a list", [{"field": "sort", "message": "bad type"}])
    page = services().records.list(
        current_principal(),
        entity,
        filter=data.get("filter"),
        sort=sort,
        limit=_int_arg(data.get("limit"), "limit", 50),
        cursor=data.get("cursor") or None,
        fields=_fields_arg(data.get("fields")),
        q=data.get("q") or None,
        with_count=_flag(data.get("count")),
        consent=data.get("consent") or None,
    )
    return _json(page.to_dict())


@api.post("/records/<entity>")
def create_record(entity: str) -> Response:
    record = services().records.create(current_principal(), entity, _object_body())
    headers = {**_etag(record), "Location": url_for("fincrm_api.get_record", entity=entity, record_id=record["id"])}
    return _json(record, 201, headers)


@api.get("/records/<entity>/<record_id>")
@optimistic_read
def get_record(entity: str, record_id: str) -> Response:
    record = services().records.get(current_principal(), entity, record_id, fields=_fields_arg(_args().get("fields")))
    return _json(record, headers=_etag(record))


@api.patch("/records/<entity>/<record_id>")
def update_record(entity: str, record_id: str) -> Response:
    data = _object_body()
    record = services().records.update(current_principal(), entity, record_id, data, request.headers.get("If-Match"))
    return _json(record, headers=_etag(record))


@api.delete("/records/<entity>/<record_id>")
def delete_record(entity: str, record_id: str) -> Response:
    services().records.delete(current_principal(), entity, record_id, request.headers.get("If-Match"))
    return Response(status=204)


@api.get("/records/<entity>/<record_id>/related")
def related_records(entity: str, record_id: str) -> Response:
    limit = _int_arg(request.args.get("limit"), "limit", 20)
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100", [{"field": "limit", "message": "out of range"}])
    return _json(services().records.related(current_principal(), entity, record_id, limit=limit))


@api.get("/records/<entity>/<record_id>/tags")
def list_tags(entity: str, record_id: str) -> Response:
    return _json({"tags": services().records.tags(current_principal(), entity, record_id)})


@api.post("/records/<entity>/<record_id>/tags")
def add_tag(entity: str, record_id: str) -> Response:
    data = _object_body()
    return _json({"tags": services().records.add_tag(current_principal(), entity, record_id, data.get("tag"))}, 201)


@api.delete("/records/<entity>/<record_id>/tags/<tag>")
def remove_tag(entity: str, record_id: str, tag: str) -> Response:
    return _json({"tags": services().records.remove_tag(current_principal(), entity, record_id, tag)})


@api.get("/records/customer/<record_id>/export-personal-data")
def export_personal_data(record_id: str) -> Response:
    return _json(services().records.personal_data(current_principal(), record_id))


@api.get("/records/<entity>/<record_id>/history")
def record_history(entity: str, record_id: str) -> Response:
    limit = _int_arg(request.args.get("limit"), "limit", 100)
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500", [{"field": "limit", "message": "out of range"}])
    before = request.args.get("before")
    return _json(
        services().records.history(
            current_principal(), entity, record_id, limit=limit, before=_int_arg(before, "before", 0) or None
        )
    )


@api.post("/records/<entity>/<record_id>/transitions/<name>")
def take_transition(entity: str, record_id: str, name: str) -> Response:
    """Move the record along its approval flow (or cast a vote on an all-of approval step)."""
    data = _object_body() if request.get_data(cache=True) else {}
    unknown = set(data) - {"comment", "version"}
    if unknown:
        key = sorted(unknown)[0][:64]
        raise BadRequest(f"unknown key {key!r}", [{"field": key, "message": "unknown key"}])
    expected = request.headers.get("If-Match") or data.get("version")
    out = services().flows.transition(current_principal(), entity, record_id, name, data.get("comment"), expected_version=expected)
    return _json(out, headers=_etag(out["record"]) if out["record"] else None)


@api.get("/records/<entity>/<record_id>/flow")
def record_flow(entity: str, record_id: str) -> Response:
    """The record's flow state, the transitions the caller may take now, votes and SLA due time."""
    return _json(services().flows.available(current_principal(), entity, record_id))


# ------------------------------------------------------------------------------ export


@api.get("/export/<entity>")
def export_records(entity: str) -> Response:
    fmt = request.args.get("format", "csv")
    if fmt not in FORMATS:
        raise BadRequest("format must be csv or xlsx", [{"field": "format", "message": "csv or xlsx"}])
    lang = "en" if request.args.get("lang") == "en" else "zh"
    query = {
        "filter": _filter_arg(request.args.get("filter")),
        "sort": request.args.get("sort") or None,
        "q": request.args.get("q") or None,
        "consent": request.args.get("consent") or None,
    }
    make = export_csv if fmt == "csv" else export_xlsx
    chunks = make(services().records, current_principal(), entity, fields=_fields_arg(request.args.get("fields")), lang=lang, **query)
    first = next(chunks)  # errors (scope, filter, fields) surface here, before any byte is sent

    def stream() -> Any:
        yield first
        yield from chunks

    filename = f"{entity}.{fmt}"
    return Response(
        stream_with_context(stream()),
        mimetype=FORMATS[fmt].split(";")[0],
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# ------------------------------------------------------------------------------ break-glass


@api.post("/access-requests")
def access_request_create() -> Response:
    return _json(services().access.create(current_principal(), _object_body()), 201)


@api.get("/access-requests")
def access_request_list() -> Response:
    return _json(services().access.list(current_principal(), request.args.get("status") or None))


@api.get("/access-requests/<request_id>")
def access_request_get(request_id: str) -> Response:
    return _json(services().access.get(current_principal(), request_id))


@api.post("/access-requests/<request_id>/<decision>")
def access_request_decide(request_id: str, decision: str) -> Response:
    if decision not in ("approve", "deny", "revoke"):
        raise BadRequest("decision must be approve, deny or revoke", [{"field": "decision", "message": "unknown"}])
    return _json(services().access.decide(current_principal(), request_id, decision))


# ------------------------------------------------------------------------------ notifications, outbox, my tasks


def _page_args(default_limit: int) -> tuple[int | None, int]:
    """``before`` (keyset: ids below it) and ``limit`` of a newest-first list."""
    before = _int_arg(request.args.get("before"), "before", 0) or None
    return before, _int_arg(request.args.get("limit"), "limit", default_limit)


@api.get("/notifications")
def notifications_list() -> Response:
    """The caller's own notifications, newest first; ``?unread=1``, ``?before=<id>``."""
    before, limit = _page_args(50)
    return _json(services().notifications.list(current_principal(), unread=_flag(request.args.get("unread")), before=before, limit=limit))


@api.post("/notifications/<int:notification_id>/read")
def notification_read(notification_id: int) -> Response:
    return _json(services().notifications.mark_read(current_principal(), notification_id))


@api.post("/notifications/read-all")
def notifications_read_all() -> Response:
    return _json(services().notifications.mark_all_read(current_principal()))


@api.get("/outbox")
def outbox_list() -> Response:
    """Every queued message (operations): ``?status=dead`` lists the dead letters."""
    before, limit = _page_args(100)
    return _json(services().notifications.outbox(current_principal(), status=request.args.get("status") or None, before=before, limit=limit))


@api.post("/outbox/<int:message_id>/retry")
def outbox_retry(message_id: int) -> Response:
    return _json(services().notifications.retry(current_principal(), message_id))


@api.get("/tasks/mine")
def my_tasks() -> Response:
    """The caller's open tasks: overdue, due today, upcoming (next 7 days), in their scope."""
    principal, svc = current_principal(), services()
    svc.records.authz.require(principal, "task", "read")
    tasks, more = MyWork(svc.records).tasks(principal)
    return _json({**tasks, "more": more})


# ------------------------------------------------------------------------------ audit


@api.get("/audit")
def audit_list() -> Response:
    args = request.args
    limit = _int_arg(args.get("limit"), "limit", 100)
    if not 1 <= limit <= 1000:
        raise BadRequest("limit must be between 1 and 1000", [{"field": "limit", "message": "out of range"}])
    return _json(
        services().audit_log.search(
            current_principal(),
            actor=args.get("actor") or None,
            action=args.get("action") or None,
            entity=args.get("entity") or None,
            record_id=_int_arg(args.get("record_id"), "record_id", 0) or None,
            since=args.get("since") or None,
            until=args.get("until") or None,
            before=_int_arg(args.get("before"), "before", 0) or None,
            limit=limit,
        )
    )


@api.get("/audit/verify")
def audit_verify() -> Response:
    return _json(services().audit_log.verify(current_principal()))


# ------------------------------------------------------------------------------ metadata


@api.get("/meta/entities")
def meta_entities() -> Response:
    return _json({"items": services().meta.entities(current_principal())})


@api.post("/meta/entities")
def meta_create_entity() -> Response:
    return _json(services().meta.create_entity(current_principal(), _object_body()), 201)


@api.get("/meta/entities/<entity>")
def meta_entity(entity: str) -> Response:
    return _json(services().meta.entity(current_principal(), entity))


@api.get("/meta/entities/<entity>/schema")
def meta_entity_schema(entity: str) -> Response:
    principal, svc = current_principal(), services()
    spec = svc.runtime.cached_snapshot().registry.entity(entity)
    svc.records.authz.require(principal, entity, "read")
    views = {f.name: svc.records.authz.field_access(principal, spec, f).view for f in spec.live_fields}
    return _json(record_schema(spec, views=views))


@api.post("/meta/entities/<entity>/fields")
def meta_add_field(entity: str) -> Response:
    return _json(services().meta.add_field(current_principal(), entity, _object_body()), 201)


@api.patch("/meta/entities/<entity>/fields/<field>")
def meta_patch_field(entity: str, field: str) -> Response:
    return _json(services().meta.patch_field(current_principal(), entity, field, _object_body()))


@api.delete("/meta/entities/<entity>/fields/<field>")
def meta_archive_field(entity: str, field: str) -> Response:
    return _json(services().meta.archive_field(current_principal(), entity, field))


@api.post("/meta/entities/<entity>/fields/<field>/promote")
def meta_promote_field(entity: str, field: str) -> Response:
    return _json(services().meta.promote_field(current_principal(), entity, field))


@api.get("/meta/entities/<entity>/history")
def meta_history(entity: str) -> Response:
    principal = current_principal()
    services().runtime.cached_snapshot().registry.entity(entity)
    meta = services().meta
    return _json({"items": meta.history(principal, "entity_overlay", entity) + meta.history(principal, "entity", entity)})


@api.post("/meta/entities/<entity>/revert")
def meta_revert(entity: str) -> Response:
    data = _object_body()
    version = _int_arg(data.get("version"), "version", 0)
    kind = data.get("kind", "entity_overlay")
    if kind not in ("entity", "entity_overlay"):
        raise BadRequest("kind must be entity or entity_overlay", [{"field": "kind", "message": "bad value"}])
    return _json(services().meta.revert(current_principal(), kind, entity, version))


@api.get("/meta/roles")
def meta_roles() -> Response:
    return _json({"items": services().roles.list(current_principal())})


@api.get("/meta/roles/<name>")
def meta_role(name: str) -> Response:
    return _json(services().roles.get(current_principal(), name))


@api.route("/meta/roles/<name>", methods=["PUT", "POST"])
def meta_put_role(name: str) -> Response:
    doc = services().roles.put(current_principal(), name, _object_body())
    ensure_fab_role(name)
    return _json(doc)


@api.get("/meta/flows")
def meta_flows() -> Response:
    return _json({"items": services().automation.list(current_principal(), "flow")})


@api.get("/meta/flows/<name>")
def meta_flow(name: str) -> Response:
    return _json(services().automation.get(current_principal(), "flow", name))


@api.put("/meta/flows/<name>")
def meta_put_flow(name: str) -> Response:
    return _json(services().automation.put(current_principal(), "flow", name, _object_body()))


@api.get("/meta/triggers")
def meta_triggers() -> Response:
    return _json({"items": services().automation.list(current_principal(), "trigger")})


@api.get("/meta/triggers/<name>")
def meta_trigger(name: str) -> Response:
    return _json(services().automation.get(current_principal(), "trigger", name))


@api.put("/meta/triggers/<name>")
def meta_put_trigger(name: str) -> Response:
    return _json(services().automation.put(current_principal(), "trigger", name, _object_body()))


@api.get("/staff/<int:user_id>")
def staff_get(user_id: int) -> Response:
    return _json(services().staff.get(current_principal(), user_id))


@api.put("/staff/<int:user_id>")
def staff_put(user_id: int) -> Response:
    return _json(services().staff.put(current_principal(), user_id, _object_body()))


# ------------------------------------------------------------------------------ OpenAPI


@api.get("/openapi.json")
def openapi() -> Response:
    snap = services().runtime.cached_snapshot()
    return _json(openapi_document(snap.registry))
