"""Generic record pages rendered from metadata: entity index, list, detail (360), form.

One view class serves every entity through ``/e/<entity>/…``, so an entity added at runtime
has pages at once. Pages call the same records service as the API (same scope, same masking);
forms post with the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from decimal import Decimal
from typing import Any

from flask import Flask, abort, current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, IndexView, expose
from flask_babel import get_locale
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from ..errors import FinCRMError, NotAuthenticated, VersionConflict
from ..fieldtypes import FIELD_TYPES, LOCAL_TZ
from ..i18n import translate
from ..meta.spec import EntitySpec, FieldSpec, Label
from .auth import current_principal, refresh_request_state
from .context import services

__all__ = ["RecordPages", "HomeView", "register_page_helpers", "lang"]

OPS_LABELS = {
    "eq": ("等于", "equals"),
    "ne": ("不等于", "not equal"),
    "contains": ("包含", "contains"),
    "startswith": ("开头是", "starts with"),
    "gt": ("大于", ">"),
    "gte": ("大于等于", "≥"),
    "lt": ("小于", "<"),
    "lte": ("小于等于", "≤"),
    "is_null": ("为空", "is empty"),
    "has": ("含标签/选项", "has"),
    "within_next_days": ("未来N天内", "within next N days"),
    "within_last_days": ("过去N天内", "within last N days"),
    "older_than_days": ("早于N天前", "more than N days ago"),
}


ACTION_LABELS = {
    "create": ("新建", "Created"),
    "update": ("修改", "Changed"),
    "delete": ("删除", "Deleted"),
    "retain": ("转入保留", "Retained"),
    "unmasked_read": ("查看明文", "Read in clear"),
    "tag_add": ("添加标签", "Tag added"),
    "tag_remove": ("移除标签", "Tag removed"),
    "bulk_create": ("批量导入", "Imported"),
    "personal_data_export": ("个人信息导出", "Personal data exported"),
    "transition": ("流程流转", "Moved along its flow"),
    "flow_vote": ("审批会签", "Approval vote"),
    "flow_escalated": ("超时升级", "Escalated (SLA)"),
}
WHEN = FieldSpec(name="ts", type="datetime", label=Label.of({"zh": "时间", "en": "When"}, "ts"))


def lang() -> str:
    loc = get_locale()
    return "en" if loc is not None and str(loc).startswith("en") else "zh"


def _t(zh: str, en: str) -> str:
    return en if lang() == "en" else zh


def _principal_or_login() -> Any:
    if not current_user or not current_user.is_authenticated:
        return None
    try:
        return current_principal()
    except NotAuthenticated:
        return None


def _fresh() -> None:
    refresh_request_state()


MAX_MESSAGES = 50  # per translation request: one 400's details, a job message


def json_principal() -> Any:
    """The caller of a page's JSON route: 401/403 as JSON (the error handlers see the Accept header)."""
    _fresh()
    return current_principal()


def translated_messages() -> Any:
    """A page's ``POST …/messages``: the engine's (English) messages in the user's language,
    ``{"lang", "messages": [...]}``, for a signed-in caller with the page's CSRF token."""
    from flask import jsonify

    from ..errors import BadRequest

    json_principal()
    body = request.get_json(silent=True)
    texts = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(texts, list) or len(texts) > MAX_MESSAGES or not all(isinstance(t, str) and len(t) <= 2000 for t in texts):
        raise BadRequest("send {\"messages\": [text, …]}", [{"field": "messages", "message": f"must be a list of at most {MAX_MESSAGES} texts"}])
    language = lang()
    return jsonify({"lang": language, "messages": [translate(t, language) for t in texts]})


def _login_redirect() -> Any:
    return redirect(url_for("AuthDBView.login", next=request.full_path))


def _option_label(f: FieldSpec, value: Any) -> Any:
    for o in f.options:
        if o.value == value:
            return o.label.get(lang())
    return value


def display(f: FieldSpec, value: Any) -> Any:
    """A value as a person reads it: option labels, yes/no, local time."""
    if value is None or value == "":
        return ""
    if f.type == "enum":
        return _option_label(f, value)
    if f.type == "multi_enum" and isinstance(value, list):
        return "、".join(str(_option_label(f, v)) for v in value)
    if f.type == "boolean":
        return _t("是", "Yes") if value else _t("否", "No")
    if f.type == "datetime" and isinstance(value, str) and value.endswith("Z"):
        moment = dt.datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")
    if f.type == "decimal" and isinstance(value, str) and "*" not in value:
        return money(value, f.currency) if f.currency else _grouped(value)
    if f.type == "user" and isinstance(value, int):
        return user_names().get(value, f"#{value}")
    return value


