"""The securities template end to end: publish (plan, publish, republish as a no-op), the demo
seeder on a small core demo, quotes from a feed plugin through the jobs pass (securities
updated set-wise, an advisor task exactly for the positions that moved, once a day), a failing
feed (logged, retried, dead-lettered, replayed; no other job fails), commission-sensitive and
high-frequency detection, the commission adjustment approval, the advisory disclosure rule, and
row scope of positions, trades and reports between two advisors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from itertools import count
from typing import Any, Iterator, Mapping, Sequence

import pytest
from sqlalchemy import func, select

from engine.demo import seed_branches
from engine.demo import seed_demo as seed_core_demo
from engine.flows.interfaces import InterfaceService, interface_call_table, interface_dead_letter_table
from engine.flows.jobs import run_pass
from engine.flows.quotes import quote_config_errors, refresh_quotes
from engine.flows.tables import outbox_table
from engine.meta.packages import load_package_dir, package_errors
from engine.plugins import Quote, hookimpl, register, unregister
from engine.runtime import POLICY_VERSION, utcnow
from engine.security.audit import audit_table
from engine.security.org import set_staff
from engine.security.principal import Principal
from engine.store.tables import tag_table
from engine.verticals import DemoContext
from engine.verticals.securities import REFERENCE_PRICES
from engine.verticals.securities import seed_demo as seed_securities_demo
from tests.api_helpers import Logins, assert_error, publish_vertical, shared_app  # noqa: F401  (module-wide app)
from tests.conftest import TEST_PASSWORD

SYSTEM = Principal.system("test")
# the pass clock: an hour ahead, so the feed's quotes are newer than the demo's reference closes;
# never in the last hour of a (UTC) day, where trigger cycles turn: the same-day steps below run
# up to 40 minutes later and must stay in NOW's cycle (it failed when CI ran at 22:51 UTC)
NOW = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)
if NOW.hour == 23:
    NOW = NOW.replace(minute=0, second=0) + dt.timedelta(hours=1, minutes=5)
STAFF = (
    ("adv1", ["relationship_manager", "investment_advisor"]),
    ("adv2", ["relationship_manager", "investment_advisor"]),
    ("advsup", ["advisory_supervisor"]),
    ("comp1", ["compliance_officer"]),
    ("secops", ["securities_operations"]),
)
ACCOUNT_NUMBERS = count(880_000_000_001)


class FakeFeed:
    """A quote feed: answers from ``prices`` (symbol → (prev close, last)) at ``at``, or raises ``fail``."""

    def __init__(self) -> None:
        self.prices: dict[str, tuple[str, str]] = {}
        self.at = NOW - dt.timedelta(minutes=10)
        self.fail: Exception | None = None
        self.calls: list[list[str]] = []

    def quotes(self, symbols: Sequence[str], *, timeout: float) -> Mapping[str, Quote]:
        self.calls.append(list(symbols))
        if self.fail is not None:
            raise self.fail
        out = {s: Quote(s, Decimal(last), Decimal(prev), self.at) for s, (prev, last) in self.prices.items() if s in symbols}
        out["999999.SH"] = Quote("999999.SH", Decimal("1"), Decimal("1"), self.at)  # not asked for: never written
        return out


class FeedPlugin:
    def __init__(self, feeds: Mapping[str, Any]) -> None:
        self.feeds = feeds

    @hookimpl
    def fincrm_quote_feeds(self) -> Mapping[str, Any]:
        return self.feeds


class Securities:
    """The published template on the module's app, its staff and helpers to make records."""

    def __init__(self, app: Any, plans: dict[str, Any]) -> None:
        self.app, self.plans = app, plans
        self.svc = app.extensions["fincrm"]
        self.records = self.svc.records
        self.runtime = self.svc.runtime
        sm = app.appbuilder.sm
        with app.app_context():
            for name, roles in STAFF:
                if sm.find_user(username=name) is None:
                    sm.add_user(name, name, "T", f"{name}@t.local", [sm.find_role(r) for r in roles], password=TEST_PASSWORD)
            self.uid = {u.username: u.id for u in sm.get_all_users()}
        self.branches = seed_branches(self.records)
        with self.runtime.begin() as conn:
            for name, branch in (("adv1", "BJ01"), ("adv2", "SH01")):
                set_staff(conn, self.uid[name], branch_id=self.branches[branch], team="securities", supervisor_id=self.uid["advsup"])
            set_staff(conn, self.uid["advsup"], branch_id=self.branches["HO"], team="securities", supervisor_id=None)
            self.runtime.bump(conn, POLICY_VERSION)
        self.codes = self.ids("security", "code")

    def ids(self, entity: str, key: str) -> dict[str, int]:
        t = self.runtime.cached_snapshot().tables[entity]
        with self.runtime.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(select(t.c[key], t.c.id))}

    def principal(self, username: str) -> Principal:
        from engine.web.auth import principal_for_user_id

        with self.app.test_request_context():
            meta, policy = self.runtime.stamps()
            self.runtime.snapshot(meta)
            self.svc.authz.refresh(policy)
            entry = principal_for_user_id(self.uid[username], policy)
        assert entry is not None
        return entry[0]  # type: ignore[no-any-return]

    def insert(self, entity: str, rows: list[dict[str, Any]]) -> list[int]:
        return self.records.bulk_insert(SYSTEM, entity, rows)  # type: ignore[no-any-return]

    def customer(self, advisor: str, name: str = "证券客户") -> int:
        return self.insert("customer", [{"name": name, "owner": self.uid[advisor], "aum": "800000", "branch": self.branches["BJ01"]}])[0]

    def account(self, customer: int, rate: str = "0.3000", status: str = "active") -> int:
        row = {"account_no": str(next(ACCOUNT_NUMBERS)), "customer": customer, "commission_rate": rate, "status": status, "branch": self.branches["BJ01"]}
        return self.insert("brokerage_account", [row])[0]

    def position(self, customer: int, account: int, code: str, quantity: int = 1000, value: str = "10000.00") -> int:
        row = {"customer": customer, "account": account, "security": self.codes[code], "quantity": quantity, "cost_price": "10.000", "market_value": value}
        return self.insert("position", [row])[0]

    def trades(self, customer: int, account: int, days_ago: Sequence[float], code: str = "600036.SH") -> list[int]:
        rows = [
            {"customer": customer, "account": account, "security": self.codes[code], "side": "buy", "quantity": 100, "price": "42.100",
             "amount": "4210.00", "commission": "5.00", "channel": "app", "traded_at": (NOW - dt.timedelta(days=d)).isoformat() + "Z"}
            for d in days_ago
        ]
        return self.insert("trade", rows)

    def security(self, code: str) -> dict[str, Any]:
        return self.records.get(SYSTEM, "security", self.codes[code])  # type: ignore[no-any-return]

    def tasks(self, customers: Sequence[int]) -> list[dict[str, Any]]:
        flt = {"field": "customer", "op": "in", "value": list(customers)}
        return self.records.list(SYSTEM, "task", filter=flt, sort="id", limit=500).items  # type: ignore[no-any-return]

    def tags(self, customer: int) -> dict[str, str]:
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(tag_table.c.tag, tag_table.c.source).where(tag_table.c.entity == "customer", tag_table.c.record_id == customer))
            return {r.tag: r.source for r in rows}

    def run(self, at: dt.datetime = NOW) -> dict[str, Any]:
        return run_pass(self.runtime, self.records, now=at, worker="test")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sec(shared_app: Any) -> Securities:
    app = shared_app
    app.fincrm_test_logins = {}
    runtime = app.extensions["fincrm"].runtime
    dry = publish_vertical(app, "securities", dry_run=True)
    dry_left_nothing = "security" not in runtime.snapshot().registry.entities
    first = publish_vertical(app, "securities")
    again = publish_vertical(app, "securities")
    return Securities(app, {"dry": dry, "dry_left_nothing": dry_left_nothing, "first": first, "again": again})


