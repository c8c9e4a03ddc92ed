"""One pipeline for metadata: load → validate → merge overlays → freeze.

``build_registry`` is pure: it takes documents (core files, published packages, runtime
overlays read from the database by the caller) and returns an immutable :class:`Registry`, or
raises :class:`MetadataInvalid` listing every error with its JSON pointer. It never touches the
database, so a broken change is refused before anything is applied.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ..errors import FieldError, InvalidFilter, MetadataInvalid, NotFound
from ..fieldtypes import FIELD_TYPES
from .schema import METADATA_DIR, pointer, schema_errors
from .spec import (
    SYSTEM_FIELDS,
    DedupeKeySpec,
    DedupeSpec,
    EntitySpec,
    FieldSpec,
    FuzzyDedupeSpec,
    Label,
    MergeSpec,
    Option,
    RelationSpec,
    RuleSpec,
    SectionSpec,
    TagSetSpec,
)

__all__ = ["Registry", "build_registry", "load_core_documents", "merge_entity", "freeze_field", "RESERVED_NAMES"]

RESERVED_NAMES = frozenset(SYSTEM_FIELDS) | {"ext", "tags", "owner_name", "filter", "cursor"}


@dataclass(frozen=True)
class Registry:
    version: int
    entities: Mapping[str, EntitySpec]
    documents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def entity(self, name: str) -> EntitySpec:
        spec = self.entities.get(name)
        if spec is None:
            raise NotFound(f"unknown entity {name!r}")
        return spec

    def referrers(self, entity: str) -> list[tuple[EntitySpec, FieldSpec]]:
        """Fields of any entity that reference ``entity`` (used by delete checks and the 360 view)."""
        return [
            (spec, f)
            for spec in self.entities.values()
            for f in spec.live_fields
            if f.type == "ref" and f.ref == entity
        ]


def load_core_documents(directory: Path | None = None) -> list[dict[str, Any]]:
    directory = directory or METADATA_DIR / "core"
    docs = []
    for path in sorted(directory.glob("*.json")):
        docs.append(json.loads(path.read_text(encoding="utf-8")))
    return docs


def merge_entity(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay on top of base: fields merge by name (attributes override), other keys replace.
    An overlay's ``field_order`` is applied last, to the merged fields: the fields it names come
    first, in its order; the others follow in the order they had (unknown names are ignored here
    and reported by ``build_registry``)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if key in ("kind", "name", "field_order"):
            continue
        if key == "fields":
            by_name = {f["name"]: i for i, f in enumerate(merged.get("fields", []))}
            for f in value:
                if f["name"] in by_name:
                    merged["fields"][by_name[f["name"]]].update(copy.deepcopy(f))
                else:
                    merged.setdefault("fields", []).append(copy.deepcopy(f))
        else:
            merged[key] = copy.deepcopy(value)
    order = {name: i for i, name in enumerate(overlay.get("field_order", ()))}
    if order and merged.get("fields"):
        # a stable sort: named fields by their place in the order, the rest after, as they were
        merged["fields"].sort(key=lambda f: order.get(f["name"], len(order)))
    return merged


def build_registry(
    documents: Iterable[Mapping[str, Any]],
    overlays: Iterable[Mapping[str, Any]] = (),
    version: int = 0,
) -> Registry:
    errors: list[dict[str, str]] = []
    entity_docs: dict[str, dict[str, Any]] = {}
    for doc in documents:
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        if kind != "entity":
            continue  # other kinds (roles, reports, …) are frozen by their own modules
        where = f"/entity/{doc.get('name')}"
        errs = schema_errors("entity", doc)
        errors += [{"pointer": where + e["pointer"], "message": e["message"]} for e in errs]
        if not errs:
            name = doc["name"]
            entity_docs[name] = merge_entity(entity_docs[name], doc) if name in entity_docs else copy.deepcopy(dict(doc))
    for ov in overlays:
        where = f"/overlay/{ov.get('name')}"
        errs = schema_errors("entity_overlay", ov)
        errors += [{"pointer": where + e["pointer"], "message": e["message"]} for e in errs]
        if errs:
            continue
        if ov["name"] not in entity_docs:
            errors.append({"pointer": where + "/name", "message": "overlay for an unknown entity"})
            continue
        merged = merge_entity(entity_docs[ov["name"]], ov)
        names = {f["name"] for f in merged.get("fields", [])}
        errors += [
            {"pointer": where + pointer(("field_order", i)), "message": f"unknown field {n!r}"}
            for i, n in enumerate(ov.get("field_order", ()))
            if n not in names
        ]
        errors += [{"pointer": where + e["pointer"], "message": e["message"]} for e in schema_errors("entity", merged)]
        entity_docs[ov["name"]] = merged
    if errors:
        raise MetadataInvalid("metadata is invalid", errors)

    entities: dict[str, EntitySpec] = {}
    broken: set[str] = set()
    for name, doc in entity_docs.items():
        spec, errs = _freeze_entity(doc)
        errors += [{"pointer": f"/entity/{name}" + e["pointer"], "message": e["message"]} for e in errs]
        entities[name] = spec
        if errs:
            broken.add(name)
    errors += _cross_checks(entities)
    errors += _rule_filter_errors(entities, broken)
    if errors:
        raise MetadataInvalid("metadata is invalid", errors)
    return Registry(
        version=version,
        entities=MappingProxyType(entities),
        documents=MappingProxyType({n: MappingProxyType(d) for n, d in entity_docs.items()}),
    )


def freeze_field(doc: Mapping[str, Any]) -> FieldSpec:
    kwargs: dict[str, Any] = {k: v for k, v in doc.items() if k in FieldSpec.__dataclass_fields__}
    kwargs["label"] = Label.of(doc["label"], doc["name"])
    if "help" in doc:
        kwargs["help"] = Label.of(doc["help"])
    kwargs["options"] = tuple(Option(o["value"], Label.of(o["label"], o["value"])) for o in doc.get("options", ()))
    return FieldSpec(**kwargs)


def _freeze_entity(doc: Mapping[str, Any]) -> tuple[EntitySpec, list[dict[str, str]]]:
    errors: list[dict[str, str]] = []
    fields: list[FieldSpec] = []
    seen: set[str] = set()
    for i, fdoc in enumerate(doc.get("fields", [])):
        at = pointer(("fields", i))
        f = freeze_field(fdoc)
        if f.name in seen:
            errors.append({"pointer": at + "/name", "message": f"duplicate field {f.name!r}"})
        if f.name in RESERVED_NAMES:
            errors.append({"pointer": at + "/name", "message": f"{f.name!r} is a reserved name"})
        seen.add(f.name)
        errors += [{"pointer": at + e["pointer"], "message": e["message"]} for e in _field_errors(f)]
        fields.append(f)
    by_name = {f.name: f for f in fields}

    def known(ref: str, where: str, *, sortable: bool = False, archived_ok: bool = False) -> None:
        bare = ref.lstrip("-")
        f = by_name.get(bare)
        if bare != "id" and (f is None or (f.archived and not archived_ok)):
            errors.append({"pointer": where, "message": f"unknown field {bare!r}"})
        elif sortable and f is not None and not f.sortable:
            errors.append({"pointer": where, "message": f"field {bare!r} cannot be sorted or indexed"})

    owner = doc.get("owner_field")
    if owner and (owner not in by_name or by_name[owner].type != "user"):
        errors.append({"pointer": "/owner_field", "message": "must name a field of type user"})
    if doc.get("title_field"):
        known(doc["title_field"], "/title_field")
    for i, s in enumerate(doc.get("default_sort", [])):
        known(s, pointer(("default_sort", i)), sortable=True)
    for key in ("search_fields", "list_columns"):  # archived fields simply drop out of these
        for i, s in enumerate(doc.get(key, [])):
            known(s, pointer((key, i)), archived_ok=True)
    set_names: set[str] = set()
    for i, ts in enumerate(doc.get("tag_sets", [])):
        if ts["name"] in set_names:
            errors.append({"pointer": pointer(("tag_sets", i, "name")), "message": f"duplicate tag set {ts['name']!r}"})
        set_names.add(ts["name"])
        values = [t["value"] for t in ts["tags"]]
        for j, v in enumerate(values):
            if v in values[:j]:
                errors.append({"pointer": pointer(("tag_sets", i, "tags", j, "value")), "message": f"duplicate tag {v!r}"})
    in_section: dict[str, str] = {}
    section_names: set[str] = set()
    for i, sec in enumerate(doc.get("sections", [])):
        if sec["name"] in section_names:
            errors.append({"pointer": pointer(("sections", i, "name")), "message": f"duplicate section {sec['name']!r}"})
        section_names.add(sec["name"])
        for j, s in enumerate(sec["fields"]):
            known(s, pointer(("sections", i, "fields", j)), archived_ok=True)
            if in_section.setdefault(s, sec["name"]) != sec["name"]:
                errors.append({"pointer": pointer(("sections", i, "fields", j)), "message": f"field {s!r} is already in section {in_section[s]!r}"})
    for i, idx in enumerate(doc.get("indexes", [])):
        for j, s in enumerate(idx):
            known(s, pointer(("indexes", i, j)), sortable=True)
            indexed = by_name.get(s.lstrip("-"))
            if indexed is not None and indexed.storage != "column":
                errors.append({"pointer": pointer(("indexes", i, j)), "message": "only column-stored fields can be indexed"})
    spec = EntitySpec(
        name=doc["name"],
        label=Label.of(doc["label"], doc["name"]),
        fields=tuple(fields),
        relations=tuple(
            RelationSpec(r["name"], r["entity"], r["field"], Label.of(r["label"], r["name"])) for r in doc.get("relations", ())
        ),
        owner_field=owner,
        title_field=doc.get("title_field"),
        default_sort=tuple(doc.get("default_sort") or ("-id",)),
        search_fields=tuple(c for c in doc.get("search_fields", ()) if c in by_name and not by_name[c].archived),
        list_columns=tuple(c for c in doc.get("list_columns", ()) if c in by_name and not by_name[c].archived),
        sections=tuple(
            SectionSpec(
                sec["name"], Label.of(sec["label"], sec["name"]), tuple(c for c in sec["fields"] if c in by_name and not by_name[c].archived)
            )
            for sec in doc.get("sections", ())
        ),
        tag_sets=tuple(
            TagSetSpec(ts["name"], Label.of(ts["label"], ts["name"]), tuple(Option(t["value"], Label.of(t["label"], t["value"])) for t in ts["tags"]))
            for ts in doc.get("tag_sets", ())
        ),
        indexes=tuple(tuple(i) for i in doc.get("indexes", ())),
        icon=doc.get("icon"),
        retention_years=doc.get("retention_years"),
    )
    if not errors and any(k in doc for k in ("rules", "dedupe", "merge")):
        quality, quality_errors = _freeze_quality(doc, spec)
        errors += quality_errors
        spec = replace(spec, **quality)
    return spec, errors


def _field_errors(f: FieldSpec) -> list[dict[str, str]]:
    errors = []
    if (f.unique or f.searchable or f.indexed) and f.storage != "column":
        errors.append({"pointer": "/storage", "message": "unique, searchable and indexed fields must use column storage"})
    if f.unique and f.encrypted and not f.searchable:
        errors.append({"pointer": "/searchable", "message": "a unique encrypted field needs a blind index (searchable: true)"})
    if f.type == "decimal" and f.scale > f.precision:
        errors.append({"pointer": "/scale", "message": "scale cannot exceed precision"})
    if f.type in ("multi_enum", "text") and (f.unique or f.indexed):
        errors.append({"pointer": "/unique", "message": f"{f.type} fields cannot be unique or indexed"})
    if f.default is not None:
        try:
            FIELD_TYPES[f.type].normalize(f.default, f)
        except FieldError as exc:
            errors.append({"pointer": "/default", "message": f"default {exc}"})
    return errors


def _cross_checks(entities: Mapping[str, EntitySpec]) -> list[dict[str, str]]:
    errors = []
    for name, spec in entities.items():
        for i, f in enumerate(spec.fields):
            if f.type == "ref" and f.ref not in entities:
                errors.append({"pointer": f"/entity/{name}/fields/{i}/ref", "message": f"unknown entity {f.ref!r}"})
        for i, rel in enumerate(spec.relations):
            target = entities.get(rel.entity)
            tf = target.field(rel.field) if target else None
            if tf is None or tf.type != "ref" or tf.ref != name:
                errors.append(
                    {"pointer": f"/entity/{name}/relations/{i}", "message": f"{rel.entity}.{rel.field} is not a reference to {name}"}
                )
    return errors


# ---------------------------------------------------------------- data-quality metadata

# Merge rules that pick among values by order or length need types that have one.
_ORDERED_TYPES = frozenset({"integer", "decimal", "date", "datetime"})
_LENGTH_TYPES = frozenset({"string", "text"})


def _freeze_quality(doc: Mapping[str, Any], spec: EntitySpec) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Logic rules, duplicate definitions and survivorship of an entity, checked against it:
    every field named must be live (rule filters are compiled once every entity is frozen)."""
    errors: list[dict[str, str]] = []
    out: dict[str, Any] = {}

    def live(name: str, where: str) -> FieldSpec | None:
        f = spec.live_field(name)
        if f is None:
            errors.append({"pointer": where, "message": f"unknown field {name!r}"})
        return f

    rules: list[RuleSpec] = []
    for i, r in enumerate(doc.get("rules", ())):
        at = pointer(("rules", i))
        if any(x.name == r["name"] for x in rules):
            errors.append({"pointer": at + "/name", "message": f"duplicate rule {r['name']!r}"})
        for j, name in enumerate(r["fields"]):
            live(name, at + pointer(("fields", j)))
        rules.append(
            RuleSpec(
                name=r["name"],
                label=Label.of(r["label"], r["name"]),
                message=Label.of(r["message"]),
                fields=tuple(r["fields"]),
                check=copy.deepcopy(r["check"]),
                when=copy.deepcopy(r["when"]) if r.get("when") else None,
                depends=tuple(sorted(_filter_fields(r.get("when") or {}) | _filter_fields(r["check"]))),
            )
        )
    out["rules"] = tuple(rules)

    if "dedupe" in doc:
        seen: set[str] = set()

        def group_name(name: str, where: str) -> None:
            if name in seen:
                errors.append({"pointer": where, "message": f"duplicate dedupe group {name!r}"})
            seen.add(name)

        def key_field(name: str, where: str) -> None:
            f = live(name, where)
            if f is None:
                return
            if f.type in ("multi_enum", "text"):
                errors.append({"pointer": where, "message": f"{f.type} fields cannot be compared for duplicates"})
            elif f.encrypted and not f.searchable:
                errors.append({"pointer": where, "message": "an encrypted field needs a blind index (searchable: true) to find duplicates"})

        keys = []
        for i, k in enumerate(doc["dedupe"].get("keys", ())):
            at = pointer(("dedupe", "keys", i))
            group_name(k["name"], at + "/name")
            for j, name in enumerate(k["fields"]):
                key_field(name, at + pointer(("fields", j)))
            keys.append(DedupeKeySpec(k["name"], Label.of(k["label"], k["name"]), tuple(k["fields"])))
        fuzzy = []
        for i, z in enumerate(doc["dedupe"].get("fuzzy", ())):
            at = pointer(("dedupe", "fuzzy", i))
            group_name(z["name"], at + "/name")
            f = live(z["field"], at + "/field")
            if f is not None and (f.type != "string" or f.encrypted):
                errors.append({"pointer": at + "/field", "message": "fuzzy matching needs a string field that is not encrypted"})
            for j, name in enumerate(z["same"]):
                key_field(name, at + pointer(("same", j)))
            fuzzy.append(
                FuzzyDedupeSpec(
                    z["name"], Label.of(z["label"], z["name"]), z["field"], tuple(z["same"]), float(z.get("threshold", 0.85)), int(z.get("prefix", 1))
                )
            )
        out["dedupe"] = DedupeSpec(tuple(keys), tuple(fuzzy))

    if "merge" in doc:
        m = doc["merge"]
        per_field = []
        for name, rule in m.get("fields", {}).items():
            where = pointer(("merge", "fields", name))
            f = spec.field(name)
            if f is None:
                errors.append({"pointer": where, "message": f"unknown field {name!r}"})
            elif f.archived:
                continue  # archived fields are not merged; their rule simply drops out
            elif rule in ("max", "min") and f.type not in _ORDERED_TYPES:
                errors.append({"pointer": where, "message": f"{rule} needs a number, date or date-time field"})
            elif rule == "longest" and f.type not in _LENGTH_TYPES:
                errors.append({"pointer": where, "message": "longest needs a string or text field"})
            else:
                per_field.append((name, rule))
        out["merge"] = MergeSpec(m.get("default", "non_empty"), tuple(per_field))
    return out, errors