CURRENCY_SYMBOLS = {"CNY": "¥", "HKD": "HK$", "USD": "US$", "EUR": "€", "GBP": "£", "JPY": "JP¥"}


def _grouped(value: Any) -> str:
    try:
        return f"{Decimal(value):,}"
    except ArithmeticError:
        return str(value)


def money(value: Any, currency: str | None = "CNY") -> str:
    """zh_CN money: symbol, thousands separators, the stored scale (¥1,234,567.89; -¥12.00)."""
    if value is None or value == "":
        return ""
    text = _grouped(value)
    symbol = CURRENCY_SYMBOLS.get(currency or "", f"{currency} " if currency else "")
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"


def user_names() -> dict[int, str]:
    """Staff display names for user-type fields: one query per process and policy version
    (a new or renamed user moves the policy stamp)."""
    if "fincrm_user_names" not in g:
        svc = services()
        policy = refresh_request_state()[1]
        cached = svc.principal_cache.get(("staff_names", policy))
        if cached is None:
            sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
            model = sm.user_model
            rows = sm.session.query(model.id, model.first_name, model.last_name).all()
            cached = {r.id: f"{r.first_name}{r.last_name}" for r in rows}
            svc.principal_cache[("staff_names", policy)] = cached
        g.fincrm_user_names = cached
    return g.fincrm_user_names  # type: ignore[no-any-return]


class HomeView(IndexView):
    index_template = "fincrm/index.html"

    @expose("/")
    def index(self) -> Any:
        if not current_user or not current_user.is_authenticated:
            return _login_redirect()
        _fresh()
        if any(r.rule == "/mywork/" for r in current_app.url_map.iter_rules()):
            return redirect("/mywork/")  # a relationship manager's day starts with their work
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        return self.render_template(self.index_template, entities=_readable_entities(principal), lang=lang())


