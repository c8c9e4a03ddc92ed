"""Plan and apply additive schema changes with Alembic's operations.

``plan_migration`` compares the specs with the live database and lists what is missing
(tables, columns, indexes); ``apply_migration`` carries the plan out. Nothing is ever dropped:
an archived field keeps its column and data. The plan is plain data, so a package publish can
show it as a dry run before anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Column, Connection, Index, MetaData, Table, inspect

__all__ = ["Step", "plan_migration", "apply_migration"]


@dataclass(frozen=True)
class Step:
    op: str  # create_table | add_column | create_index
    table: str
    name: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"op": self.op, "table": self.table, "name": self.name, "detail": self.detail}


def plan_migration(conn: Connection, metadata: MetaData) -> list[Step]:
    insp = inspect(conn)
    existing = set(insp.get_table_names())
    steps: list[Step] = []
    for table in metadata.sorted_tables:
        if table.name not in existing:
            steps.append(Step("create_table", table.name, table.name, f"{len(table.columns)} columns"))
            continue
        have_cols = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have_cols:
                steps.append(Step("add_column", table.name, col.name, str(col.type.compile(conn.dialect))))
        have_idx = {i["name"] for i in insp.get_indexes(table.name)}
        have_idx |= {u["name"] for u in insp.get_unique_constraints(table.name)}
        for idx in sorted(table.indexes, key=lambda i: str(i.name)):
            if idx.name not in have_idx:
                steps.append(Step("create_index", table.name, str(idx.name), "unique" if idx.unique else ""))
        for col in table.columns:
            if col.unique and col.name not in have_cols:
                steps.append(Step("create_index", table.name, f"uq_{table.name}_{col.name}", "unique"))
    return steps


def apply_migration(conn: Connection, metadata: MetaData, steps: list[Step]) -> None:
    ops = Operations(MigrationContext.configure(conn))
    tables = {t.name: t for t in metadata.sorted_tables}
    for step in steps:
        table: Table = tables[step.table]
        if step.op == "create_table":
            table.create(conn)
        elif step.op == "add_column":
            col = table.c[step.name]
            # a plain nullable column is instant on both databases (no table rewrite); SQLite
            # cannot ADD a UNIQUE column, so uniqueness comes as an index in a later step
            ops.add_column(step.table, Column(col.name, col.type, nullable=True))
        elif step.op == "create_index":
            idx = next((i for i in table.indexes if i.name == step.name), None)
            if idx is not None:
                idx.create(conn)
            else:
                ops.create_index(step.name, step.table, [step.name.removeprefix(f"uq_{step.table}_")], unique=True)

