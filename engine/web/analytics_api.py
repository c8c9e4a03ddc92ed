"""Analytics endpoints on the API blueprint (definitions: docs/analytics.md). Every figure is
computed in the database within the caller's row scope; bad parameters are 400s naming them.

    GET  /api/v1/analytics/rfm                 ?as_of=&segment=&limit=&cursor=
    POST /api/v1/analytics/rfm/tags            {"as_of", "segments"?} → tags per segment (update on customer)
    GET  /api/v1/analytics/churn               ?as_of=&days=90&score=4&limit=&cursor=
    GET  /api/v1/analytics/cross-sell          ?min_support=0.05&min_confidence=0.3&level=type|product&max_len=2
    GET  /api/v1/analytics/cross-sell/targets  ?antecedent=loan&consequent=wealth&level=&limit=&cursor=
    GET  /api/v1/analytics/channels            ?from=&to=
    GET  /api/v1/analytics/kpis                ?as_of=&months=12
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request

from ..errors import BadRequest
from ..insight.analytics import AnalyticsService
from .api import _json, _object_body, api
from .auth import current_principal
from .context import services

__all__ = ["analytics"]

_COMMON = frozenset({"lang"})  # accepted everywhere (labels come in both languages anyway)


def analytics() -> AnalyticsService:
    """One analytics service per app, over the app's records service."""
    svc = current_app.extensions.get("fincrm_analytics")
    if svc is None:
        svc = current_app.extensions["fincrm_analytics"] = AnalyticsService(services().records)
    assert isinstance(svc, AnalyticsService)
    return svc


def _args(*allowed: str) -> dict[str, str]:
    """The query parameters, refusing any this endpoint does not take (a typo such as
    ``min_suport`` would otherwise be silently ignored)."""
    args = request.args
    for name in args:
        if name not in allowed and name not in _COMMON:
            shown = name[:64]
            raise BadRequest(f"unknown parameter {shown!r}", [{"field": shown, "message": f"unknown parameter; allowed: {', '.join(allowed)}"}])
    return {name: args.get(name, "") for name in allowed if name in args}


def _get(args: dict[str, str], name: str) -> Any:
    value = args.get(name)
    return None if value is None or value == "" else value


@api.get("/analytics/rfm")
def analytics_rfm() -> Response:
    a = _args("as_of", "segment", "limit", "cursor")
    return _json(analytics().rfm(current_principal(), as_of=_get(a, "as_of"), segment=_get(a, "segment"), limit=_get(a, "limit"), cursor=_get(a, "cursor")))


@api.post("/analytics/rfm/tags")
def analytics_rfm_tags() -> Response:
    payload = _object_body()
    unknown = sorted(set(payload) - {"as_of", "segments"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0][:64]!r}", [{"field": unknown[0][:64], "message": "unknown key; allowed: as_of, segments"}])
    return _json(analytics().rfm_tags(current_principal(), as_of=payload.get("as_of"), segments=payload.get("segments")))


@api.get("/analytics/churn")
def analytics_churn() -> Response:
    a = _args("as_of", "days", "score", "limit", "cursor")
    return _json(
        analytics().churn(
            current_principal(), as_of=_get(a, "as_of"), days=_get(a, "days"), score=_get(a, "score"), limit=_get(a, "limit"), cursor=_get(a, "cursor")
        )
    )


@api.get("/analytics/cross-sell")
def analytics_cross_sell() -> Response:
    a = _args("min_support", "min_confidence", "level", "max_len")
    return _json(
        analytics().cross_sell(
            current_principal(), min_support=_get(a, "min_support"), min_confidence=_get(a, "min_confidence"), level=_get(a, "level"), max_len=_get(a, "max_len")
        )
    )


@api.get("/analytics/cross-sell/targets")
def analytics_cross_sell_targets() -> Response:
    a = _args("antecedent", "consequent", "level", "limit", "cursor")
    return _json(
        analytics().cross_sell_targets(
            current_principal(),
            antecedent=_get(a, "antecedent"),
            consequent=_get(a, "consequent"),
            level=_get(a, "level"),
            limit=_get(a, "limit"),
            cursor=_get(a, "cursor"),
        )
    )


@api.get("/analytics/channels")
def analytics_channels() -> Response:
    a = _args("from", "to")
    return _json(analytics().channels(current_principal(), date_from=_get(a, "from"), date_to=_get(a, "to")))


@api.get("/analytics/kpis")
def analytics_kpis() -> Response:
    a = _args("as_of", "months")
    return _json(analytics().kpis(current_principal(), as_of=_get(a, "as_of"), months=_get(a, "months")))