def _filter_fields(node: Any) -> set[str]:
    """Every field a filter document reads (a path ``ref.field`` reads ``ref``)."""
    out: set[str] = set()
    if isinstance(node, Mapping):
        if isinstance(node.get("field"), str):
            out.add(node["field"].split(".", 1)[0])
        value = node.get("value")
        if isinstance(value, Mapping) and isinstance(value.get("field"), str):
            out.add(value["field"])
        for key in ("and", "or"):
            parts = node.get(key)
            for part in parts if isinstance(parts, list) else ():
                out |= _filter_fields(part)
        if "not" in node:
            out |= _filter_fields(node["not"])
    return out


def _rule_filter_errors(entities: Mapping[str, EntitySpec], broken: set[str]) -> list[dict[str, str]]:
    """Every rule filter that does not compile against its entity (rules run as SQL, so a
    broken one is refused here, not found by the first write). Paths (``product.type``) reach
    one reference deep, as in triggers."""
    # The filter compiler lives in store, which imports this module (for the Registry type):
    # imported here, when documents are frozen, not when this module loads.
    from sqlalchemy import MetaData, Table

    from ..errors import FinCRMError
    from ..store.query import FilterContext, compile_filter
    from ..store.tables import entity_columns

    if not any(spec.rules for name, spec in entities.items() if name not in broken):
        return []

    def no_encrypted_values(f: FieldSpec, value: Any) -> str:
        raise InvalidFilter(f"rules test encrypted fields only with is_null ({f.name!r})", [{"field": f.name, "message": "only is_null"}])

    md = MetaData()
    tables = {name: Table(spec.table_name, md, *entity_columns(spec)) for name, spec in entities.items() if name not in broken}

    def context(name: str) -> FilterContext:
        if name not in entities or name in broken:
            raise InvalidFilter(f"rules cannot look into {name!r} records", [{"field": name, "message": "unknown or invalid entity"}])
        return FilterContext(spec=entities[name], table=tables[name], dialect="sqlite", blind_index=no_encrypted_values, related=context)

    errors = []
    for name, spec in entities.items():
        if name in broken:
            continue  # its own errors are listed; its rules are compiled once they are fixed
        for i, rule in enumerate(spec.rules):
            for key, node in (("when", rule.when), ("check", rule.check)):
                if node is None:
                    continue
                try:
                    compile_filter(context(name), dict(node))
                except FinCRMError as exc:
                    detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in exc.details[:3])
                    errors.append({"pointer": f"/entity/{name}" + pointer(("rules", i, key)), "message": exc.message + (f" ({detail})" if detail else "")})
    return errors
