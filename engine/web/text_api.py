"""Text insight, knowledge-base search and the NPS trend on the API blueprint
(docs/text-and-nps.md).

    GET /api/v1/insight/keywords   ?period=week|month|quarter&periods=6&top=20&method=tfidf|textrank
                                   &category=complaint&as_of=YYYY-MM-DD   keywords of tickets per period
    GET /api/v1/kb/search          ?q=…&limit=20                          knowledge-base full-text search
    GET /api/v1/analytics/nps      ?period=month&periods=12&survey=nps&as_of=YYYY-MM-DD   NPS per period

Every one reads within the caller's row scope; an unknown query parameter is a 400 naming it.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Response, current_app, request

from ..errors import BadRequest
from ..insight.kb import KnowledgeBase
from ..insight.nps import nps_trend
from ..insight.text import complaint_keywords
from .api import _int_arg, _json, api
from .auth import current_principal
from .context import services

__all__ = ["knowledge_base"]

_lock = threading.Lock()


def knowledge_base() -> KnowledgeBase:
    """One knowledge base per app, over the app's records service, its write hook installed."""
    kb = current_app.extensions.get("fincrm_kb")
    if kb is None:
        with _lock:
            kb = current_app.extensions.get("fincrm_kb")
            if kb is None:
                kb = current_app.extensions["fincrm_kb"] = KnowledgeBase(services().records).install()
    assert isinstance(kb, KnowledgeBase)
    return kb


def _args(allowed: tuple[str, ...]) -> Any:
    """The query arguments, refusing any this endpoint does not take (a typo is not ignored)."""
    args = request.args
    unknown = sorted(k for k in args if k not in allowed)
    if unknown:
        name = unknown[0][:64]
        raise BadRequest(f"unknown parameter {name!r}; this endpoint takes {', '.join(allowed)}", [{"field": name, "message": "unknown parameter"}])
    for k in args:
        if len(args.getlist(k)) > 1:
            raise BadRequest(f"parameter {k!r} is given more than once", [{"field": k, "message": "given more than once"}])
    return args


@api.get("/insight/keywords")
def insight_keywords() -> Response:
    principal = current_principal()
    args = _args(("period", "periods", "top", "method", "category", "as_of"))
    return _json(
        complaint_keywords(
            services().records,
            principal,
            period=args.get("period") or "month",
            periods=_int_arg(args.get("periods"), "periods", 6),
            top=_int_arg(args.get("top"), "top", 20),
            method=args.get("method") or "tfidf",
            category=args.get("category") or "complaint",
            as_of=args.get("as_of") or None,
        )
    )


@api.get("/kb/search")
def kb_search() -> Response:
    principal = current_principal()
    args = _args(("q", "limit"))
    return _json(knowledge_base().search(principal, args.get("q"), _int_arg(args.get("limit"), "limit", 20)))


@api.get("/analytics/nps")
def analytics_nps() -> Response:
    principal = current_principal()
    args = _args(("period", "periods", "survey", "as_of"))
    return _json(
        nps_trend(
            services().records,
            principal,
            period=args.get("period") or "month",
            periods=_int_arg(args.get("periods"), "periods", 12),
            survey=args.get("survey") or "nps",
            as_of=args.get("as_of") or None,
        )
    )
