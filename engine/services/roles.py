"""Roles as metadata, editable at runtime: read, create or replace, with history.

Layers: core roles → roles of published packages (a package role named like a role below it
*extends* that role: its grants and field rules are added) → runtime versions (which replace).
A role document is validated, stored as a new version, compiled to policy rows and the policy
stamp moved — all in one transaction, audited. Every process reloads the policy on its next
request. Core roles can be changed (a bank tunes them) but not removed.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from sqlalchemy import func, insert, select

from ..errors import BadRequest, MetadataInvalid, NotFound
from ..meta.packages import documents_of
from ..meta.schema import schema_errors
from ..runtime import Runtime, newest_documents, utcnow
from ..security import audit
from ..security.policy import CasbinAuthorizer, load_core_roles
from ..security.principal import Principal
from ..store.tables import meta_doc_table

__all__ = ["RoleService"]


class RoleService:
    def __init__(self, runtime: Runtime, authz: CasbinAuthorizer) -> None:
        self.runtime = runtime
        self.authz = authz
        self.core = load_core_roles()

    def documents(self, packages: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Core roles, replaced by those of the published packages (or of ``packages``, a
        candidate set being published), replaced by the newest runtime version of each role."""
        if packages is None:
            packages = self.runtime.cached_snapshot().packages
        with self.runtime.engine.connect() as conn:
            rows = newest_documents(conn, ("role",))
        docs = {doc["name"]: copy.deepcopy(doc) for doc in self.core}
        for doc in documents_of(packages, ("role",)):
            base = docs.get(doc["name"])
            docs[doc["name"]] = _extend(base, doc) if base is not None else doc
        for r in rows:
            docs[r.name] = dict(r.doc)
        return [docs[n] for n in sorted(docs)]

    def sync(self) -> bool:
        """Write the policy rows if they differ from the role documents (start-up)."""
        docs = self.documents()
        from ..security.policy import compile_policies

        wanted = sorted(map(tuple, compile_policies(docs)))
        t = self.authz.rule_table()
        with self.runtime.begin() as conn:
            have = sorted(tuple(r) for r in conn.execute(select(t.c.v0, t.c.v1, t.c.v2, t.c.v3).where(t.c.ptype == "p")))
            if have == wanted:
                return False
            self.authz.write_policies(conn, docs)
        return True

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        self.authz.require(principal, "meta_roles", "configure")
        return self.documents()

    def get(self, principal: Principal, name: str) -> dict[str, Any]:
        self.authz.require(principal, "meta_roles", "configure")
        for doc in self.documents():
            if doc["name"] == name:
                return dict(doc)
        raise NotFound(f"unknown role {name!r}")

    def put(self, principal: Principal, name: str, doc: Any) -> dict[str, Any]:
        """Create or replace role ``name``; refused whole (422, every error listed) if invalid."""
        self.authz.require(principal, "meta_roles", "configure")
        if not isinstance(doc, dict):
            raise BadRequest("the request body must be a JSON object")
        doc = {"kind": "role", **doc, "name": name}
        errors = schema_errors("role", doc)
        if errors:
            raise MetadataInvalid("role document is invalid", errors)
        if name == "admin" and not any(g["entity"] == "meta_roles" and "configure" in g["actions"] for g in doc["grants"]):
            raise MetadataInvalid("the admin role must keep configure on meta_roles", [{"pointer": "/grants", "message": "would lock every administrator out"}])
        docs = [d for d in self.documents() if d["name"] != name] + [doc]
        d = meta_doc_table
        with self.runtime.begin() as conn:
            last = conn.execute(select(func.max(d.c.version)).where(d.c.kind == "role", d.c.name == name)).scalar() or 0
            conn.execute(
                insert(d).values(kind="role", name=name, version=last + 1, doc=doc, author=principal.username, comment="role change", created_at=utcnow())
            )
            policy_version = self.authz.write_policies(conn, docs)
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=principal.username, actor_id=principal.user_id, action="role_change", entity="role", ip=principal.ip,
                    detail={"role": name, "version": last + 1, "policy_version": policy_version, "grants": doc["grants"], "fields": doc.get("fields", [])},
                ),
            )
        self.authz.refresh(policy_version)
        return dict(doc)


def _extend(base: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A package's role of the name of a role below it (core, another package) extends it: its
    grants and field rules are added, the labels are the package's. Two verticals can so both
    widen ``relationship_manager`` without dropping each other's grants; narrowing a role is the
    role administrator's change at run time."""
    out = {**copy.deepcopy(dict(base)), **{k: copy.deepcopy(v) for k, v in doc.items() if k not in ("grants", "fields")}}
    for key in ("grants", "fields"):
        merged = list(copy.deepcopy(base.get(key, [])))
        merged += [copy.deepcopy(x) for x in doc.get(key, []) if x not in merged]
        if merged or key == "grants":
            out[key] = merged
    return out
