"""Flow, trigger and report documents at run time: list, read, create or replace.

A document is checked against its meta-schema, then committed through the metadata service,
which builds the whole candidate snapshot with it — every flow and trigger frozen against the
entity registry — and refuses it (422, every error with its JSON pointer) before anything is
written. Accepted documents are versioned and audited, and every process reloads them with the
metadata stamp. Editing one needs ``configure`` on its entity.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ..errors import BadRequest, MetadataInvalid, NotFound
from ..meta.schema import schema_errors
from ..runtime import Runtime
from ..security.authz import Authorizer
from ..security.principal import Principal
from ..store.tables import meta_doc_table
from .meta import MetaService

__all__ = ["AutomationDocs", "KINDS"]

KINDS = ("flow", "trigger", "report")


class AutomationDocs:
    def __init__(self, runtime: Runtime, authz: Authorizer, meta: MetaService) -> None:
        self.runtime = runtime
        self.authz = authz
        self.meta = meta

    def _versions(self, kind: str) -> dict[str, int]:
        d = meta_doc_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(d.c.name, func.max(d.c.version)).where(d.c.kind == kind).group_by(d.c.name)).all()
        return {r[0]: int(r[1]) for r in rows}

    def _documents(self) -> dict[tuple[str, str], Any]:
        """Every flow, trigger and report document in force, by (kind, name)."""
        snap = self.runtime.cached_snapshot()
        docs: dict[tuple[str, str], Any] = dict(snap.automation.documents)
        docs.update({("report", name): rep.doc for name, rep in snap.reports.items()})
        return docs

    def list(self, principal: Principal, kind: str) -> list[dict[str, Any]]:
        """Summaries of the ``kind`` documents on entities the principal may configure."""
        _kind(kind)
        docs = self._documents()
        versions = self._versions(kind)
        items = []
        allowed = False
        for (k, name), doc in sorted(docs.items()):
            if k != kind:
                continue
            if not self.meta._may_configure(principal, str(doc["entity"])):
                continue
            allowed = True
            item = {"name": name, "label": dict(doc["label"]), "entity": doc["entity"], "version": versions.get(name, 0), "source": "runtime" if name in versions else "core"}
            if kind == "flow":
                item.update(field=doc["field"], states=[s["name"] for s in doc["states"]])
            elif kind == "report":
                item.update(columns=[c["name"] for c in doc["columns"]], chart=(doc.get("chart") or {}).get("type"), scheduled="schedule" in doc)
            else:
                item.update(on=doc["on"], enabled=doc.get("enabled", True))
            items.append(item)
        if not allowed:
            self.authz.require(principal, "*", "configure")  # nothing to show: say why, or an empty list for a configurer
        return items

    def get(self, principal: Principal, kind: str, name: str) -> dict[str, Any]:
        _kind(kind)
        doc = self._documents().get((kind, name))
        if doc is None:
            self.authz.require(principal, "*", "configure")  # a 404 only to those who may configure
            raise NotFound(f"unknown {kind} {name[:64]!r}")
        self.authz.require(principal, str(doc["entity"]), "configure")
        out: dict[str, Any] = _plain(doc)
        return out

    def put(self, principal: Principal, kind: str, name: str, body: Any, comment: str | None = None) -> dict[str, Any]:
        """Create or replace ``name``; refused whole (422, every error listed) if invalid."""
        _kind(kind)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        doc = {**body, "kind": kind, "name": name}
        entity = doc.get("entity")
        # who may: configure on the document's entity (and on the one it replaces)
        self.authz.require(principal, entity if isinstance(entity, str) and entity else "*", "configure")
        old = self._documents().get((kind, name))
        if old is not None and old.get("entity") != entity:
            self.authz.require(principal, str(old["entity"]), "configure")
        errors = schema_errors(kind, doc, (kind, name))
        if errors:
            raise MetadataInvalid(f"{kind} document is invalid", errors)
        self.meta._commit(principal, kind, name, doc, comment=comment or f"{'change' if old is not None else 'create'} {kind} {name}")
        return self.get(principal, kind, name)


def _kind(kind: str) -> None:
    if kind not in KINDS:
        raise NotFound(f"unknown metadata kind {kind!r}")


def _plain(doc: Any) -> Any:
    """A frozen document (mapping proxies) as plain JSON-ready dicts and lists."""
    if hasattr(doc, "items"):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_plain(v) for v in doc]
    return doc
