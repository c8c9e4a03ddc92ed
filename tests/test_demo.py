"""The demo data generator: what it writes passes the real validators, reads back as written,
and has the shapes the analytics and triggers need (skewed AUM, maturities within 15 days,
silent customers, complaints, overdue tasks, withdrawn and expired consents)."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from collections import Counter, defaultdict
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from engine.demo import DEMO_BRANCHES, DEMO_PRODUCTS, make_id_number, make_mobile, sample_aum, seed_branches, seed_demo
from engine.fieldtypes import FIELD_TYPES
from engine.meta.spec import FieldSpec, Label
from engine.security.principal import Principal
from engine.services.records import RecordService

SYSTEM = Principal.system("test")
TODAY = dt.date(2026, 11, 28)
CUSTOMERS = 60
OWNERS = [(101, "BJ01"), (102, "SH01")]
ID_FIELD = FieldSpec("id_number", "cn_id", Label("身份证号", "ID number"))
MOBILE_FIELD = FieldSpec("mobile", "cn_mobile", Label("手机号", "Mobile"))
EMAIL_FIELD = FieldSpec("email", "email", Label("邮箱", "E-mail"))


def read_all(records: RecordService, entity: str) -> list[dict[str, Any]]:
    """Every row of an entity, as the system principal reads it (clear values), page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = records.list(SYSTEM, entity, sort="id", limit=500, cursor=cursor)
        rows += page.items
        if not page.next_cursor:
            return rows
        cursor = page.next_cursor


def moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.fixture
def seeded(records: RecordService) -> dict[str, Any]:
    branches = seed_branches(records)
    calls: list[int] = []
    counts = seed_demo(records, branches=branches, owners=OWNERS, customers=CUSTOMERS, today=TODAY, progress=calls.append)
    return {"branches": branches, "counts": counts, "progress": calls}


