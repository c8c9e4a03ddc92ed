"""What a relationship manager sees of customers: one customer's 360 view, and "My work".

Both read only through the records service (its row scope, field masking, break-glass grants
and audit of unmasked reads apply as in the API), in a fixed number of SQL statements that does
not grow with the number of related rows. :meth:`Customer360.view` costs eleven, plus one per further relation:

 1. the customer (``records.get``: scope, masking, grants, audit);
 2. the header facts in one round trip: tags, consent status per purpose (the same EXISTS the
    marketing paths use, limited to the consents the reader may see) and the reader's own
    pending access requests for this customer;
 3. holdings; 4. recent transactions; 5. contact log (interactions); 6. opportunities;
 7. tasks; 8. tickets — each one scoped list page;
 9. the monthly in/out sums of the last 24 months, grouped in SQL over the scoped transactions;
10. the products named by holdings, transactions and opportunities (one ``id IN`` list);
11. sales scripts (话术, ``sales_script``) suited to the customer: active ones whose matching tag
    is one of the customer's tags first, then general ones (no tag), up to five;

and one scoped list page (five records) per further relation the customer declares — the core's
loan applications, insurance policies and survey answers, and whatever a published template adds
(credit reports, positions, beneficiaries …) — so the number of statements depends on the
metadata, never on the data.

A section whose entity the reader's role may not read is left out (None), not an error.

AUM tiers. The industry guide (shared/GUIDE-zh.md) asks for wealth tiers but names no
thresholds, so these are product decisions, in CNY of AUM, lower bound inclusive:

=========  ===========  ==============================================================
普通       Standard      below 50,000
金卡       Gold          50,000 and above
白金       Platinum      500,000 and above
钻石       Diamond       1,000,000 and above (the demo data's "affluent" band starts here)
私行       Private       6,000,000 and above (private-banking customers as defined by the
                         CBRC's 2011 rules on wealth-product sales: financial assets ≥ ¥6M)
=========  ===========  ==============================================================

Birthdays on "My work" are left out too: the birth date is masked in full for relationship
managers, and a birthday list would reveal its month and day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import DateTime, Interval, and_, cast, func, literal, select, true
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Exists

from ..fieldtypes import FIELD_TYPES, LOCAL_TZ
from ..meta.spec import FieldSpec, Label
from ..runtime import Runtime
from ..security.consent import PURPOSES, consent_clause
from ..security.principal import Principal
from ..store.query import field_expr
from ..store.tables import tag_table
from ..security.authz import permits
from .access import access_request_table
from .records import MAX_LIMIT, RecordService

__all__ = ["Customer360", "MyWork", "Section", "Tier", "TIERS", "tier_for", "month_keys"]


@dataclass(frozen=True)
class Tier:
    key: str
    label: Label
    floor: Decimal  # lowest AUM (CNY) of the tier, inclusive


TIERS: tuple[Tier, ...] = (
    Tier("private", Label("私行", "Private banking"), Decimal("6000000")),
    Tier("diamond", Label("钻石", "Diamond"), Decimal("1000000")),
    Tier("platinum", Label("白金", "Platinum"), Decimal("500000")),
    Tier("gold", Label("金卡", "Gold"), Decimal("50000")),
    Tier("standard", Label("普通", "Standard"), Decimal("0")),
)


def tier_for(aum: Decimal | None) -> Tier | None:
    """The wealth tier of an AUM (None when the AUM is unknown or not readable)."""
    if aum is None:
        return None
    return next((t for t in TIERS if aum >= t.floor), TIERS[-1])


@dataclass(frozen=True)
class Section:
    """One related list of the page: up to a limit of records, and whether there are more."""

    entity: str
    items: list[dict[str, Any]]
    more: bool


FIXED_SECTIONS = frozenset({"holding", "transaction", "interaction", "opportunity", "task", "ticket"})
FURTHER_LIMIT = 5  # records per further relation (the list page has the rest)

# "Open" values of the status-like fields, shown first; the rest only if recently changed.
OPEN_VALUES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "ticket": ("status", ("new", "in_progress")),
    "task": ("status", ("open", "escalated")),
    "opportunity": ("stage", ("identified", "contacted", "proposal")),
}
RECENT_DAYS = 180  # closed tickets, tasks and opportunities changed within this many days

_MOMENT = FieldSpec("moment", "datetime", Label("", ""))  # reads a dumped datetime back


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def _iso(moment: dt.datetime) -> str:
    """A naive UTC moment as the filter DSL takes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def month_keys(now_utc: dt.datetime, months: int) -> list[str]:
    """The last ``months`` calendar months in local time (``YYYY-MM``), oldest first."""
    local = now_utc.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ)
    index = local.year * 12 + local.month - 1
    return [f"{i // 12:04d}-{i % 12 + 1:02d}" for i in range(index - months + 1, index + 1)]


