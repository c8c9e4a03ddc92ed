"""Demo data of the vertical templates (``fincrm demo --template bank|securities|insurance|all``).

The verticals themselves are metadata packages in ``metadata/verticals/<name>/`` (entities,
overlays, roles, flows, triggers, reports, seeds), published by
:class:`engine.services.packages.PackageService`. What cannot be metadata is the synthetic demo
data that brings a published vertical to life: each vertical module here has
``seed_demo(ctx: DemoContext) -> dict[str, int]`` (records created per entity), run after the
package is published and the core demo data exists. Seeders write through the records service
(validation, encryption, audit), deterministically from ``ctx.seed``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = ["DemoContext", "VERTICALS", "seeder", "customers_of"]

VERTICALS = ("bank", "securities", "insurance")


@dataclass
class DemoContext:
    records: "RecordService"
    owners: list[tuple[int, str]]  # (user id, branch code) of the relationship managers
    branches: dict[str, int]  # branch code → branch id
    users: dict[str, int]  # demo username → user id (admin, sup1, rm1, rm2, ops1, risk1, auditor1)
    today: dt.date = field(default_factory=dt.date.today)
    seed: int = 20261203
    scale: float = 1.0  # demo size relative to 2,000 customers (never below a handful of records)

    def rng(self, salt: str) -> random.Random:
        return random.Random(f"{self.seed}:{salt}")


def customers_of(ctx: DemoContext, limit: int | None = None) -> list[dict[str, Any]]:
    """The demo customers as ``{"id", "owner", "aum", "branch"}`` (aum a Decimal or None), by id."""
    snap = ctx.records.runtime.cached_snapshot()
    t = snap.tables["customer"]
    stmt = select(t.c.id, t.c.owner, t.c.aum, t.c.branch).order_by(t.c.id)
    if limit:
        stmt = stmt.limit(limit)
    with ctx.records.runtime.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def seeder(name: str) -> Callable[[DemoContext], dict[str, int]]:
    if name not in VERTICALS:
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    fn: Callable[[DemoContext], dict[str, int]] = module.seed_demo
    return fn