class Recorder:
    """Stands in for RecordService: keeps the payloads, hands out ids."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def list(self, principal: Principal, entity: str, **kw: Any) -> Any:
        return SimpleNamespace(items=[], next_cursor=None)

    def bulk_insert(self, principal: Principal, entity: str, payloads: list[dict[str, Any]]) -> list[int]:
        first = len(self.rows[entity]) + 1
        self.rows[entity] += payloads
        return list(range(first, first + len(payloads)))


def record_run(seed: int, customers: int = CUSTOMERS) -> Recorder:
    rec = Recorder()
    branches = {b["code"]: i + 1 for i, b in enumerate(DEMO_BRANCHES)}
    seed_demo(rec, branches=branches, owners=OWNERS, customers=customers, seed=seed, today=TODAY)  # type: ignore[arg-type]
    return rec


# ------------------------------------------------------------------ branches


def test_branch_tree_is_created_parents_first(records: RecordService) -> None:
    ids = seed_branches(records)
    assert set(ids) == {"HO", "BJ", "BJ01", "SH", "SH01"}
    rows = {r["code"]: r for r in read_all(records, "branch")}
    assert rows["HO"]["parent"] is None and rows["HO"]["level"] == "head_office" and rows["HO"]["name"] == "总行"
    assert rows["BJ01"]["parent"] == ids["BJ"] and rows["BJ"]["parent"] == ids["HO"]
    assert rows["SH01"]["parent"] == ids["SH"] and rows["SH01"]["name"] == "上海浦东支行"
    assert rows["SH01"]["city"] == "上海" and rows["BJ01"]["level"] == "sub_branch"
    assert seed_branches(records) == ids  # a second run reuses them
    assert records.count(SYSTEM, "branch") == len(DEMO_BRANCHES)


# ------------------------------------------------------------------ counts


def test_counts_are_the_rows_created(records: RecordService, seeded: dict[str, Any]) -> None:
    counts = seeded["counts"]
    assert set(counts) == {
        "product", "customer", "holding", "transaction", "interaction", "opportunity", "task", "ticket", "consent", "insurance_policy", "survey_response",
    }
    for entity, n in counts.items():
        assert n > 0, entity
        assert records.count(SYSTEM, entity) == n, entity
    assert counts["customer"] == CUSTOMERS
    assert counts["product"] == len(DEMO_PRODUCTS) == 20
    assert sum(seeded["progress"]) == CUSTOMERS
    per_customer = Counter(h["customer"] for h in read_all(records, "holding"))
    assert len(per_customer) == CUSTOMERS and set(per_customer.values()) <= {1, 2, 3, 4}


def test_policies_follow_insurance_holdings_and_some_come_up_for_renewal(records: RecordService, seeded: dict[str, Any]) -> None:
    policies = read_all(records, "insurance_policy")
    products = {p["id"]: p for p in read_all(records, "product")}
    assert policies and {products[p["product"]]["type"] for p in policies} == {"insurance"}
    insured = {h["customer"] for h in read_all(records, "holding") if products[h["product"]]["type"] == "insurance"}
    assert {p["customer"] for p in policies} == insured
    today = dt.date.today()
    assert all(p["end_date"] > p["start_date"] for p in policies)
    assert any(0 < (dt.date.fromisoformat(p["end_date"]) - today).days <= 30 for p in policies), "no renewal within 30 days"
    assert len({p["policy_no"] for p in policies}) == len(policies)


def test_nps_answers_lean_low_for_unhappy_customers(records: RecordService, seeded: dict[str, Any]) -> None:
    answers = read_all(records, "survey_response")
    assert answers and all(0 <= a["score"] <= 10 for a in answers)
    assert any(a["score"] <= 6 for a in answers) and any(a["score"] >= 9 for a in answers)


def test_products_cover_the_shelf(records: RecordService, seeded: dict[str, Any]) -> None:
    products = read_all(records, "product")
    assert len({p["code"] for p in products}) == len(products) == 20
    types = Counter(p["type"] for p in products)
    assert {"deposit", "wealth", "fund", "bond", "insurance", "loan", "credit_card"} <= set(types)
    wealth = [p for p in products if p["type"] == "wealth"]
    assert {p["risk_level"] for p in wealth} >= {"R1", "R2", "R3", "R4"}
    assert any(p["term_days"] for p in wealth)


# ------------------------------------------------------------------ customers


def test_id_numbers_and_mobiles_are_valid_unique_and_consistent(records: RecordService, seeded: dict[str, Any]) -> None:
    customers = read_all(records, "customer")
    assert len(customers) == CUSTOMERS
    ids = [c["id_number"] for c in customers]
    mobiles = [c["mobile"] for c in customers]
    assert len(set(ids)) == len(ids) and len(set(mobiles)) == len(mobiles)
    for c in customers:
        number = c["id_number"]
        assert FIELD_TYPES["cn_id"].normalize(number, ID_FIELD) == number  # GB 11643 checksum, real region
        assert FIELD_TYPES["cn_mobile"].normalize(c["mobile"], MOBILE_FIELD) == c["mobile"]
        assert c["gender"] == ("male" if int(number[16]) % 2 else "female")
        assert c["birth_date"] == f"{number[6:10]}-{number[10:12]}-{number[12:14]}"
        assert 2 <= len(c["name"]) <= 4 and all("\u4e00" <= ch <= "\u9fff" for ch in c["name"])
        if c["email"] is not None:
            FIELD_TYPES["email"].normalize(c["email"], EMAIL_FIELD)
        born, opened = dt.date.fromisoformat(c["birth_date"]), dt.date.fromisoformat(c["opened_on"])
        assert TODAY - dt.timedelta(days=3660) <= opened < TODAY and opened.year - born.year >= 18
        assert Decimal(c["aum"]) == Decimal(c["aum"]).quantize(Decimal("0.01"))
    branch_of = {owner: seeded["branches"][code] for owner, code in OWNERS}
    assert all(c["branch"] == branch_of[c["owner"]] for c in customers)
    assert set(Counter(c["owner"] for c in customers).values()) == {CUSTOMERS // 2}
    assert any(c["email"] for c in customers) and not all(c["email"] for c in customers)
    assert len({c["gender"] for c in customers}) == 2


def test_generated_id_numbers_hold_for_every_birth_year() -> None:
    rng = random.Random(7)
    for year in range(1935, 2008):
        for city in ("北京", "上海", "深圳"):
            male = rng.random() < 0.5
            born = dt.date(year, rng.randint(1, 12), rng.randint(1, 28))
            number = make_id_number(rng, born, male, city)
            assert FIELD_TYPES["cn_id"].normalize(number, ID_FIELD) == number
            assert int(number[16]) % 2 == (1 if male else 0) and number[6:14] == f"{born:%Y%m%d}"
    for _ in range(200):
        mobile = make_mobile(rng)
        assert FIELD_TYPES["cn_mobile"].normalize(mobile, MOBILE_FIELD) == mobile


def test_aum_is_skewed(records: RecordService, seeded: dict[str, Any]) -> None:
    aum = sorted(Decimal(c["aum"]) for c in read_all(records, "customer"))
    assert all(a > 0 for a in aum)
    assert statistics.mean(aum) > 2 * statistics.median(aum)  # a long right tail
    millionaires = sum(a >= 1_000_000 for a in aum)
    assert 2 <= millionaires <= 0.15 * len(aum)
    assert aum[-1] >= 6_000_000  # private banking, even in a small demo
    assert sum(10_000 <= a <= 500_000 for a in aum) >= 0.7 * len(aum)


def test_aum_tiers_have_the_intended_shapes() -> None:
    rng = random.Random(1)
    mass = [sample_aum(rng) for _ in range(20_000)]
    assert max(mass) < 1_000_000
    assert 50_000 < statistics.median(mass) < 100_000
    assert sum(10_000 <= a <= 500_000 for a in mass) > 0.9 * len(mass)
    assert all(1_000_000 <= sample_aum(rng, "affluent") <= 6_000_000 for _ in range(500))
    private = [sample_aum(rng, "private") for _ in range(500)]
    assert min(private) >= 6_000_000 and max(private) <= 80_000_000


# ------------------------------------------------------------------ holdings, transactions


def test_holdings_add_up_to_aum_and_some_wealth_matures_within_15_days(records: RecordService, seeded: dict[str, Any]) -> None:
    customers = {c["id"]: c for c in read_all(records, "customer")}
    product_type = {p["id"]: p["type"] for p in read_all(records, "product")}
    holdings = read_all(records, "holding")
    totals: dict[int, Decimal] = defaultdict(Decimal)
    for h in holdings:
        totals[h["customer"]] += Decimal(h["amount"])
        assert h["start_date"] >= customers[h["customer"]]["opened_on"]
        if h["maturity_date"] is not None:
            assert h["maturity_date"] >= TODAY.isoformat() > h["start_date"]  # fixed terms roll over
    assert all(totals[cid] == Decimal(c["aum"]) for cid, c in customers.items())
    window = {"field": "maturity_date", "op": "between", "value": [TODAY.isoformat(), (TODAY + dt.timedelta(days=15)).isoformat()]}
    assert records.count(SYSTEM, "holding", filter=window) > 0
    soon = [h for h in holdings if h["maturity_date"] and h["maturity_date"] <= (TODAY + dt.timedelta(days=15)).isoformat()]
    assert any(product_type[h["product"]] == "wealth" for h in soon)


def test_transactions_span_the_months_and_some_customers_went_quiet(records: RecordService, seeded: dict[str, Any]) -> None:
    customers = {c["id"]: c for c in read_all(records, "customer")}
    transactions = read_all(records, "transaction")
    start, end = day_start(TODAY - dt.timedelta(days=24 * 31)), day_start(TODAY)
    last: dict[int, dt.datetime] = {}
    for t in transactions:
        at = moment(t["occurred_at"])
        assert start <= at < end
        assert t["direction"] in ("in", "out") and Decimal(t["amount"]) > 0
        last[t["customer"]] = max(last.get(t["customer"], at), at)
    months = {moment(t["occurred_at"]).strftime("%Y-%m") for t in transactions}
    assert len(months) >= 20
    assert len({t["channel"] for t in transactions}) >= 4
    cutoff = day_start(TODAY - dt.timedelta(days=90))
    quiet = [cid for cid in customers if cid not in last or last[cid] < cutoff]
    assert 0.05 * CUSTOMERS <= len(quiet) <= 0.25 * CUSTOMERS
    assert all(customers[cid]["lifecycle_stage"] in ("declining", "churned") for cid in quiet)
    # churn analysis: quiet for 3 months and a service score below 4
    low = {i["customer"] for i in read_all(records, "interaction") if i["satisfaction"] is not None and i["satisfaction"] < 4}
    assert set(quiet) & low
    # a balance surge: a large inflow in the last two weeks
    recent = day_start(TODAY - dt.timedelta(days=14))
    assert any(t["direction"] == "in" and Decimal(t["amount"]) >= 200_000 and moment(t["occurred_at"]) >= recent for t in transactions)


def test_transaction_amounts_follow_aum(records: RecordService, seeded: dict[str, Any]) -> None:
    aum = {c["id"]: Decimal(c["aum"]) for c in read_all(records, "customer")}
    by_customer: dict[int, list[Decimal]] = defaultdict(list)
    for t in read_all(records, "transaction"):
        by_customer[t["customer"]].append(Decimal(t["amount"]))
    ranked = sorted(by_customer, key=lambda cid: aum[cid])
    half = len(ranked) // 2
    poorer = statistics.median([statistics.median(by_customer[c]) for c in ranked[:half]])
    richer = statistics.median([statistics.median(by_customer[c]) for c in ranked[half:]])
    assert richer > 2 * poorer


# ------------------------------------------------------------------ service and sales records


def test_contact_log_tasks_tickets_and_opportunities(records: RecordService, seeded: dict[str, Any]) -> None:
    owner = {c["id"]: c["owner"] for c in read_all(records, "customer")}
    interactions = read_all(records, "interaction")
    assert all(i["owner"] == owner[i["customer"]] for i in interactions)
    scores = Counter(i["satisfaction"] for i in interactions if i["satisfaction"] is not None)
    assert set(scores) <= {1, 2, 3, 4, 5} and sum(n for s, n in scores.items() if s < 4) > 0 and scores[5] > 0
    tasks = read_all(records, "task")
    assert any(t["status"] == "open" and moment(t["due_at"]) < day_start(TODAY) for t in tasks)  # overdue
    assert all(t["owner"] == owner[t["customer"]] for t in tasks)
    opportunities = read_all(records, "opportunity")
    assert all(o["owner"] == owner[o["customer"]] for o in opportunities)
    assert {o["source"] for o in opportunities} & {"maturity", "balance_surge", "policy_expiry"}
    tickets = read_all(records, "ticket")
    complaints = [t for t in tickets if t["category"] == "complaint"]
    assert complaints and all(any("\u4e00" <= ch <= "\u9fff" for ch in t["subject"] + t["description"]) for t in complaints)
    for t in tickets:
        if t["resolved_at"] is not None:
            assert t["status"] in ("resolved", "closed") and t["resolved_at"] >= t["opened_at"]


def test_consents_mostly_granted_some_withdrawn_or_expired(records: RecordService, seeded: dict[str, Any]) -> None:
    consents = read_all(records, "consent")
    now = day_start(TODAY)
    marketing = [c for c in consents if c["purpose"] == "marketing"]
    active = {
        c["customer"]
        for c in marketing
        if c["withdrawn_at"] is None and (c["expires_at"] is None or moment(c["expires_at"]) > now)
    }
    assert len(active) > CUSTOMERS / 2
    assert any(c["withdrawn_at"] for c in marketing)
    assert any(c["expires_at"] and moment(c["expires_at"]) <= now for c in consents)
    assert {c["purpose"] for c in consents} >= {"marketing", "profiling"}
    for c in consents:
        assert moment(c["granted_at"]) < now
        if c["withdrawn_at"]:
            assert moment(c["withdrawn_at"]) > moment(c["granted_at"])


# ------------------------------------------------------------------ determinism and arguments


def test_same_seed_gives_the_same_data(records: RecordService, seeded: dict[str, Any]) -> None:
    stored = [c["name"] for c in read_all(records, "customer")]
    first, again = record_run(20261128), record_run(20261128)
    assert [c["name"] for c in first.rows["customer"]] == stored
    assert first.rows == again.rows  # every entity, every value
    other = record_run(7)
    assert [c["name"] for c in other.rows["customer"]] != stored


def test_progress_and_batches_for_a_larger_run() -> None:
    calls: list[int] = []
    rec = Recorder()
    branches = {b["code"]: i + 1 for i, b in enumerate(DEMO_BRANCHES)}
    counts = seed_demo(rec, branches=branches, owners=OWNERS, customers=1203, today=TODAY, progress=calls.append)  # type: ignore[arg-type]
    assert sum(calls) == 1203 and len(calls) >= 3
    assert counts["customer"] == len(rec.rows["customer"]) == 1203
    assert len({c["id_number"] for c in rec.rows["customer"]}) == 1203
    aum = [Decimal(c["aum"]) for c in rec.rows["customer"]]
    assert 0.04 <= sum(a >= 1_000_000 for a in aum) / len(aum) <= 0.08
    assert 0.007 <= sum(a >= 6_000_000 for a in aum) / len(aum) <= 0.02


def test_seeding_again_reuses_products(records: RecordService, seeded: dict[str, Any]) -> None:
    counts = seed_demo(records, branches=seeded["branches"], owners=OWNERS, customers=5, seed=99, today=TODAY)
    assert counts["product"] == 0 and counts["customer"] == 5
    assert records.count(SYSTEM, "product") == 20
    assert records.count(SYSTEM, "customer") == CUSTOMERS + 5


def test_owners_must_be_given_on_known_branches(records: RecordService) -> None:
    branches = seed_branches(records)
    with pytest.raises(ValueError):
        seed_demo(records, branches=branches, owners=[], customers=1)
    with pytest.raises(ValueError):
        seed_demo(records, branches=branches, owners=[(1, "GZ01")], customers=1)
