"""SQLAlchemy Core tables: the engine's own system tables and one table per entity spec.

Entity tables are built programmatically from specs (``Table(name, metadata, *columns)``); a
new registry version gets a fresh ``MetaData`` so no process keeps a stale table shape.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ..fieldtypes import FIELD_TYPES
from ..meta.registry import Registry
from ..meta.spec import EntitySpec, FieldSpec
from ..sqltypes import IdType, JsonDoc

__all__ = [
    "NAMING",
    "system_metadata",
    "state_table",
    "meta_doc_table",
    "package_table",
    "id_alloc_table",
    "tag_table",
    "build_entity_tables",
    "entity_columns",
    "field_column",
    "index_name",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

system_metadata = MetaData(naming_convention=NAMING)

# Version stamps: every process compares these to its cached registry / policy on each request.
state_table = Table(
    "fincrm_state",
    system_metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Runtime metadata documents (entities created and overlays made in the UI/API), one row per
# version; the newest version of a (kind, name) is in force, reverting writes a new version.
meta_doc_table = Table(
    "fincrm_meta_doc",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("name", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("doc", JsonDoc, nullable=False),
    Column("author", String(150)),
    Column("comment", String(500)),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("kind", "name", "version"),
)

# Template packages (verticals, exported customisations): every uploaded version, one row each.
# At most one version of a name is active (published); its documents sit between the core
# metadata and the runtime documents. Rolling back re-activates the previously published version.
package_table = Table(
    "fincrm_package",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, … per name, in upload order
    Column("version", String(32), nullable=False),
    Column("digest", String(64), nullable=False),  # sha256 of the canonical JSON
    Column("doc", JsonDoc, nullable=False),
    Column("active", Boolean, nullable=False, default=False),
    Column("uploaded_by", String(150)),
    Column("uploaded_at", DateTime, nullable=False),
    Column("published_by", String(150)),
    Column("published_at", DateTime),
    Column("retired_at", DateTime),  # when a rollback or a newer version replaced it
    UniqueConstraint("name", "seq"),
    Index("ix_fincrm_package_active", "active"),
)

# Hi/lo id blocks: ids are known before INSERT (encryption binds each value to its row id,
# and bulk loads can link rows without a round trip per row).
id_alloc_table = Table(
    "fincrm_id_alloc",
    system_metadata,
    Column("name", String(64), primary_key=True),
    Column("next_id", BigInteger, nullable=False),
)

tag_table = Table(
    "fincrm_tag",
    system_metadata,
    Column("entity", String(63), primary_key=True),
    Column("record_id", BigInteger, primary_key=True),
    Column("tag", String(64), primary_key=True),
    Column("source", String(16), nullable=False, default="manual"),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", Integer),
    Index("ix_fincrm_tag_lookup", "entity", "tag", "record_id"),
)


def index_name(table: str, cols: list[str]) -> str:
    name = "ix_" + table + "_" + "_".join(c.lstrip("-") for c in cols)
    return name[:63]


def field_column(spec: EntitySpec, f: FieldSpec, *, with_fk: bool = True) -> list[Any]:
    """The columns (and constraints) one column-stored field needs."""
    if f.encrypted:
        out: list[Any] = [Column(f.name, Text, nullable=True)]
        if f.searchable:
            out.append(Column(f.blind_index_column, String(64), nullable=True, unique=f.unique, index=not f.unique))
        return out
    args: list[Any] = []
    if f.type == "ref" and with_fk and f.ref:
        args.append(ForeignKey(f"e_{f.ref}.id", ondelete="RESTRICT"))
    return [
        Column(
            f.name,
            FIELD_TYPES[f.type].column(f),
            *args,
            nullable=True,  # required-ness is checked by the service: archived fields keep old rows valid
            unique=f.unique or None,
            index=(f.indexed and not f.unique) or None,
        )
    ]


def entity_columns(spec: EntitySpec) -> list[Any]:
    cols: list[Any] = [
        Column("id", IdType, primary_key=True, autoincrement=False),
        Column("version", Integer, nullable=False, default=1),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
        Column("created_by", Integer),
        Column("updated_by", Integer),
        Column("ext", JsonDoc, nullable=True),
        # set instead of deleting when the entity has a legal retention period (DESIGN §4)
        Column("retained_at", DateTime, nullable=True),
    ]
    for f in spec.fields:  # archived fields keep their columns: data is never dropped
        if f.storage == "column":
            cols += field_column(spec, f)
    return cols


def build_entity_tables(registry: Registry, dialect: str = "sqlite") -> tuple[MetaData, dict[str, Table]]:
    md = MetaData(naming_convention=NAMING)
    tables: dict[str, Table] = {}
    for spec in registry.entities.values():
        t = Table(spec.table_name, md, *entity_columns(spec))
        for idx in spec.indexes:
            exprs = [_index_key(t, c, dialect, spec) for c in idx]
            Index(index_name(spec.table_name, list(idx)), *exprs)
        tables[spec.name] = t
    return md, tables


def _index_key(t: Table, key: str, dialect: str, spec: EntitySpec) -> Any:
    """Index keys in the order lists sort, so pages are read off the index: required fields
    sort plainly; a nullable descending key sorts NULLS LAST (PostgreSQL only: SQLite indexes
    take no NULLS clause)."""
    name = key.lstrip("-")
    col = t.c[name]
    if not key.startswith("-"):
        return col
    f = spec.field(name)
    nullable = f is not None and not f.required
    return col.desc().nulls_last() if dialect == "postgresql" and nullable else col.desc()
