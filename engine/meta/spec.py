"""Immutable specs: what the registry freezes metadata documents into.

Everything downstream (store, services, web) reads these, never raw JSON documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "Label",
    "Option",
    "FieldSpec",
    "RelationSpec",
    "SectionSpec",
    "RuleSpec",
    "DedupeKeySpec",
    "FuzzyDedupeSpec",
    "DedupeSpec",
    "MergeSpec",
    "MERGE_RULES",
    "EntitySpec",
    "SYSTEM_FIELDS",
]

# Columns every entity table has; never declared in metadata, never writable by clients.
SYSTEM_FIELDS = ("id", "version", "created_at", "updated_at", "created_by", "updated_by", "retained_at")


@dataclass(frozen=True)
class Label:
    zh: str
    en: str

    @classmethod
    def of(cls, doc: Mapping[str, str] | None, fallback: str = "") -> "Label":
        doc = doc or {}
        return cls(zh=doc.get("zh", fallback), en=doc.get("en", fallback))

    def get(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh

    def to_dict(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}


@dataclass(frozen=True)
class Option:
    value: str
    label: Label


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    label: Label
    required: bool = False
    unique: bool = False
    default: Any = None
    min: Any = None
    max: Any = None
    max_length: int | None = None
    pattern: str | None = None
    options: tuple[Option, ...] = ()
    ref: str | None = None
    precision: int = 18
    scale: int = 2
    currency: str | None = None  # ISO 4217, for money amounts
    sensitivity: str | None = None
    encrypted: bool = False
    searchable: bool = False
    mask: str | None = None
    storage: str = "column"
    indexed: bool = False
    archived: bool = False
    readonly: bool = False
    help: Label | None = None

    @property
    def option_values(self) -> frozenset[str]:
        return frozenset(o.value for o in self.options)

    @property
    def blind_index_column(self) -> str:
        return f"{self.name}__bi"

    @property
    def sortable(self) -> bool:
        return not self.encrypted and self.type not in ("multi_enum", "text")


@dataclass(frozen=True)
class RelationSpec:
    """A one-to-many relation: records of ``entity`` whose ``field`` points at this one."""

    name: str
    entity: str
    field: str
    label: Label


@dataclass(frozen=True)
class TagSetSpec:
    """Suggested tags for an entity's records, under a title (e.g. 客户价值)."""

    name: str
    label: Label
    tags: tuple[Option, ...]


@dataclass(frozen=True)
class SectionSpec:
    """A titled group of fields on forms; ``fields`` are live fields only, in display order."""

    name: str
    label: Label
    fields: tuple[str, ...]


@dataclass(frozen=True)
class RuleSpec:
    """A cross-field (logic) rule: a record that matches ``when`` must match ``check``.

    Both are filter DSL documents, so rules run as SQL; ``fields`` are the fields an error is
    reported on, ``depends`` every field the two filters read (an update re-checks the rule
    only when it changes one of them)."""

    name: str
    label: Label
    message: Label
    fields: tuple[str, ...]
    check: Mapping[str, Any] = field(compare=False)
    when: Mapping[str, Any] | None = field(default=None, compare=False)
    depends: tuple[str, ...] = ()


@dataclass(frozen=True)
class DedupeKeySpec:
    """Records with equal values in all of ``fields`` are duplicates (encrypted fields compare
    through their blind index)."""

    name: str
    label: Label
    fields: tuple[str, ...]


@dataclass(frozen=True)
class FuzzyDedupeSpec:
    """Records equal in ``same`` whose ``field`` (a name) is similar: bucketed in SQL by ``same``
    and the first ``prefix`` characters of ``field``, compared in Python within a bucket."""

    name: str
    label: Label
    field: str
    same: tuple[str, ...]
    threshold: float = 0.85
    prefix: int = 1


@dataclass(frozen=True)
class DedupeSpec:
    keys: tuple[DedupeKeySpec, ...] = ()
    fuzzy: tuple[FuzzyDedupeSpec, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys) + tuple(f.name for f in self.fuzzy)


# Survivorship rules of a merge: which value of a field the golden record keeps.
MERGE_RULES = ("survivor", "non_empty", "most_recent", "max", "min", "longest")


@dataclass(frozen=True)
class MergeSpec:
    """Survivorship per field: ``fields`` maps a field to one of :data:`MERGE_RULES`; the
    others follow ``default``."""

    default: str = "non_empty"
    fields: tuple[tuple[str, str], ...] = ()

    def rule_for(self, name: str) -> str:
        for f, rule in self.fields:
            if f == name:
                return rule
        return self.default


@dataclass(frozen=True)
class EntitySpec:
    name: str
    label: Label
    fields: tuple[FieldSpec, ...]
    relations: tuple[RelationSpec, ...] = ()
    owner_field: str | None = None
    title_field: str | None = None
    default_sort: tuple[str, ...] = ("-id",)
    search_fields: tuple[str, ...] = ()
    list_columns: tuple[str, ...] = ()
    sections: tuple[SectionSpec, ...] = ()
    tag_sets: tuple[TagSetSpec, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    icon: str | None = None
    retention_years: int | None = None
    rules: tuple[RuleSpec, ...] = ()
    dedupe: DedupeSpec | None = None
    merge: MergeSpec | None = None
    _by_name: Mapping[str, FieldSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({f.name: f for f in self.fields}))

    @property
    def table_name(self) -> str:
        return f"e_{self.name}"

    def field(self, name: str) -> FieldSpec | None:
        """The field called ``name`` (archived ones included), or None."""
        return self._by_name.get(name)

    @property
    def live_fields(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if not f.archived)

    def live_field(self, name: str) -> FieldSpec | None:
        f = self._by_name.get(name)
        return None if f is None or f.archived else f

    @property
    def columns(self) -> tuple[str, ...]:
        return self.list_columns or tuple(f.name for f in self.live_fields[:6])
