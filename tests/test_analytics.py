"""Analytics (issue #7): RFM checked against pandas and cross-sell rules against mlxtend on the
same rows, churn on both sides of both thresholds, channels and KPIs against hand-built data,
row scope, masking, tagging and parameter errors — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from mlxtend.frequent_patterns import apriori, association_rules
from sqlalchemy import select

from engine.security.audit import audit_table
from engine.security.principal import Principal
from engine.store.tables import tag_table
from tests.api_helpers import app, assert_error, client, login, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

SYSTEM = Principal.system("test")
BEIJING = ZoneInfo("Asia/Shanghai")
AS_OF = dt.date(2026, 3, 31)
TYPES = ("deposit", "wealth", "fund", "bond", "stock", "insurance", "loan", "credit_card")
# the 8-segment model as docs/analytics.md states it: (R high, F high, M high) → segment, high = score ≥ 3
SEGMENT_OF = {
    (True, True, True): "important_value",
    (True, False, True): "important_develop",
    (False, True, True): "important_retain",
    (False, False, True): "important_winback",
    (True, True, False): "general_value",
    (True, False, False): "general_develop",
    (False, True, False): "general_retain",
    (False, False, False): "general_winback",
}


def local(day: dt.date, hh: int = 10, mm: int = 0, ss: int = 0) -> str:
    """A Beijing-time moment as the API takes it."""
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=BEIJING).isoformat()


class Bank:
    """The app with helpers: seeding as the system, API calls as a user, raw rows for the
    independent computations."""

    def __init__(self, application: Any, test_client: Any, logins: Any) -> None:
        self.app, self.client, self.login = application, test_client, logins
        self.svc = application.extensions["fincrm"]
        self.uid = {u: self.user(u, r) for u, r in (("admin", "admin"), ("rm1", "relationship_manager"), ("rm2", "relationship_manager"), ("ops1", "operations"), ("risk1", "risk_control"))}

    def user(self, name: str, role: str) -> int:
        sm = self.app.appbuilder.sm
        with self.app.app_context():
            found = sm.find_user(username=name)
            if found is None:
                found = sm.add_user(name, name, "T", f"{name}@t.local", [sm.find_role(role)], password=TEST_PASSWORD)
            return int(found.id)

    def seed(self, entity: str, rows: list[dict[str, Any]]) -> list[int]:
        with self.app.app_context():
            return self.svc.records.bulk_insert(SYSTEM, entity, rows)  # type: ignore[no-any-return]

    def table(self, entity: str) -> Any:
        return self.svc.runtime.cached_snapshot().tables[entity]

    def rows(self, stmt: Any) -> list[Any]:
        with self.svc.runtime.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    def get(self, user: str, path: str, status: int = 200, **params: Any) -> Any:
        resp = self.client.get(path, query_string=params, headers=self.login(user))
        assert resp.status_code == status, (path, params, resp.status_code, resp.get_data(as_text=True)[:600])
        return resp.json

    def pages(self, user: str, path: str, **params: Any) -> tuple[list[dict[str, Any]], Any]:
        """Every item of a paged analytics list (following next_cursor), and the first page."""
        first = page = self.get(user, path, **params)
        items = list(page["items"])
        while page["next_cursor"]:
            page = self.get(user, path, **params, cursor=page["next_cursor"])
            items += page["items"]
        return items, first

    def customers(self, owner: str | None) -> set[int]:
        c = self.table("customer")
        stmt = select(c.c.id).where(c.c.retained_at.is_(None))
        if owner is not None:
            stmt = stmt.where(c.c.owner == self.uid[owner])
        return {int(r.id) for r in self.rows(stmt)}

    def listed_names(self, user: str, ids: Iterable[int]) -> dict[int, Any]:
        """Names as the records list shows them to ``user``."""
        ids = sorted(ids)
        out: dict[int, Any] = {}
        for i in range(0, len(ids), 200):
            body = {"filter": {"field": "id", "op": "in", "value": ids[i : i + 200]}, "limit": 200, "fields": ["name"]}
            resp = self.client.post("/api/v1/records/customer/query", json=body, headers=self.login(user))
            assert resp.status_code == 200, resp.get_data(as_text=True)
            out.update({r["id"]: r.get("name") for r in resp.json["items"]})
        return out


@pytest.fixture
def bank(app: Any, client: Any, login: Any) -> Bank:
    return Bank(app, client, login)


# ---------------------------------------------------------------------- RFM


def _seed_rfm(bank: Bank) -> None:
    """200 customers, ~3,000 transactions with ties, same-day rows, negative amounts, rows
    after as_of and at the local-midnight edges, a retained customer and a retained row."""
    rng = random.Random(7)
    owners = [bank.uid["rm1"], bank.uid["rm2"], None]
    customers = bank.seed(
        "customer", [{"name": f"客户{i:03d}号", "owner": owners[i % 3] if i % 7 else bank.uid["rm1"], "aum": str(rng.randint(0, 9) * 10000)} for i in range(200)]
    )
    tx: list[dict[str, Any]] = []
    twin: list[dict[str, Any]] = []
    for k, cid in enumerate(customers):
        if k % 23 == 0:
            continue  # no transaction at all: not scored
        n = rng.choice([1, 1, 2, 3, 5, 8, 8, 13, 20, 30])
        for j in range(n):
            day = AS_OF - dt.timedelta(days=rng.choice([0, 1, 1, 5, 30, 30, 90, 200, 365, 400]) + rng.randint(0, 3))
            amount = rng.choice(["100", "250.50", "-250.50", "1000", "-1000", "88.88", str(rng.randint(1, 50000))])
            tx.append({"customer": cid, "amount": amount, "direction": "out" if amount.startswith("-") else "in", "occurred_at": local(day, rng.randint(0, 23), rng.randint(0, 59))})
        if k % 11 == 0:  # after as_of: excluded
            tx.append({"customer": cid, "amount": "999999", "direction": "in", "occurred_at": local(AS_OF + dt.timedelta(days=rng.randint(1, 30)))})
        if k % 13 == 0:  # the local-midnight edges: 23:59:59 on as_of counts, 00:00:00 the day after does not
            tx.append({"customer": cid, "amount": "5", "direction": "in", "occurred_at": local(AS_OF, 23, 59, 59)})
            tx.append({"customer": cid, "amount": "7", "direction": "in", "occurred_at": local(AS_OF + dt.timedelta(days=1), 0, 0, 0)})
        if k % 17 == 0:  # just after local midnight: the previous day in UTC
            tx.append({"customer": cid, "amount": "3", "direction": "in", "occurred_at": local(AS_OF - dt.timedelta(days=3), 0, 0, 30)})
        if k % 29 == 1:  # identical histories: equal R, F and M
            if not twin:
                twin = [{"amount": "500", "direction": "in", "occurred_at": local(AS_OF - dt.timedelta(days=10))}] * 4
            tx += [{"customer": cid, **t} for t in twin]
    only_future = customers[23]
    tx.append({"customer": only_future, "amount": "10", "direction": "in", "occurred_at": local(AS_OF + dt.timedelta(days=2))})
    ids = bank.seed("transaction", tx)
    with bank.app.app_context():
        bank.svc.records.delete(SYSTEM, "customer", customers[5])  # retained (legal period): gone from analytics
        bank.svc.records.delete(SYSTEM, "transaction", ids[0])


def pandas_rfm(bank: Bank, as_of: dt.date, owner: str | None) -> pd.DataFrame:
    """RFM as docs/analytics.md defines it, computed in pandas from the raw rows."""
    c, t = bank.table("customer"), bank.table("transaction")
    cust = pd.DataFrame(bank.rows(select(c.c.id, c.c.owner, c.c.retained_at)), columns=["id", "owner", "retained_at"])
    tx = pd.DataFrame(bank.rows(select(t.c.customer, t.c.amount, t.c.occurred_at, t.c.retained_at)), columns=["customer", "amount", "occurred_at", "retained_at"])
    live = cust[cust.retained_at.isna()]
    if owner is not None:
        live = live[live.owner == bank.uid[owner]]
    tx = tx[tx.retained_at.isna() & tx.customer.isin(live.id)].copy()
    tx["day"] = pd.to_datetime(tx.occurred_at).dt.tz_localize("UTC").dt.tz_convert("Asia/Shanghai").dt.date
    tx = tx[tx.day <= as_of]
    tx["cents"] = tx.amount.map(lambda d: abs(int(Decimal(d) * 100)))
    g = tx.groupby("customer").agg(last=("day", "max"), frequency=("day", "size"), cents=("cents", "sum"))
    g["recency"] = g["last"].map(lambda d: (as_of - d).days)
    n = len(g)

    def score(s: pd.Series, ascending: bool) -> pd.Series:
        return 1 + (5 * (s.rank(method="min", ascending=ascending).astype(int) - 1)) // n

    g["r"], g["f"], g["m"] = score(g.recency, False), score(g.frequency, True), score(g.cents, True)
    g["segment"] = [SEGMENT_OF[(r >= 3, f >= 3, m >= 3)] for r, f, m in zip(g.r, g.f, g.m)]
    g["monetary"] = g.cents.map(lambda x: str(Decimal(x) / 100))
    return g


def _expected(g: pd.DataFrame) -> dict[int, tuple[Any, ...]]:
    return {int(cid): (int(r.recency), int(r.frequency), str(Decimal(r.monetary).quantize(Decimal("0.01"))), int(r.r), int(r.f), int(r.m), r.segment) for cid, r in g.iterrows()}


@pytest.mark.parametrize("user", ["admin", "rm1"])
def test_rfm_equals_an_independent_pandas_computation_for_every_customer(bank: Bank, user: str) -> None:
    _seed_rfm(bank)
    owner = None if user == "admin" else user
    g = pandas_rfm(bank, AS_OF, owner)
    assert len(g) > 60 and g.frequency.duplicated().any() and g.cents.duplicated().any()  # ties are exercised
    items, first = bank.pages(user, "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=37)
    got = {i["customer"]: (i["recency_days"], i["frequency"], i["monetary"], i["r"], i["f"], i["m"], i["segment"]) for i in items}
    assert len(items) == len(got) == first["total"] == len(g)
    assert got == _expected(g)
    # the page order: monetary desc, then id
    assert [i["customer"] for i in items] == [cid for cid, _ in sorted(got.items(), key=lambda kv: (-Decimal(kv[1][2]), kv[0]))]
    # segment counts and sums over all scored customers
    by_segment = g.groupby("segment").agg(n=("r", "size"), cents=("cents", "sum"))
    for s in first["segments"]:
        n = int(by_segment.n.get(s["segment"], 0))
        assert s["count"] == n
        assert Decimal(s["monetary"]) == Decimal(int(by_segment.cents.get(s["segment"], 0))) / 100
        assert s["label"]["zh"].endswith("客户") and s["label"]["en"] and s["tag"] == "RFM:" + s["label"]["zh"]
    # the service: the summary and the full per-customer stream give the same
    analytics = _analytics(bank)
    principal = _principal(bank, user)
    summary = analytics.rfm_summary(principal, AS_OF)
    assert summary["segments"] == first["segments"] and summary["total"] == len(g)
    streamed = {r["customer"]: (r["recency_days"], r["frequency"], str(r["monetary"]), r["r"], r["f"], r["m"], r["segment"]) for r in analytics.rfm_rows(principal, AS_OF, batch=50)}
    assert streamed == _expected(g)


def test_rfm_segment_filter_excluded_rows_and_edges(bank: Bank) -> None:
    _seed_rfm(bank)
    g = pandas_rfm(bank, AS_OF, None)
    everyone, _ = bank.pages("admin", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=200)
    scored = {i["customer"] for i in everyone}
    all_customers = bank.customers(None)
    c = bank.table("customer")
    retained = {int(r.id) for r in bank.rows(select(c.c.id).where(c.c.retained_at.is_not(None)))}
    assert retained and not retained & scored  # a retained customer is not analysed
    assert all_customers - scored  # customers without transactions up to as_of are left out
    for segment in ("important_value", "general_winback"):
        items, first = bank.pages("admin", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), segment=segment, limit=25)
        assert {i["customer"] for i in items} == {int(cid) for cid in g.index[g.segment == segment]}
        assert all(i["segment"] == segment for i in items) and first["total"] == len(g)
    # an earlier as_of sees fewer transactions: every customer's frequency is the pandas one then
    earlier = AS_OF - dt.timedelta(days=60)
    items, _ = bank.pages("admin", "/api/v1/analytics/rfm", as_of=earlier.isoformat(), limit=200)
    assert {i["customer"]: i["frequency"] for i in items} == {int(k): int(v) for k, v in pandas_rfm(bank, earlier, None).frequency.items()}


def _analytics(bank: Bank) -> Any:
    from engine.insight.analytics import AnalyticsService

    return AnalyticsService(bank.svc.records)


def _principal(bank: Bank, user: str) -> Principal:
    from engine.web.auth import principal_for_user_id

    with bank.app.test_request_context():
        meta, policy = bank.svc.runtime.stamps()
        bank.svc.runtime.snapshot(meta)
        bank.svc.authz.refresh(policy)
        entry = principal_for_user_id(bank.uid[user], policy)
    assert entry is not None
    return entry[0]  # type: ignore[no-any-return]


def test_rfm_names_are_masked_as_in_the_records_list(bank: Bank) -> None:
    _seed_rfm(bank)
    for user in ("admin", "rm1", "ops1"):
        items = bank.get(user, "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=60)["items"]
        listed = bank.listed_names(user, [i["customer"] for i in items])
        assert items and {i["customer"]: i["name"] for i in items} == listed
    admin_names = [i["name"] for i in bank.get("admin", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat())["items"]]
    assert all(n.endswith("*") and "客户" not in n for n in admin_names)  # admin sees names masked (王** style)
    rm1_names = [i["name"] for i in bank.get("rm1", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat())["items"]]
    assert all(n.startswith("客户") for n in rm1_names)  # the role may write names: clear


# ---------------------------------------------------------------------- RFM tags


def _tags(bank: Bank) -> dict[int, set[tuple[str, str]]]:
    t = tag_table
    out: dict[int, set[tuple[str, str]]] = {}
    for r in bank.rows(select(t.c.record_id, t.c.tag, t.c.source).where(t.c.entity == "customer")):
        out.setdefault(int(r.record_id), set()).add((r.tag, r.source))
    return out


def test_rfm_segments_become_rule_tags_set_wise_in_scope_and_audited_once(bank: Bank) -> None:
    _seed_rfm(bank)
    mine, theirs = bank.customers("rm1"), bank.customers("rm2")
    seg = {i["customer"]: i["segment"] for i in bank.pages("rm1", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=200)[0]}
    labels = {s["segment"]: s["tag"] for s in bank.get("rm1", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat())["segments"]}
    stale, manual, other = sorted(mine)[0], sorted(mine)[1], sorted(theirs)[0]
    t = tag_table
    with bank.svc.runtime.begin() as conn:
        now = dt.datetime(2026, 1, 1)
        conn.execute(
            t.insert(),
            [
                {"entity": "customer", "record_id": stale, "tag": "RFM:旧分层", "source": "rule", "created_at": now},
                {"entity": "customer", "record_id": manual, "tag": "RFM:我的备注", "source": "manual", "created_at": now},
                {"entity": "customer", "record_id": other, "tag": "RFM:旧分层", "source": "rule", "created_at": now},
            ],
        )
    a = audit_table
    before = len(bank.rows(select(a.c.seq).where(a.c.action == "rfm_tags")))
    resp = bank.client.post("/api/v1/analytics/rfm/tags", json={"as_of": AS_OF.isoformat()}, headers=bank.login("rm1"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.json
    tags = _tags(bank)
    for cid in mine:
        rfm_tags = {tag for tag, src in tags.get(cid, set()) if tag.startswith("RFM:") and src == "rule"}
        assert rfm_tags == ({labels[seg[cid]]} if cid in seg else set()), cid
    assert ("RFM:我的备注", "manual") in tags[manual]  # manual tags are the user's: kept
    assert ("RFM:旧分层", "rule") in tags[other]  # rm2's customer is outside rm1's scope: untouched
    assert not any(tag.startswith("RFM:") and tag != "RFM:旧分层" for cid in theirs for tag, _ in tags.get(cid, set()))
    expected_counts = {labels[s]: sum(1 for v in seg.values() if v == s) for s in labels}
    assert {x["tag"]: x["count"] for x in body["tags"]} == expected_counts and body["tagged"] == len(seg)
    assert body["removed"] == 1
    entries = bank.rows(select(a.c.actor, a.c.detail).where(a.c.action == "rfm_tags").order_by(a.c.seq))
    assert len(entries) == before + 1 and entries[-1].actor == "rm1" and entries[-1].detail["tagged"] == len(seg)
    # again, for one segment only: those customers are re-tagged, the others keep theirs
    target = next(s for s, n in expected_counts.items() if n)
    code = next(k for k, v in labels.items() if v == target)
    again = bank.client.post("/api/v1/analytics/rfm/tags", json={"as_of": AS_OF.isoformat(), "segments": [code]}, headers=bank.login("rm1")).json
    assert again["tags"] == [{"tag": target, "segment": code, "label": again["tags"][0]["label"], "count": expected_counts[target]}]
    assert again["removed"] == expected_counts[target] and _tags(bank) == tags
    # a role that may not update customers may not tag them
    assert_error(bank.client.post("/api/v1/analytics/rfm/tags", json={"as_of": AS_OF.isoformat()}, headers=bank.login("risk1")), 403)


# ---------------------------------------------------------------------- churn


def test_churn_customers_on_each_side_of_both_thresholds(bank: Bank) -> None:
    rm1, rm2 = bank.uid["rm1"], bank.uid["rm2"]
    names = "ABCDEFGHIJK"
    ids = dict(zip(names, bank.seed("customer", [{"name": f"流失{n}", "owner": rm2 if n == "J" else rm1, "aum": str(1000 * (i + 1))} for i, n in enumerate(names)])))
    d = AS_OF
    tx = [
        ("A", d - dt.timedelta(days=89)),  # inside the 90 days: active
        ("B", d - dt.timedelta(days=90)),  # just outside: silent
        ("C", d - dt.timedelta(days=120)),
        ("E", d - dt.timedelta(days=200)),
        ("F", d - dt.timedelta(days=300)),
        ("G", d - dt.timedelta(days=150)),
        ("G", d + dt.timedelta(days=3)),  # after as_of: does not count
        ("H", d - dt.timedelta(days=150)),
        ("I", d - dt.timedelta(days=150)),
        ("J", d - dt.timedelta(days=150)),
        ("K", d - dt.timedelta(days=150)),
    ]
    bank.seed("transaction", [{"customer": ids[n], "amount": "100", "direction": "in", "occurred_at": local(day, 9)} for n, day in tx])
    scores = [  # (customer, day, score): the last score by contact time counts
        ("A", d - dt.timedelta(days=10), 2), ("B", d - dt.timedelta(days=5), 3), ("C", d - dt.timedelta(days=5), 4), ("D", d - dt.timedelta(days=40), 1),
        ("E", d - dt.timedelta(days=50), 1), ("E", d - dt.timedelta(days=20), 5), ("F", d - dt.timedelta(days=20), 2), ("F", d - dt.timedelta(days=2), None),
        ("G", d - dt.timedelta(days=20), 2), ("H", d - dt.timedelta(days=20), 5), ("H", d + dt.timedelta(days=2), 1),
        ("J", d - dt.timedelta(days=20), 1), ("K", d - dt.timedelta(days=20), 1),
    ]
    bank.seed("interaction", [{"customer": ids[n], "channel": "phone", "occurred_at": local(day, 15), **({"satisfaction": s} if s else {})} for n, day, s in scores])
    with bank.app.app_context():
        bank.svc.records.delete(SYSTEM, "customer", ids["K"])
    at_risk = {"B", "D", "F", "G"}  # D: never transacted, low score; I: no score at all, not at risk

    page = bank.get("rm1", "/api/v1/analytics/churn", as_of=d.isoformat())
    assert {i["customer"] for i in page["items"]} == {ids[n] for n in at_risk} and page["count"] == 4
    keys = [(-Decimal(i["aum"]), i["customer"]) for i in page["items"]]
    assert keys == sorted(keys)  # most AUM first
    by = {i["customer"]: i for i in page["items"]}
    assert by[ids["B"]]["days_since"] == 90 and by[ids["B"]]["last_score"] == 3
    assert by[ids["B"]]["last_transaction_at"] == dt.datetime.combine(d - dt.timedelta(days=90), dt.time(1)).isoformat() + "Z"  # 09:00 Beijing
    assert by[ids["D"]]["last_transaction_at"] is None and by[ids["D"]]["days_since"] is None and by[ids["D"]]["last_score"] == 1
    assert by[ids["G"]]["days_since"] == 150 and by[ids["F"]]["last_score"] == 2
    assert page["params"] == {"as_of": d.isoformat(), "days": 90, "score": 4}
    assert sum(s["count"] for s in page["by_stage"]) == 4 and all(s["label"]["zh"] and s["label"]["en"] for s in page["by_stage"])
    # admin sees rm2's J too; the retained K never
    admin = {i["customer"] for i in bank.pages("admin", "/api/v1/analytics/churn", as_of=d.isoformat(), limit=1)[0]}
    assert admin == {ids[n] for n in at_risk | {"J"}}
    rm2_page = bank.get("rm2", "/api/v1/analytics/churn", as_of=d.isoformat())
    assert [i["customer"] for i in rm2_page["items"]] == [ids["J"]]
    # other thresholds move customers across: a score below 5 adds C (4; E and H scored 5 last),
    # 160 silent days keep only D (never) and F (300 days)
    wider = {i["customer"] for i in bank.get("rm1", "/api/v1/analytics/churn", as_of=d.isoformat(), score=5)["items"]}
    assert wider == {ids[n] for n in at_risk | {"C"}}
    longer = {i["customer"] for i in bank.get("rm1", "/api/v1/analytics/churn", as_of=d.isoformat(), days=160)["items"]}
    assert longer == {ids["D"], ids["F"]}
    # the same rule as the core trigger: at the end of as_of it picks the same customers, except
    # H, whose low score after as_of the trigger (which has no as_of) reads
    from engine.fieldtypes import LOCAL_TZ

    end = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
    snap = bank.svc.runtime.snapshot()
    trig = snap.automation.triggers["churn_retention_task"]
    fired = {int(r.record_id) for r in bank.rows(bank.svc.triggers.matching(snap, trig, end))}
    assert fired == admin | {ids["H"]}
    summary = _analytics(bank).churn_summary(SYSTEM, as_of=d, top=2)
    assert summary["count"] == 5 and [r["customer"] for r in summary["top"]] == [ids["J"], ids["G"]]


# ---------------------------------------------------------------------- cross-sell


def _seed_holdings(bank: Bank) -> dict[str, Any]:
    rng = random.Random(11)
    products = bank.seed("product", [{"code": f"{t.upper()}-{k}", "name": f"{t}产品{k}", "type": t} for t in TYPES for k in (1, 2)])
    by_type = {t: products[2 * i : 2 * i + 2] for i, t in enumerate(TYPES)}
    owners = [bank.uid["rm1"], bank.uid["rm2"]]
    channels = ["outlet", "online", "mobile_app", "referral", None]
    customers = bank.seed(
        "customer",
        [
            {"name": f"持仓{i:03d}", "owner": owners[i % 2], "aum": str(rng.randint(0, 500) * 1000), "acquisition_channel": rng.choice(channels),
             "opened_on": (dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2000))).isoformat() if i % 5 else None}
            for i in range(200)
        ],
    )
    rows = []
    for cid in customers:
        if rng.random() < 0.08:
            continue  # holds nothing: no basket
        held = {"deposit"} if rng.random() < 0.8 else set()
        if rng.random() < 0.35:
            held.add("loan")
            if rng.random() < 0.5:
                held.add("insurance")
        if rng.random() < 0.4:
            held.add("wealth")
            if rng.random() < 0.6:
                held.add("fund")
        for t in TYPES:
            if rng.random() < 0.06:
                held.add(t)
        for t in held:
            for p in rng.sample(by_type[t], rng.choice([1, 1, 1, 2])):  # two products of one type: one item at type level
                rows.append({"customer": cid, "product": p, "amount": str(rng.randint(1, 100) * 1000)})
    bank.seed("holding", rows)
    return {"products": products, "customers": customers}


def _baskets(bank: Bank, owner: str | None, level: str) -> pd.DataFrame:
    h, p, c = bank.table("holding"), bank.table("product"), bank.table("customer")
    item = p.c.type if level == "type" else p.c.code
    stmt = select(h.c.customer, item.label("item")).select_from(h.join(p, p.c.id == h.c.product).join(c, c.c.id == h.c.customer)).where(c.c.retained_at.is_(None))
    if owner is not None:
        stmt = stmt.where(c.c.owner == bank.uid[owner])
    raw = pd.DataFrame(bank.rows(stmt), columns=["customer", "item"])
    return pd.crosstab(raw.customer, raw.item).astype(bool)


def _mlxtend_rules(onehot: pd.DataFrame, min_support: float, min_confidence: float, max_len: int) -> dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[float, float, float]]:
    frequent = apriori(onehot, min_support=min_support, use_colnames=True, max_len=max_len)
    rules = association_rules(frequent, num_itemsets=len(onehot), metric="confidence", min_threshold=min_confidence)
    return {
        (tuple(sorted(r.antecedents)), tuple(sorted(r.consequents))): (float(r.support), float(r.confidence), float(r.lift))
        for r in rules.itertuples()
    }


@pytest.mark.parametrize(
    "user,level,min_support,min_confidence,max_len",
    [("admin", "type", 0.05, 0.3011, 2), ("admin", "type", 0.09, 0.4013, 3), ("rm1", "type", 0.05, 0.2713, 3), ("rm1", "product", 0.06, 0.2017, 2)],
)
def test_cross_sell_rules_equal_mlxtend_apriori(bank: Bank, user: str, level: str, min_support: float, min_confidence: float, max_len: int) -> None:
    _seed_holdings(bank)
    onehot = _baskets(bank, None if user == "admin" else user, level)
    expected = _mlxtend_rules(onehot, min_support, min_confidence, max_len)
    assert len(expected) >= 4 and (max_len == 2 or any(len(a) + len(c) == 3 for a, c in expected))
    body = bank.get(user, "/api/v1/analytics/cross-sell", min_support=min_support, min_confidence=min_confidence, level=level, max_len=max_len)
    assert body["baskets"] == len(onehot) and not body["truncated"]
    got = {(tuple(r["antecedent"]), tuple(r["consequent"])): r for r in body["rules"]}
    near_threshold = {k for k, v in expected.items() if abs(v[1] - min_confidence) < 1e-9}
    assert not near_threshold  # (the data keeps clear of the float edge)
    assert set(got) == set(expected)
    for key, (support, confidence, lift) in expected.items():
        r = got[key]
        assert r["support"] == pytest.approx(support, abs=1e-9)
        assert r["confidence"] == pytest.approx(confidence, abs=1e-9)
        assert r["lift"] == pytest.approx(lift, abs=1e-9)
        holds_a = onehot[list(key[0])].all(axis=1)
        holds_all = holds_a & onehot[list(key[1])].all(axis=1)
        assert r["count"] == int(holds_all.sum()) and r["targets"] == int((holds_a & ~holds_all).sum())
        assert r["antecedent_label"]["zh"] and r["consequent_label"]["en"]
    lifts = [r["lift"] for r in body["rules"]]
    assert lifts == sorted(lifts, reverse=True)


def test_cross_sell_targets_hold_the_antecedent_but_lack_the_consequent(bank: Bank) -> None:
    _seed_holdings(bank)
    for user in ("rm1", "admin"):
        onehot = _baskets(bank, None if user == "admin" else user, "type")
        expected = set(onehot.index[onehot["loan"] & ~onehot["wealth"]])
        items, first = bank.pages(user, "/api/v1/analytics/cross-sell/targets", antecedent="loan", consequent="wealth", limit=7)
        assert {i["customer"] for i in items} == expected and first["count"] == len(expected) and len(items) == len(expected)
        assert first["antecedent_label"] == {"zh": "贷款", "en": "Loan"} and first["consequent_label"]["zh"] == "理财"
        keys = [(-Decimal(i["aum"]), i["customer"]) for i in items]
        assert keys == sorted(keys)  # most AUM first
        assert {i["customer"]: i["name"] for i in items} == bank.listed_names(user, expected)
    two = {i["customer"] for i in bank.pages("rm1", "/api/v1/analytics/cross-sell/targets", antecedent="deposit,loan", consequent="wealth,fund", limit=50)[0]}
    onehot = _baskets(bank, "rm1", "type")
    assert two == set(onehot.index[onehot["deposit"] & onehot["loan"] & ~(onehot["wealth"] & onehot["fund"])])
    code = "LOAN-1"
    by_product = {i["customer"] for i in bank.pages("rm1", "/api/v1/analytics/cross-sell/targets", level="product", antecedent=code, consequent="WEALTH-1")[0]}
    onehot_p = _baskets(bank, "rm1", "product")
    assert by_product and by_product == set(onehot_p.index[onehot_p[code] & ~onehot_p["WEALTH-1"]])


# ---------------------------------------------------------------------- channels


def _q(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def test_channels_conversion_and_cost_per_customer(bank: Bank) -> None:
    rm1, rm2 = bank.uid["rm1"], bank.uid["rm2"]
    product = bank.seed("product", [{"code": "DEP", "name": "存款", "type": "deposit"}])[0]
    spec = [  # (channel, opened_on, owner, converts by)
        ("outlet", "2025-01-05", rm1, "holding"), ("outlet", "2025-02-10", rm1, None), ("outlet", "2025-06-30", rm2, "transaction"),
        ("outlet", "2024-12-31", rm1, "holding"),  # before the period
        ("online", "2025-03-01", rm1, "transaction"), ("online", "2025-03-02", rm2, None), ("online", "2025-07-01", rm1, "holding"),  # after
        ("mobile_app", "2025-04-04", rm2, "holding"), ("referral", "2025-05-05", rm1, None), (None, "2025-05-06", rm1, "transaction"),
    ]
    ids = bank.seed("customer", [{"name": f"渠道{i}", "acquisition_channel": ch, "opened_on": day, "owner": owner} for i, (ch, day, owner, _) in enumerate(spec)])
    bank.seed("holding", [{"customer": cid, "product": product, "amount": "100"} for cid, s in zip(ids, spec) if s[3] == "holding"])
    bank.seed("transaction", [{"customer": cid, "amount": "1", "direction": "in", "occurred_at": local(dt.date(2025, 8, 1))} for cid, s in zip(ids, spec) if s[3] == "transaction"])
    costs = [("outlet", "2025-01-01", "30000"), ("outlet", "2025-06-01", "1000.01"), ("outlet", "2025-07-01", "99999"), ("online", "2024-12-01", "5000"),
             ("online", "2025-03-01", "2000"), ("partner", "2025-02-01", "700")]
    bank.seed("channel_cost", [{"channel": ch, "month": m, "cost": c} for ch, m, c in costs])
    start, end = dt.date(2025, 1, 1), dt.date(2025, 6, 30)

    def expected(owner: int | None, with_cost: bool) -> dict[Any, dict[str, Any]]:
        out: dict[Any, dict[str, Any]] = {}
        for ch, day, who, conv in spec:
            if start <= dt.date.fromisoformat(day) <= end and (owner is None or who == owner):
                e = out.setdefault(ch, {"acquired": 0, "converted": 0})
                e["acquired"] += 1
                e["converted"] += conv is not None
        if with_cost:
            for ch, month, cost in costs:
                if start <= dt.date.fromisoformat(month) <= end:
                    e = out.setdefault(ch, {"acquired": 0, "converted": 0})
                    e["cost"] = e.get("cost", Decimal(0)) + Decimal(cost)
        return out

    for user, owner, with_cost in (("admin", None, True), ("ops1", None, True), ("rm1", rm1, False)):
        body = bank.get(user, "/api/v1/analytics/channels", **{"from": start.isoformat(), "to": end.isoformat()})
        want = expected(owner, with_cost)
        assert body["cost_available"] is with_cost
        got = {r["channel"]: r for r in body["channels"]}
        assert set(got) == set(want)
        for ch, e in want.items():
            r = got[ch]
            assert (r["acquired"], r["converted"]) == (e["acquired"], e["converted"]), ch
            assert r["conversion_rate"] == (round(e["converted"] / e["acquired"], 4) if e["acquired"] else None)
            cost = e.get("cost")
            assert r["cost"] == (_q(cost) if cost is not None else None)
            assert r["cost_per_acquired"] == (_q(cost / e["acquired"]) if cost is not None and e["acquired"] else None)
            assert r["cost_per_converted"] == (_q(cost / e["converted"]) if cost is not None and e["converted"] else None)
            assert r["label"]["zh"] and r["label"]["en"]
        assert body["total"]["acquired"] == sum(e["acquired"] for e in want.values())
    assert got["outlet"]["label"] == {"zh": "网点", "en": "Outlet"} and got[None]["label"]["en"] == "Not recorded"
    assert body["cost_note"]["en"]  # rm1: told why costs are left out


# ---------------------------------------------------------------------- KPIs


def test_kpis_from_a_hand_built_book(bank: Bank) -> None:
    rm1, rm2 = bank.uid["rm1"], bank.uid["rm2"]
    as_of, months = dt.date(2026, 3, 31), 3
    names = ["prev_and_cur", "prev_only", "cur_only", "dec_jan", "jan_mar", "rm2s", "quiet"]
    ids = dict(zip(names, bank.seed("customer", [{"name": n, "owner": rm2 if n == "rm2s" else rm1} for n in names])))
    activity = {
        "prev_and_cur": ["2025-10-15", "2026-02-01", "2026-02-20"],
        "prev_only": ["2025-11-30"],
        "cur_only": ["2026-03-31"],
        "dec_jan": ["2025-12-31", "2026-01-01"],
        "jan_mar": ["2026-01-10", "2026-03-01"],
        "rm2s": ["2025-10-01", "2026-01-15"],
        "quiet": ["2025-09-30", "2026-04-01"],  # before the previous period, after as_of
    }
    bank.seed("transaction", [{"customer": ids[n], "amount": "10", "direction": "in", "occurred_at": local(dt.date.fromisoformat(day), 12)} for n, days in activity.items() for day in days])
    # 00:30 on 1 January in Beijing is still 31 December in UTC: a January (current period) transaction
    bank.seed("transaction", [{"customer": ids["prev_only"], "amount": "10", "direction": "in", "occurred_at": local(dt.date(2026, 1, 1), 0, 30)}])
    types = bank.seed("product", [{"code": f"P{t}", "name": t, "type": t} for t in ("deposit", "loan", "wealth")])
    holdings = {"prev_and_cur": [0, 1], "prev_only": [0, 0], "cur_only": [2], "rm2s": [0, 1, 2], "jan_mar": [1, 2]}
    bank.seed("holding", [{"customer": ids[n], "product": types[k], "amount": "1"} for n, ks in holdings.items() for k in ks])
    tickets = [  # (customer, category, opened, resolved)
        ("prev_and_cur", "complaint", dt.datetime(2026, 1, 5, 9), dt.datetime(2026, 1, 5, 17)),
        ("prev_only", "complaint", dt.datetime(2026, 2, 1, 9), dt.datetime(2026, 2, 3, 9)),
        ("cur_only", "complaint", dt.datetime(2026, 2, 27, 8), dt.datetime(2026, 3, 2, 20, 30)),
        ("dec_jan", "complaint", dt.datetime(2026, 3, 30, 10), dt.datetime(2026, 3, 30, 11)),
        ("jan_mar", "complaint", dt.datetime(2025, 12, 20, 9), dt.datetime(2025, 12, 22, 9)),  # resolved before the period
        ("jan_mar", "inquiry", dt.datetime(2026, 2, 1, 9), dt.datetime(2026, 2, 9, 9)),  # not a complaint
        ("jan_mar", "complaint", dt.datetime(2026, 3, 1, 9), None),  # unresolved
        ("rm2s", "complaint", dt.datetime(2026, 1, 1, 9), dt.datetime(2026, 1, 2, 9)),
    ]
    bank.seed("ticket", [{"subject": "投诉", "customer": ids[n], "category": cat, "opened_at": local(o.date(), o.hour), **({"resolved_at": local(r.date(), r.hour, r.minute)} if r else {})} for n, cat, o, r in tickets])

    def expected(owner: int | None) -> dict[str, Any]:
        mine = {n for n in names if owner is None or (rm2 if n == "rm2s" else rm1) == owner}
        days = {n: [dt.date.fromisoformat(d) for d in activity[n]] for n in mine}
        if "prev_only" in mine:
            days["prev_only"].append(dt.date(2026, 1, 1))
        prev = {n for n in mine if any(dt.date(2025, 10, 1) <= d < dt.date(2026, 1, 1) for d in days[n])}
        cur = {n for n in mine if any(dt.date(2026, 1, 1) <= d <= as_of for d in days[n])}
        month_sets = {m: {n for n in mine if any((d.year, d.month) == m for d in days[n])} for m in ((2025, 12), (2026, 1), (2026, 2), (2026, 3))}
        multi = {n for n in mine if len({types[k] for k in holdings.get(n, [])}) >= 2}
        durations = [(r - o).total_seconds() / 3600 for n, cat, o, r in tickets if n in mine and cat == "complaint" and r and r >= dt.datetime(2026, 1, 1)]
        monthly = []
        keys = [(2025, 12), (2026, 1), (2026, 2), (2026, 3)]
        for i, m in enumerate(keys[1:], start=1):
            hours = [(r - o).total_seconds() / 3600 for n, cat, o, r in tickets if n in mine and cat == "complaint" and r and (r.year, r.month) == m]
            before = month_sets[keys[i - 1]]
            monthly.append({
                "month": f"{m[0]}-{m[1]:02d}",
                "active_customers": len(month_sets[m]),
                "retention_rate": round(len(month_sets[m] & before) / len(before), 4) if before else None,
                "complaints_resolved": len(hours),
                "complaint_avg_hours": round(sum(hours) / len(hours), 2) if hours else None,
                "complaint_median_hours": round(statistics.median(hours), 2) if hours else None,
            })
        return {
            "retention": (len(prev), len(prev & cur), round(len(prev & cur) / len(prev), 4)),
            "cross_sell": (len(mine), len(multi), round(len(multi) / len(mine), 4)),
            "complaints": (len(durations), round(sum(durations) / len(durations), 2), round(statistics.median(durations), 2)),
            "monthly": monthly,
        }

    for user, owner in (("admin", None), ("rm1", rm1)):
        body = bank.get(user, "/api/v1/analytics/kpis", as_of=as_of.isoformat(), months=months)
        want = expected(owner)
        r = body["retention"]
        assert (r["previous_active"], r["retained"], r["rate"]) == want["retention"], user
        x = body["cross_sell"]
        assert (x["customers"], x["multi_product"], x["rate"]) == want["cross_sell"], user
        c = body["complaints"]
        assert (c["resolved"], c["avg_hours"], c["median_hours"]) == want["complaints"], user
        assert body["monthly"] == want["monthly"], user
        assert body["period"] == {"from": "2026-01-01", "to": "2026-03-31"} and body["previous_period"] == {"from": "2025-10-01", "to": "2025-12-31"}
        assert all(body[k]["label"]["zh"] and body[k]["label"]["en"] for k in ("retention", "cross_sell", "complaints"))


# ---------------------------------------------------------------------- scope, permissions, errors


def test_every_analysis_of_rm1_covers_only_rm1s_customers(bank: Bank) -> None:
    _seed_rfm(bank)
    _seed_holdings(bank)
    mine, theirs = bank.customers("rm1"), bank.customers("rm2")
    rfm = {i["customer"] for i in bank.pages("rm1", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=200)[0]}
    churn = {i["customer"] for i in bank.pages("rm1", "/api/v1/analytics/churn", as_of=AS_OF.isoformat(), days=5, score=5, limit=200)[0]}
    targets = {i["customer"] for i in bank.pages("rm1", "/api/v1/analytics/cross-sell/targets", antecedent="deposit", consequent="loan", limit=200)[0]}
    assert rfm and targets and rfm <= mine and churn <= mine and targets <= mine
    assert not (rfm | churn | targets) & theirs
    admin_rfm = {i["customer"] for i in bank.pages("admin", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=200)[0]}
    assert admin_rfm & theirs and rfm == admin_rfm & mine  # the same customers, scored among rm1's own
    baskets = bank.get("rm1", "/api/v1/analytics/cross-sell")["baskets"]
    assert baskets == len(_baskets(bank, "rm1", "type"))
    channels = bank.get("rm1", "/api/v1/analytics/channels", **{"from": "2000-01-01", "to": "2030-12-31"})
    c = bank.table("customer")
    opened = bank.rows(select(c.c.id).where(c.c.owner == bank.uid["rm1"], c.c.opened_on.is_not(None), c.c.retained_at.is_(None)))
    assert channels["total"]["acquired"] == len(opened)
    kpis = bank.get("rm1", "/api/v1/analytics/kpis", as_of=AS_OF.isoformat())
    assert kpis["cross_sell"]["customers"] == len(mine)


def test_a_role_without_transaction_read_gets_403(bank: Bank) -> None:
    doc = {
        "kind": "role", "name": "analytics_probe", "label": {"zh": "探针", "en": "Probe"},
        "grants": [
            {"entity": "customer", "actions": ["read"], "scope": "all"},
            {"entity": "holding", "actions": ["read"], "scope": "all"},
            {"entity": "product", "actions": ["read"], "scope": "all"},
        ],
    }
    resp = bank.client.put("/api/v1/meta/roles/analytics_probe", json=doc, headers=bank.login("admin"))
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    bank.user("probe1", "analytics_probe")
    for path in ("rfm", "churn", "channels", "kpis"):
        assert_error(bank.client.get(f"/api/v1/analytics/{path}", headers=bank.login("probe1")), 403, "forbidden")
    assert bank.get("probe1", "/api/v1/analytics/cross-sell")["rules"] == []  # holdings only: allowed
    bank.user("audit1", "auditor")
    for path in ("rfm", "churn", "cross-sell", "cross-sell/targets?antecedent=loan&consequent=wealth", "channels", "kpis"):
        assert_error(bank.client.get(f"/api/v1/analytics/{path}", headers=bank.login("audit1")), 403)


BAD = [
    ("rfm?as_of=2025-13-01", "as_of"), ("rfm?as_of=yesterday", "as_of"), ("rfm?as_of=20250101", "as_of"), ("rfm?as_of=0001-01-01", "as_of"),
    ("rfm?segment=vip", "segment"), ("rfm?limit=0", "limit"), ("rfm?limit=201", "limit"), ("rfm?limit=ten", "limit"),
    ("rfm?cursor=garbage", "cursor"), ("rfm?as_of=2026-01-01&sort=x", "sort"),
    ("churn?days=-1", "days"), ("churn?days=abc", "days"), ("churn?score=0", "score"), ("churn?score=6", "score"), ("churn?as_of=2026-02-30", "as_of"),
    ("cross-sell?min_support=0", "min_support"), ("cross-sell?min_support=1.5", "min_support"), ("cross-sell?min_support=nan", "min_support"),
    ("cross-sell?min_confidence=-0.1", "min_confidence"), ("cross-sell?level=brand", "level"), ("cross-sell?max_len=4", "max_len"), ("cross-sell?min_suport=0.1", "min_suport"),
    ("cross-sell/targets?antecedent=yacht&consequent=wealth", "antecedent"), ("cross-sell/targets?antecedent=loan", "consequent"),
    ("cross-sell/targets?antecedent=loan&consequent=loan", "consequent"), ("cross-sell/targets?level=product&antecedent=NOPE&consequent=wealth", "antecedent"),
    ("channels?from=2025-06-01&to=2025-01-01", "from"), ("channels?to=2025-99-01", "to"), ("kpis?months=0", "months"), ("kpis?months=37", "months"), ("kpis?as_of=1", "as_of"),
]


@pytest.mark.parametrize("path,field", BAD)
def test_bad_parameters_are_400_naming_the_parameter(bank: Bank, path: str, field: str) -> None:
    assert_error(bank.client.get(f"/api/v1/analytics/{path}", headers=bank.login("admin")), 400, field=field)


def test_bad_tag_requests_and_foreign_cursors_are_400(bank: Bank) -> None:
    admin = bank.login("admin")
    for payload, field in (({"as_of": "2026-13-01"}, "as_of"), ({"segments": "important_value"}, "segments"), ({"segments": ["nope"]}, "segments"), ({"when": "now"}, "when")):
        assert_error(bank.client.post("/api/v1/analytics/rfm/tags", json=payload, headers=admin), 400, field=field)
    assert_error(bank.client.post("/api/v1/analytics/rfm/tags", data="[]", headers={**admin, "Content-Type": "application/json"}), 400)
    _seed_rfm(bank)
    cursor = bank.get("admin", "/api/v1/analytics/rfm", as_of=AS_OF.isoformat(), limit=5)["next_cursor"]
    assert cursor
    assert_error(bank.client.get("/api/v1/analytics/churn", query_string={"cursor": cursor}, headers=admin), 400, field="cursor")
    other_day = bank.client.get("/api/v1/analytics/rfm", query_string={"cursor": cursor, "as_of": "2026-01-01"}, headers=admin)
    assert_error(other_day, 400, field="cursor")  # a cursor is bound to its parameters


def test_demo_channel_costs_give_each_channel_its_unit_cost_per_customer(bank: Bank) -> None:
    from engine.demo import CHANNEL_UNIT_COST, seed_channel_costs

    today = dt.date(2026, 11, 28)
    spec = [("outlet", "2026-11-03"), ("outlet", "2026-11-20"), ("mobile_app", "2026-10-09"), ("referral", "2025-01-01")]
    bank.seed("customer", [{"name": f"演示{i}", "acquisition_channel": ch, "opened_on": day} for i, (ch, day) in enumerate(spec)])
    with bank.app.app_context():
        created = seed_channel_costs(bank.svc.records, months=12, today=today)
        again = seed_channel_costs(bank.svc.records, months=12, today=today)
    assert (created, again) == (2, 0)  # one row per channel and month with acquisitions; a second run books nothing twice
    body = bank.get("admin", "/api/v1/analytics/channels", **{"from": "2025-12-01", "to": today.isoformat()})
    rows = {r["channel"]: r for r in body["channels"]}
    assert set(rows) == {"outlet", "mobile_app"}  # the 2025 referral is outside the 12 months
    for ch, r in rows.items():
        assert 0.8 * CHANNEL_UNIT_COST[ch] <= float(r["cost_per_acquired"]) <= 1.2 * CHANNEL_UNIT_COST[ch]
