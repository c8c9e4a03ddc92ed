"""The low-code workbench: server-rendered pages under ``/workbench/`` for people who may
``configure`` — fields (add, edit, archive, promote, order), list columns, form sections, a
preview before saving, tags in use, version history with revert, and the role matrix.

Every page and every change goes through the metadata and role services, which check the
``configure`` right, validate, version and audit; this module only turns forms into service
calls and service errors into messages beside the inputs. Nothing here decides permissions.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Mapping

from flask import abort, flash, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_wtf.csrf import generate_csrf

from ..errors import FinCRMError
from ..fieldtypes import FIELD_TYPES
from ..i18n import translate
from ..meta.spec import EntitySpec, FieldSpec
from ..security.authz import effective_mask, permits
from ..security.masking import mask_value
from .context import services
from .pages import _fresh, _login_redirect, _principal_or_login, _t, display, lang

__all__ = ["WorkbenchView", "field_doc_from_form", "field_changes_from_form", "error_inputs", "grants_from_form", "role_matrix"]

ACTIONS = ("read", "create", "update", "delete", "export", "import", "approve", "unmask", "configure")
SCOPES = ("own", "team", "branch", "all")
AREAS = ("audit", "meta_roles", "access_requests", "outbox", "interfaces", "packages")  # grant targets that are not entities
WORDS: Mapping[str, tuple[str, str]] = {
    "read": ("查看", "read"), "create": ("新建", "create"), "update": ("修改", "update"), "delete": ("删除", "delete"),
    "export": ("导出", "export"), "import": ("导入", "import"), "approve": ("审批", "approve"), "unmask": ("查看明文", "unmask"),
    "configure": ("配置", "configure"), "own": ("本人", "own"), "team": ("团队", "team"), "branch": ("本机构", "branch"),
    "all": ("全部", "all"), "*": ("所有对象", "every entity"), "audit": ("审计日志", "audit trail"),
    "meta_roles": ("角色与权限", "roles"), "access_requests": ("敏感数据查看申请", "access requests"),
    "outbox": ("通知发件箱", "notification outbox"),
    "interfaces": ("接口调用与死信", "interface calls and dead letters"),
    "packages": ("模板发布", "template packages"),
}
SENSITIVITIES = ("C1", "C2", "C3")
MASKS = ("name", "mobile", "id", "card", "email", "full", "none")
# which optional attributes a type uses; the others are not sent (the page hides their inputs)
USES: Mapping[str, frozenset[str]] = {
    "options": frozenset({"enum", "multi_enum"}),
    "ref": frozenset({"ref"}),
    "precision": frozenset({"decimal"}),
    "scale": frozenset({"decimal"}),
    "min": frozenset({"integer", "decimal"}),
    "max": frozenset({"integer", "decimal"}),
    "max_length": frozenset({"string", "text", "email", "url"}),
    "pattern": frozenset({"string"}),
}
# the inputs of the field form; an error about anything else is shown above the form
INPUTS = frozenset({"name", "label_zh", "label_en", "type", "ref", "options", "required", "sensitivity", "mask", "storage", *USES})
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUM = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", re.ASCII)
SAMPLES: Mapping[str, Any] = {
    "string": "示例文本",
    "text": "第一行 示例",
    "integer": 42,
    "decimal": "1234567.50",
    "boolean": True,
    "date": "2024-06-30",
    "datetime": "2024-06-30T02:00:00Z",
    "email": "someone@example.com",
    "cn_mobile": "13800138000",
    "cn_id": "11010519491231002X",
    "bank_card": "6222021234567890123",
    "url": "https://example.com",
    "user": "张三",
    "ref": "#1",
}


# ---------------------------------------------------------------------- forms → documents


def _text(form: Mapping[str, Any], key: str) -> str:
    return str(form.get(key) or "").strip()


def _options(raw: str) -> list[dict[str, Any]]:
    """``value|中文|English`` per line (labels default to the value, English to the Chinese)."""
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        value = parts[0]
        zh = parts[1] if len(parts) > 1 and parts[1] else value
        en = parts[2] if len(parts) > 2 and parts[2] else zh
        out.append({"value": value, "label": {"zh": zh, "en": en}})
    return out


def options_text(options: Any) -> str:
    return "\n".join(f"{o['value']}|{o['label']['zh']}|{o['label']['en']}" for o in options or [])


def _number(form: Mapping[str, Any], key: str, errors: dict[str, str], *, whole: bool) -> Any:
    raw = _text(form, key).replace(",", "")
    if not raw:
        return None
    if _INT.fullmatch(raw):
        return int(raw)
    if not whole and _NUM.fullmatch(raw):
        return raw  # a decimal bound stays text: Decimal, never float
    errors[key] = "must be an integer" if whole else "must be a decimal number"
    return None


def _attributes(form: Mapping[str, Any], ftype: str, errors: dict[str, str]) -> dict[str, Any]:
    """The attributes the form sets, None for an empty input (only those the type uses)."""
    sensitivity = _text(form, "sensitivity")
    mask = _text(form, "mask")
    out: dict[str, Any] = {
        "label": {"zh": _text(form, "label_zh"), "en": _text(form, "label_en")},
        "type": ftype,
        "required": form.get("required") in ("1", "on", "true"),
        # C3 is offered so the refusal says why: it is never stored in the CRM (JR/T 0171)
        "sensitivity": sensitivity or None,
        "mask": mask or None,
    }
    if ftype in USES["options"]:
        out["options"] = _options(str(form.get("options") or "")) or None
    if ftype in USES["ref"]:
        out["ref"] = _text(form, "ref") or None
    for key in ("precision", "scale", "max_length"):
        if ftype in USES[key]:
            out[key] = _number(form, key, errors, whole=True)
    for key in ("min", "max"):
        if ftype in USES[key]:
            out[key] = _number(form, key, errors, whole=ftype == "integer")
    if ftype in USES["pattern"]:
        out["pattern"] = _text(form, "pattern") or None
    return out


def field_doc_from_form(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A new field's document from the add form, and input errors found before the service."""
    errors: dict[str, str] = {}
    ftype = _text(form, "type")
    doc: dict[str, Any] = {"name": _text(form, "name"), **_attributes(form, ftype, errors)}
    if _text(form, "storage"):
        doc["storage"] = _text(form, "storage")
    if doc["sensitivity"] == "C3":
        errors["sensitivity"] = "C3 data (passwords, CVN, one-time codes, biometrics) is never stored in the CRM"
    return {k: v for k, v in doc.items() if v is not None and v is not False}, errors


