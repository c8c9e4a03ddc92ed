"""The template packages page (``/workbench/packages/``): what ``fincrm template …`` does, in the
browser, for IT (``configure`` on the ``packages`` area: the admin and template publisher roles).

    GET  /workbench/packages/                    shipped and stored packages, the published version; upload form
    POST /workbench/packages/upload              upload a package JSON file (checked whole, every error listed)
    GET  /workbench/packages/<name>/             its version history, dry-run / rollback / export
    POST /workbench/packages/<name>/dry-run      the plan of publishing (nothing changes: the service rolls back)
    POST /workbench/packages/<name>/publish      publish exactly the content the dry run showed (its digest)
    POST /workbench/packages/<name>/rollback     back to the previously published version
    GET  /workbench/packages/<name>/export       the current customisation as a package file

Every action is a call to :class:`engine.services.packages.PackageService`, which checks the rights
(a package that changes roles needs the role administrator's right too), validates, writes and
audits; this module turns forms into calls and the plan and the service's errors into something
a person reads, in Chinese or English. A publish always follows a dry run: the publish form carries
the digest of the content the plan was made for, and exactly that content is published, so a
version uploaded meanwhile by someone else is never published unseen.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Mapping, Sequence

from flask import Blueprint, Response, flash, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select

from ..errors import BadRequest, FinCRMError, Forbidden
from ..i18n import translate
from ..meta.packages import check_package, digest, load_package_dir, shipped_packages
from ..security.authz import permits
from ..security.principal import Principal
from ..store.tables import package_table
from .auth import current_principal
from .context import services
from .packages_api import _sync_fab_roles
from .pages import WHEN, _fresh, _login_redirect, _principal_or_login, _t, display, lang

__all__ = ["PackagesPage", "packages_link", "packages_nav_link", "plan_view", "error_rows", "parse_upload"]

AREA = "packages"
MAX_ERRORS = 300  # shown on the page; the rest are counted
DEFAULT_MAX_BYTES = 2 * 1024 * 1024  # when the app sets no MAX_CONTENT_LENGTH
_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)
_VERSION = re.compile(r"[0-9.]{1,32}", re.ASCII)

KIND_WORDS: Mapping[str, tuple[str, str]] = {
    "entity": ("业务对象", "entities"),
    "entity_overlay": ("对象扩展", "entity overlays"),
    "role": ("角色", "roles"),
    "flow": ("审批流程", "flows"),
    "trigger": ("自动化触发器", "triggers"),
    "report": ("报表", "reports"),
    "seed": ("参考数据", "seed data"),
}
SECTION_WORDS: Mapping[str, tuple[str, str]] = {
    "roles": ("角色", "Roles"),
    "flows": ("审批流程", "Flows"),
    "triggers": ("自动化触发器", "Triggers"),
    "reports": ("报表", "Reports"),
}
VERB_WORDS: Mapping[str, tuple[str, str]] = {
    "added": ("新增", "Added"),
    "changed": ("修改", "Changed"),
    "removed": ("移除", "Removed"),
}
PART_WORDS: Mapping[str, tuple[str, str]] = {
    "fields_added": ("新增字段", "Fields added"),
    "fields_changed": ("修改字段", "Fields changed"),
    "fields_removed": ("移除字段（数据保留）", "Fields removed (data kept)"),
    "tag_sets_added": ("新增标签集", "Tag sets added"),
}
OP_WORDS: Mapping[str, tuple[str, str]] = {
    "create_table": ("新建表", "create table"),
    "add_column": ("新增列", "add column"),
    "create_index": ("新建索引", "create index"),
}


# ---------------------------------------------------------------------- who may


def may_publish_packages(principal: Principal) -> bool:
    return permits(services().authz, principal, AREA, "configure")


def packages_link() -> dict[str, Any] | None:
    """The link to this page, for users who may configure packages (else None)."""
    if not current_user or not current_user.is_authenticated:
        return None
    try:
        principal = current_principal()
    except FinCRMError:
        return None
    if not may_publish_packages(principal):
        return None
    return {
        "key": "packages", "href": "/workbench/packages/", "label": _t("模板发布", "Templates"), "icon": "fa-cubes",
        "active": request.path.startswith("/workbench/packages/"),
    }


def packages_nav_link() -> dict[str, Any] | None:
    """The navbar entry, for those who may publish packages but have no workbench to reach this
    page from (the template publisher); the others find it on the workbench's index."""
    link = packages_link()
    if link is None or _may_open_workbench(current_principal()):
        return None
    return link


