"""Authorization decisions: whether a principal may act, which rows, which fields in clear.

The records service asks three questions and never decides anything itself:
``require(principal, entity, action)`` (raises :class:`Forbidden`), ``scope_clause`` (a WHERE
clause limiting rows, or None for all rows) and ``field_access`` (hidden, masked, read, write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement

from ..errors import Forbidden
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import EntitySpec, FieldSpec
from .principal import Principal

__all__ = ["Authorizer", "BasicAuthorizer", "ACTIONS", "FieldAccess", "effective_mask", "permits"]

ACTIONS = ("read", "create", "update", "delete", "export", "import", "approve", "unmask", "configure")


@dataclass(frozen=True)
class FieldAccess:
    view: str  # hidden | masked | clear
    write: bool

    @property
    def clear(self) -> bool:
        return self.view == "clear"


CLEAR_RW = FieldAccess("clear", True)
CLEAR_RO = FieldAccess("clear", False)
MASKED_RW = FieldAccess("masked", True)


def effective_mask(f: FieldSpec) -> str | None:
    """The mask rule that applies to ``f`` when shown to someone who may not unmask it."""
    if f.mask is not None:
        return None if f.mask == "none" else f.mask
    if f.sensitivity == "C2" or f.encrypted:
        return FIELD_TYPES[f.type].mask or ("full" if f.encrypted else None)
    return None


class Authorizer(Protocol):
    def require(self, principal: Principal, entity: str, action: str) -> None: ...

    def scope_clause(
        self, principal: Principal, spec: EntitySpec, table: Table, action: str = "read", *, strict: bool = False
    ) -> ColumnElement[bool] | None: ...

    def field_access(self, principal: Principal, spec: EntitySpec, f: FieldSpec) -> FieldAccess: ...


def permits(authz: Authorizer, principal: Principal, entity: str, action: str) -> bool:
    """``require`` as a yes/no answer: for pages and listings that show or hide what a
    principal may do, rather than refuse the request."""
    try:
        authz.require(principal, entity, action)
    except Forbidden:
        return False
    return True


class BasicAuthorizer:
    """Foundation policy: any signed-in user works with records, only admins configure, and
    masked fields stay masked for every human principal. Role metadata and Casbin replace it."""

    admin_roles = frozenset({"Admin", "admin"})

    def require(self, principal: Principal, entity: str, action: str) -> None:
        if principal.is_system:
            return
        if action not in ACTIONS:
            raise Forbidden(f"unknown action {action!r}")
        if action in ("configure", "unmask") and not (principal.roles & self.admin_roles):
            raise Forbidden(f"you may not {action} {entity}")
        if entity == "audit" and not (principal.roles & (self.admin_roles | {"auditor"})):
            raise Forbidden("only auditors and administrators read the audit trail")

    def scope_clause(
        self, principal: Principal, spec: EntitySpec, table: Table, action: str = "read", *, strict: bool = False
    ) -> ColumnElement[bool] | None:
        return None

    def field_access(self, principal: Principal, spec: EntitySpec, f: FieldSpec) -> FieldAccess:
        if principal.is_system:
            return CLEAR_RW
        if effective_mask(f) is not None:
            return MASKED_RW
        return CLEAR_RO if f.readonly else CLEAR_RW

    def describe(self) -> dict[str, Any]:
        return {"kind": "basic"}
