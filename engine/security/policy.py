"""Authorization as data: role metadata compiled to Casbin policy rows in the database.

Role documents (``metadata/core/roles`` plus runtime edits stored as versioned ``role``
documents) compile to rows ``p, <role>, <object>, <action>, <scope>``: objects are entity names
(``*`` for every entity, or an area such as ``audit``); field rules are
``p, <role>, <entity>.<field>, field, <access>``. The rows live in ``casbin_rule``
(sqlalchemy-adapter); the pycasbin enforcer decides, and the widest matching scope wins.

Every decision is cached per (roles, object, action) until the policy stamp moves; a role edit
rewrites the rows and moves the stamp in one transaction, and every process reloads on its next
request. Scopes become SQL through :mod:`engine.security.scope`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import casbin
from casbin.util import key_match
from sqlalchemy import Connection, Table, delete, insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy_adapter import Adapter, CasbinRule

from ..errors import Forbidden, MetadataInvalid
from ..meta.schema import METADATA_DIR, schema_errors
from ..meta.spec import EntitySpec, FieldSpec
from ..runtime import POLICY_VERSION, Runtime
from .authz import FieldAccess, effective_mask
from .principal import Principal
from .scope import scope_condition

__all__ = ["CasbinAuthorizer", "compile_policies", "load_core_roles", "SCOPES", "ACCESS_LEVELS", "MODEL_TEXT"]

MODEL_TEXT = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, scope

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && keyMatch(r.obj, p.obj) && r.act == p.act
"""

SCOPES = ("own", "team", "branch", "all")
ACCESS_LEVELS = ("hidden", "masked", "read", "write")


def load_core_roles(directory: Path | None = None) -> list[dict[str, Any]]:
    directory = directory or METADATA_DIR / "core" / "roles"
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


# Areas that are not entities: granted only by name, never through '*'.
AREAS = frozenset({"audit", "meta_roles", "access_requests", "outbox", "interfaces", "packages"})


def check_roles(docs: Iterable[Mapping[str, Any]]) -> None:
    errors = []
    for doc in docs:
        errors += [{"pointer": f"/role/{doc.get('name')}{e['pointer']}", "message": e["message"]} for e in schema_errors("role", doc)]
    if errors:
        raise MetadataInvalid("role metadata is invalid", errors)


def compile_policies(docs: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for doc in docs:
        for g in doc.get("grants", []):
            for action in g["actions"]:
                rows.append([doc["name"], g["entity"], action, g["scope"]])
        for f in doc.get("fields", []):
            rows.append([doc["name"], f"{f['entity']}.{f['field']}", "field", f["access"]])
    return rows


class CasbinAuthorizer:
    """Decides with pycasbin over the policy rows; caches per policy version."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = threading.RLock()
        model = casbin.model.Model()
        model.load_model_from_text(MODEL_TEXT)
        self._adapter = Adapter(runtime.write_engine)
        self._enforcer = casbin.Enforcer(model, self._adapter)
        self._version: int | None = None
        self._scopes: dict[tuple[frozenset[str], str, str], str | None] = {}
        self._access: dict[tuple[frozenset[str], str, str], str | None] = {}

    # ------------------------------------------------------------------ policy storage

    @staticmethod
    def rule_table() -> Table:
        return CasbinRule.__table__  # type: ignore[no-any-return]

    def write_policies(self, conn: Connection, docs: Sequence[Mapping[str, Any]]) -> int:
        """Replace every policy row from ``docs`` inside the caller's transaction; moves the stamp."""
        check_roles(docs)
        t = self.rule_table()
        conn.execute(delete(t))
        rows = compile_policies(docs)
        if rows:
            conn.execute(insert(t), [{"ptype": "p", "v0": r[0], "v1": r[1], "v2": r[2], "v3": r[3]} for r in rows])
        return self.runtime.bump(conn, POLICY_VERSION)

    @property
    def version(self) -> int | None:
        """The policy stamp this process has loaded (None before the first request)."""
        return self._version

    def refresh(self, policy_version: int) -> None:
        """Reload the policy if another process (or this one) moved the stamp."""
        if self._version == policy_version:
            return
        with self._lock:
            if self._version != policy_version:
                self._enforcer.load_policy()
                self._scopes.clear()
                self._access.clear()
                self._version = policy_version

    def roles(self) -> set[str]:
        return {p[0] for p in self._enforcer.get_policy()}

    # ------------------------------------------------------------------ decisions

    def scope_of(self, principal: Principal, obj: str, action: str) -> str | None:
        """The widest scope any of the principal's roles has for ``action`` on ``obj``, or None."""
        key = (principal.roles, obj, action)
        if key in self._scopes:
            return self._scopes[key]
        best = -1
        with self._lock:
            for role in principal.roles:
                if not self._enforcer.enforce(role, obj, action):
                    continue
                for _, p_obj, p_act, scope in self._enforcer.get_filtered_policy(0, role):
                    if obj in AREAS and p_obj != obj:
                        continue  # '*' means every entity, never the audit/roles/access areas
                    if p_act == action and key_match(obj, p_obj) and scope in SCOPES:
                        best = max(best, SCOPES.index(scope))
        result = SCOPES[best] if best >= 0 else None
        self._scopes[key] = result
        return result

    def require(self, principal: Principal, entity: str, action: str) -> None:
        if principal.is_system:
            return
        if self.scope_of(principal, entity, action) is None:
            raise Forbidden(f"your role may not {action} {entity}")

    def scope_clause(
        self, principal: Principal, spec: EntitySpec, table: Table, action: str = "read", *, strict: bool = False
    ) -> ColumnElement[bool] | None:
        if principal.is_system:
            return None
        scope = self.scope_of(principal, spec.name, action)
        if scope is None:
            raise Forbidden(f"your role may not {action} {spec.name}")
        return scope_condition(principal, scope, spec, table, self.runtime.cached_snapshot(), strict=strict)

    def _field_rule(self, principal: Principal, entity: str, field: str) -> str | None:
        key = (principal.roles, entity, field)
        if key in self._access:
            return self._access[key]
        best = -1
        obj = f"{entity}.{field}"
        with self._lock:
            for role in principal.roles:
                for _, p_obj, p_act, access in self._enforcer.get_filtered_policy(0, role):
                    if p_act == "field" and key_match(obj, p_obj) and access in ACCESS_LEVELS:
                        best = max(best, ACCESS_LEVELS.index(access))
        result = ACCESS_LEVELS[best] if best >= 0 else None
        self._access[key] = result
        return result

    def field_access(self, principal: Principal, spec: EntitySpec, f: FieldSpec) -> FieldAccess:
        if principal.is_system:
            return FieldAccess("clear", True)
        rule = self._field_rule(principal, spec.name, f.name)
        masked_by_default = effective_mask(f) is not None
        if rule is None:
            rule = "masked" if masked_by_default else "write"
        if rule == "hidden":
            return FieldAccess("hidden", False)
        if rule == "masked" and masked_by_default and self.scope_of(principal, spec.name, "unmask") is None:
            return FieldAccess("masked", not f.readonly)
        return FieldAccess("clear", rule in ("write", "masked") and not f.readonly)

    def describe(self) -> dict[str, Any]:
        return {"kind": "casbin", "version": self._version, "rules": len(self._enforcer.get_policy())}