def field_changes_from_form(form: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """What the edit form changes on a field described as ``current`` (``None`` removes)."""
    errors: dict[str, str] = {}
    ftype = _text(form, "type") or current["type"]
    wanted = _attributes(form, ftype, errors)
    if wanted["sensitivity"] == "C3":
        errors["sensitivity"] = "C3 data (passwords, CVN, one-time codes, biometrics) is never stored in the CRM"
    wanted.pop("ref", None)  # the target of a reference is part of its identity
    wanted.pop("precision", None)
    wanted.pop("scale", None)
    changes = {}
    for key, value in wanted.items():
        before = current.get(key, False if key == "required" else None)
        if isinstance(before, (int, float)) and not isinstance(before, bool) and isinstance(value, str):
            before = str(before)
        if value != before and not (value is None and before is None):
            changes[key] = value
    return changes, errors


def error_inputs(exc: FinCRMError) -> tuple[dict[str, str], list[str]]:
    """A service error's details as messages per form input, and the rest for above the form."""
    by_input: dict[str, str] = {}
    other: list[str] = []
    for d in exc.details:
        key = _input_of(d)
        message = str(d.get("message", ""))
        if key in INPUTS and key not in by_input:
            by_input[key] = message
        else:
            other.append(f"{key}: {message}" if key else message)
    return by_input, other


def _input_of(detail: Mapping[str, Any]) -> str:
    parts = [p for p in str(detail.get("pointer") or "").split("/") if p != ""]
    if not parts and "pointer" not in detail:
        return str(detail.get("field") or "")
    if parts[:1] in (["entity"], ["overlay"]):
        parts = parts[2:]
    if parts[:1] == ["fields"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:  # a required property is reported at its parent: name the missing one
        missing = re.match(r"'(\w+)' is a required property", str(detail.get("message", "")))
        return missing.group(1) if missing else str(detail.get("field") or "")
    if parts[0] in ("label", "help") and len(parts) > 1:
        return f"{parts[0]}_{parts[1]}"
    return parts[0]


def form_values(f: Mapping[str, Any]) -> dict[str, Any]:
    """A described field as the field form's input values."""
    values = {k: ("" if v is None else v) for k, v in f.items() if k not in ("label", "options", "help")}
    values["label_zh"], values["label_en"] = f["label"]["zh"], f["label"]["en"]
    values["options"] = options_text(f.get("options"))
    return values


# ---------------------------------------------------------------------- roles


def role_matrix(doc: Mapping[str, Any], entities: list[str]) -> tuple[list[str], dict[tuple[str, str], str]]:
    """(rows, cells): the grant targets to show and the widest scope per (target, action)."""
    cells: dict[tuple[str, str], str] = {}
    rows = ["*", *entities, *AREAS]
    for g in doc.get("grants", []):
        if g["entity"] not in rows:
            rows.append(g["entity"])
        for action in g["actions"]:
            have = cells.get((g["entity"], action))
            if have is None or (g["scope"] in SCOPES and SCOPES.index(g["scope"]) > SCOPES.index(have)):
                cells[(g["entity"], action)] = g["scope"]
    return rows, cells


def grants_from_form(form: Mapping[str, Any], rows: list[str]) -> list[dict[str, Any]]:
    """The matrix back into grants: one per (target, scope), actions in the usual order."""
    grants = []
    for target in rows:
        by_scope: dict[str, list[str]] = {}
        for action in ACTIONS:
            scope = _text(form, f"scope__{target}__{action}")
            if scope:
                by_scope.setdefault(scope, []).append(action)
        for scope in sorted(by_scope, key=lambda s: SCOPES.index(s) if s in SCOPES else len(SCOPES)):
            grants.append({"entity": target, "actions": by_scope[scope], "scope": scope})
    return grants


# ---------------------------------------------------------------------- preview


def preview_of(f: FieldSpec) -> dict[str, Any]:
    """How a field will look: its form widget, and a sample list cell, clear and as masked."""
    if f.type == "enum":
        sample: Any = f.options[0].value if f.options else None
    elif f.type == "multi_enum":
        sample = [o.value for o in f.options[:2]]
    else:
        sample = SAMPLES.get(f.type, "…")
    rule = effective_mask(f)
    shown = display(f, sample) if f.type not in ("user", "ref") else sample
    return {
        "field": f,
        "widget": FIELD_TYPES[f.type].widget,
        "cell": shown,
        "masked": mask_value(rule, shown) if rule else None,
    }


# ---------------------------------------------------------------------- the view


class WorkbenchView(BaseView):
    route_base = "/workbench"
    default_view = "index"

    def _principal(self) -> Any:
        _fresh()
        return _principal_or_login()

    @expose("/")
    def index(self) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        specs = services().meta.configurable(principal)  # Forbidden (403) if none
        return self.render_template("fincrm/workbench/index.html", specs=specs, roles_ok=_may_edit_roles(principal), lang=lang())

    # ------------------------------------------------------------------ one entity

    @expose("/e/<entity>/")
    def entity(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        return self._entity_page(principal, entity)

    def _entity_page(self, principal: Any, entity: str, *, status: int = 200, **context: Any) -> Any:
        svc = services()
        spec = _configured(principal, entity)
        context.setdefault("values", {"storage": "json", "type": "string"})
        context.setdefault("errors", {})
        page = self.render_template(
            "fincrm/workbench/entity.html", spec=spec, tags=svc.meta.tags_in_use(principal, entity),
            types=sorted(FIELD_TYPES), all_entities=sorted(svc.runtime.cached_snapshot().registry.entities),
            sensitivities=SENSITIVITIES, masks=MASKS, uses={k: sorted(v) for k, v in USES.items()},
            sections_text=_sections_text(spec), tag_sets_text=_tag_sets_text(spec), csrf_token=generate_csrf(), lang=lang(), roles_ok=_may_edit_roles(principal), **context,
        )
        return page, status

    @expose("/e/<entity>/fields", methods=["POST"])
    def add_field(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        _configured(principal, entity)
        values = request.form.to_dict()
        doc, errors = field_doc_from_form(request.form)
        if errors:
            return self._entity_page(principal, entity, status=422, values=values, errors=errors, message=_t("字段未保存，请修正标红的项。", "Field not saved: please correct the items marked in red."))
        try:
            if request.form.get("preview"):
                built = svc.meta.preview_field(principal, entity, doc)
                return self._entity_page(principal, entity, values=values, preview=preview_of(built))
            svc.meta.add_field(principal, entity, doc)
        except FinCRMError as exc:
            if exc.status in (401, 403):
                raise
            by_input, other = error_inputs(exc)
            return self._entity_page(principal, entity, status=exc.status, values=values, errors=by_input, message=exc.message, other=other, code=exc.code)
        flash(_t("字段已添加：", "Field added: ") + doc["name"], "success")
        return redirect(url_for("WorkbenchView.entity", entity=entity) + f"#field-{doc['name']}")

    @expose("/e/<entity>/fields/<field>/edit", methods=["GET", "POST"])
    def edit_field(self, entity: str, field: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        spec = _configured(principal, entity)
        f = spec.live_field(field)
        if f is None:
            abort(404)
        current = svc.meta.describe_field(f)
        values = form_values(current)
        errors: dict[str, str] = {}
        context: dict[str, Any] = {}
        status = 200
        if request.method == "POST":
            values = request.form.to_dict()
            changes, errors = field_changes_from_form(request.form, current)
            try:
                if errors:
                    status, context["message"] = 422, _t("未保存，请修正标红的项。", "Not saved: please correct the items marked in red.")
                elif not changes:
                    context["message"] = _t("没有改动。", "Nothing changed.")
                elif request.form.get("preview"):
                    context["preview"] = preview_of(svc.meta.preview_field(principal, entity, changes, name=field))
                else:
                    svc.meta.patch_field(principal, entity, field, changes)
                    flash(_t("字段已修改：", "Field changed: ") + field, "success")
                    return redirect(url_for("WorkbenchView.entity", entity=entity) + f"#field-{field}")
            except FinCRMError as exc:
                if exc.status in (401, 403):
                    raise
                errors, context["other"] = error_inputs(exc)
                status, context["message"], context["code"] = exc.status, exc.message, exc.code
        return self.render_template(
            "fincrm/workbench/field.html", spec=spec, f=f, current=current, values=values, errors=errors, types=sorted(FIELD_TYPES),
            sensitivities=SENSITIVITIES, masks=MASKS, uses={k: sorted(v) for k, v in USES.items()}, csrf_token=generate_csrf(), lang=lang(),
            **context,
        ), status

    @expose("/e/<entity>/fields/<field>/archive", methods=["POST"])
    def archive_field(self, entity: str, field: str) -> Any:
        return self._change(entity, lambda p: services().meta.archive_field(p, entity, field), _t("字段已归档：", "Field archived: ") + field)

    @expose("/e/<entity>/fields/<field>/promote", methods=["POST"])
    def promote_field(self, entity: str, field: str) -> Any:
        return self._change(entity, lambda p: services().meta.promote_field(p, entity, field), _t("已转为数据库列：", "Promoted to a column: ") + field)

    @expose("/e/<entity>/fields/<field>/move", methods=["POST"])
    def move_field(self, entity: str, field: str) -> Any:
        def move(p: Any) -> Any:
            order = [f.name for f in services().meta.configured_entity(p, entity).fields]
            if field not in order:
                abort(404)
            i = order.index(field)
            j = i - 1 if request.form.get("direction") == "up" else i + 1
            if 0 <= j < len(order):
                order[i], order[j] = order[j], order[i]
            return services().meta.set_layout(p, entity, field_order=order)

        return self._change(entity, move, _t("字段顺序已保存", "Field order saved"))

    @expose("/e/<entity>/layout/columns", methods=["POST"])
    def list_columns(self, entity: str) -> Any:
        def save(p: Any) -> Any:
            spec = services().meta.configured_entity(p, entity)
            chosen = request.form.getlist("column")
            position = {f.name: i for i, f in enumerate(spec.live_fields)}
            ranked = []
            for name in dict.fromkeys(chosen):
                raw = _text(request.form, f"pos__{name}")
                ranked.append((int(raw) if _INT.fullmatch(raw) else 10_000, position.get(name, 10_000), name))
            return services().meta.set_layout(p, entity, list_columns=[name for _, _, name in sorted(ranked)])

        return self._change(entity, save, _t("列表列已保存", "List columns saved"), anchor="list-columns")

    @expose("/e/<entity>/layout/sections", methods=["POST"])
    def sections(self, entity: str) -> Any:
        def save(p: Any) -> Any:
            return services().meta.set_layout(p, entity, sections=_parse_sections(str(request.form.get("sections") or "")))

        return self._change(entity, save, _t("表单分组已保存", "Form sections saved"), anchor="sections")

    @expose("/e/<entity>/layout/tag-sets", methods=["POST"])
    def tag_sets(self, entity: str) -> Any:
        def save(p: Any) -> Any:
            return services().meta.set_layout(p, entity, tag_sets=_parse_tag_sets(str(request.form.get("tag_sets") or "")))

        return self._change(entity, save, _t("标签集已保存", "Tag sets saved"), anchor="tags")

    def _change(self, entity: str, call: Any, done: str, anchor: str = "fields") -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        _configured(principal, entity)
        try:
            call(principal)
        except FinCRMError as exc:
            if exc.status in (401, 403):
                raise
            _, other = error_inputs(exc)
            flash(_t("未保存：", "Not saved: ") + translate(exc.message, lang()) + "".join(f" · {translate(o, lang())}" for o in other), "danger")
            return redirect(url_for("WorkbenchView.entity", entity=entity) + f"#{anchor}")
        flash(done, "success")
        return redirect(url_for("WorkbenchView.entity", entity=entity) + f"#{anchor}")

    # ------------------------------------------------------------------ history

    @expose("/e/<entity>/history")
    def history(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        meta = services().meta
        spec = _configured(principal, entity)
        versions = [dict(v, kind="entity_overlay") for v in meta.history(principal, "entity_overlay", entity)]
        versions += [dict(v, kind="entity") for v in meta.history(principal, "entity", entity)]
        versions.sort(key=lambda v: (v["created_at"] or "", v["version"]), reverse=True)
        return self.render_template("fincrm/workbench/history.html", spec=spec, versions=versions, csrf_token=generate_csrf(), lang=lang(), pretty=_pretty)

    @expose("/e/<entity>/revert", methods=["POST"])
    def revert(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        _configured(principal, entity)
        kind = request.form.get("kind", "entity_overlay")
        version = request.form.get("version", "")
        if kind not in ("entity", "entity_overlay") or not version.isdigit():
            abort(400)
        try:
            services().meta.revert(principal, kind, entity, int(version))
        except FinCRMError as exc:
            if exc.status in (401, 403):
                raise
            flash(_t("未恢复：", "Not reverted: ") + translate(exc.message, lang()), "danger")
            return redirect(url_for("WorkbenchView.history", entity=entity))
        flash(_t("已恢复到版本 ", "Reverted to version ") + version, "success")
        return redirect(url_for("WorkbenchView.history", entity=entity))

    # ------------------------------------------------------------------ roles

    @expose("/roles/")
    def roles(self) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        docs = services().roles.list(principal)  # Forbidden (403) without configure on meta_roles
        entities = sorted(services().runtime.cached_snapshot().registry.entities)
        matrices = [(doc, *role_matrix(doc, entities)) for doc in docs]
        return self.render_template("fincrm/workbench/roles.html", matrices=matrices, actions=ACTIONS, words=WORDS, lang=lang())

    @expose("/roles/<name>", methods=["GET", "POST"])
    def role(self, name: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        doc = svc.roles.get(principal, name)
        reg = svc.runtime.cached_snapshot().registry
        rows, cells = role_matrix(doc, sorted(reg.entities))
        message, details, status = None, [], 200
        if request.method == "POST":
            new = {k: v for k, v in doc.items() if k not in ("kind", "name")}
            new["grants"] = grants_from_form(request.form, rows)
            try:
                svc.roles.put(principal, name, new)
                flash(_t("角色权限已保存并立即生效", "Role saved; it applies at once"), "success")
                return redirect(url_for("WorkbenchView.role", name=name))
            except FinCRMError as exc:
                if exc.status in (401, 403):
                    raise
                message, status = exc.message, exc.status
                details = [f"{d.get('pointer') or d.get('field', '')}: {d.get('message', '')}" for d in exc.details]
                _, cells = role_matrix({"grants": new["grants"]}, sorted(reg.entities))
        labels = {s.name: s.label for s in reg.entities.values()}
        return self.render_template(
            "fincrm/workbench/role.html", doc=doc, rows=rows, cells=cells, actions=ACTIONS, scopes=SCOPES, labels=labels, words=WORDS,
            message=message, details=details, csrf_token=generate_csrf(), lang=lang(),
        ), status


def _configured(principal: Any, entity: str) -> EntitySpec:
    """The entity's spec if the principal may configure it: 403 first (names are not probed), then 404."""
    try:
        return services().meta.configured_entity(principal, entity)
    except FinCRMError as exc:
        if exc.status == 404:
            abort(404)
        raise


def _may_edit_roles(principal: Any) -> bool:
    return permits(services().authz, principal, "meta_roles", "configure")


def _sections_text(spec: EntitySpec) -> str:
    return "\n".join(f"{s.name}|{s.label.zh}|{s.label.en}|{','.join(s.fields)}" for s in spec.sections)


def _layout_lines(raw: str) -> Iterator[tuple[str, dict[str, str], str]]:
    """``name|中文|English|rest`` per non-empty line → (name, label, rest); labels default
    to the Chinese one, then to the name."""
    for line in raw.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        parts += [""] * (4 - len(parts))
        yield parts[0], {"zh": parts[1] or parts[0], "en": parts[2] or parts[1] or parts[0]}, parts[3]


def _parse_sections(raw: str) -> list[dict[str, Any]]:
    """``name|中文|English|field1,field2`` per line."""
    return [
        {"name": name, "label": label, "fields": [f.strip() for f in re.split(r"[,，\s]+", rest) if f.strip()]}
        for name, label, rest in _layout_lines(raw)
    ]


def _tag_sets_text(spec: EntitySpec) -> str:
    def tag(o: Any) -> str:
        return o.value if o.label.en in ("", o.value) else f"{o.value}={o.label.en}"

    return "\n".join(f"{t.name}|{t.label.zh}|{t.label.en}|{','.join(tag(o) for o in t.tags)}" for t in spec.tag_sets)


def _parse_tag_sets(raw: str) -> list[dict[str, Any]]:
    """``name|中文|English|高净值=High net worth,潜力客户=Potential`` per line (English optional)."""
    out = []
    for name, label, rest in _layout_lines(raw):
        tags = []
        for item in re.split(r"[,，]+", rest):
            value, _, english = (x.strip() for x in item.partition("="))
            if value:
                tags.append({"value": value, "label": {"zh": value, "en": english or value}})
        out.append({"name": name, "label": label, "tags": tags})
    return out


def _pretty(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True)