@pytest.fixture
def client(sec: Securities) -> Any:
    return sec.app.test_client()


@pytest.fixture
def login(sec: Securities, client: Any) -> Logins:
    return Logins(client, sec.app.fincrm_test_logins)


@pytest.fixture
def feed() -> Iterator[FakeFeed]:
    fake = FakeFeed()
    plugin = FeedPlugin({"fake": fake})
    register(plugin, "test-quotes")
    try:
        yield fake
    finally:
        unregister(plugin)


def _table(result: dict[str, Any]) -> list[dict[str, Any]]:
    names = [c["name"] for c in result["columns"]]
    return [dict(zip(names, row)) for row in result["rows"]]


def _job(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(j for j in report["jobs"] if j["job"] == name)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ publish


def test_the_package_validates_plans_publishes_and_republishes_as_a_no_op(sec: Securities) -> None:
    assert package_errors(load_package_dir("metadata/verticals/securities")) == []
    dry, first, again = sec.plans["dry"], sec.plans["first"], sec.plans["again"]
    assert dry["dry_run"] is True and dry["noop"] is False and sec.plans["dry_left_nothing"]
    changes = dry["changes"]
    assert changes["entities"]["added"] == ["advisory_record", "brokerage_account", "commission_adjustment", "position", "security", "trade"]
    customer = changes["entities"]["changed"]["customer"]
    assert customer["fields_added"] == ["investor_class"] and customer["tag_sets_added"] == ["securities_service", "securities_trading"]
    assert changes["triggers"]["added"] == ["commission_sensitive_review", "high_frequency_trader_tag", "quote_move_alert"]
    assert changes["flows"]["added"] == ["commission_adjustment"] and len(changes["reports"]["added"]) == 3
    assert changes["roles"]["added"] == ["advisory_supervisor", "compliance_officer", "investment_advisor", "securities_operations"]
    assert changes["roles"]["changed"] == []  # core roles are left as they are
    assert changes["seeds"] == {"security": 16, "sales_script": 7}
    assert {s["table"] for s in dry["migration"] if s.get("table")} >= {"e_security", "e_position", "e_trade", "e_brokerage_account"}
    assert first["noop"] is False and first["changes"]["seeds"] == {"security": 16, "sales_script": 7}
    assert first["migration"] == dry["migration"]  # the dry run showed exactly what the publish did
    assert again["noop"] is True and again["changes"] == {}
    assert sorted(sec.codes) == sorted(REFERENCE_PRICES)
    scripts = sec.records.list(SYSTEM, "sales_script", filter={"field": "code", "op": "startswith", "value": "SEC-"}, limit=50).items
    assert {s["match_tag"] for s in scripts} >= {"佣金敏感", "高频交易", "价值投资", "两融客户"}


# ------------------------------------------------------------------ demo data


def test_the_demo_seeder_builds_accounts_positions_trades_and_advice_on_a_small_core_demo(sec: Securities) -> None:
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    owners = [(sec.uid["adv1"], "BJ01"), (sec.uid["adv2"], "SH01")]
    core = seed_core_demo(sec.records, branches=sec.branches, owners=owners, customers=40, months=6, today=today)
    ctx = DemoContext(records=sec.records, owners=owners, branches=sec.branches, users=sec.uid, today=today, scale=0.02)
    counts = seed_securities_demo(ctx)
    assert core["customer"] == 40
    assert 5 <= counts["brokerage_account"] <= 40 and counts["position"] >= counts["brokerage_account"] // 2
    assert counts["trade"] >= 65 and counts["advisory_record"] > 0 and counts["quotes"] == 16 and counts["commission_adjustment"] >= 1
    moved = sec.security("300750.SZ")
    assert Decimal(moved["change_pct"]) == Decimal("6.40") and Decimal(moved["last_price"]) == Decimal("274.510")
    trades = sec.records.list(SYSTEM, "trade", sort="id", limit=500).items
    accounts = {a["id"]: a for a in sec.records.list(SYSTEM, "brokerage_account", limit=500).items}
    for t in trades[:200]:
        rate = Decimal(accounts[t["account"]]["commission_rate"])
        expected = max(Decimal("5.00"), (Decimal(t["amount"]) * rate / 1000).quantize(Decimal("0.01")))
        assert abs(Decimal(t["commission"]) - expected) <= Decimal("0.01") and t["quantity"] % 100 == 0
        local = dt.datetime.fromisoformat(t["traded_at"].replace("Z", "+00:00")).astimezone(dt.timezone(dt.timedelta(hours=8)))
        assert local.weekday() < 5 and dt.time(9, 30) <= local.time() <= dt.time(15, 0)
    advice = sec.records.list(SYSTEM, "advisory_record", filter={"field": "service_type", "op": "in", "value": ["investment_advice", "portfolio_review"]}, limit=500).items
    assert all(a["risk_disclosed"] for a in advice)
    # the first pass of the demo tags the hyperactive traders and flags commission-sensitive accounts
    report = sec.run()
    triggers = {r["trigger"]: r for r in _job(report, "scheduled_triggers")["detail"]["triggers"]}
    assert triggers["high_frequency_trader_tag"]["fired"] >= 1 and triggers["commission_sensitive_review"]["fired"] >= 1
    assert triggers["quote_move_alert"]["fired"] >= 1  # the reference closes moved 300750.SZ and 601012.SH beyond 5%


# ------------------------------------------------------------------ quotes and quote-move alerts


def test_quotes_update_the_securities_and_alert_the_advisor_of_exactly_the_moved_positions(sec: Securities, feed: FakeFeed) -> None:
    c1, c2, c3 = sec.customer("adv1", "甲"), sec.customer("adv1", "乙"), sec.customer("adv2", "丙")
    a1, a2, a3 = sec.account(c1), sec.account(c2), sec.account(c3)
    up = sec.position(c1, a1, "300750.SZ")  # +6.98%
    sec.position(c1, a1, "600519.SH")  # +0.80%: no alert
    sec.position(c2, a2, "601012.SH", quantity=0)  # sold out: no alert
    sec.position(c2, a2, "300750.SZ", quantity=10, value="2760.00")  # below ¥10,000: not worth a call
    down = sec.position(c3, a3, "601012.SH")  # −5.01%
    feed.prices = {"300750.SZ": ("258.00", "276.00"), "601012.SH": ("18.36", "17.44"), "600519.SH": ("1452.00", "1463.60"),
                   "000001.SZ": ("11.52", "-1")}  # a broken quote: rejected, the record left as it was
    before = sec.security("000001.SZ")
    report = sec.run()
    quotes = _job(report, "market_quotes")
    assert quotes["status"] == "ok", quotes
    detail = quotes["detail"]["packages"][0]
    assert detail["package"] == "securities" and detail["feed"] == "fake" and detail["updated"] == 3 and detail["quoted"] == 4
    assert detail["symbols"] == 16 and detail["unknown"] == 12 and detail["rejected"] == ["000001.SZ"]
    assert sec.security("000001.SZ") == before
    assert sorted(feed.calls[0]) == sorted(REFERENCE_PRICES)  # every security, in one call
    s = sec.security("300750.SZ")
    assert (s["last_price"], s["prev_close"], s["change_pct"]) == ("276.000", "258.000", "6.98")
    assert s["quoted_at"] == (feed.at.isoformat() + "Z") and s["version"] == 1  # market data: no user-visible version bump
    assert sec.security("601012.SH")["change_pct"] == "-5.01"
    assert "999999.SH" not in sec.ids("security", "code")
    tasks = sec.tasks([c1, c2, c3])
    assert sorted((t["customer"], t["owner"]) for t in tasks) == sorted([(c1, sec.uid["adv1"]), (c3, sec.uid["adv2"])])
    assert all(t["title"].startswith("持仓证券行情异动") and t["priority"] == "high" and t["status"] == "open" for t in tasks)
    with sec.runtime.engine.connect() as conn:
        fired = conn.execute(select(func.count()).select_from(outbox_table).where(
            outbox_table.c.source == "trigger:quote_move_alert", outbox_table.c.record_id.in_([up, down]))).scalar_one()
        audited = conn.execute(select(audit_table.c.detail).where(audit_table.c.action == "quotes_updated").order_by(audit_table.c.seq.desc())).first()
    assert fired == 2 and audited is not None and audited.detail["updated"] == 3 and audited.detail["feed"] == "fake"
    # a newer quote the same day moves the price again but alerts nobody twice
    feed.at = NOW + dt.timedelta(minutes=20)
    feed.prices["300750.SZ"] = ("258.00", "280.00")
    sec.run(NOW + dt.timedelta(minutes=30))
    assert sec.security("300750.SZ")["last_price"] == "280.000" and len(sec.tasks([c1, c2, c3])) == 2
    # an older answer arriving late never overwrites a newer quote
    feed.at = NOW - dt.timedelta(hours=2)
    feed.prices["300750.SZ"] = ("258.00", "250.00")
    late = _job(sec.run(NOW + dt.timedelta(minutes=40)), "market_quotes")["detail"]["packages"][0]
    assert late["stale"] == 3 and late["rejected"] == ["000001.SZ"] and late["updated"] == 0 and sec.security("300750.SZ")["last_price"] == "280.000"
    # the next day, still beyond the threshold: a new alert per moved position
    feed.at = NOW + dt.timedelta(days=1)
    feed.prices["300750.SZ"] = ("280.00", "300.00")
    feed.prices["601012.SH"] = ("17.44", "17.50")
    sec.run(NOW + dt.timedelta(days=1, minutes=5))
    assert sorted(t["customer"] for t in sec.tasks([c1, c2, c3])) == sorted([c1, c1, c3])


def test_a_failing_feed_is_retried_dead_lettered_and_replayed_without_failing_other_jobs(
    sec: Securities, feed: FakeFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINCRM_INTERFACE_ATTEMPTS", "3")
    monkeypatch.setenv("FINCRM_INTERFACE_BACKOFF", "0.01")
    before = sec.security("600036.SH")
    feed.fail = ConnectionResetError("quote gateway reset the connection")
    feed.prices = {"600036.SH": ("42.10", "42.50")}
    report = sec.run(NOW + dt.timedelta(days=2))
    assert report["failed"] == ["market_quotes"]
    assert {j["job"]: j["status"] for j in report["jobs"]} == {j["job"]: "failed" if j["job"] == "market_quotes" else "ok" for j in report["jobs"]}
    failure = _job(report, "market_quotes")["detail"]
    assert failure["failed"] == 1 and failure["packages"][0]["error"] == "CallFailed" and len(feed.calls) == 3
    letter_id = failure["packages"][0]["dead_letter"]
    c, d = interface_call_table, interface_dead_letter_table
    with sec.runtime.engine.connect() as conn:
        attempts = conn.execute(select(c.c.status, c.c.attempt, c.c.kind, c.c.target, c.c.error).where(c.c.dead_letter_id == letter_id).order_by(c.c.attempt)).all()
        letter = conn.execute(select(d).where(d.c.id == letter_id)).one()
    assert [(a.attempt, a.status, a.kind, a.target) for a in attempts] == [(n, "error", "feed", "fake") for n in (1, 2, 3)]
    assert "ConnectionResetError" in attempts[0].error
    assert letter.status == "open" and letter.attempts == 3 and dict(letter.replay) == {"package": "securities", "feed": "fake"}
    assert sec.security("600036.SH")["last_price"] == before["last_price"]  # nothing half-written
    # the feed recovers: operations replay the letter, which fetches fresh quotes once
    feed.fail = None
    feed.at = NOW + dt.timedelta(days=2)
    with sec.app.app_context():
        ops = sec.principal("admin")
        done = InterfaceService(sec.records, sec.svc.authz).replay(ops, letter_id)
    assert done["ok"] is True and done["letter"]["status"] == "resolved" and done["letter"]["attempts"] == 4
    assert done["result"]["updated"] >= 1 and sec.security("600036.SH")["last_price"] == "42.500"


def test_the_quotes_job_does_nothing_without_a_feed_and_asks_for_a_name_when_there_are_several(sec: Securities) -> None:
    idle = _job(sec.run(NOW + dt.timedelta(days=3)), "market_quotes")
    assert idle["status"] == "ok" and idle["detail"]["skipped"] == "no quote feed plugin is installed"
    two = refresh_quotes(sec.runtime, NOW, feeds={"a": FakeFeed(), "b": FakeFeed()})
    assert two["failed"] == 1 and "name one in the quotes of package 'securities'" in two["packages"][0]["message"]


def test_the_quotes_job_does_nothing_when_no_package_declares_quotes(runtime: Any) -> None:
    result = refresh_quotes(runtime, NOW, feeds={"fake": FakeFeed()})
    assert result == {"skipped": "no published package declares quotes", "updated": 0, "failed": 0}


def test_a_quotes_declaration_that_does_not_fit_the_entities_is_refused_field_by_field(sec: Securities) -> None:
    registry = sec.runtime.cached_snapshot().registry
    assert quote_config_errors(registry, load_package_dir("metadata/verticals/securities")["quotes"]) == []
    wrong = {"entity": "security", "symbol": "code", "price": "name", "prev_close": "close", "quoted_at": "change_pct"}
    assert quote_config_errors(registry, wrong) == [
        {"pointer": "/quotes/price", "message": "security.name is string, not decimal"},
        {"pointer": "/quotes/prev_close", "message": "security has no field 'close'"},
        {"pointer": "/quotes/quoted_at", "message": "security.change_pct is decimal, not datetime"},
    ]
    assert quote_config_errors(registry, {**wrong, "entity": "stock"}) == [{"pointer": "/quotes/entity", "message": "unknown entity 'stock'"}]


# ------------------------------------------------------------------ commission-sensitive clients


def test_commission_sensitive_accounts_are_tagged_and_their_advisor_asked_to_review_the_rate(sec: Securities, client: Any, login: Logins) -> None:
    busy, cheap, calm, dormant, hyper = (sec.customer("adv1", n) for n in ("活跃高佣", "活跃低佣", "不活跃", "休眠", "高频"))
    sensitive = sec.account(busy, "0.3000")
    sec.trades(busy, sensitive, [1 + i * 3 for i in range(21)] + [100, 120])  # 21 within 90 days
    sec.trades(cheap, sec.account(cheap, "0.1500"), [1 + i * 3 for i in range(25)])  # below the rate
    sec.trades(calm, sec.account(calm, "0.5000"), [1 + i * 3 for i in range(19)] + [95, 130])  # 19 within 90 days
    sec.trades(dormant, sec.account(dormant, "0.5000", status="dormant"), [1 + i for i in range(30)])
    sec.trades(hyper, sec.account(hyper, "0.2000"), [i * 0.4 for i in range(1, 64)])  # 63 in the last 30 days, cheap rate
    sec.run(NOW + dt.timedelta(days=4))
    everyone = [busy, cheap, calm, dormant, hyper]
    assert [c for c in everyone if "佣金敏感" in sec.tags(c)] == [busy] and sec.tags(busy)["佣金敏感"] == "rule"
    assert [c for c in everyone if "高频交易" in sec.tags(c)] == [hyper]
    review = [t for t in sec.tasks(everyone) if t["title"].startswith("佣金敏感客户")]
    assert [(t["customer"], t["owner"]) for t in review] == [(busy, sec.uid["adv1"])]
    sec.run(NOW + dt.timedelta(days=5))  # once per rate
    assert len([t for t in sec.tasks(everyone) if t["title"].startswith("佣金敏感客户")]) == 1
    # the rate is cut but stays above the threshold: judged again
    acc = sec.records.get(SYSTEM, "brokerage_account", sensitive)
    sec.records.update(SYSTEM, "brokerage_account", sensitive, {"commission_rate": "0.2800"}, acc["version"])
    sec.run(NOW + dt.timedelta(days=5, hours=1))
    assert len([t for t in sec.tasks(everyone) if t["title"].startswith("佣金敏感客户")]) == 2
    # the report lists the account for its advisor (scope), not for the other advisor
    mine = _table(client.get("/api/v1/reports/commission_sensitive_clients", headers=login("adv1")).json)
    row = next(r for r in mine if r["customer"] == busy)
    assert row["trades_90d"] == 21 and Decimal(str(row["commission_90d"])) == Decimal("105.00") and Decimal(str(row["commission_rate"])) == Decimal("0.28")
    theirs = _table(client.get("/api/v1/reports/commission_sensitive_clients", headers=login("adv2")).json)
    assert busy not in {r["customer"] for r in theirs}


# ------------------------------------------------------------------ approval and advisory records


def test_a_commission_adjustment_goes_to_compliance_only_below_the_floor(sec: Securities, client: Any, login: Logins) -> None:
    customer = sec.customer("adv1", "调佣客户")
    account = sec.account(customer, "0.5000")

    def request(rate: str) -> int:
        body = {"customer": customer, "account": account, "current_rate": "0.5000", "requested_rate": rate, "reason": "交易活跃，申请下调佣金"}
        resp = client.post("/api/v1/records/commission_adjustment", json=body, headers=login("adv1"))
        assert resp.status_code == 201, resp.json
        assert resp.json["status"] == "draft" and resp.json["owner"] == sec.uid["adv1"]
        return int(resp.json["id"])

    def move(username: str, rid: int, name: str, **body: Any) -> Any:
        return client.post(f"/api/v1/records/commission_adjustment/{rid}/transitions/{name}", json=body, headers=login(username))

    usual, low = request("0.2500"), request("0.1000")
    for rid in (usual, low):
        assert move("adv1", rid, "submit").status_code == 200
    assert_error(move("adv2", usual, "supervisor_approve"), 403)  # an advisor approves nothing
    assert_error(client.get(f"/api/v1/records/commission_adjustment/{usual}", headers=login("adv2")), 404)  # nor sees a colleague's request
    assert_error(move("advsup", usual, "compliance_approve"), 403)
    assert move("advsup", usual, "supervisor_approve").json["record"]["status"] == "approved"
    assert move("advsup", low, "supervisor_approve").json["record"]["status"] == "compliance_review"
    assert_error(move("comp1", low, "reject"), 422)  # a rejection needs a comment
    assert move("comp1", low, "compliance_approve").json["record"]["status"] == "approved"
    with sec.runtime.engine.connect() as conn:
        told = conn.execute(select(outbox_table.c.subject).where(
            outbox_table.c.entity == "commission_adjustment", outbox_table.c.record_id.in_([usual, low]),
            outbox_table.c.recipient_id == sec.uid["adv1"])).scalars().all()
    assert sorted(told) == ["佣金调整已批准", "佣金调整已批准"]


def test_investment_advice_needs_a_risk_disclosure_and_shows_in_the_activity_report(sec: Securities, client: Any, login: Logins) -> None:
    customer = sec.customer("adv1", "投顾客户")
    body = {"customer": customer, "service_type": "investment_advice", "subject": "配置建议", "content": "建议分批配置宽基指数。",
            "served_at": (NOW - dt.timedelta(hours=2)).isoformat() + "Z"}
    assert_error(client.post("/api/v1/records/advisory_record", json=body, headers=login("adv1")), 422, field="risk_disclosed")
    done = client.post("/api/v1/records/advisory_record", json={**body, "risk_disclosed": True}, headers=login("adv1"))
    assert done.status_code == 201 and done.json["advisor"] == sec.uid["adv1"]
    assert_error(client.get(f"/api/v1/records/advisory_record/{done.json['id']}", headers=login("adv2")), 404)
    rows = _table(client.get("/api/v1/reports/advisory_service_activity", headers=login("adv1")).json)
    assert {r["advisor"] for r in rows} == {"adv1"}
    advice = next(r for r in rows if r["service_type"] == "investment_advice")
    mine = sec.records.count(sec.principal("adv1"), "advisory_record", filter={"and": [
        {"field": "service_type", "op": "eq", "value": "investment_advice"},
        {"field": "served_at", "op": "gte", "value": (NOW - dt.timedelta(days=90)).date().isoformat()}]})
    assert advice["services"] == mine >= 1


# ------------------------------------------------------------------ row scope


def test_an_advisor_sees_only_their_own_customers_positions_and_trades(sec: Securities, client: Any, login: Logins) -> None:
    mine, other = sec.customer("adv1", "自己的"), sec.customer("adv2", "别人的")
    a_mine, a_other = sec.account(mine), sec.account(other)
    p_mine, p_other = sec.position(mine, a_mine, "600900.SH"), sec.position(other, a_other, "600900.SH", quantity=5000)
    t_other = sec.trades(other, a_other, [1])[0]
    adv1 = login("adv1")
    for entity, theirs in (("position", p_other), ("trade", t_other), ("brokerage_account", a_other)):
        assert_error(client.get(f"/api/v1/records/{entity}/{theirs}", headers=adv1), 404)
        listed = client.get(f"/api/v1/records/{entity}?limit=500&fields=customer", headers=adv1).json["items"]
        customers = sorted({i["customer"] for i in listed})
        owners = {c["owner"] for c in sec.records.list(SYSTEM, "customer", filter={"field": "id", "op": "in", "value": customers}, fields=["owner"], limit=500).items}
        assert owners == {sec.uid["adv1"]} and theirs not in {i["id"] for i in listed}
    assert client.get(f"/api/v1/records/position/{p_mine}", headers=adv1).status_code == 200
    related = client.get(f"/api/v1/records/customer/{mine}/related", headers=adv1).json["relations"]
    assert [i["id"] for i in related["positions"]["items"]] == [p_mine] and [i["id"] for i in related["brokerage_accounts"]["items"]] == [a_mine]
    assert related["positions"]["label"] == {"zh": "证券持仓", "en": "Positions"}
    masked = client.get(f"/api/v1/records/brokerage_account/{a_mine}", headers=adv1).json["account_no"]
    assert masked.startswith("尾号") and len(masked) == 6  # the account number is masked for advisors too
    # the holdings report counts what each advisor may see
    for who in ("adv1", "adv2"):
        rows = _table(client.get("/api/v1/reports/holdings_by_industry", headers=login(who)).json)
        expected = sec.records.count(sec.principal(who), "position", filter={"field": "quantity", "op": "gt", "value": 0})
        assert sum(r["positions"] for r in rows) == expected
    utilities = next(r for r in _table(client.get("/api/v1/reports/holdings_by_industry", headers=login("adv2")).json) if r["industry"] == "utilities")
    assert utilities["positions"] >= 1
    # compliance reads across the firm; a plain relationship manager has no securities grant at all
    assert client.get(f"/api/v1/records/position/{p_other}", headers=login("comp1")).status_code == 200
    assert_error(client.get("/api/v1/records/position", headers=login("rm1")), 403)
