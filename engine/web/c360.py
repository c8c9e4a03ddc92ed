"""The customer-360 page (``/c360/<id>``) and a relationship manager's "My work" (``/mywork/``).

Both render what :mod:`engine.services.customer360` reads through the records service, so they
show exactly what the API would (same scope, masking, grants, audit). The 360 page's chart
draws from a JSON data block with the vendored ECharts (``static/vendor/echarts``) and
``static/fincrm/c360.js``: no inline script, no CDN. Masked fields can be asked for in clear
with the break-glass request form, which posts to this module and calls the access service.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, NoReturn

from flask import Flask, abort, flash, redirect, request, url_for
from flask_appbuilder import AppBuilder, BaseView, expose
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from ..errors import FinCRMError, Forbidden, NotAuthenticated
from ..fieldtypes import LOCAL_TZ
from ..i18n import translate
from ..meta.spec import EntitySpec, FieldSpec
from ..security.principal import Principal
from ..services.access import DEFAULT_MINUTES
from ..services.customer360 import Customer360, MyWork
from ..security.authz import permits
from .auth import current_principal, optimistic_read, refresh_request_state
from .context import services
from .pages import display, lang, money

__all__ = ["Customer360Pages", "MyWorkPage", "register_c360"]

ACCESS_MINUTES = (30, 60, DEFAULT_MINUTES, 240, 480)


def _t(zh: str, en: str) -> str:
    return en if lang() == "en" else zh


def _signed_in() -> bool:
    return bool(current_user and current_user.is_authenticated)


def _login_redirect() -> Any:
    return redirect(url_for("AuthDBView.login", next=request.full_path))


def _principal() -> Principal | None:
    try:
        return current_principal()
    except NotAuthenticated:
        return None


def _http_error(exc: FinCRMError) -> NoReturn:
    """Pages answer a record outside the reader's scope as the API does: not found."""
    if exc.status in (403, 404):
        abort(exc.status)
    raise exc


class _Cells:
    """Labels and display values of entity fields for templates (missing fields show empty)."""

    def __init__(self) -> None:
        self.registry = services().runtime.cached_snapshot().registry

    def field(self, entity: str, name: str) -> FieldSpec | None:
        spec = self.registry.entities.get(entity)
        return spec.live_field(name) if spec is not None else None

    def label(self, entity: str, name: str) -> str:
        f = self.field(entity, name)
        return f.label.get(lang()) if f is not None else name

    def value(self, entity: str, name: str, item: dict[str, Any]) -> Any:
        f = self.field(entity, name)
        return display(f, item.get(name)) if f is not None else ""

    def spec(self, entity: str) -> EntitySpec | None:
        return self.registry.entities.get(entity)


@optimistic_read
def _load_360(customer_id: int) -> tuple[Principal | None, dict[str, Any] | None]:
    principal = _principal()
    if principal is None:
        return None, None
    return principal, Customer360(services().records).view(principal, customer_id)


@optimistic_read
def _load_mywork() -> tuple[Principal | None, dict[str, Any] | None]:
    principal = _principal()
    if principal is None:
        return None, None
    return principal, MyWork(services().records).view(principal)


