"""OpenAPI 3.1 document generated from the current metadata (custom entities and fields too).

Built once per registry version and cached; the record schemas come from the field-type
table's JSON Schema fragments, so the document and the validators cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from ..fieldtypes import FIELD_TYPES
from ..meta.registry import Registry
from ..meta.spec import EntitySpec
from ..security.authz import effective_mask

__all__ = ["openapi_document", "record_schema"]

# keyed by the registry object itself (held, so its id cannot be reused): two apps in one
# process, or two databases in one test run, may share version numbers but never a registry
_cache: dict[int, tuple[Registry, dict[str, Any]]] = {}


def record_schema(
    spec: EntitySpec, *, for_input: bool = False, views: dict[str, str] | None = None
) -> dict[str, Any]:
    """JSON Schema of a record. ``views`` (field → hidden/masked/clear) narrows it to what one
    principal is shown: hidden fields are left out, masked ones lose the pattern and format a
    mask (``138****8000``) cannot satisfy. Without it, any field that can be masked is loose."""
    props: dict[str, Any] = {}
    if not for_input:
        props.update(
            id={"type": "integer", "readOnly": True},
            version={"type": "integer", "readOnly": True},
            created_at={"type": "string", "format": "date-time", "readOnly": True},
            updated_at={"type": "string", "format": "date-time", "readOnly": True},
        )
    required = []
    for f in spec.live_fields:
        view = views.get(f.name, "clear") if views is not None else None
        if view == "hidden":
            continue
        frag = FIELD_TYPES[f.type].schema(f)
        if not for_input and (view == "masked" or (view is None and (f.sensitivity or effective_mask(f)))):
            frag = {k: v for k, v in frag.items() if k not in ("pattern", "format", "minimum", "maximum", "enum")}
            frag["type"] = "string" if frag.get("type") != "array" else "array"
            frag["x-masked"] = True
        frag["title"] = f.label.en
        frag["description"] = f.label.zh
        if f.sensitivity:
            frag["x-sensitivity"] = f.sensitivity
        if f.ref:
            frag["x-ref-entity"] = f.ref
        if not f.required:
            frag = {**frag, "type": [*(_as_list(frag.get("type"))), "null"]} if "type" in frag else frag
            if "enum" in frag:
                frag["enum"] = [*frag["enum"], None]
        elif for_input and f.default is None and f.name != spec.owner_field:
            required.append(f.name)
        props[f.name] = frag
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": spec.label.en,
        "description": spec.label.zh,
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _error_ref() -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(registry: Registry) -> dict[str, Any]:
    cached = _cache.get(id(registry))
    if cached is not None and cached[0] is registry:
        return cached[1]
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
                    },
                }
            },
        }
    }
    errors = {str(c): {"description": d, **_error_ref()} for c, d in [
        (400, "Malformed request, unknown filter field or operator"), (401, "Not authenticated"), (403, "Forbidden"),
        (404, "Unknown entity or record"), (409, "Version conflict or duplicate"), (422, "Invalid values"),
    ]}
    paths: dict[str, Any] = {}
    list_params = [
        {"name": "filter", "in": "query", "schema": {"type": "string"}, "description": "filter DSL as JSON"},
        {"name": "sort", "in": "query", "schema": {"type": "string"}, "example": "-aum,name"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {"name": "fields", "in": "query", "schema": {"type": "string"}},
        {"name": "q", "in": "query", "schema": {"type": "string"}},
        {"name": "count", "in": "query", "schema": {"type": "boolean"}, "description": "also count matches (capped at 10,000)"},
    ]
    for spec in sorted(registry.entities.values(), key=lambda s: s.name):
        name = spec.name
        rec = f"#/components/schemas/{name}"
        schemas[name] = record_schema(spec)
        schemas[f"{name}_input"] = record_schema(spec, for_input=True)
        page = {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": rec}}, "next_cursor": {"type": ["string", "null"]}}}
        one = {"content": {"application/json": {"schema": {"$ref": rec}}}}
        tag = [name]
        id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
        paths[f"/api/v1/records/{name}"] = {
            "get": {"tags": tag, "summary": f"List {spec.label.en} ({spec.label.zh})", "parameters": list_params,
                    "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": page}}}, **errors}},
            "post": {"tags": tag, "summary": f"Create {spec.label.en}",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}_input"}}}},
                     "responses": {"201": {"description": "Created", **one}, **errors}},
        }
        paths[f"/api/v1/records/{name}/query"] = {
            "post": {"tags": tag, "summary": f"Query {spec.label.en} with a filter in the body",
                     "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                     "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": page}}}, **errors}},
        }
        paths[f"/api/v1/records/{name}/{{id}}"] = {
            "parameters": [id_param],
            "get": {"tags": tag, "summary": f"Get one {spec.label.en}", "responses": {"200": {"description": "The record", **one}, **errors}},
            "patch": {"tags": tag, "summary": f"Update {spec.label.en} (If-Match: version)",
                      "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string"}}],
                      "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                      "responses": {"200": {"description": "Updated", **one}, **errors}},
            "delete": {"tags": tag, "summary": f"Delete {spec.label.en}", "responses": {"204": {"description": "Deleted"}, **errors}},
        }
        if spec.relations:
            paths[f"/api/v1/records/{name}/{{id}}/related"] = {
                "parameters": [id_param],
                "get": {"tags": tag, "summary": "360 view: related records by relation", "responses": {"200": {"description": "Related records"}, **errors}},
            }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "FinCRM API", "version": f"1.0 (metadata v{registry.version})"},
        "servers": [{"url": "/"}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/security/login": {"post": {"security": [], "summary": "Log in (provider db) for an access token", "responses": {"200": {"description": "Tokens"}}}},
            "/api/v1/meta/entities": {"get": {"summary": "Entities"}, "post": {"summary": "Create an entity"}},
            "/api/v1/meta/entities/{entity}/fields": {"post": {"summary": "Add a field (JSON storage unless storage: column)"}},
            "/api/v1/meta/flows": {"get": {"summary": "Approval flows in force"}},
            "/api/v1/meta/flows/{name}": {"get": {"summary": "A flow document"}, "put": {"summary": "Create or replace a flow (refused whole, every error listed)", "responses": errors}},
            "/api/v1/meta/triggers": {"get": {"summary": "Triggers in force"}},
            "/api/v1/meta/triggers/{name}": {"get": {"summary": "A trigger document"}, "put": {"summary": "Create or replace a trigger (refused whole, every error listed)", "responses": errors}},
            "/api/v1/records/{entity}/{id}/flow": {"get": {"summary": "The record's flow state, SLA due time, votes and the transitions open to you", "responses": errors}},
            "/api/v1/records/{entity}/{id}/transitions/{transition}": {
                "post": {
                    "summary": "Take a transition of the record's approval flow (or vote on an all-of step)",
                    "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string"}}],
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"comment": {"type": "string"}}}}}},
                    "responses": {"200": {"description": "The record and its flow state"}, **errors},
                }
            },
            "/api/v1/notifications": {"get": {"summary": "Your notifications, newest first (?unread=1, ?before=<id>)", "responses": errors}},
            "/api/v1/notifications/{id}/read": {"post": {"summary": "Mark one of your notifications read", "responses": errors}},
            "/api/v1/notifications/read-all": {"post": {"summary": "Mark all your notifications read", "responses": errors}},
            "/api/v1/outbox": {"get": {"summary": "Outbound messages and dead letters (?status=), for operations", "responses": errors}},
            "/api/v1/outbox/{id}/retry": {"post": {"summary": "Queue a failed or dead message again", "responses": errors}},
            "/api/v1/tasks/mine": {"get": {"summary": "Your open tasks: overdue, today, upcoming", "responses": errors}},
            "/api/v1/import/{entity}": {
                "post": {
                    "summary": "Import a CSV/XLSX file as a job (201 finished, 202 running; 413 too large)",
                    "requestBody": {
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "mode": {"enum": ["insert", "upsert"]},
                                        "dedupe": {"enum": ["skip", "update", "error"]},
                                        "key": {"type": "string"},
                                        "dry_run": {"type": "boolean"},
                                        "on_error": {"enum": ["skip_row", "abort"]},
                                        "batch_size": {"type": "integer", "minimum": 1, "maximum": 50000},
                                        "mapping": {"type": "string", "description": 'JSON {"column header": "field" or null}'},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {"201": {"description": "The finished job"}, "202": {"description": "The running job"}, **errors},
                }
            },
            "/api/v1/import/jobs": {"get": {"summary": "Your import jobs, newest first", "responses": errors}},
            "/api/v1/import/jobs/{id}": {"get": {"summary": "An import job: status, progress, counts, masked preview", "responses": errors}},
            "/api/v1/import/jobs/{id}/errors": {"get": {"summary": "The job's errors as CSV: row, column, masked value, message", "responses": errors}},
            "/api/v1/export/{entity}": {"get": {"summary": "Export in your scope, masked and formula-safe (?format=csv|xlsx&filter=&sort=&fields=&lang=)", "responses": errors}},
            "/api/v1/quality/{entity}": {"get": {"summary": "Data-quality report: rule violations and completeness per field, in your scope", "responses": errors}},
            "/api/v1/quality/{entity}/duplicates": {"get": {"summary": "Duplicate groups (same ID / mobile, similar name + birth date), masked", "responses": errors}},
            "/api/v1/quality/{entity}/merge": {"post": {"summary": "Merge records into a golden record (survivorship rules, references re-pointed)", "responses": errors}},
            "/api/v1/quality/merges/{id}": {"get": {"summary": "A merge and what it changed", "responses": errors}},
            "/api/v1/quality/merges/{id}/undo": {"post": {"summary": "Undo a merge exactly (409 if the survivor changed since)", "responses": errors}},
            "/api/v1/reports": {"get": {"summary": "Reports you may run", "responses": errors}},
            "/api/v1/reports/{name}": {
                "get": {
                    "summary": "Run a report in your scope: {columns, rows}; ?format=csv|xlsx downloads it (?<param>=&filter=&limit=&lang=)",
                    "responses": errors,
                }
            },
            "/api/v1/reports/runs/{id}": {"get": {"summary": "A scheduled report's file, for its recipient", "responses": errors}},
            "/api/v1/meta/reports": {"get": {"summary": "Report documents"}, "post": {"summary": "Create a report", "responses": errors}},
            "/api/v1/meta/reports/{name}": {"get": {"summary": "A report document"}, "put": {"summary": "Create or replace a report (refused whole, every error listed)", "responses": errors}},
            "/api/v1/analytics/rfm": {"get": {"summary": "RFM per customer (?as_of=YYYY-MM-DD): recency, frequency, monetary, 1-5 scores, segments", "responses": errors}},
            "/api/v1/analytics/rfm/tags": {"post": {"summary": "Tag customers in your scope with their RFM segment", "responses": errors}},
            "/api/v1/analytics/churn": {"get": {"summary": "Customers at churn risk (?days=90&score=4)", "responses": errors}},
            "/api/v1/analytics/cross-sell": {"get": {"summary": "Association rules over product holdings (?min_support=&min_confidence=)", "responses": errors}},
            "/api/v1/analytics/cross-sell/targets": {"get": {"summary": "Customers holding the antecedent but not the consequent", "responses": errors}},
            "/api/v1/analytics/channels": {"get": {"summary": "Acquisition channels: customers, conversion, cost per customer", "responses": errors}},
            "/api/v1/analytics/kpis": {"get": {"summary": "Retention rate, cross-sell rate, complaint handling time, monthly activity", "responses": errors}},
            "/api/v1/analytics/nps": {"get": {"summary": "NPS trend per period", "responses": errors}},
            "/api/v1/insight/keywords": {"get": {"summary": "Complaint keywords per period (jieba TF-IDF or TextRank)", "responses": errors}},
            "/api/v1/kb/search": {"get": {"summary": "Knowledge-base full-text search (?q=)", "responses": errors}},
            "/api/v1/interfaces/calls": {"get": {"summary": "Outbound calls (connectors, channels, feeds): target, status, latency, attempt, masked payload", "responses": errors}},
            "/api/v1/interfaces/dead-letters": {"get": {"summary": "Outbound calls that failed every attempt", "responses": errors}},
            "/api/v1/interfaces/dead-letters/{id}/replay": {"post": {"summary": "Replay a dead letter through the interface wrapper", "responses": errors}},
            "/api/v1/interfaces/connectors": {"get": {"summary": "Data connectors installed", "responses": errors}},
            "/api/v1/interfaces/connectors/{name}/enrich": {"post": {"summary": "Enrich a customer from a data connector (202 with the dead letter if it failed)", "responses": errors}},
            **paths,
        },
    }
    if len(_cache) > 8:
        _cache.clear()
    _cache[id(registry)] = (registry, doc)
    return doc