class RecordPages(BaseView):
    route_base = "/e"
    default_view = "entities"

    def _principal(self) -> Any:
        _fresh()
        return _principal_or_login()

    @expose("/")
    def entities(self) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        return self.render_template("fincrm/index.html", entities=_readable_entities(principal), lang=lang())

    @expose("/<entity>/")
    def list(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        spec = _spec_or_404(entity)
        args = request.args
        error = None
        views: list[dict[str, Any]] = []
        current_view = None
        try:
            views = svc.views.list(principal, entity)
            if args.get("view", "").isdigit():
                current_view = svc.views.get(principal, int(args["view"]))
        except FinCRMError as exc:
            if exc.status == 404 and current_view is None and args.get("view"):
                error = exc
            elif exc.status in (403, 404):
                abort(exc.status)
            else:
                raise
        conditions = _conditions(args)
        query = dict(current_view["query"]) if current_view else {}
        if conditions or "q" in args or "sort" in args or not current_view:
            query = {"filter": {"and": conditions} if conditions else None, "q": args.get("q") or None, "sort": args.get("sort") or None}
        count, capped = None, False
        try:
            page = svc.records.list(
                principal, entity, filter=query.get("filter"), sort=query.get("sort"), cursor=args.get("cursor") or None,
                q=query.get("q"), limit=50, with_count=args.get("count") == "1",
            )
            items, next_cursor, count, capped = page.items, page.next_cursor, page.count, page.count_capped
        except FinCRMError as exc:
            error, items, next_cursor = exc, [], None
        columns = [f for f in (spec.live_field(c) for c in spec.columns) if f is not None]
        titles = _ref_titles(principal, spec, columns, items)
        # a masked value may be neither sorted nor filtered on (its order would reveal it)
        clear = {f.name for f in spec.live_fields if svc.records.authz.field_access(principal, spec, f).clear}
        filterable = [f for f in spec.live_fields if not f.encrypted and f.name in clear]
        sortable = {f.name for f in columns if f.sortable and f.name in clear}
        shown = _condition_rows(query.get("filter"))
        keep = {k: v for k, v in (("q", query.get("q")), ("sort", query.get("sort"))) if v}
        return self.render_template(
            "fincrm/list.html", spec=spec, columns=columns, items=items, next_cursor=next_cursor, titles=titles, sortable=sortable,
            error=error, args=args, filterable=filterable, ops=OPS_LABELS, lang=lang(), display=display, count=count, capped=capped,
            field_ops={f.name: sorted(FIELD_TYPES[f.type].ops) for f in filterable}, rows=shown + [{}] * max(1, 3 - len(shown)),
            views=views, current_view=current_view, query=query, keep=keep, filter_args=_filter_args(shown), csrf_token=generate_csrf(),
        )

    @expose("/<entity>/views", methods=["POST"])
    def save_view(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        _spec_or_404(entity)
        form = request.form
        conditions = _conditions(form)
        query = {"filter": {"and": conditions} if conditions else None, "q": form.get("q") or None, "sort": form.get("sort") or None}
        try:
            view = services().views.save(principal, entity, form.get("name"), query, shared=form.get("shared") == "1")
        except FinCRMError as exc:
            flash(_t("视图未保存：", "View not saved: ") + translate(exc.message, lang()), "danger")
            return redirect(url_for("RecordPages.list", entity=entity))
        flash(_t("视图已保存", "View saved"), "success")
        return redirect(url_for("RecordPages.list", entity=entity, view=view["id"]))

    @expose("/<entity>/views/<int:view_id>/delete", methods=["POST"])
    def delete_view(self, entity: str, view_id: int) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            services().views.delete(principal, view_id)
            flash(_t("视图已删除", "View deleted"), "success")
        except FinCRMError as exc:
            flash(translate(exc.message, lang()), "danger")
        return redirect(url_for("RecordPages.list", entity=entity))

    @expose("/<entity>/<int:rid>")
    def detail(self, entity: str, rid: int) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        spec = _spec_or_404(entity)
        try:
            data = svc.records.related(principal, entity, rid, limit=10)
            tags = svc.records.tags(principal, entity, rid)
            history = svc.records.history(principal, entity, rid, limit=20)["items"]
        except FinCRMError as exc:
            if exc.status == 404:
                abort(404)
            raise
        record = data["record"]
        flow = None
        if svc.flows.flows(svc.runtime.cached_snapshot(), entity):
            try:
                flow = svc.flows.available(principal, entity, rid)
            except FinCRMError as exc:
                if exc.status not in (403, 404):
                    raise
        fields = [f for f in spec.live_fields if f.name in record]
        titles = _ref_titles(principal, spec, fields, [record])
        reg = svc.runtime.cached_snapshot().registry
        related = []
        for rel in spec.relations:
            block = data["relations"].get(rel.name)
            if block is None:
                continue
            rspec = reg.entity(rel.entity)
            rcols = [rspec.live_field(c) for c in rspec.columns if rspec.live_field(c) is not None and c != rel.field]
            related.append((rel, rspec, rcols, block, _ref_titles(principal, rspec, rcols, block["items"])))
        return self.render_template(
            "fincrm/detail.html", spec=spec, record=record, fields=fields, titles=titles, related=related, tags=tags, history=history,
            action_labels=ACTION_LABELS, datetime_spec=WHEN, flow=flow, staff_names=user_names() if flow else {}, role_labels=_role_labels() if flow else {},
            lang=lang(), display=display, csrf_token=generate_csrf(),
        )

    @expose("/<entity>/<int:rid>/transitions/<name>", methods=["POST"])
    def transition(self, entity: str, rid: int, name: str) -> Any:
        """A flow button of the detail page: take the transition (with the comment box's text)."""
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        _spec_or_404(entity)
        back = redirect(url_for("RecordPages.detail", entity=entity, rid=rid))
        try:
            out = svc.flows.transition(principal, entity, rid, name, request.form.get("comment"), expected_version=request.form.get("version") or None)
        except FinCRMError as exc:
            if exc.status == 404 and exc.code == "not_found" and not exc.details:
                abort(404)
            reasons = "；".join(translate(str(d.get("message", "")), lang()) for d in exc.details if d.get("field") == "comment")
            flash(_t("操作未完成：", "Not done: ") + translate(exc.message, lang()) + (f"（{_t('审批意见', 'comment')}：{reasons}）" if reasons else ""), "danger")
            return back
        result = out["transition"]
        flow = next((f for f in svc.flows.flows(svc.runtime.cached_snapshot(), entity) if f.name == result["flow"]), None)
        t = flow.transition(name) if flow else None
        state = flow.state(result["to"]) if flow else None
        if result["moved"]:
            flash(
                _t(f"已{t.label.zh if t else name}，当前状态：{state.label.zh if state else result['to']}", f"{t.label.en if t else name}: now {state.label.en if state else result['to']}"),
                "success",
            )
        else:
            flash(_t("已记录您的审批意见，还需其他审批人同意", "Your approval is recorded; another approver must approve too"), "info")
        return back

    @expose("/<entity>/new", methods=["GET", "POST"])
    def create(self, entity: str) -> Any:
        return self._form(entity, None)

    @expose("/<entity>/<int:rid>/edit", methods=["GET", "POST"])
    def edit(self, entity: str, rid: int) -> Any:
        return self._form(entity, rid)

    def _form(self, entity: str, rid: int | None) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        spec = _spec_or_404(entity)
        errors: dict[str, str] = {}
        message = None
        conflict = False
        record: dict[str, Any] = {}
        view = svc.records.view(principal, entity)
        # only what this role may write; masked values are never put into inputs (saving the
        # form would write the mask back): their input starts empty and empty means "keep"
        # a flow's state field moves only through the detail page's buttons
        flow_fields = {fl.field for fl in svc.flows.flows(svc.runtime.cached_snapshot(), entity)}
        fields = [
            f for f in spec.live_fields
            if not f.readonly and view.access[f.name].write and view.access[f.name].view != "hidden" and f.name not in flow_fields
        ]
        masked = {f.name: "" for f in fields if view.access[f.name].view == "masked"}
        if rid is not None:
            record = svc.records.get(principal, entity, rid)
            masked = {name: record.get(name) or "" for name in masked}
            record = {k: v for k, v in record.items() if k not in masked}
        if request.method == "POST":
            payload = _form_payload(fields, request.form, masked)
            try:
                if rid is None:
                    saved = svc.records.create(principal, entity, payload)
                else:
                    saved = svc.records.update(principal, entity, rid, payload, request.form.get("version"))
                flash(_t("已保存", "Saved"), "success")
                return redirect(url_for("RecordPages.detail", entity=entity, rid=saved["id"]))
            except FinCRMError as exc:
                if exc.status in (401, 403) and exc.code != "forbidden":
                    raise
                message = exc.message
                errors = {d.get("field", ""): d.get("message", "") for d in exc.details}
                if isinstance(exc, VersionConflict):
                    conflict = True
                    message = _t(
                        "保存失败：此记录已被他人修改。您的输入仍在下方；请打开最新版本核对后再保存。",
                        "Not saved: someone else changed this record meanwhile. Your input is kept below; open the latest version, compare, then save again.",
                    )
                record = {**record, **{k: v for k, v in request.form.items()}}
        return self.render_template(
            "fincrm/form.html", spec=spec, record=record, fields=fields, errors=errors, message=message, rid=rid, masked=masked, conflict=conflict,
            lang=lang(), csrf_token=generate_csrf(), widgets={f.name: FIELD_TYPES[f.type].widget for f in fields},
            choices=_choices(principal, fields), groups=_form_groups(spec, fields),
        )

    @expose("/<entity>/<int:rid>/delete", methods=["POST"])
    def delete(self, entity: str, rid: int) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            services().records.delete(principal, entity, rid, request.form.get("version"))
        except FinCRMError as exc:
            flash(translate(exc.message, lang()), "danger")
            return redirect(url_for("RecordPages.detail", entity=entity, rid=rid))
        flash(_t("已删除", "Deleted"), "success")
        return redirect(url_for("RecordPages.list", entity=entity))

    @expose("/<entity>/<int:rid>/tags", methods=["POST"])
    def tag(self, entity: str, rid: int) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            if request.form.get("remove"):
                services().records.remove_tag(principal, entity, rid, request.form.get("remove"))
            else:
                services().records.add_tag(principal, entity, rid, request.form.get("tag"))
        except FinCRMError as exc:
            flash(translate(exc.message, lang()), "danger")
        return redirect(url_for("RecordPages.detail", entity=entity, rid=rid))


def _role_labels() -> dict[str, str]:
    """Role names as people read them (approver slots on the flow panel)."""
    return {d["name"]: (d.get("label") or {}).get(lang()) or d["name"] for d in services().roles.documents()}


def _form_groups(spec: EntitySpec, fields: list[FieldSpec]) -> list[tuple[Any, list[FieldSpec]]]:
    """The form's fields in the entity's sections (label, fields); fields in no section follow
    the last one, untitled (as the entity schema says). Without sections: one untitled group."""
    by_name = {f.name: f for f in fields}
    placed: set[str] = set()
    groups: list[tuple[Any, list[FieldSpec]]] = []
    for sec in spec.sections:
        members = [by_name[n] for n in sec.fields if n in by_name]
        placed.update(n for n in sec.fields)
        if members:
            groups.append((sec, members))
    rest = [f for f in fields if f.name not in placed]
    return groups + ([(None, rest)] if rest else [])


REF_CHOICES_MAX = 200


def _choices(principal: Any, fields: list[FieldSpec]) -> dict[str, list[tuple[int, str]]]:
    """Options for reference and staff fields: the records of the target entity the user may
    read (one scoped query per field, up to 200 — beyond that the form asks for the id), or
    the staff directory."""
    svc = services()
    reg = svc.runtime.cached_snapshot().registry
    out: dict[str, list[tuple[int, str]]] = {}
    for f in fields:
        if f.type == "user":
            out[f.name] = sorted(user_names().items(), key=lambda kv: kv[1])
        elif f.type == "ref" and f.ref is not None and f.ref in reg.entities:
            target = reg.entity(f.ref)
            title = target.title_field
            try:
                page = svc.records.list(principal, target.name, fields=[title] if title else [], sort=title, limit=REF_CHOICES_MAX)
            except FinCRMError:
                continue
            if page.next_cursor is None:
                out[f.name] = [(i["id"], str(i.get(title) or f"#{i['id']}") if title else f"#{i['id']}") for i in page.items]
    return out


def _readable_entities(principal: Any) -> list[EntitySpec]:
    svc = services()
    reg = svc.runtime.cached_snapshot().registry
    specs = [s for s in reg.entities.values() if principal.is_system or svc.authz.scope_of(principal, s.name, "read") is not None]
    return sorted(specs, key=lambda s: s.name)


def _conditions(args: Any) -> list[dict[str, Any]]:
    """The filter rows of a list page (``f_field``/``f_op``/``f_value``, repeated) as DSL
    conditions, AND-ed by the caller; incomplete rows are skipped."""
    out = []
    for name, op, raw in zip(args.getlist("f_field"), args.getlist("f_op"), args.getlist("f_value")):
        if not name or not op:
            continue
        value: Any = raw
        if op == "is_null":
            value = raw.strip().lower() not in ("0", "false", "否", "no")
        elif op in ("in", "nin", "has"):
            value = [v.strip() for v in raw.replace("，", ",").split(",") if v.strip()]
        out.append({"field": name, "op": op, "value": value})
    return out


def _condition_rows(filt: Any) -> list[dict[str, Any]]:
    """A stored filter back into page rows (only the flat AND of conditions the page makes)."""
    if not isinstance(filt, dict):
        return []
    parts = filt.get("and", [filt]) if "and" in filt else [filt]
    rows = []
    for c in parts:
        if isinstance(c, dict) and {"field", "op"} <= set(c):
            value = c.get("value")
            rows.append({"field": c["field"], "op": c["op"], "value": ",".join(map(str, value)) if isinstance(value, list) else value})
    return rows


def _filter_args(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The rows as query-string pairs, so paging and sorting links keep the filter."""
    pairs: list[tuple[str, Any]] = []
    for r in rows:
        value = r.get("value")
        pairs += [("f_field", r["field"]), ("f_op", r["op"]), ("f_value", "" if value is None else value)]
    return pairs


def _spec_or_404(entity: str) -> EntitySpec:
    reg = services().runtime.cached_snapshot().registry
    if entity not in reg.entities:
        abort(404)
    return reg.entity(entity)


def _form_payload(fields: list[FieldSpec], form: Any, masked: dict[str, Any]) -> dict[str, Any]:
    """Form fields → API-shaped payload; empty inputs mean "no value", except for masked
    fields, where they mean "keep what is stored"."""
    payload: dict[str, Any] = {}
    for f in fields:
        if f.name in masked and not form.get(f.name, "").strip():
            continue
        if f.type == "multi_enum":
            if f.name in form or f"{f.name}__present" in form:
                payload[f.name] = form.getlist(f.name)
            continue
        if f.type == "boolean":
            if f"{f.name}__present" in form:
                payload[f.name] = f.name in form
            continue
        if f.name in form:
            value = form.get(f.name, "")
            payload[f.name] = value if value.strip() else None
    return payload


def _ref_titles(principal: Any, spec: EntitySpec, fields: list[Any], items: list[dict[str, Any]]) -> dict[tuple[str, Any], str]:
    """Titles of referenced records, one scoped query per referenced entity."""
    svc = services()
    reg = svc.runtime.cached_snapshot().registry
    titles: dict[tuple[str, Any], str] = {}
    for f in fields:
        if f is None or f.type != "ref":
            continue
        target = reg.entities.get(f.ref or "")
        ids = sorted({i[f.name] for i in items if isinstance(i.get(f.name), int)})
        if target is None or not ids or not target.title_field:
            continue
        try:
            page = svc.records.list(principal, target.name, filter={"field": "id", "op": "in", "value": ids}, fields=[target.title_field], limit=min(len(ids), 500))
        except FinCRMError:
            continue  # the reader may not see that entity: ids stay as they are
        for item in page.items:
            titles[(target.name, item["id"])] = item.get(target.title_field) or f"#{item['id']}"
    return titles


JSON_CSP = "default-src 'none'; frame-ancestors 'none'"


def csp_nonce() -> str:
    """One nonce per request: Flask-AppBuilder's templates put it on their inline scripts."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce  # type: ignore[no-any-return]


def _is_admin() -> bool:
    """From the cached principal: Flask-AppBuilder's own menu (users, roles, permissions) is for
    admins only, and asking FAB costs three queries per page for everyone else."""
    try:
        return "admin" in current_principal().roles
    except FinCRMError:
        return False


def nav_items() -> list[dict[str, Any]]:
    """The navbar: My work, customers, the entity index, the workbench (configure only), each
    only if its page exists in this app and the user's role may open it."""
    if not current_user or not current_user.is_authenticated:
        return []
    try:
        principal = current_principal()
    except FinCRMError:
        return []
    svc = services()
    rules = {r.rule for r in current_app.url_map.iter_rules()}
    path = request.path
    items = []

    def add(key: str, href: str, zh: str, en: str, icon: str, badge: str | None = None) -> None:
        if href in rules or href.startswith("/e/"):
            items.append({"key": key, "href": href, "label": _t(zh, en), "icon": icon, "active": path.startswith(href) and href != "/", "badge": badge})

    add("mywork", "/mywork/", "我的工作", "My work", "fa-briefcase")
    if "/notifications/" in rules:
        unread = svc.notifications.unread_badge(principal)  # counted at most every 30 s per user
        add("notifications", "/notifications/", "通知", "Notifications", "fa-bell", (f"{unread}" if unread < 100 else "99+") if unread else None)
    if svc.authz.scope_of(principal, "customer", "read") is not None:
        add("customers", "/e/customer/", "客户", "Customers", "fa-users")
    add("objects", "/e/", "业务对象", "Objects", "fa-th")
    if principal.is_system or any(svc.authz.scope_of(principal, name, "configure") for name in ("customer", "*")):
        add("workbench", "/workbench/", "配置工作台", "Workbench", "fa-wrench")
    return items


_COMMON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin"))
_JSON_HEADERS = (*_COMMON_HEADERS, ("Content-Security-Policy", JSON_CSP), ("Cache-Control", "no-store"))


def register_page_helpers(app: Flask) -> None:
    @app.context_processor
    def _helpers() -> dict[str, Any]:
        return {
            "L": lambda label: label.get(lang()) if label is not None else "",
            "T": _t,
            "lang_code": lang,
            "json": json,
            "csp_nonce": csp_nonce,
            "fincrm_nav": nav_items,
            "fincrm_is_admin": _is_admin,
            "money": money,
            "M": lambda message: translate(str(message), lang()),
        }

    @app.after_request
    def _security_headers(resp: Any) -> Any:
        # each header only where the view did not set its own (what ``setdefault`` does, without
        # Werkzeug raising and catching a KeyError per absent header: a few per cent of an API call)
        headers = resp.headers
        present = {name.lower() for name in headers.keys()}
        if resp.mimetype == "application/json":
            # data, never a document: nothing may run or load in it
            wanted: tuple[tuple[str, str], ...] = _JSON_HEADERS
        else:
            # no inline script runs without this request's nonce; nothing loads from other origins
            csp = (
                f"default-src 'self'; script-src 'self' 'nonce-{csp_nonce()}'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
            )
            wanted = (*_COMMON_HEADERS, ("Content-Security-Policy", csp))
        for name, value in wanted:
            if name.lower() not in present:
                headers.add(name, value)
        return resp
