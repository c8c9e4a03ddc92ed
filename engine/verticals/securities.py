"""Demo data of the securities template: brokerage accounts, positions, six months of trades,
advisory service records, a few commission adjustment drafts, and one set of closing quotes.

Shaped for what the package's triggers and reports read:

- about 40% of the core demo's customers have a brokerage account at their branch (one in ten
  also a margin account); rates follow a broker's book — most online accounts at 0.15–0.30‰,
  older ones at 0.5–1‰, a few still at the 3‰ cap; nine in ten are active;
- trading activity is dealt by quota so even a tiny demo has each kind: dormant (no trades),
  occasional, regular, active (≥ 20 trades in 90 days — with a rate ≥ 0.25‰ they are what
  ``commission_sensitive_review`` looks for) and hyperactive (≥ 60 in 30 days: the
  ``高频交易`` tag); trades fall on weekdays in trading hours, in lots of 100, at prices around
  each security's reference price, with a commission of rate × amount and at least ¥5;
- positions (1–5 per active account) hold 5–40% of the customer's AUM in lots of 100, valued
  at the reference close; the value-investor tag goes to calm holders of large positions;
- advisory records over six months by the customer's relationship manager (investment advice
  and portfolio reviews always with a risk disclosure, as the package's rule demands);
- quotes: one set of reference closing quotes is applied through the quotes job's own writer
  (:func:`engine.flows.quotes.apply_quotes`), as a feed would, with two securities moving more
  than 5% — so the first jobs pass of the demo raises quote-move alerts for their holders.

Deterministic from ``ctx.seed`` and ``ctx.today``; everything but the quotes is written through
the records service as the demo system principal (validated, encrypted, audited).
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

from sqlalchemy import select

from ..fieldtypes import LOCAL_TZ
from ..flows.quotes import apply_quotes, quote_configs, resolve_target
from ..plugins import Quote
from ..security.principal import Principal
from . import DemoContext, customers_of

__all__ = ["seed_demo", "REFERENCE_PRICES"]

DEMO = Principal.system("demo")
BATCH = 2000
MONTHS = 6
CENT = Decimal("0.01")
MIN_COMMISSION = Decimal("5.00")

# code → (previous close, last price): reference levels of the seeded securities; two move > 5%
REFERENCE_PRICES: dict[str, tuple[str, str]] = {
    "600519.SH": ("1452.00", "1463.60"),
    "000858.SZ": ("126.50", "124.80"),
    "601318.SH": ("55.20", "55.95"),
    "600036.SH": ("42.10", "42.33"),
    "000001.SZ": ("11.52", "11.47"),
    "300750.SZ": ("258.00", "274.51"),  # +6.40%: a quote-move alert for its holders
    "601012.SH": ("18.36", "17.21"),  # −6.26%
    "002594.SZ": ("105.20", "106.90"),
    "000333.SZ": ("75.30", "74.92"),
    "600276.SH": ("60.45", "61.30"),
    "688981.SH": ("110.80", "113.05"),
    "600900.SH": ("29.10", "29.02"),
    "601899.SH": ("20.15", "20.61"),
    "300059.SZ": ("25.30", "25.92"),
    "510300.SH": ("4.512", "4.530"),
    "159915.SZ": ("2.905", "2.936"),
}

# (share of accounts, trades per month): activity classes, dealt by quota
ACTIVITY = (("dormant", 0.15, 0.0), ("occasional", 0.40, 1.5), ("regular", 0.32, 5.0), ("active", 0.10, 14.0), ("hyper", 0.03, 75.0))
RATES = (("0.1500", 8), ("0.2000", 15), ("0.2500", 25), ("0.3000", 20), ("0.5000", 15), ("0.8000", 10), ("1.0000", 5), ("3.0000", 2))
CHANNELS = (("app", 70), ("online", 15), ("counter", 8), ("phone", 7))

SERVICES: dict[str, list[tuple[str, str]]] = {
    "portfolio_review": [
        ("季度持仓诊断", "梳理客户当前持仓的行业集中度与估值水平，建议适当降低单一行业占比，保留一定现金仓位应对波动。"),
        ("持仓回撤复盘", "与客户复盘近一个月持仓回撤原因，说明仓位过于集中在成长股，建议分批调整至与风险承受能力相匹配的结构。"),
    ],
    "investment_advice": [
        ("配置建议：红利低波", "结合客户稳健的风险偏好，建议关注高股息、低波动的公用事业和银行板块，分批建仓，单只个股不超过总资产的10%。"),
        ("配置建议：宽基指数定投", "建议客户以沪深300ETF为底仓按月定投，平滑入场成本；提示指数基金同样存在市场下跌风险。"),
    ],
    "market_commentary": [
        ("盘前早报解读", "向客户解读今日盘前要闻：央行公开市场操作、北向资金动向及重点行业政策，提示短期波动加大。"),
        ("市场周评", "本周市场成交额放大，板块轮动加快，提醒客户避免追涨杀跌，关注持仓公司基本面。"),
    ],
    "risk_alert": [
        ("持仓大幅波动提示", "客户持有的个股当日波动超过5%，已电话说明波动原因，提示客户结合自身风险承受能力理性决策。"),
        ("两融维持担保比例提示", "客户信用账户维持担保比例接近预警线，提示追加担保物或降低融资余额，避免强制平仓。"),
    ],
    "rate_review": [
        ("佣金方案沟通", "客户交易较为活跃，沟通现行佣金率与市场水平的差异，告知可按交易量申请佣金调整，须经审批后生效。"),
    ],
    "investor_education": [
        ("投资者教育：新股申购规则", "向客户讲解新股申购的市值门槛、中签缴款规则及上市破发风险。"),
        ("投资者教育：适当性管理", "说明产品风险等级与客户风险承受能力的匹配要求，提醒客户按期重新进行风险测评。"),
    ],
}
SERVICE_WEIGHTS = (("market_commentary", 30), ("portfolio_review", 20), ("investment_advice", 15), ("risk_alert", 15), ("investor_education", 12), ("rate_review", 8))


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([p[0] for p in pairs], [p[1] for p in pairs])[0]


def _trading_moment(rng: random.Random, day: dt.date) -> str:
    """A Beijing-time moment in the continuous auction hours (9:30–11:30, 13:00–15:00)."""
    minute = rng.randrange(240)
    start = dt.datetime(day.year, day.month, day.day, 9, 30) if minute < 120 else dt.datetime(day.year, day.month, day.day, 13, 0)
    return (start + dt.timedelta(minutes=minute % 120, seconds=rng.randrange(60))).isoformat()


def _weekdays(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1) if (first + dt.timedelta(days=i)).weekday() < 5]


def _price(reference: Decimal, rng: random.Random, spread: float) -> Decimal:
    step = Decimal("0.001") if reference < 10 else CENT
    return max(step, (reference * Decimal(str(1 + rng.gauss(0, spread)))).quantize(step, ROUND_HALF_UP))


def _by_quota(rng: random.Random, n: int, classes: Sequence[tuple[str, float, float]]) -> list[str]:
    """``n`` class names in the shares given — at least one of each when n allows, the rounding
    taken from or given to the most common class — shuffled."""
    floor = 1 if n >= len(classes) else 0
    sizes = {name: max(floor, round(n * share)) for name, share, _ in classes}
    common = max(classes, key=lambda c: c[1])[0]
    sizes[common] += n - sum(sizes.values())
    while sizes[common] < 0:  # tiny n: take what is missing from the others
        donor = max((k for k in sizes if k != common), key=lambda k: sizes[k])
        sizes[donor] -= 1
        sizes[common] += 1
    out = [name for name, _, _ in classes for _ in range(sizes[name])]
    rng.shuffle(out)
    return out


def _securities(ctx: DemoContext) -> dict[str, int]:
    snap = ctx.records.runtime.cached_snapshot()
    t = snap.tables["security"]
    with ctx.records.runtime.engine.connect() as conn:
        return {r.code: r.id for r in conn.execute(select(t.c.code, t.c.id).where(t.c.retained_at.is_(None)))}


def _apply_reference_quotes(ctx: DemoContext, codes: dict[str, int]) -> int:
    """The reference closes, written by the quotes job's writer as a feed's answer would be."""
    runtime = ctx.records.runtime
    snap = runtime.cached_snapshot()
    config = next((c for p, c in quote_configs(snap) if p == "securities"), None)
    if config is None:
        return 0
    target = resolve_target(snap, "securities", config)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    close = dt.datetime(ctx.today.year, ctx.today.month, ctx.today.day, 15, 0, tzinfo=LOCAL_TZ).astimezone(dt.timezone.utc).replace(tzinfo=None)
    at = min(now, close)  # the close of the demo's day, or now if it has not closed yet
    quotes = {code: Quote(code, Decimal(last), Decimal(prev), at) for code, (prev, last) in REFERENCE_PRICES.items() if code in codes}
    return int(apply_quotes(runtime, target, quotes, now=now, feed="demo", actor=DEMO)["updated"])


def seed_demo(ctx: DemoContext) -> dict[str, int]:
    """Accounts, positions, trades, advisory records and adjustment drafts for the demo
    customers; returns the records created per entity (and ``quotes`` applied)."""
    records = ctx.records
    codes = _securities(ctx)
    counts = {"brokerage_account": 0, "position": 0, "trade": 0, "advisory_record": 0, "commission_adjustment": 0, "tag": 0, "quotes": 0}
    if not codes:
        return counts
    counts["quotes"] = _apply_reference_quotes(ctx, codes)
    last_price = {c: Decimal(REFERENCE_PRICES[c][1]) if c in REFERENCE_PRICES else Decimal("10.00") for c in codes}
    rng = ctx.rng("securities")
    customers = [c for c in customers_of(ctx) if rng.random() < 0.4] or customers_of(ctx, 1)
    today = ctx.today
    days = _weekdays(today - dt.timedelta(days=MONTHS * 30), today - dt.timedelta(days=1))
    recent90 = [d for d in days if d > today - dt.timedelta(days=89)]
    recent30 = [d for d in days if d > today - dt.timedelta(days=29)]
    stocks = sorted(codes)

    # ---- accounts
    activity = _by_quota(ctx.rng("securities:activity"), len(customers), ACTIVITY)
    taken: set[str] = set()
    accounts: list[dict[str, Any]] = []
    plan: list[tuple[dict[str, Any], str, str]] = []  # (customer, activity, rate) per account, in insert order
    for c, kind in zip(customers, activity):
        branch = c["branch"]
        for margin in (False, True) if rng.random() < 0.1 else (False,):
            number = f"{rng.randrange(10**11, 10**12)}"
            while number in taken:
                number = f"{rng.randrange(10**11, 10**12)}"
            taken.add(number)
            rate = _weighted(rng, RATES)
            if kind == "active" and not any(k == "active" for _, k, _ in plan):
                rate = "0.5000"  # at least one busy account on an old rate: a commission adjustment draft below
            status = "dormant" if kind == "dormant" and rng.random() < 0.5 else "closed" if rng.random() < 0.02 and kind == "dormant" else "active"
            opened = today - dt.timedelta(days=rng.randint(200, 3650))
            accounts.append(
                {
                    "account_no": number, "customer": c["id"], "account_type": "margin" if margin else "ordinary", "commission_rate": rate,
                    "status": status, "branch": branch, "opened_on": opened.isoformat(),
                }
            )
            plan.append((c, kind if not margin else "occasional", rate))
    account_ids = records.bulk_insert(DEMO, "brokerage_account", accounts)
    counts["brokerage_account"] = len(account_ids)

    # ---- positions and trades
    positions: list[dict[str, Any]] = []
    trades: list[dict[str, Any]] = []
    held_by: dict[int, list[str]] = {}
    value_investors: set[int] = set()
    margin_clients = {a["customer"] for a in accounts if a["account_type"] == "margin"}
    for aid, acc, (c, kind, rate) in zip(account_ids, accounts, plan):
        if acc["status"] == "closed":
            continue
        aum = Decimal(str(c["aum"] or 0)) or Decimal(rng.randint(50_000, 500_000))
        n = rng.randint(1, 5)
        picks = rng.sample(stocks, min(n, len(stocks)))
        held_by[aid] = picks
        budget = aum * Decimal(str(rng.uniform(0.05, 0.4)))
        for code in picks:
            price = last_price[code]
            lots = max(1, int(budget / n / price / 100))
            quantity = lots * 100
            cost = _price(price, rng, 0.15)
            positions.append(
                {
                    "customer": c["id"], "account": aid, "security": codes[code], "quantity": quantity, "cost_price": str(cost),
                    "market_value": str((price * quantity).quantize(CENT, ROUND_HALF_UP)), "as_of": today.isoformat(),
                }
            )
        if kind in ("occasional", "regular") and n <= 2 and budget > 200_000:
            value_investors.add(c["id"])
        per_month = dict((k, m) for k, _, m in ACTIVITY)[kind]
        if not per_month or acc["status"] != "active":
            continue
        if kind == "hyper":  # ≥ 60 in the last 30 days: the 高频交易 tag
            pool, count = recent30, max(65, round(rng.gauss(per_month, 8)))
        elif kind == "active":  # ≥ 20 in the last 90 days
            pool, count = recent90, max(22, round(rng.gauss(per_month * 3, 5)))
        else:
            pool, count = days, max(0, round(rng.gauss(per_month * MONTHS, per_month)))
        for _ in range(count):
            code = rng.choice(picks) if rng.random() < 0.7 else rng.choice(stocks)
            day = rng.choice(pool)
            price = _price(last_price[code], rng, 0.06)
            quantity = rng.randint(1, 20) * 100
            amount = (price * quantity).quantize(CENT, ROUND_HALF_UP)
            commission = max(MIN_COMMISSION, (amount * Decimal(rate) / 1000).quantize(CENT, ROUND_HALF_UP))
            trades.append(
                {
                    "customer": c["id"], "account": aid, "security": codes[code], "side": "buy" if rng.random() < 0.52 else "sell",
                    "quantity": quantity, "price": str(price), "amount": str(amount), "commission": str(commission),
                    "channel": _weighted(rng, CHANNELS), "traded_at": _trading_moment(rng, day),
                }
            )
    for entity, rows in (("position", positions), ("trade", trades)):
        for k in range(0, len(rows), BATCH):
            records.bulk_insert(DEMO, entity, rows[k : k + BATCH])
        counts[entity] = len(rows)

    # ---- advisory records by the customer's manager
    advisory: list[dict[str, Any]] = []
    arng = ctx.rng("securities:advisory")
    by_id = {code_id: code for code, code_id in codes.items()}
    for c in customers:
        if c["owner"] is None:
            continue
        for _ in range(arng.choice((0, 0, 1, 1, 2, 3, 4, 6))):
            kind = _weighted(arng, SERVICE_WEIGHTS)
            subject, content = arng.choice(SERVICES[kind])
            day = arng.choice(days)
            security = arng.choice(list(by_id)) if kind in ("risk_alert", "investment_advice") and arng.random() < 0.6 else None
            advisory.append(
                {
                    "customer": c["id"], "advisor": c["owner"], "service_type": kind, "subject": subject, "content": content,
                    "security": security, "channel": _weighted(arng, (("phone", 45), ("wechat", 35), ("meeting", 10), ("app", 10))),
                    "risk_disclosed": kind in ("investment_advice", "portfolio_review", "risk_alert") or arng.random() < 0.3,
                    "served_at": (dt.datetime(day.year, day.month, day.day, arng.randint(9, 18), arng.randrange(60))).isoformat(),
                }
            )
    for k in range(0, len(advisory), BATCH):
        records.bulk_insert(DEMO, "advisory_record", advisory[k : k + BATCH])
    counts["advisory_record"] = len(advisory)

    # ---- a few adjustment drafts the advisors prepared for high-rate active accounts
    drafts = [
        {
            "customer": c["id"], "account": aid, "current_rate": rate, "requested_rate": "0.2000", "owner": c["owner"],
            "reason": "客户交易活跃，现行佣金率高于市场主流水平，存在转户风险，申请下调佣金率。",
        }
        for aid, acc, (c, kind, rate) in zip(account_ids, accounts, plan)
        if kind in ("active", "hyper") and acc["status"] == "active" and Decimal(rate) >= Decimal("0.3") and c["owner"] is not None
    ][: max(1, len(customers) // 100)]
    if drafts:
        records.bulk_insert(DEMO, "commission_adjustment", drafts)
    counts["commission_adjustment"] = len(drafts)

    # ---- tags an advisor would set by hand (the triggers add 佣金敏感 and 高频交易)
    trng = ctx.rng("securities:tags")
    tagged = [(cid, "两融客户") for cid in sorted(margin_clients)] + [(cid, "价值投资") for cid in sorted(value_investors)]
    tagged += [(c["id"], "打新客户") for c in customers if trng.random() < 0.08]
    for cid, tag in tagged:
        records.add_tag(DEMO, "customer", cid, tag)
    counts["tag"] = len(tagged)
    return counts
