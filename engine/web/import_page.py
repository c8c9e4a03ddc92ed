"""The import page (``/import/``): upload a CSV/XLSX file into an entity the user may import,
dry-run it, adjust the column mapping, run it with a progress bar, fetch the error file, and
see one's recent import jobs.

The page is a client of the import API (``/api/v1/import/…``, DESIGN §3): the browser posts
the file there with the session's CSRF token and polls the job (static/fincrm/import.js). This
module renders the page and answers what the API does not: the columns of a job's file (so
unmatched columns can be mapped by hand), the job list as HTML, and the engine's messages in
the user's language. Whether a user may import an entity is the authorizer's decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request
from flask_appbuilder import BaseView, expose
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select

from ..errors import BadRequest, FinCRMError, Forbidden, NotFound
from ..i18n import translate
from ..io.importer import DEDUPE, MODES, ON_ERROR, import_job_table
from ..io.sources import open_source
from ..meta.spec import EntitySpec
from ..security.principal import Principal
from ..security.authz import permits
from .auth import current_principal
from .context import services
from .imports_api import importer
from .pages import WHEN, json_principal, translated_messages, _fresh, _login_redirect, _principal_or_login, _t, display, lang

__all__ = ["ImportPage", "importable_entities", "import_fields", "import_nav_link"]

RECENT_JOBS = 20


def importable_entities(principal: Principal) -> list[EntitySpec]:
    """The entities ``principal`` may import, in the registry's order."""
    svc = services()
    return [spec for spec in svc.runtime.cached_snapshot().registry.entities.values() if permits(svc.authz, principal, spec.name, "import")]


def import_fields(principal: Principal, spec: EntitySpec) -> list[dict[str, Any]]:
    """The fields a column may be mapped to: those ``principal`` may write, labelled in the
    page's language; ``required`` marks those an insert needs a column for."""
    view = services().records.view(principal, spec.name)
    language = lang()
    fields = [{"name": "id", "label": _t("编号", "ID"), "required": False, "unique": True}]
    for f in spec.live_fields:
        if f.readonly or not view.access[f.name].write:
            continue
        fields.append({
            "name": f.name,
            "label": f.label.get(language),
            "required": f.required and f.default is None and f.name != spec.owner_field,
            "unique": f.unique,
        })
    return fields


def _entity_data(principal: Principal, spec: EntitySpec) -> dict[str, Any]:
    """What the page's script knows of an entity: the mapping targets, and labels for the
    preview's columns and option values (the preview carries stored values, e.g. ``male``)."""
    language = lang()
    return {
        "name": spec.name,
        "label": spec.label.get(language),
        "fields": import_fields(principal, spec),
        "columns": {f.name: f.label.get(language) for f in spec.live_fields},
        "options": {f.name: {o.value: o.label.get(language) for o in f.options} for f in spec.live_fields if f.options},
    }


def import_nav_link() -> dict[str, Any] | None:
    """The navbar entry for this page, for users who may import something (else None)."""
    if not current_user or not current_user.is_authenticated:
        return None
    try:
        principal = current_principal()
    except FinCRMError:  # not signed in as far as FinCRM is concerned: no link, like the other entries
        return None
    if not importable_entities(principal):
        return None
    return {"href": "/import/", "label": _t("导入", "Import"), "icon": "fa-upload", "active": request.path.startswith("/import/")}


def _job_rows(principal: Principal) -> list[dict[str, Any]]:
    """The principal's recent jobs as the job table shows them."""
    registry = services().runtime.cached_snapshot().registry
    language = lang()
    rows = []
    for job in importer().jobs(principal, limit=RECENT_JOBS):
        spec = registry.entities.get(job["entity"])
        rows.append({
            **job,
            "entity_label": spec.label.get(language) if spec is not None else job["entity"],
            "when": display(WHEN, job["created_at"]),
            "dry_run": bool((job.get("options") or {}).get("dry_run")),
            "message_shown": translate(job["message"], language) if job.get("message") else "",
        })
    return rows



class ImportPage(BaseView):
    route_base = "/import"
    default_view = "index"

    def create_blueprint(self, appbuilder: Any, endpoint: str | None = None, static_folder: str | None = None) -> Blueprint:
        """Flask-AppBuilder's blueprint, plus the navbar helper its template asks for."""
        blueprint: Blueprint = super().create_blueprint(appbuilder, endpoint, static_folder)
        blueprint.app_context_processor(lambda: {"fincrm_import_link": import_nav_link})
        return blueprint

    @expose("/")
    def index(self) -> Any:
        _fresh()
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        specs = importable_entities(principal)
        if not specs:
            raise Forbidden("your role may not import any entity")
        language = lang()
        entities = [_entity_data(principal, s) for s in specs]
        names = [e["name"] for e in entities]
        wanted = request.args.get("entity", "")
        chosen = wanted if wanted in names else ("customer" if "customer" in names else names[0])
        page_data = {
            "lang": language,
            "entities": entities,
            "api": "/api/v1/import/",
            "columns": "/import/jobs/{id}/columns",
            "jobs": "/import/jobs",
            "messages": "/import/messages",
        }
        return self.render_template(
            "fincrm/import.html", entities=entities, chosen=chosen,
            jobs=_job_rows(principal), modes=MODES, dedupes=DEDUPE, on_errors=ON_ERROR, page_data=page_data,
            csrf_token=generate_csrf(), lang=language,
        )

    @expose("/jobs")
    def jobs(self) -> Any:
        """The recent-jobs table body (HTML), for the page to refresh after a run."""
        _fresh()
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        if not importable_entities(principal):
            raise Forbidden("your role may not import any entity")
        return self.render_template("fincrm/import_jobs.html", jobs=_job_rows(principal))

    @expose("/jobs/<int:job_id>/columns")
    def columns(self, job_id: int) -> Any:
        """Every column header of a job's file and the field each was matched to (None: not
        imported). Only the headers: the cells are the customers' data, shown masked only."""
        principal = json_principal()
        job = importer().job(principal, job_id)  # 404 for another user's job
        with services().runtime.engine.connect() as conn:
            source = conn.execute(select(import_job_table.c.source).where(import_job_table.c.id == job["id"])).scalar_one()
        try:
            headers = open_source(Path(source)).headers
        except (FileNotFoundError, BadRequest):
            raise NotFound("the file of this import job is no longer kept") from None
        mapping = job["mapping"] or {}
        columns = [{"header": h, "field": mapping.get(h)} for h in dict.fromkeys(headers) if h]
        return jsonify({"job": job["id"], "entity": job["entity"], "columns": columns})

    @expose("/messages", methods=["POST"])
    def messages(self) -> Any:
        """The engine's (English) messages in the user's language: ``{"messages": [...]}``."""
        return translated_messages()