# ---------------------------------------------------------------------- labels and the plan


Labels = dict[tuple[str, ...], Any]


def labels_for(doc: Mapping[str, Any] | None) -> Labels:
    """Bilingual labels of what a plan names: from the package document first (what it adds is
    not in the running metadata yet), then from the running metadata. Keys: ``("entity", e)``,
    ``("field", e, f)``, ``("tag_set", e, t)``, ``(kind, name)`` for roles, flows, triggers, reports."""
    svc = services()
    snap = svc.runtime.cached_snapshot()
    out: Labels = {}
    for spec in snap.registry.entities.values():
        out[("entity", spec.name)] = spec.label.to_dict()
        for f in spec.fields:
            out[("field", spec.name, f.name)] = f.label.to_dict()
        for t in spec.tag_sets:
            out[("tag_set", spec.name, t.name)] = t.label.to_dict()
    for (kind, name), d in snap.automation.documents.items():
        out[(kind, name)] = d.get("label")
    for name, r in snap.reports.items():
        out[("report", name)] = r.doc.get("label")
    for role in svc.roles.documents():
        out[("role", role["name"])] = role.get("label")
    for d in (doc or {}).get("documents", ()):
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
            continue
        kind, doc_name = str(d.get("kind")), str(d["name"])
        if kind in ("entity", "role", "flow", "trigger", "report") and isinstance(d.get("label"), Mapping):
            out[(kind, doc_name)] = d["label"]
        if kind in ("entity", "entity_overlay"):
            for f in d.get("fields") or ():
                if isinstance(f, Mapping) and isinstance(f.get("label"), Mapping):
                    out[("field", doc_name, str(f.get("name")))] = f["label"]
            for t in d.get("tag_sets") or ():
                if isinstance(t, Mapping) and isinstance(t.get("label"), Mapping):
                    out[("tag_set", doc_name, str(t.get("name")))] = t["label"]
    return out