def _month_start_utc(key: str) -> dt.datetime:
    year, month = (int(p) for p in key.split("-"))
    start = dt.datetime(year, month, 1, tzinfo=LOCAL_TZ)
    return start.astimezone(dt.timezone.utc).replace(tzinfo=None)


class Customer360:
    """One customer as their relationship manager sees them (see the module docstring)."""

    limits = {"holding": 100, "transaction": 10, "interaction": 20, "opportunity": 20, "task": 20, "ticket": 30}

    def __init__(self, records: RecordService, *, months: int = 24, now: Callable[[], dt.datetime] = _now) -> None:
        self.records = records
        self.months = months
        self.now = now

    @property
    def runtime(self) -> Runtime:
        return self.records.runtime

    def view(self, principal: Principal, customer_id: Any) -> dict[str, Any]:
        """Everything the 360 page shows. A customer outside the reader's scope is NotFound."""
        customer = self.records.get(principal, "customer", customer_id)
        cid = int(customer["id"])
        header, monthly = self._header(principal, cid)
        sections = {
            "holdings": self._section(principal, "holding", cid),
            "transactions": self._section(principal, "transaction", cid),
            "interactions": self._section(principal, "interaction", cid),
            "opportunities": self._section(principal, "opportunity", cid),
            "tasks": self._section(principal, "task", cid),
            "tickets": self._section(principal, "ticket", cid),
        }
        product_ids: set[int] = set()
        for name in ("holdings", "transactions", "opportunities"):
            block = sections[name]
            product_ids |= {i["product"] for i in (block.items if block else []) if isinstance(i.get("product"), int)}
        aum = customer.get("aum")
        aum_value = Decimal(aum) if isinstance(aum, str) and "*" not in aum else None
        tier = tier_for(aum_value)
        view = self.records.view(principal, "customer")
        masked = [f.name for f in view.visible() if view.access[f.name].view == "masked"]
        granted = {name: g.expires_at for g in principal.grants if g.entity == "customer" and g.record_id == cid and g.expires_at > self.now() for name in g.fields}
        return {
            "customer": customer,
            "aum": aum_value,
            "tier": tier,
            "tags": header["tags"],
            "consent": header["consent"],
            "pending_access": header["pending"],
            "masked_fields": [n for n in masked if n not in granted],
            "granted_fields": granted,
            "monthly": monthly,
            "products": self._titles(principal, "product", product_ids, ("code", "name", "type", "risk_level")),
            "scripts": self._scripts(principal, header["tags"]),
            "more_sections": self._further(principal, cid),
            **sections,
        }

    # ------------------------------------------------------------------ pieces

    def _readable(self, principal: Principal, entity: str) -> bool:
        if entity not in self.runtime.cached_snapshot().registry.entities:
            return False
        return permits(self.records.authz, principal, entity, "read")

    def _section(self, principal: Principal, entity: str, cid: int) -> Section | None:
        """Up to ``limits[entity]`` records of ``entity`` on this customer, in the reader's scope.

        Where the entity has a status, open records come first and closed ones are listed only if
        changed in the last ``RECENT_DAYS`` days, so one statement shows what matters."""
        if not self._readable(principal, entity):
            return None
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        ref = spec.live_field("customer")
        if ref is None or ref.ref != "customer":
            return None
        filt: dict[str, Any] = {"field": "customer", "op": "eq", "value": cid}
        status, open_values = OPEN_VALUES.get(entity, ("", ()))
        if status and spec.live_field(status) is not None:
            recent = {"field": "updated_at", "op": "within_last_days", "value": RECENT_DAYS}
            filt = {"and": [filt, {"or": [{"field": status, "op": "in", "value": list(open_values)}, recent]}]}
        page = self.records.list(principal, entity, filter=filt, limit=self.limits[entity])
        items = page.items
        if status:  # stable: each group keeps the entity's default order
            items = [i for i in items if i.get(status) in open_values] + [i for i in items if i.get(status) not in open_values]
        return Section(entity, items, page.next_cursor is not None)

    def _further(self, principal: Principal, cid: int) -> list[dict[str, Any]]:
        """The customer's other relations (not the fixed sections, not consents: the header has
        them), each the reader may read: ``{"name", "label", "entity", "field", "columns", "section"}``."""
        registry = self.runtime.cached_snapshot().registry
        out = []
        for rel in registry.entity("customer").relations:
            if rel.entity in FIXED_SECTIONS or rel.entity == "consent" or not self._readable(principal, rel.entity):
                continue
            spec = registry.entity(rel.entity)
            page = self.records.list(principal, rel.entity, filter={"field": rel.field, "op": "eq", "value": cid}, limit=FURTHER_LIMIT)
            columns = [c for c in (spec.list_columns or tuple(f.name for f in spec.live_fields)) if c != rel.field][:5]
            out.append({"name": rel.name, "label": rel.label, "entity": rel.entity, "field": rel.field, "columns": columns,
                        "section": Section(rel.entity, page.items, page.next_cursor is not None)})
        return out

    def _scripts(self, principal: Principal, tags: list[str]) -> list[dict[str, Any]] | None:
        """Up to five active scripts: those for one of the customer's tags, then general ones."""
        if not self._readable(principal, "sales_script"):
            return None
        suited: list[dict[str, Any]] = [{"field": "match_tag", "op": "is_null", "value": True}]
        if tags:
            suited.append({"field": "match_tag", "op": "in", "value": tags[:50]})
        filt = {"and": [{"field": "active", "op": "eq", "value": True}, {"or": suited}]}
        items = self.records.list(principal, "sales_script", filter=filt, limit=50, fields=("code", "title", "scenario", "match_tag", "body", "compliance_note")).items
        return sorted(items, key=lambda i: (i.get("match_tag") is None, i.get("code") or ""))[:5]

    def _header(self, principal: Principal, cid: int) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """Tags, consent per purpose, my pending access requests and the monthly flows, in one
        statement: a one-row subquery of scalar facts (tags aggregated into one), left-joined on
        TRUE to the month groups."""
        snap = self.runtime.cached_snapshot()
        facts: list[Any] = []
        purposes: list[tuple[str, Label]] = []
        if self._readable(principal, "consent"):
            consent_view = self.records.view(principal, "consent", snap)
            spec = consent_view.spec
            purpose_field = spec.live_field("purpose")
            options = purpose_field.options if purpose_field is not None else ()
            purposes = [(o.value, o.label) for o in options] or [(p, Label(p, p)) for p in PURPOSES]
            scope = consent_view.scope()
            for i, (purpose, _) in enumerate(purposes):
                # the marketing paths' own definition of "active", over the consents I may see
                active = consent_clause(snap, literal(cid), purpose, self.now())
                if not isinstance(active, Exists):
                    raise TypeError("consent_clause is expected to give an EXISTS")
                facts.append(active.where(scope).label(f"consent_{i}"))
        t = access_request_table
        mine = and_(t.c.requester_id == principal.user_id, t.c.entity == "customer", t.c.record_id == cid, t.c.status == "pending")
        facts.append(select(func.count()).select_from(t).where(mine).scalar_subquery().label("pending_count"))
        facts.append(select(t.c.fields).where(mine).order_by(t.c.id.desc()).limit(1).scalar_subquery().label("pending_fields"))
        facts.append(select(t.c.created_at).where(mine).order_by(t.c.id.desc()).limit(1).scalar_subquery().label("pending_at"))
        tg = tag_table
        agg = func.string_agg if self.runtime.dialect == "postgresql" else func.group_concat
        facts.append(
            select(agg(tg.c.tag, literal(TAG_SEP))).where(tg.c.entity == "customer", tg.c.record_id == cid).scalar_subquery().label("tags")
        )
        one = select(*facts).subquery("facts")
        grouped, keys = self._monthly(principal, cid)
        if grouped is None:
            stmt = select(one)
        else:
            # the month groups ride on the one-row facts (LEFT JOIN ON TRUE): one round trip
            m = grouped.subquery("m")
            stmt = select(one, m.c.month, m.c.direction, m.c.total, m.c.n).select_from(one.outerjoin(m, true()))
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        first = rows[0]
        consent = None
        if purposes:
            consent = [{"purpose": p, "label": label, "active": bool(first[f"consent_{i}"])} for i, (p, label) in enumerate(purposes)]
        pending = None
        if first["pending_count"]:
            pending = {
                "count": int(first["pending_count"]),
                "fields": list(first["pending_fields"] or ()),
                "created_at": FIELD_TYPES["datetime"].dump(first["pending_at"]),
            }
        tags = sorted(t for t in (first["tags"] or "").split(TAG_SEP) if t)
        monthly = None
        if grouped is not None:
            zero = Decimal("0.00")
            out: dict[str, dict[str, Any]] = {k: {"month": k, "in": zero, "out": zero, "count": 0} for k in keys}
            for row in rows:
                bucket = out.get(row["month"]) if row["month"] is not None else None
                if bucket is None or row["direction"] not in ("in", "out"):
                    continue
                bucket[row["direction"]] = Decimal(row["total"] or 0).quantize(Decimal("0.01"))
                bucket["count"] += int(row["n"])
            monthly = list(out.values())
        return {"tags": tags, "consent": consent, "pending": pending}, monthly

    def _monthly(self, principal: Principal, cid: int) -> tuple[Any, list[str]]:
        """The grouped statement of in/out sums and counts per local calendar month over the
        last ``months`` months, over the transactions the reader may see (run by ``_header``;
        months without any are shown as zero), and the month keys.

        (None, []) when the reader may not read transactions or sees their amounts masked (a
        sum would reveal what the mask hides)."""
        if not self._readable(principal, "transaction"):
            return None, []
        v = self.records.view(principal, "transaction")
        fields = {name: v.spec.live_field(name) for name in ("customer", "amount", "direction", "occurred_at")}
        if any(f is None or not v.clear(f) for f in fields.values()):
            return None, []
        keys = month_keys(self.now(), self.months)
        start = _month_start_utc(keys[0])
        where = self.records.where(
            v, {"and": [{"field": "customer", "op": "eq", "value": cid}, {"field": "occurred_at", "op": "gte", "value": _iso(start)}]}, None
        )
        t = v.table
        moment = field_expr(t, fields["occurred_at"])  # type: ignore[arg-type]
        rows_sub = (
            select(
                self._local_month(moment).label("month"),
                field_expr(t, fields["direction"]).label("direction"),  # type: ignore[arg-type]
                field_expr(t, fields["amount"]).label("amount"),  # type: ignore[arg-type]
            )
            .where(v.scope(), where)
            .subquery("tx")
        )
        stmt = select(
            rows_sub.c.month, rows_sub.c.direction, func.sum(rows_sub.c.amount).label("total"), func.count().label("n")
        ).group_by(rows_sub.c.month, rows_sub.c.direction)
        return stmt, keys

    def _local_month(self, moment: ColumnElement[Any]) -> ColumnElement[str]:
        """``YYYY-MM`` of a stored UTC moment in local time, as SQL for this database.

        Asia/Shanghai has kept UTC+8 without daylight saving since 1991, so one offset (taken
        from the zone, bound as a parameter) is exact for every row in the window."""
        offset = LOCAL_TZ.utcoffset(dt.datetime.now()) or dt.timedelta(0)
        minutes = int(offset.total_seconds() // 60)
        dialect = self.runtime.dialect
        if dialect == "sqlite":
            return func.strftime("%Y-%m", moment, literal(f"{minutes:+d} minutes"))
        if dialect == "postgresql":
            shifted = cast(moment, DateTime()) + literal(dt.timedelta(minutes=minutes), Interval())
            return func.to_char(shifted, "YYYY-MM")
        raise NotImplementedError(f"monthly aggregates are not written for {dialect}")

    def _titles(self, principal: Principal, entity: str, ids: Iterable[int], fields: tuple[str, ...]) -> dict[int, dict[str, Any]]:
        """Records of ``entity`` by id (one scoped ``id IN`` query); {} if none or unreadable."""
        wanted = sorted(set(ids))[:MAX_LIMIT]
        if not wanted or not self._readable(principal, entity):
            return {}
        spec = self.runtime.cached_snapshot().registry.entity(entity)
        view = self.records.view(principal, entity)
        names = [n for n in fields if spec.live_field(n) is not None and view.access[n].view != "hidden"]
        page = self.records.list(principal, entity, filter={"field": "id", "op": "in", "value": wanted}, fields=names, limit=len(wanted))
        return {int(i["id"]): i for i in page.items}


TAG_SEP = "\x1f"  # tags are normalised text: control characters never occur in them


class MyWork:
    """A relationship manager's day: my open tasks (overdue, due today, upcoming), my open
    opportunities by stage, and reminders (holdings of my customers maturing soon).

    Six statements: overdue tasks, today's and upcoming tasks, opportunities, maturing holdings,
    then the titles of the customers and products they name."""

    upcoming_days = 7
    maturity_days = 30
    limit = 50

    def __init__(self, records: RecordService, *, now: Callable[[], dt.datetime] = _now) -> None:
        self.records = records
        self.now = now
        self._c360 = Customer360(records, now=now)

    def tasks(self, principal: Principal, now: dt.datetime | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, bool]]:
        """My open tasks grouped as (``overdue``, ``today``, ``upcoming`` within
        ``upcoming_days``) and whether the overdue and upcoming groups have more than ``limit``.
        Two scoped list statements; empty groups if my role may not read tasks."""
        now = now or self.now()
        local_today = now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).date()
        day_end = dt.datetime.combine(local_today + dt.timedelta(days=1), dt.time(), LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
        horizon = day_end + dt.timedelta(days=self.upcoming_days)
        tasks: dict[str, list[dict[str, Any]]] = {"overdue": [], "today": [], "upcoming": []}
        more = {"overdue": False, "upcoming": False}
        if self._c360._readable(principal, "task"):
            mine = self._mine(principal, "task", "status", OPEN_VALUES["task"][1])
            overdue = self.records.list(
                principal, "task", filter={"and": mine + [{"field": "due_at", "op": "lt", "value": _iso(now)}]}, sort="due_at", limit=self.limit
            )
            soon = self.records.list(
                principal, "task", filter={"and": mine + [{"field": "due_at", "op": "between", "value": [_iso(now), _iso(horizon)]}]},
                sort="due_at", limit=self.limit,
            )
            tasks["overdue"] = overdue.items
            more["overdue"] = overdue.next_cursor is not None
            more["upcoming"] = soon.next_cursor is not None
            for item in soon.items:
                due = FIELD_TYPES["datetime"].normalize(item["due_at"], _MOMENT)
                tasks["today" if due < day_end else "upcoming"].append(item)
        return tasks, more

    def view(self, principal: Principal) -> dict[str, Any]:
        now = self.now()
        local_today = now.replace(tzinfo=dt.timezone.utc).astimezone(LOCAL_TZ).date()
        tasks, more = self.tasks(principal, now)
        opportunities: list[dict[str, Any]] | None = None
        if self._c360._readable(principal, "opportunity"):
            mine = self._mine(principal, "opportunity", "stage", OPEN_VALUES["opportunity"][1])
            opportunities = self.records.list(principal, "opportunity", filter={"and": mine}, sort="due_date", limit=self.limit).items
        maturing: list[dict[str, Any]] | None = None
        if self._c360._readable(principal, "holding"):
            maturing = self.records.list(
                principal, "holding", filter={"field": "maturity_date", "op": "within_next_days", "value": self.maturity_days},
                sort="maturity_date", limit=self.limit,
            ).items
        rows = tasks["overdue"] + tasks["today"] + tasks["upcoming"] + (opportunities or []) + (maturing or [])
        customers = self._c360._titles(principal, "customer", (r["customer"] for r in rows if isinstance(r.get("customer"), int)), ("name",))
        products = self._c360._titles(
            principal, "product", (r["product"] for r in (opportunities or []) + (maturing or []) if isinstance(r.get("product"), int)), ("code", "name")
        )
        return {
            "tasks": tasks,
            "tasks_more": more,
            "tasks_readable": self._c360._readable(principal, "task"),
            "opportunities": opportunities,
            "maturing": maturing,
            "customers": customers,
            "products": products,
            "today": local_today,
        }

    @staticmethod
    def _mine(principal: Principal, entity: str, status: str, open_values: tuple[str, ...]) -> list[dict[str, Any]]:
        """Open records owned by me (a supervisor's team scope is wider than "my work")."""
        conds: list[dict[str, Any]] = [{"field": status, "op": "in", "value": list(open_values)}]
        if principal.user_id is not None:
            conds.append({"field": "owner", "op": "eq", "value": principal.user_id})
        return conds

