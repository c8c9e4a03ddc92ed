"""The report pages (``/reports/``, ``/reports/<name>``) and the dashboard (``/dashboard/``,
数据驾驶舱).

The pages are clients of the JSON API (DESIGN §3): the browser runs a report through
``/api/v1/reports/<name>``, saves an edited report document with ``PUT
/api/v1/meta/reports/<name>`` (session cookie + CSRF header) and reads the dashboard's figures
from ``/api/v1/reports/…``, ``/api/v1/analytics/…`` and ``/api/v1/insight/keywords``, so every
row it shows was scoped and masked by the server. The HTML shell carries metadata only
(labels, parameters with their resolved defaults, the fields a report editor may choose):
never a record. Scripts and ECharts are served by the app itself (static/fincrm/insight.js,
static/vendor/echarts), with the request's CSP nonce.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from flask_appbuilder import BaseView, expose
from flask_login import current_user
from flask_wtf.csrf import generate_csrf

from ..errors import BadRequest, FinCRMError, Forbidden, NotFound
from ..fieldtypes import FIELD_TYPES
from ..insight.reportspec import DATE_BUCKETS, NUMBER_TYPES, ORDERED_TYPES, ReportSpec
from ..meta.spec import EntitySpec, FieldSpec, Label
from ..security.principal import Principal
from ..security.authz import permits
from .auth import current_principal
from .context import services
from .pages import OPS_LABELS, translated_messages, _fresh, _login_redirect, _principal_or_login, _t, lang
from .reports_api import reports

__all__ = ["InsightPages", "insight_nav_links", "editor_fields", "dashboard_cards"]


# filter operators the editor offers beyond the list page's (pages.OPS_LABELS)
EXTRA_OPS = {
    "in": ("属于", "is one of"),
    "nin": ("不属于", "is none of"),
    "between": ("介于", "between"),
}
AGG_LABELS = {
    "count": ("计数", "Count"),
    "count_distinct": ("去重计数", "Distinct count"),
    "sum": ("合计", "Sum"),
    "avg": ("平均", "Average"),
    "min": ("最小", "Minimum"),
    "max": ("最大", "Maximum"),
}
BUCKET_LABELS = {"day": ("按日", "by day"), "week": ("按周", "by week"), "month": ("按月", "by month"),
                 "quarter": ("按季", "by quarter"), "year": ("按年", "by year")}

# The dashboard's analytics cards, merged with the reports that have a ``dashboard`` entry by
# ``order`` (the core reports use 10, 20, 30, 60: channel efficiency and churn risk sit
# between monthly activity and ticket handling). Each hides itself when its API answers
# 403/404, so the page works for every role and before an API exists.
ANALYTICS_CARDS: tuple[dict[str, Any], ...] = (
    {"key": "channels", "order": 40, "width": "half", "api": "/api/v1/analytics/channels",
     "title": ("渠道获客转化与成本", "Channel conversion and acquisition cost")},
    {"key": "churn", "order": 50, "width": "half", "api": "/api/v1/analytics/churn?limit=8",
     "title": ("流失高风险客户", "Customers at churn risk")},
    {"key": "nps", "order": 70, "width": "half", "api": "/api/v1/analytics/nps?period=month&periods=12",
     "title": ("NPS净推荐值趋势", "NPS trend")},
    {"key": "rfm", "order": 80, "width": "half", "api": "/api/v1/analytics/rfm?limit=1",
     "title": ("RFM客户价值分层", "RFM value segments")},
    {"key": "keywords", "order": 90, "width": "half", "api": "/api/v1/insight/keywords?period=month&periods=6&top=20",
     "title": ("投诉热点关键词", "Complaint keywords by month")},
)
KPI_API = "/api/v1/analytics/kpis"


def _label(label: Label) -> dict[str, str]:
    return label.to_dict()


def may_read_customers(principal: Principal) -> bool:
    return services().authz.scope_of(principal, "customer", "read") is not None


def insight_nav_links() -> list[dict[str, Any]]:
    """The navbar entries 报表 and 数据驾驶舱, for users who may read customers."""
    if not current_user or not current_user.is_authenticated:
        return []
    try:
        principal = current_principal()
    except FinCRMError:  # not signed in as far as FinCRM is concerned: no links
        return []
    if not may_read_customers(principal):
        return []
    path = request.path
    return [
        {"key": "reports", "href": "/reports/", "label": _t("报表", "Reports"), "icon": "fa-table", "active": path.startswith("/reports/")},
        {"key": "dashboard", "href": "/dashboard/", "label": _t("数据驾驶舱", "Dashboard"), "icon": "fa-tachometer-alt", "active": path.startswith("/dashboard/")},
    ]


def _field_entry(f: FieldSpec, name: str, label: dict[str, str], clear: bool) -> dict[str, Any]:
    aggs = ["count_distinct"]
    if f.type in NUMBER_TYPES:
        aggs += ["sum", "avg"]
    if f.type in ORDERED_TYPES:
        aggs += ["min", "max"]
    entry: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": f.type,
        # a value the editor may group, aggregate or filter on: readable in clear, not encrypted
        "clear": clear and not f.encrypted,
        "aggs": aggs if clear and not f.encrypted else [],
        "buckets": list(DATE_BUCKETS) if f.type in ("date", "datetime") else [],
        "ops": sorted(FIELD_TYPES[f.type].ops) if f.type in FIELD_TYPES else [],
    }
    if f.options:
        entry["options"] = [{"value": o.value, "label": _label(o.label)} for o in f.options]
    return entry


def editor_fields(principal: Principal, spec: EntitySpec) -> list[dict[str, Any]]:
    """What a report editor may pick for a column or a condition: the entity's fields the
    editor can see, and the fields of referenced records as ``ref.field``, with the aggregates,
    date buckets and filter operators each allows. Masked fields may be shown, never grouped,
    aggregated or filtered on (the report would refuse it)."""
    svc = services()
    registry = svc.runtime.cached_snapshot().registry
    view = svc.records.view(principal, spec.name)
    out: list[dict[str, Any]] = []
    for f in spec.live_fields:
        access = view.access[f.name]
        if access.view == "hidden":
            continue
        out.append(_field_entry(f, f.name, _label(f.label), view.clear(f)))
        if f.type != "ref" or f.ref is None or f.ref not in registry.entities or not permits(services().authz, principal, f.ref, "read"):
            continue
        target = registry.entities[f.ref]
        tview = svc.records.view(principal, target.name)
        for tf in target.live_fields:
            if tview.access[tf.name].view == "hidden" or tf.type == "ref":
                continue
            label = {"zh": f"{f.label.zh} · {tf.label.zh}", "en": f"{f.label.en} · {tf.label.en}"}
            out.append(_field_entry(tf, f"{f.name}.{tf.name}", label, tview.clear(tf)))
    return out


def _op_labels() -> dict[str, str]:
    return {op: _t(zh, en) for op, (zh, en) in {**OPS_LABELS, **EXTRA_OPS}.items()}


def _readable_reports(principal: Principal) -> list[dict[str, Any]]:
    return reports().list(principal)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def dashboard_cards(principal: Principal) -> list[dict[str, Any]]:
    """The dashboard's cards in order: every report with a ``dashboard`` entry the principal
    may run, and the analytics cards."""
    language = lang()
    cards: list[dict[str, Any]] = []
    for r in _readable_reports(principal):
        board = r.get("dashboard")
        if not board:
            continue
        cards.append({
            "key": f"report-{r['name']}",
            "kind": "report",
            "report": r["name"],
            "order": int(board.get("order", 1000)),
            "width": board.get("width") or "half",
            "title": r["label"].get(language) or r["name"],
            "api": f"/api/v1/reports/{r['name']}",
            "href": f"/reports/{r['name']}",
        })
    for a in ANALYTICS_CARDS:
        cards.append({**a, "kind": a["key"], "title": _t(*a["title"])})
    cards.sort(key=lambda c: (c["order"], c["key"]))
    return cards


def _report_or_404(name: str) -> ReportSpec:
    try:
        return reports().spec(name)
    except NotFound:
        raise NotFound("no such report") from None  # the message never echoes the URL



class InsightPages(BaseView):
    route_base = "/"
    default_view = "reports_index"

    def create_blueprint(self, appbuilder: Any, endpoint: str | None = None, static_folder: str | None = None) -> Blueprint:
        """Flask-AppBuilder's blueprint, plus the navbar helper the base template asks for."""
        blueprint: Blueprint = super().create_blueprint(appbuilder, endpoint, static_folder)
        blueprint.app_context_processor(lambda: {"fincrm_insight_links": insight_nav_links})
        return blueprint

    @expose("/reports/")
    def reports_index(self) -> Any:
        """报表中心: the reports the user may run, dashboard reports first."""
        _fresh()
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        items = _readable_reports(principal)
        if not items and not may_read_customers(principal):
            raise Forbidden("your role may not run any report")
        language = lang()
        entity_labels = {name: s.label.get(language) for name, s in services().runtime.cached_snapshot().registry.entities.items()}
        return self.render_template("fincrm/reports.html", items=items, entity_labels=entity_labels, lang=language)

    @expose("/reports/<name>")
    def report(self, name: str) -> Any:
        """One report: parameter form, table, chart, exports and (configure) the editor. The
        rows come from the API; the shell holds the report's metadata only."""
        _fresh()
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        rep = _report_or_404(name)
        svc = reports()
        services().authz.require(principal, rep.entity, "read")
        info = svc.describe(rep, principal)
        try:
            defaults = svc.params(rep, {})
        except BadRequest:  # a default that no longer parses: the form starts empty
            defaults = {}
        args = request.args
        values = {p["name"]: args.get(p["name"]) or _text(defaults.get(p["name"])) for p in info["params"]}
        registry = services().runtime.cached_snapshot().registry
        spec = registry.entity(rep.entity)
        language = lang()
        page_data: dict[str, Any] = {
            "lang": language,
            "report": info,
            "values": values,
            "api": f"/api/v1/reports/{rep.name}",
            "meta_api": f"/api/v1/meta/reports/{rep.name}",
            "messages": "/reports/_messages",
            "entity_label": spec.label.to_dict(),
        }
        if info["may_configure"]:
            page_data["editor"] = {
                "fields": editor_fields(principal, spec),
                "ops": _op_labels(),
                "aggs": {k: {"zh": zh, "en": en} for k, (zh, en) in AGG_LABELS.items()},
                "buckets": {k: {"zh": zh, "en": en} for k, (zh, en) in BUCKET_LABELS.items()},
            }
        return self.render_template(
            "fincrm/report.html", info=info, values=values, page_data=page_data, entity_label=spec.label.get(language),
            csrf_token=generate_csrf(), lang=language,
        )

    @expose("/reports/_messages", methods=["POST"])
    def messages(self) -> Any:
        """The engine's (English) messages in the user's language: ``{"messages": [...]}``."""
        return translated_messages()

    @expose("/dashboard/")
    def dashboard(self) -> Any:
        """数据驾驶舱: KPI tiles and chart cards, each filled from its API by the script."""
        _fresh()
        principal = _principal_or_login()
        if principal is None:
            return _login_redirect()
        if not may_read_customers(principal):
            raise Forbidden("the dashboard is for roles that read customers")
        language = lang()
        cards = dashboard_cards(principal)
        page_data = {
            "lang": language,
            "kpis": KPI_API,
            "cards": [{k: c[k] for k in ("key", "kind", "api") if k in c} | {"report": c.get("report")} for c in cards],
            "c360": "/c360/",
        }
        return self.render_template("fincrm/dashboard.html", cards=cards, page_data=page_data, lang=language)