def _items(labels: Labels, key: Sequence[str], names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": n, "label": labels.get((*key, n))} for n in names]


def plan_view(plan: Mapping[str, Any], labels: Labels) -> dict[str, Any]:
    """A publish (or rollback) plan as the page shows it: entities added, changed (fields, tag
    sets) and no longer declared; roles, flows, triggers, reports; seed records; schema steps —
    each name with its label."""
    ch = plan.get("changes") or {}
    ents = ch.get("entities") or {}
    changed = []
    for name, entry in (ents.get("changed") or {}).items():
        parts = [
            {"key": key, "words": PART_WORDS[key], "items": _items(labels, ("tag_set" if key == "tag_sets_added" else "field", name), entry[key])}
            for key in PART_WORDS if entry.get(key)
        ]
        changed.append({"name": name, "label": labels.get(("entity", name)), "parts": parts, "layout_only": not parts})
    sections = []
    for key, words in SECTION_WORDS.items():
        part = ch.get(key) or {}
        verbs = [{"verb": v, "words": VERB_WORDS[v], "items": _items(labels, (key[:-1],), part[v])} for v in VERB_WORDS if part.get(v)]
        if verbs:
            sections.append({"key": key, "words": words, "verbs": verbs, "policy_rows": part.get("policy_rows")})
    seeds = [{"entity": e, "label": labels.get(("entity", e)), "count": n} for e, n in (ch.get("seeds") or {}).items()]
    steps = [dict(s, words=OP_WORDS.get(s["op"], (s["op"], s["op"])), detail_words=_detail_words(str(s.get("detail") or ""))) for s in plan.get("migration") or ()]
    counts = {
        "entities_added": len(ents.get("added") or ()),
        "entities_changed": len(changed),
        "fields_added": sum(len((e or {}).get("fields_added") or ()) for e in (ents.get("changed") or {}).values()),
        "documents": sum(len((ch.get(k) or {}).get(v) or ()) for k in SECTION_WORDS for v in ("added", "changed")),
        "seeds": sum(s["count"] for s in seeds),
        "steps": len(steps),
    }
    return {
        "package": plan.get("package"), "version": plan.get("version"), "digest": plan.get("digest"),
        "noop": bool(plan.get("noop")), "dry_run": bool(plan.get("dry_run")),
        "entities_added": _items(labels, ("entity",), ents.get("added") or ()),
        "entities_changed": changed,
        "entities_removed": _items(labels, ("entity",), ents.get("removed") or ()),
        "sections": sections, "seeds": seeds, "migration": steps, "counts": counts,
        "empty": not (ents.get("added") or changed or ents.get("removed") or sections or seeds or steps),
    }


def _detail_words(detail: str) -> tuple[str, str]:
    """A schema step's detail (``17 columns``, ``unique``, a column type) in both languages."""
    columns = re.fullmatch(r"([0-9]+) columns", detail)
    if columns:
        return f"{columns.group(1)} 列", detail
    if detail == "unique":
        return "唯一", detail
    return detail, detail


def summary_text(view: Mapping[str, Any]) -> str:
    """One line for the flash message after a publish."""
    c = view["counts"]
    zh = [f"新增业务对象 {c['entities_added']} 个", f"扩展业务对象 {c['entities_changed']} 个（新增字段 {c['fields_added']} 个）",
          f"流程/触发器/报表/角色 {c['documents']} 项", f"参考数据 {c['seeds']} 条", f"数据库结构变更 {c['steps']} 步"]
    en = [f"{c['entities_added']} new entities", f"{c['entities_changed']} entities extended ({c['fields_added']} new fields)",
          f"{c['documents']} flows/triggers/reports/roles", f"{c['seeds']} seed records", f"{c['steps']} schema steps"]
    return _t("，".join(zh), ", ".join(en))


# ---------------------------------------------------------------------- errors and uploads


class UploadProblem(Exception):
    """An uploaded file that is not a package document (before the service sees it)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_upload(raw: bytes) -> dict[str, Any]:
    """A package file's bytes → its JSON object; :class:`UploadProblem` with a message a person
    reads for an empty file, another encoding than UTF-8, JSON that does not parse, or anything
    but one object."""
    if not raw.strip():
        raise UploadProblem(_t("文件是空的。", "The file is empty."))
    try:
        text = raw.decode("utf-8-sig")  # a BOM (as Windows editors write) is fine
    except UnicodeDecodeError as exc:
        raise UploadProblem(_t(
            f"文件不是 UTF-8 编码（第 {exc.start + 1} 个字节无法解码）。请以 UTF-8 保存后再上传，例如导出的模板文件。",
            f"The file is not UTF-8 encoded (byte {exc.start + 1} cannot be decoded). Save it as UTF-8 and upload it again.",
        )) from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UploadProblem(_t(
            f"文件不是有效的 JSON：第 {exc.lineno} 行第 {exc.colno} 列（{exc.msg}）。",
            f"The file is not valid JSON: line {exc.lineno}, column {exc.colno} ({exc.msg}).",
        )) from None
    except ValueError as exc:
        raise UploadProblem(_t(f"文件不是有效的 JSON：{exc}。", f"The file is not valid JSON: {exc}.")) from None
    except RecursionError:
        raise UploadProblem(_t("文件的 JSON 嵌套层级过深。", "The file's JSON is nested too deeply.")) from None
    if not isinstance(doc, dict):
        raise UploadProblem(_t("文件应为一个模板包（JSON 对象，kind 为 package）。", "The file must hold one package (a JSON object of kind package)."))
    return doc


def _where(pointer: str, doc: Mapping[str, Any] | None) -> str:
    """A JSON pointer with the document it falls in named (``/documents/3/entity`` → which trigger)."""
    parts = pointer.split("/")
    if doc is None or len(parts) < 3 or parts[1] != "documents" or not parts[2].isdigit():
        return ""
    docs = doc.get("documents")
    i = int(parts[2])
    if not isinstance(docs, list) or i >= len(docs) or not isinstance(docs[i], Mapping):
        return ""
    d = docs[i]
    kind = d.get("kind")
    words = KIND_WORDS.get(kind) if isinstance(kind, str) else None
    return f"{_t(*words) if words else str(kind)[:40]} {str(d.get('name', ''))[:64]}".strip()


def error_rows(exc: FinCRMError, doc: Mapping[str, Any] | None = None) -> tuple[list[dict[str, str]], int]:
    """The service error's details as rows (pointer, the document it is in, message), and how many
    more there are beyond what the page shows."""
    rows = []
    language = lang()
    for d in exc.details[:MAX_ERRORS]:
        pointer = str(d.get("pointer") if d.get("pointer") is not None else d.get("field") or "")
        rows.append({"pointer": pointer, "where": _where(pointer, doc), "message": translate(str(d.get("message", "")), language)})
    return rows, max(0, len(exc.details) - MAX_ERRORS)


# ---------------------------------------------------------------------- package contents


def _doc_with_digest(name: str, fingerprint: str) -> dict[str, Any] | None:
    """The content of ``name`` whose digest is ``fingerprint``: a stored version, or the shipped vertical."""
    t = package_table
    with services().runtime.engine.connect() as conn:
        row = conn.execute(
            select(t.c.doc).where(t.c.name == name, t.c.digest == fingerprint).order_by(t.c.seq.desc()).limit(1)
        ).first()
    if row is not None:
        return dict(row.doc)
    path = shipped_packages().get(name)
    if path is not None:
        pkg = check_package(load_package_dir(path))
        if digest(pkg) == fingerprint:
            return pkg
    return None


def _entry(principal: Principal, name: str) -> dict[str, Any] | None:
    return next((p for p in services().packages.list(principal) if p["name"] == name), None)


def _default_source(entry: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What a dry run without a chosen version uses (as the service resolves it): the newest
    upload not yet published, else the shipped vertical."""
    active_seq = max((h["seq"] for h in history if h["active"]), default=0)
    pending = [h for h in history if h["published_at"] is None and h["seq"] > active_seq]
    if pending:
        return {"kind": "upload", "version": pending[-1]["version"], "seq": pending[-1]["seq"]}
    if entry is not None and entry.get("shipped_version"):
        return {"kind": "shipped", "version": entry["shipped_version"]}
    if history:
        return {"kind": "upload", "version": history[-1]["version"], "seq": history[-1]["seq"]}
    return None


def _history_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for h in reversed(history):  # newest first
        rows.append({
            **h,
            "kinds": [(KIND_WORDS.get(k, (k, k)), n) for k, n in (h.get("documents") or {}).items()],
            "uploaded": display(WHEN, h.get("uploaded_at")),
            "published": display(WHEN, h.get("published_at")),
            "retired": display(WHEN, h.get("retired_at")),
        })
    return rows


# ---------------------------------------------------------------------- the view


class PackagesPage(BaseView):
    route_base = "/workbench/packages"
    default_view = "index"

    def create_blueprint(self, appbuilder: Any, endpoint: str | None = None, static_folder: str | None = None) -> Blueprint:
        """Flask-AppBuilder's blueprint, plus the link helper the workbench and navbar ask for,
        and an answer on the page to an upload over the size limit (refused before any view runs)."""
        blueprint: Blueprint = super().create_blueprint(appbuilder, endpoint, static_folder)
        blueprint.app_context_processor(lambda: {"fincrm_packages_link": packages_link, "fincrm_packages_nav": packages_nav_link})
        blueprint.register_error_handler(413, self._too_large)
        return blueprint

    def _principal(self) -> Any:
        _fresh()
        principal = _principal_or_login()
        if principal is not None and not may_publish_packages(principal):
            raise Forbidden("your role may not configure packages")
        return principal

    # ------------------------------------------------------------------ list and upload

    @expose("/")
    def index(self) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        return self._index_page(principal)

    def _index_page(self, principal: Principal, *, status: int = 200, **context: Any) -> Any:
        items = services().packages.list(principal)
        for item in items:
            item["published"] = display(WHEN, item.get("published_at"))
        return self.render_template(
            "fincrm/workbench/packages.html", items=items, max_bytes=_max_bytes(),
            csrf_token=generate_csrf(), lang=lang(), workbench_ok=_may_open_workbench(principal), **context,
        ), status

    @expose("/upload", methods=["POST"])
    def upload(self) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            return self._index_page(principal, status=400, upload_error=_t("请选择要上传的模板文件（JSON）。", "Choose a package file (JSON) to upload."))
        filename = upload.filename[:200]
        limit = _max_bytes()
        try:
            raw = upload.stream.read(limit + 1)
            if len(raw) > limit:
                raise UploadProblem(_t(f"文件过大：模板文件最大 {_size(limit)}。", f"The file is too large: a package file may be at most {_size(limit)}."), 413)
            doc = parse_upload(raw)
        except UploadProblem as problem:
            return self._index_page(principal, status=problem.status, upload_error=problem.message, filename=filename)
        try:
            row = services().packages.upload(principal, doc)
        except FinCRMError as exc:
            if exc.status == 401:
                raise
            rows, more = error_rows(exc, doc)
            return self._index_page(
                principal, status=exc.status, upload_error=translate(exc.message, lang()), upload_errors=rows, more_errors=more,
                filename=filename, refused=_roles_note(principal) if exc.status == 403 else None,
            )
        flash(_t(f"已上传 {row['name']} {row['version']}，尚未发布。下面是发布它的计划（试运行）。",
                 f"Uploaded {row['name']} {row['version']}; not published yet. Below is the plan of publishing it (a dry run)."), "success")
        return self._dry_run_page(principal, row["name"], row["digest"])

    def _too_large(self, exc: Exception) -> Any:
        """A body over the size limit is refused while its form is read, so nothing of it — not
        even the CSRF token, hence not who sent it — can be used: back to the list (which checks
        the sign-in and the rights as usual) with the reason."""
        limit = _max_bytes()
        flash(_t(f"文件过大，未上传：模板文件最大 {_size(limit)}。", f"The file is too large and was not uploaded: a package file may be at most {_size(limit)}."), "danger")
        return redirect(url_for("PackagesPage.index") + "#upload", code=303)

    # ------------------------------------------------------------------ one package

    @expose("/<name>/")
    def package(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        return self._package_page(principal, name)

    def _package_page(self, principal: Principal, name: str, *, status: int = 200, **context: Any) -> Any:
        svc = services()
        history = svc.packages.history(principal, name)  # 404 for a package neither shipped nor stored
        entry = _entry(principal, name)
        rows = _history_rows(history)
        return self.render_template(
            "fincrm/workbench/package.html", name=name, entry=entry, history=rows, default=_default_source(entry, history),
            published=next((h for h in rows if h["active"]), None), csrf_token=generate_csrf(), lang=lang(),
            workbench_ok=_may_open_workbench(principal), **context,
        ), status

    def _refused(self, principal: Principal, name: str, exc: FinCRMError, doc: Mapping[str, Any] | None = None, **context: Any) -> Any:
        """The package page with the service's refusal: its message and every error listed."""
        if exc.status == 401:
            raise exc
        rows, more = error_rows(exc, doc)
        return self._package_page(
            principal, name, status=exc.status, error=translate(exc.message, lang()), errors=rows, more_errors=more,
            refused=_roles_note(principal) if exc.status == 403 else None, **context,
        )

    @expose("/<name>/dry-run", methods=["POST"])
    def dry_run(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            fingerprint = _digest_field()
        except FinCRMError as exc:
            return self._refused(principal, name, exc)
        return self._dry_run_page(principal, name, fingerprint)

    def _dry_run_page(self, principal: Principal, name: str, fingerprint: str | None) -> Any:
        """The package page with the plan of publishing the content whose digest is
        ``fingerprint`` (None: what a publish would pick by default)."""
        svc = services()
        doc: dict[str, Any] | None = None
        try:
            if fingerprint is not None:
                doc = _doc_with_digest(name, fingerprint)
                if doc is None:
                    return self._package_page(principal, name, status=404, error=_t("没有找到这个版本。", "There is no such version."))
            plan = svc.packages.publish(principal, name, dry_run=True, doc=doc)
            if doc is None and plan.get("digest"):
                doc = _doc_with_digest(name, plan["digest"])
        except FinCRMError as exc:
            return self._refused(principal, name, exc, doc)
        return self._package_page(principal, name, plan=plan_view(plan, labels_for(doc)))

    @expose("/<name>/publish", methods=["POST"])
    def publish(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        doc: dict[str, Any] | None = None
        try:
            fingerprint = _digest_field()
            doc = _doc_with_digest(name, fingerprint) if fingerprint is not None else None
            if doc is None:
                return self._package_page(principal, name, status=400, error=_t(
                    "请先试运行，确认发布计划后再发布。", "Run a dry run first, then publish the plan it shows."))
            started = time.perf_counter()
            plan = svc.packages.publish(principal, name, doc=doc)
            seconds = time.perf_counter() - started
            if not plan["noop"]:
                _sync_fab_roles()
        except FinCRMError as exc:
            return self._refused(principal, name, exc, doc)
        if plan["noop"]:
            flash(_t(f"{name} {plan['version']} 已是当前发布版本，没有变更。", f"{name} {plan['version']} is already published: nothing changed."), "info")
        else:
            view = plan_view(plan, labels_for(doc))
            flash(_t(f"已发布 {name} {plan['version']}（用时 {seconds:.2f} 秒）：", f"Published {name} {plan['version']} in {seconds:.2f} s: ")
                  + summary_text(view), "success")
        return redirect(url_for("PackagesPage.package", name=name))

    @expose("/<name>/rollback", methods=["POST"])
    def rollback(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            plan = services().packages.rollback(principal, name)
        except FinCRMError as exc:
            return self._refused(principal, name, exc)
        if plan["version"]:
            flash(_t(f"已将 {name} 从 {plan['rolled_back_from']} 回滚到 {plan['version']}。数据与数据库列均保留。",
                     f"Rolled {name} back from {plan['rolled_back_from']} to {plan['version']}. Data and columns are kept."), "success")
        else:
            flash(_t(f"已取消发布 {name} {plan['rolled_back_from']}。数据与数据库列均保留，再次发布即可恢复。",
                     f"Unpublished {name} {plan['rolled_back_from']}. Data and columns are kept; publishing again brings them back."), "success")
        return redirect(url_for("PackagesPage.package", name=name))

    @expose("/<name>/export")
    def export(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        version = (request.args.get("version") or "").strip() or None
        if version is not None and not _VERSION.fullmatch(version):
            return self._package_page(principal, name, status=400, error=_t(
                "版本号应为 主版本.次版本.修订号，例如 1.0.1。", "The version must be MAJOR.MINOR.PATCH, e.g. 1.0.1."))
        try:
            doc = services().packages.export(principal, name, version)
        except FinCRMError as exc:
            return self._refused(principal, name, exc)
        body = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
        return Response(body, mimetype="application/json", headers={
            "Content-Disposition": f'attachment; filename="{doc["name"]}-{doc["version"]}.json"',
        })


def _digest_field() -> str | None:
    raw = str(request.form.get("digest") or "").strip().lower()
    if not raw:
        return None
    if not _DIGEST.fullmatch(raw):
        raise BadRequest("digest must be 64 hexadecimal characters", [{"field": "digest", "message": "must be 64 hexadecimal characters"}])
    return raw


def _roles_note(principal: Principal) -> str | None:
    """Why someone who may publish packages was refused: the package changes roles."""
    if permits(services().authz, principal, "meta_roles", "configure"):
        return None
    return _t(
        "此模板会修改角色权限：发布或回滚需要“角色与权限”的配置权（系统管理员）。模板发布员可以发布不含角色变更的模板（职责分离）。",
        "This package changes roles: publishing or rolling it back needs configure on roles (the administrator). "
        "A template publisher may publish packages without role changes (segregation of duties).",
    )


def _may_open_workbench(principal: Principal) -> bool:
    """Whether the workbench's index opens for ``principal`` (it needs an entity to configure)."""
    try:
        services().meta.configurable(principal)
    except FinCRMError:
        return False
    return True


def _max_bytes() -> int:
    """The largest package file: the app's request size limit (as for the API's upload)."""
    return int(request.max_content_length or DEFAULT_MAX_BYTES)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{max(1, n // 1024)} KB"
