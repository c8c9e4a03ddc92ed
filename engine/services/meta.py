"""Runtime metadata changes: new entities, new fields, field edits, archive, promote, revert.

Each change is validated by building the whole registry with the change applied (pure, no
database) before anything is written; then, in one transaction, the schema step (if any), the
new document version and the version stamp move together. Every other process reloads on its
next request when it sees the stamp move. Nothing is ever dropped: archiving hides a field and
keeps its data; a change that would lose data is refused with a 409 and the reason.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, Date, DateTime, Integer, cast, func, insert, literal, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB

from ..errors import BadRequest, Conflict, Forbidden, MetadataInvalid, NotFound, UnsafeChange
from ..fieldtypes import FIELD_TYPES
from ..meta.registry import freeze_field
from ..meta.schema import schema_errors
from ..meta.spec import EntitySpec, FieldSpec
from ..runtime import META_VERSION, Runtime, Snapshot, utcnow
from ..security import audit
from ..security.authz import Authorizer
from ..security.principal import Principal
from ..store.migrate import apply_migration, plan_migration
from ..store.query import field_expr
from ..store.tables import meta_doc_table, tag_table

__all__ = ["MetaService", "SAFE_TYPE_CHANGES"]

# Type changes that keep every existing value valid (JSON-stored fields only; a column keeps
# its type). Anything else is refused: add a new field and migrate the data instead.
SAFE_TYPE_CHANGES = frozenset(
    {
        ("string", "text"),
        ("integer", "decimal"),
        ("enum", "string"),
        ("cn_mobile", "string"),
        ("email", "string"),
        ("url", "string"),
    }
)
# Attributes a PATCH may change; the rest (name, storage via promote, encryption) may not.
PATCHABLE = frozenset(
    {"label", "help", "required", "default", "min", "max", "max_length", "pattern", "options", "mask", "sensitivity", "readonly", "type", "indexed"}
)


class MetaService:
    def __init__(self, runtime: Runtime, authz: Authorizer) -> None:
        self.runtime = runtime
        self.authz = authz

    # ------------------------------------------------------------------ reading

    def entities(self, principal: Principal) -> list[dict[str, Any]]:
        reg = self.runtime.cached_snapshot().registry
        return [
            {"name": s.name, "label": s.label.to_dict(), "icon": s.icon, "fields": len(s.live_fields)}
            for s in sorted(reg.entities.values(), key=lambda s: s.name)
        ]

    def entity(self, principal: Principal, name: str) -> dict[str, Any]:
        reg = self.runtime.cached_snapshot().registry
        spec = reg.entity(name)
        doc = copy.deepcopy(dict(reg.documents[name]))
        doc["fields"] = [self.describe_field(f) for f in spec.fields]
        doc["version"] = reg.version
        return doc

    @staticmethod
    def describe_field(f: FieldSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f.name, "type": f.type, "label": f.label.to_dict(), "storage": f.storage}
        for key in ("required", "unique", "encrypted", "searchable", "indexed", "archived", "readonly"):
            if getattr(f, key):
                out[key] = True
        for key in ("default", "min", "max", "max_length", "pattern", "ref", "sensitivity", "mask"):
            if getattr(f, key) is not None:
                out[key] = getattr(f, key)
        if f.type == "decimal":
            out["precision"], out["scale"] = f.precision, f.scale
        if f.options:
            out["options"] = [{"value": o.value, "label": o.label.to_dict()} for o in f.options]
        if f.help:
            out["help"] = f.help.to_dict()
        return out

    def history(self, principal: Principal, kind: str, name: str) -> list[dict[str, Any]]:
        self.authz.require(principal, name, "configure")
        d = meta_doc_table
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(
                select(d.c.version, d.c.author, d.c.comment, d.c.created_at, d.c.doc)
                .where(d.c.kind == kind, d.c.name == name)
                .order_by(d.c.version.desc())
            ).all()
        return [
            {"version": r.version, "author": r.author, "comment": r.comment, "created_at": FIELD_TYPES["datetime"].dump(r.created_at), "doc": r.doc}
            for r in rows
        ]

    # ------------------------------------------------------------------ changes

    def create_entity(self, principal: Principal, doc: Any) -> dict[str, Any]:
        self.authz.require(principal, "*", "configure")
        if not isinstance(doc, dict):
            raise BadRequest("the request body must be a JSON object")
        doc = {"kind": "entity", **doc}
        errors = schema_errors("entity", doc)
        if errors:
            raise MetadataInvalid("entity document is invalid", errors)
        if doc["name"] in self.runtime.cached_snapshot().registry.entities:
            raise Conflict(f"entity {doc['name']!r} already exists", [{"field": "name", "message": "already exists"}])
        self._commit(principal, "entity", doc["name"], doc, comment="create entity")
        return self.entity(principal, doc["name"])

    def add_field(self, principal: Principal, entity: str, field_doc: Any, comment: str | None = None) -> dict[str, Any]:
        field_doc, overlay = self._with_new_field(principal, entity, field_doc)
        self._commit(principal, "entity_overlay", entity, overlay, comment=comment or f"add field {field_doc['name']}")
        return self._field_out(entity, field_doc["name"])

    def patch_field(self, principal: Principal, entity: str, name: str, changes: Any) -> dict[str, Any]:
        """Change attributes of a live field; ``None`` removes an attribute the runtime overlay
        set (one the entity's own definition sets can only be given another value)."""
        self.authz.require(principal, entity, "configure")
        if isinstance(changes, dict) and "storage" in changes:
            current = self.runtime.cached_snapshot().registry.entity(entity).live_field(name)
            if current is None:
                raise NotFound(f"unknown field {name!r} on {entity}")
            if changes["storage"] == "column" and current.storage == "json" and len(changes) == 1:
                return self.promote_field(principal, entity, name)
            raise UnsafeChange("storage can only change from json to column, on its own (promote)", [{"field": "storage", "message": "not allowed here"}])
        overlay, current, new = self._with_changed_field(principal, entity, name, changes)
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        widen = None
        if current.storage == "column" and (new.type != current.type or new.max_length != current.max_length):

            def widen(conn: Connection, snap: Snapshot) -> None:
                # a longer VARCHAR or TEXT: PostgreSQL needs the column type changed (no rewrite
                # for these widenings); SQLite does not enforce declared lengths
                if conn.dialect.name != "sqlite":
                    Operations(MigrationContext.configure(conn)).alter_column(
                        spec.table_name, name, type_=FIELD_TYPES[new.type].column(new)
                    )

        self._commit(principal, "entity_overlay", entity, overlay, comment=f"change field {name}", after_ddl=widen)
        return self._field_out(entity, name)

    def preview_field(self, principal: Principal, entity: str, field_doc: Any, name: str | None = None) -> FieldSpec:
        """The field as ``add_field`` (``name`` None) or ``patch_field`` would leave it, after the
        same checks — meta-schema, the whole registry rebuilt, data safety — with nothing saved."""
        if name is None:
            field_doc, overlay = self._with_new_field(principal, entity, field_doc)
            name = field_doc["name"]
        else:
            overlay, _, _ = self._with_changed_field(principal, entity, name, field_doc)
        with self.runtime.engine.connect() as conn:
            snap = self.runtime.build(conn, self.runtime.cached_snapshot().version, extra=[overlay])
        built = snap.registry.entity(entity).field(name)
        assert built is not None
        return built

    def set_layout(
        self,
        principal: Principal,
        entity: str,
        *,
        field_order: Sequence[str] | None = None,
        list_columns: Sequence[str] | None = None,
        sections: Sequence[Mapping[str, Any]] | None = None,
        tag_sets: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Field order, list columns, form sections and tag sets of an entity, as a new overlay
        version. ``list_columns=[]`` / ``sections=[]`` / ``tag_sets=[]`` go back to the
        defaults; ``None`` leaves a part as it is."""
        self.authz.require(principal, entity, "configure")
        self.runtime.cached_snapshot().registry.entity(entity)  # 404 for an unknown entity
        overlay = self._overlay(entity)
        parts = []
        if field_order is not None:
            overlay["field_order"] = list(field_order)
            parts.append("field order")
        if list_columns is not None:
            overlay["list_columns"] = list(list_columns)
            parts.append("list columns")
        if sections is not None:
            overlay["sections"] = [dict(sec) for sec in sections]
            parts.append("form sections")
        if tag_sets is not None:
            overlay["tag_sets"] = [dict(ts) for ts in tag_sets]
            parts.append("tag sets")
        if not parts:
            raise BadRequest("nothing to change: give field_order, list_columns, sections or tag_sets")
        errors = schema_errors("entity_overlay", overlay)
        seen: set[str] = set()
        for i, c in enumerate(overlay.get("list_columns", [])):
            if c in seen:
                errors.append({"pointer": f"/list_columns/{i}", "message": f"column {c!r} is listed twice"})
            seen.add(c)
        if errors:
            raise MetadataInvalid("layout is invalid", [{**e, "field": e["pointer"].split("/")[1] if e["pointer"] else ""} for e in errors])
        self._commit(principal, "entity_overlay", entity, overlay, comment="change " + ", ".join(parts))
        return self.entity(principal, entity)

    def configurable(self, principal: Principal) -> list[EntitySpec]:
        """The entities ``principal`` may configure, by name; Forbidden if there are none."""
        reg = self.runtime.cached_snapshot().registry
        out = [s for _, s in sorted(reg.entities.items()) if self._may_configure(principal, s.name)]
        if not out:
            raise Forbidden("your role may not configure any entity")
        return out

    def configured_entity(self, principal: Principal, entity: str) -> EntitySpec:
        """The current spec of ``entity`` (archived fields included), for someone who may configure it."""
        self.authz.require(principal, entity, "configure")
        return self.runtime.cached_snapshot().registry.entity(entity)

    def tags_in_use(self, principal: Principal, entity: str) -> list[dict[str, Any]]:
        """The tags on ``entity`` records with how many records carry each, most used first.
        (Tags are free-form per record; there are no tag-set documents yet.)"""
        self.authz.require(principal, entity, "configure")
        self.runtime.cached_snapshot().registry.entity(entity)
        t = tag_table
        n = func.count().label("n")
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(t.c.tag, n).where(t.c.entity == entity).group_by(t.c.tag).order_by(n.desc(), t.c.tag).limit(500)).all()
        return [{"tag": r.tag, "count": int(r.n)} for r in rows]

    def archive_field(self, principal: Principal, entity: str, name: str) -> dict[str, Any]:
        self.authz.require(principal, entity, "configure")
        reg = self.runtime.cached_snapshot().registry
        spec = reg.entity(entity)
        f = spec.live_field(name)
        if f is None:
            raise NotFound(f"unknown field {name!r} on {entity}")
        uses = []
        if spec.owner_field == name:
            uses.append("it is the owner field")
        if spec.title_field == name:
            uses.append("it is the title field")
        if any(s.lstrip("-") == name for s in spec.default_sort) or any(name in [c.lstrip("-") for c in i] for i in spec.indexes):
            uses.append("the default sort or an index uses it")
        if any(r.field == name for other in reg.entities.values() for r in other.relations if r.entity == entity):
            uses.append("a relation uses it")
        if uses:
            raise UnsafeChange(f"field {name!r} cannot be archived: " + "; ".join(uses), [{"field": name, "message": u} for u in uses])
        overlay = self._overlay(entity)
        _overlay_field(overlay, name)["archived"] = True
        if name in overlay.get("list_columns", []):
            overlay["list_columns"] = [c for c in overlay["list_columns"] if c != name]
        self._commit(principal, "entity_overlay", entity, overlay, comment=f"archive field {name}")
        return {"name": name, "archived": True}

    def promote_field(self, principal: Principal, entity: str, name: str) -> dict[str, Any]:
        """Move a JSON-stored field into a real indexed column, copying its data in SQL."""
        self.authz.require(principal, entity, "configure")
        snap = self.runtime.cached_snapshot()
        spec = snap.registry.entity(entity)
        f = spec.live_field(name)
        if f is None:
            raise NotFound(f"unknown field {name!r} on {entity}")
        if f.storage == "column":
            raise Conflict(f"field {name!r} is already a column", [{"field": name, "message": "already a column"}])
        if f.type == "multi_enum" or f.encrypted:
            raise UnsafeChange(f"{f.type} fields stay in JSON storage", [{"field": name, "message": "cannot be promoted"}])
        overlay = self._overlay(entity)
        _overlay_field(overlay, name).update(storage="column", indexed=True)

        def copy_data(conn: Connection, new: Snapshot) -> None:
            t = new.tables[entity]
            source = t.c.ext[name].as_string() if f.type in ("date", "datetime") else field_expr(t, f)
            conn.execute(update(t).where(t.c.ext[name].as_string().is_not(None)).values({t.c[name]: _convert(conn, f, source)}))
            conn.execute(update(t).values(ext=_without_key(conn, t, name)))

        self._commit(principal, "entity_overlay", entity, overlay, comment=f"promote field {name} to a column", after_ddl=copy_data)
        return self._field_out(entity, name)

    def revert(self, principal: Principal, kind: str, name: str, version: int) -> dict[str, Any]:
        """Make an older version current again (as a new version: history is never rewritten)."""
        self.authz.require(principal, name, "configure")
        d = meta_doc_table
        with self.runtime.engine.connect() as conn:
            doc = conn.execute(select(d.c.doc).where(d.c.kind == kind, d.c.name == name, d.c.version == version)).scalar()
        if doc is None:
            raise NotFound(f"no version {version} of {kind} {name!r}")
        doc = copy.deepcopy(dict(doc))
        snap = self.runtime.cached_snapshot()
        current = snap.registry.entity(name) if name in snap.registry.entities else None
        if current is not None:
            # A promotion moved the data into a column: the column stays (storage never goes back
            # to JSON), and every other change must be one the data survives, as for a PATCH.
            for entry in doc.get("fields", []):
                now = current.field(entry["name"])
                if now is not None and now.storage == "column" and entry.get("storage", "json") != "column":
                    entry.update(storage="column", indexed=True)
            with self.runtime.engine.connect() as conn:
                candidate = self.runtime.build(conn, snap.version, extra=[doc]).registry.entity(name)
            for old in current.fields:
                new = candidate.field(old.name)
                if new is not None and not old.archived and not new.archived and new != old:
                    self._check_safe(snap, current, old, new)
        self._commit(principal, kind, name, doc, comment=f"revert to version {version}")
        return {"kind": kind, "name": name, "reverted_to": version}

    # ------------------------------------------------------------------ internals

    def _with_new_field(self, principal: Principal, entity: str, field_doc: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check a new field as far as possible without the database; the overlay that adds it."""
        self.authz.require(principal, entity, "configure")
        if not isinstance(field_doc, dict):
            raise BadRequest("the request body must be a JSON object")
        field_doc = {"storage": "json", **field_doc}  # runtime fields: no DDL unless asked for
        self._field_schema_check(field_doc)
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        existing = spec.field(field_doc["name"])
        if existing is not None:
            raise Conflict(
                f"field {field_doc['name']!r} already exists on {entity}" + (" (archived)" if existing.archived else ""),
                [{"field": "name", "message": "already exists"}],
            )
        overlay = self._overlay(entity)
        overlay.setdefault("fields", []).append(field_doc)
        return field_doc, overlay

    def _with_changed_field(self, principal: Principal, entity: str, name: str, changes: Any) -> tuple[dict[str, Any], FieldSpec, FieldSpec]:
        """Check a change to a live field (safe for the stored data too): (overlay, old, new)."""
        self.authz.require(principal, entity, "configure")
        if not isinstance(changes, dict) or not changes:
            raise BadRequest("the request body must be a non-empty JSON object")
        snap = self.runtime.cached_snapshot()
        spec = snap.registry.entity(entity)
        current = spec.live_field(name)
        if current is None:
            raise NotFound(f"unknown field {name!r} on {entity}")
        bad = sorted(set(changes) - PATCHABLE)
        if bad:
            raise UnsafeChange(f"{bad[0]!r} cannot be changed on an existing field", [{"field": b, "message": "cannot be changed"} for b in bad])
        removed = sorted(k for k, v in changes.items() if v is None)
        declared = [k for k in removed if k in self._declared_field(entity, name)]
        if declared:
            raise UnsafeChange(
                f"{declared[0]!r} is set by the definition of {entity}.{name} and cannot be removed; give it another value instead",
                [{"field": k, "message": "set by the entity definition: give it another value"} for k in declared],
            )
        merged = {k: v for k, v in {**self.describe_field(current), **changes}.items() if v is not None}
        merged.pop("archived", None)
        self._field_schema_check(merged)
        new = freeze_field(merged)
        self._check_safe(snap, spec, current, new)
        overlay = self._overlay(entity)
        entry = _overlay_field(overlay, name)
        entry.update({k: v for k, v in changes.items() if v is not None})
        for k in removed:
            entry.pop(k, None)
        return overlay, current, new

    def _declared_field(self, entity: str, name: str) -> dict[str, Any]:
        """Field ``name`` as the entity's own documents (core, package, runtime entity) declare it."""
        with self.runtime.engine.connect() as conn:
            entities, _, _ = self.runtime.runtime_documents(conn)
        out: dict[str, Any] = {}
        for doc in [*self.runtime.core_documents, *entities]:
            if doc.get("name") == entity and doc.get("kind") == "entity":
                for f in doc.get("fields", []):
                    if f.get("name") == name:
                        out.update(f)
        return out

    def _may_configure(self, principal: Principal, entity: str) -> bool:
        try:
            self.authz.require(principal, entity, "configure")
        except Forbidden:
            return False
        return True

    def _field_schema_check(self, field_doc: Mapping[str, Any]) -> None:
        errors = schema_errors("field", field_doc)
        if errors:
            raise MetadataInvalid("field definition is invalid", [{"pointer": e["pointer"], "field": e["pointer"].split("/")[1] if e["pointer"] else "", "message": e["message"]} for e in errors])

    def _overlay(self, entity: str) -> dict[str, Any]:
        with self.runtime.engine.connect() as conn:
            _, overlays, _ = self.runtime.runtime_documents(conn)
        for ov in overlays:
            if ov["name"] == entity:
                return copy.deepcopy(ov)
        return {"kind": "entity_overlay", "name": entity}

    def _field_out(self, entity: str, name: str) -> dict[str, Any]:
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        f = spec.field(name)
        assert f is not None
        return self.describe_field(f)

    def _check_safe(self, snap: Snapshot, spec: EntitySpec, old: FieldSpec, new: FieldSpec) -> None:
        """Refuse (409) any change existing data would not survive, naming the reason."""
        t = snap.tables[spec.name]
        expr = field_expr(t, old)
        reasons = []
        if new.type != old.type:
            if old.storage == "column" and not (old.type, new.type) == ("string", "text"):
                reasons.append(f"a column-stored {old.type} field cannot become {new.type}")
            elif old.storage == "json" and (old.type, new.type) not in SAFE_TYPE_CHANGES:
                reasons.append(f"changing {old.type} to {new.type} could lose data; add a new field and migrate instead")
        with self.runtime.engine.connect() as conn:
            if new.required and not old.required:
                n = conn.execute(select(func.count()).select_from(t).where(expr.is_(None))).scalar_one()
                if n:
                    reasons.append(f"{n} records have no value, so the field cannot become required")
            if new.max_length and (old.max_length is None or new.max_length < old.max_length) and old.type in ("string", "text", "email", "url"):
                n = conn.execute(select(func.count()).select_from(t).where(func.length(expr) > new.max_length)).scalar_one()
                if n:
                    reasons.append(f"{n} records have longer values than {new.max_length} characters")
            removed = old.option_values - new.option_values if old.options else frozenset()
            if removed and old.type == "enum":
                n = conn.execute(select(func.count()).select_from(t).where(expr.in_(sorted(removed)))).scalar_one()
                if n:
                    reasons.append(f"{n} records use the options being removed")
            elif removed:
                reasons.append("options of a multi_enum field cannot be removed")
            if old.type in ("integer", "decimal") and (new.min != old.min or new.max != old.max):
                conds = []
                if new.min is not None:
                    conds.append(expr < new.min)
                if new.max is not None:
                    conds.append(expr > new.max)
                for cond in conds:
                    n = conn.execute(select(func.count()).select_from(t).where(cond)).scalar_one()
                    if n:
                        reasons.append(f"{n} records fall outside the new bounds")
        if new.indexed and old.storage != "column":
            reasons.append("only column-stored fields can be indexed: promote the field first")
        if reasons:
            raise UnsafeChange(f"change to {spec.name}.{old.name} refused: " + "; ".join(reasons), [{"field": old.name, "message": r} for r in reasons])

    def _commit(self, principal: Principal, kind: str, name: str, doc: dict[str, Any], *, comment: str, after_ddl: Any = None) -> Snapshot:
        """Validate the registry with ``doc`` applied, then write schema + document + stamp."""
        d = meta_doc_table
        with self.runtime.begin() as conn:
            version = self.runtime.bump(conn, META_VERSION)  # takes the write lock first: changes serialise
            snap = self.runtime.build(conn, version, extra=[doc])
            steps = plan_migration(conn, snap.metadata)
            apply_migration(conn, snap.metadata, steps)
            if after_ddl is not None:
                after_ddl(conn, snap)
            last = conn.execute(select(func.max(d.c.version)).where(d.c.kind == kind, d.c.name == name)).scalar() or 0
            conn.execute(
                insert(d).values(
                    kind=kind, name=name, version=last + 1, doc=doc, author=principal.username, comment=comment[:500], created_at=utcnow()
                )
            )
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=principal.username, actor_id=principal.user_id, action="meta_change", entity=name, ip=principal.ip,
                    detail={"kind": kind, "version": last + 1, "comment": comment[:500], "metadata_version": version},
                ),
            )
        self.runtime.install(snap)
        return snap


