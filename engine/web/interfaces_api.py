"""Interface endpoints on the API blueprint: the outbound call log, the dead-letter list and its
replays, and running a data connector for a customer (docs/interfaces.md). All need the
``interfaces`` area (operations and administrators): ``read`` to look, ``update`` to act.

    GET  /api/v1/interfaces/calls                      ?target=&status=&kind=&dead_letter=&before=&limit=
    GET  /api/v1/interfaces/dead-letters               ?status=open|replaying|resolved&target=&before=&limit=
    POST /api/v1/interfaces/dead-letters/<id>/replay   → {"ok", "letter", "result"|"error"}
    GET  /api/v1/interfaces/connectors                 installed data connectors
    POST /api/v1/interfaces/connectors/<name>/enrich   {"customer_id"} → 200 {"ok": true, …}
                                                       or 202 {"ok": false, "dead_letter": …}
"""

from __future__ import annotations

from flask import Response, current_app, request

from ..errors import BadRequest
from ..flows.interfaces import InterfaceService
from .api import _int_arg, _json, _object_body, api
from .auth import current_principal
from .context import services

__all__ = ["interfaces"]


def interfaces() -> InterfaceService:
    """One interface service per app, over the app's records service and authorizer."""
    svc = current_app.extensions.get("fincrm_interfaces")
    if svc is None:
        fincrm = services()
        svc = current_app.extensions["fincrm_interfaces"] = InterfaceService(fincrm.records, fincrm.authz)
    assert isinstance(svc, InterfaceService)
    return svc


def _optional_int(name: str) -> int | None:
    raw = request.args.get(name)
    return None if raw in (None, "") else _int_arg(raw, name, 0)


@api.get("/interfaces/calls")
def interface_calls() -> Response:
    args = request.args
    return _json(
        interfaces().calls(
            current_principal(),
            target=args.get("target") or None,
            status=args.get("status") or None,
            kind=args.get("kind") or None,
            dead_letter=_optional_int("dead_letter"),
            before=_optional_int("before"),
            limit=_int_arg(args.get("limit"), "limit", 100),
        )
    )


@api.get("/interfaces/dead-letters")
def interface_dead_letters() -> Response:
    args = request.args
    return _json(
        interfaces().dead_letters(
            current_principal(),
            status=args.get("status") or None,
            target=args.get("target") or None,
            before=_optional_int("before"),
            limit=_int_arg(args.get("limit"), "limit", 100),
        )
    )


@api.post("/interfaces/dead-letters/<int:letter_id>/replay")
def interface_replay(letter_id: int) -> Response:
    return _json(interfaces().replay(current_principal(), letter_id))


@api.get("/interfaces/connectors")
def interface_connectors() -> Response:
    return _json({"items": interfaces().connector_list(current_principal())})


@api.post("/interfaces/connectors/<name>/enrich")
def interface_enrich(name: str) -> Response:
    data = _object_body()
    customer_id = data.get("customer_id")
    if not isinstance(customer_id, int) or isinstance(customer_id, bool):
        raise BadRequest("customer_id must be the customer's record id", [{"field": "customer_id", "message": "must be an integer"}])
    done = interfaces().enrich(current_principal(), name, customer_id)
    return _json(done, 200 if done["ok"] else 202)