def chart_data(monthly: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The monthly series as the chart script reads them (amounts as exact decimal strings)."""
    if monthly is None:
        return None
    return {
        "months": [m["month"] for m in monthly],
        "in": [str(m["in"]) for m in monthly],
        "out": [str(m["out"]) for m in monthly],
        "count": [m["count"] for m in monthly],
        "labels": {
            "in": _t("转入/申购", "In"),
            "out": _t("转出/赎回", "Out"),
            "count": _t("笔数", "Count"),
        },
        "locale": "en-US" if lang() == "en" else "zh-CN",
        "currency": "CNY",
    }


class Customer360Pages(BaseView):
    route_base = "/c360"
    default_view = "customer"

    @expose("/<int:customer_id>")
    def customer(self, customer_id: int) -> Any:
        if not _signed_in():
            return _login_redirect()
        try:
            principal, data = _load_360(customer_id)
        except FinCRMError as exc:
            _http_error(exc)
        if principal is None or data is None:
            return _login_redirect()
        cells = _Cells()
        customer = data["customer"]
        may_request = bool(data["masked_fields"]) and permits(services().authz, principal, "access_requests", "create")
        return self.render_template(
            "fincrm/c360.html",
            data=data,
            customer=customer,
            cells=cells,
            chart=chart_data(data["monthly"]),
            may_request=may_request,
            minutes=ACCESS_MINUTES,
            default_minutes=DEFAULT_MINUTES,
            expires=lambda moment: _local(moment),
            lang=lang(),
            csrf_token=generate_csrf(),
        )

    @expose("/<int:customer_id>/access-request", methods=["POST"])
    def request_access(self, customer_id: int) -> Any:
        """Ask to see masked fields of this customer in clear (break-glass): pending until a
        supervisor approves; the page then shows the request as pending."""
        if not _signed_in():
            return _login_redirect()
        refresh_request_state()
        try:
            principal = current_principal()  # checks the form's CSRF token
        except NotAuthenticated:
            return _login_redirect()
        except Forbidden:
            abort(400)
        form = request.form
        minutes_text = form.get("minutes", "")
        payload: dict[str, Any] = {
            "entity": "customer",
            "record_id": customer_id,
            "fields": form.getlist("fields"),
            "reason": form.get("reason", ""),
            "minutes": int(minutes_text) if minutes_text.isdigit() else DEFAULT_MINUTES,
        }
        target = url_for("Customer360Pages.customer", customer_id=customer_id) + "#c360-access"
        try:
            services().access.create(principal, payload)
        except FinCRMError as exc:
            if exc.status == 404:
                abort(404)
            reasons = "；".join(translate(str(d.get("message", "")), lang()) for d in exc.details)
            flash(_t("申请未提交：", "Request not sent: ") + translate(exc.message, lang()) + (f"（{reasons}）" if reasons else ""), "danger")
            return redirect(target)
        flash(_t("查看申请已提交，等待主管审批。", "Access request sent; waiting for a supervisor's approval."), "success")
        return redirect(target)


class MyWorkPage(BaseView):
    route_base = "/mywork"
    default_view = "mywork"

    @expose("/")
    def mywork(self) -> Any:
        if not _signed_in():
            return _login_redirect()
        try:
            principal, data = _load_mywork()
        except FinCRMError as exc:
            _http_error(exc)
        if principal is None or data is None:
            return _login_redirect()
        cells = _Cells()
        stages = []
        opportunities = data["opportunities"]
        stage_field = cells.field("opportunity", "stage")
        if opportunities is not None and stage_field is not None:
            for option in stage_field.options:
                items = [o for o in opportunities if o.get("stage") == option.value]
                if items:
                    stages.append((option, items))
        return self.render_template(
            "fincrm/mywork.html", data=data, cells=cells, stages=stages, lang=lang(),
        )


def _local(moment: Any) -> str:
    """A naive-UTC datetime as local time for people (``2024-05-01 18:00``)."""
    if not isinstance(moment, dt.datetime):
        return ""
    return moment.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


def yuan(value: Any) -> str:
    """Jinja filter ``|yuan``: ¥ with thousands separators and two decimals (¥1,234,567.89)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and "*" in value:
        return value  # a masked amount stays as the server masked it
    return money(Decimal(str(value)).quantize(Decimal("0.01")), "CNY")


def register_c360(app: Flask, appbuilder: AppBuilder) -> None:
    """Add the 360 and My work pages and their template filter (called once by create_app)."""
    app.add_template_filter(yuan, "yuan")
    appbuilder.add_view_no_menu(Customer360Pages())
    appbuilder.add_view_no_menu(MyWorkPage())