def _overlay_field(overlay: dict[str, Any], name: str) -> dict[str, Any]:
    """The overlay's entry for field ``name`` (created empty if the overlay has none yet)."""
    fields = overlay.setdefault("fields", [])
    for entry in fields:
        if entry["name"] == name:
            return entry  # type: ignore[no-any-return]
    entry = {"name": name}
    fields.append(entry)
    return entry


def _convert(conn: Connection, f: FieldSpec, source: Any) -> Any:
    """JSON value → column value, in SQL."""
    sqlite = conn.dialect.name == "sqlite"
    if f.type == "decimal" and sqlite:
        return cast(func.round(source * (10**f.scale)), Integer)  # Money: integer units on SQLite
    if f.type == "datetime":
        text = func.replace(func.replace(source, "T", " "), "Z", "")
        # SQLite keeps DateTime as text in SQLAlchemy's fixed format, microseconds included
        return text.concat(".000000") if sqlite else cast(text, DateTime)
    if f.type == "date" and not sqlite:
        return cast(source, Date)
    return source


def _without_key(conn: Connection, t: Any, name: str) -> Any:
    if conn.dialect.name == "postgresql":
        return type_coerce(t.c.ext, JSONB).op("-")(literal(name))
    return func.json_remove(t.c.ext, f"$.{name}")

