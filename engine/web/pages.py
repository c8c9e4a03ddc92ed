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

from ..errors import FinCRMError, NotAuthenticated
from ..fieldtypes import FIELD_TYPES, LOCAL_TZ
from ..meta.spec import EntitySpec, FieldSpec
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
}


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
        try:
            return f"{Decimal(value):,}"
        except ArithmeticError:
            return value
    if f.type == "user" and isinstance(value, int):
        return user_names().get(value, f"#{value}")
    return value


def user_names() -> dict[int, str]:
    """Staff display names, read once per request (one query) for user-type fields."""
    if "fincrm_user_names" not in g:
        sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
        model = sm.user_model
        rows = sm.session.query(model.id, model.first_name, model.last_name).all()
        g.fincrm_user_names = {r.id: f"{r.first_name}{r.last_name}" for r in rows}
    return g.fincrm_user_names  # type: ignore[no-any-return]


class HomeView(IndexView):
    index_template = "fincrm/index.html"

    @expose("/")
    def index(self) -> Any:
        if not current_user or not current_user.is_authenticated:
            return _login_redirect()
        _fresh()
        reg = services().runtime.cached_snapshot().registry
        return self.render_template(self.index_template, entities=sorted(reg.entities.values(), key=lambda s: s.name), lang=lang())


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
        reg = services().runtime.cached_snapshot().registry
        return self.render_template("fincrm/index.html", entities=sorted(reg.entities.values(), key=lambda s: s.name), lang=lang())

    @expose("/<entity>/")
    def list(self, entity: str) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        svc = services()
        spec = _spec_or_404(entity)
        args = request.args
        filt = None
        fname, op, fval = args.get("f_field"), args.get("f_op"), args.get("f_value", "")
        if fname and op:
            value: Any = fval
            if op == "is_null":
                value = fval not in ("0", "false", "否")
            filt = {"field": fname, "op": op, "value": value}
        error = None
        try:
            page = svc.records.list(
                principal, entity, filter=filt, sort=args.get("sort") or None, cursor=args.get("cursor") or None,
                q=args.get("q") or None, limit=50,
            )
            items, next_cursor = page.items, page.next_cursor
        except FinCRMError as exc:
            error, items, next_cursor = exc, [], None
        columns = [spec.live_field(c) for c in spec.columns if spec.live_field(c) is not None]
        titles = _ref_titles(principal, spec, columns, items)
        filterable = [f for f in spec.live_fields if not f.encrypted]
        return self.render_template(
            "fincrm/list.html", spec=spec, columns=columns, items=items, next_cursor=next_cursor, titles=titles,
            error=error, args=args, filterable=filterable, ops=OPS_LABELS, lang=lang(), display=display,
            field_ops={f.name: sorted(FIELD_TYPES[f.type].ops) for f in filterable},
        )

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
        except FinCRMError as exc:
            if exc.status == 404:
                abort(404)
            raise
        record = data["record"]
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
            "fincrm/detail.html", spec=spec, record=record, fields=fields, titles=titles, related=related, tags=tags,
            lang=lang(), display=display, csrf_token=generate_csrf(),
        )

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
        record: dict[str, Any] = {}
        view = svc.records.view(principal, entity)
        # only what this role may write; masked values are never put into inputs (saving the
        # form would write the mask back): their input starts empty and empty means "keep"
        fields = [f for f in spec.live_fields if not f.readonly and view.access[f.name].write and view.access[f.name].view != "hidden"]
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
                record = {**record, **{k: v for k, v in request.form.items()}}
        return self.render_template(
            "fincrm/form.html", spec=spec, record=record, fields=fields, errors=errors, message=message, rid=rid, masked=masked,
            lang=lang(), csrf_token=generate_csrf(), widgets={f.name: FIELD_TYPES[f.type].widget for f in fields},
        )

    @expose("/<entity>/<int:rid>/delete", methods=["POST"])
    def delete(self, entity: str, rid: int) -> Any:
        principal = self._principal()
        if principal is None:
            return _login_redirect()
        try:
            services().records.delete(principal, entity, rid, request.form.get("version"))
        except FinCRMError as exc:
            flash(exc.message, "danger")
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
            flash(exc.message, "danger")
        return redirect(url_for("RecordPages.detail", entity=entity, rid=rid))


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


def csp_nonce() -> str:
    """One nonce per request: Flask-AppBuilder's templates put it on their inline scripts."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce  # type: ignore[no-any-return]


def register_page_helpers(app: Flask) -> None:
    @app.context_processor
    def _helpers() -> dict[str, Any]:
        return {
            "L": lambda label: label.get(lang()) if label is not None else "",
            "T": _t,
            "lang_code": lang,
            "json": json,
            "csp_nonce": csp_nonce,
        }

    @app.after_request
    def _security_headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        # no inline script runs without this request's nonce; nothing loads from other origins
        resp.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; script-src 'self' 'nonce-{csp_nonce()}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
        )
        if resp.mimetype == "application/json":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp
