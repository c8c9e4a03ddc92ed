"""Synthetic demo data for a Chinese retail bank, generated deterministically.

Everything goes through :meth:`RecordService.bulk_insert` as the system principal, so every
value passes the real validators (GB 11643 ID checksums, assigned mobile ranges, decimals).
Shapes the analytics need are built in on purpose: a skewed AUM distribution with private-
banking clients, wealth products maturing within 15 days, customers silent for 3+ months with
low service scores, balance surges, complaints, withdrawn and expired consents.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from typing import Any, Callable, Mapping, Sequence

from faker import Faker
from stdnum.cn import ric

from .errors import FieldError
from .fieldtypes import FIELD_TYPES
from .meta.spec import FieldSpec, Label
from .security.principal import Principal
from .services.records import RecordService

__all__ = ["DEMO_BRANCHES", "DEMO_PRODUCTS", "seed_branches", "seed_demo", "make_id_number", "make_mobile"]

DEMO = Principal.system("demo")
BATCH = 1000

DEMO_BRANCHES: list[dict[str, Any]] = [
    {"code": "HO", "name": "总行", "level": "head_office", "city": "北京", "parent": None},
    {"code": "BJ", "name": "北京分行", "level": "branch", "city": "北京", "parent": "HO"},
    {"code": "BJ01", "name": "北京朝阳支行", "level": "sub_branch", "city": "北京", "parent": "BJ"},
    {"code": "SH", "name": "上海分行", "level": "branch", "city": "上海", "parent": "HO"},
    {"code": "SH01", "name": "上海浦东支行", "level": "sub_branch", "city": "上海", "parent": "SH"},
]

# code, name, type, risk level, term days, expected yield %
DEMO_PRODUCTS: list[tuple[str, str, str, str | None, int | None, str | None]] = [
    ("DEP-CUR", "活期存款", "deposit", "R1", None, "0.2000"),
    ("DEP-3M", "三个月定期存款", "deposit", "R1", 90, "1.2500"),
    ("DEP-1Y", "一年期定期存款", "deposit", "R1", 365, "1.6500"),
    ("DEP-LD3", "三年期大额存单", "deposit", "R1", 1095, "2.3500"),
    ("WM-TT30", "天天盈现金管理", "wealth", "R1", 0, "1.9000"),
    ("WM-WJ90", "稳健增利90天理财", "wealth", "R2", 90, "2.8000"),
    ("WM-WJ180", "稳健增利180天理财", "wealth", "R2", 180, "3.0500"),
    ("WM-JX365", "精选增强一年期理财", "wealth", "R3", 365, "3.6000"),
    ("WM-PB-ALT", "私行专享另类配置", "wealth", "R4", 730, "5.2000"),
    ("FD-BOND", "中短债债券基金", "fund", "R2", None, None),
    ("FD-MIX", "平衡混合基金", "fund", "R3", None, None),
    ("FD-EQ", "科技成长股票基金", "fund", "R4", None, None),
    ("FD-QDII", "全球精选QDII基金", "fund", "R5", None, None),
    ("BD-GOV3", "三年期储蓄国债", "bond", "R1", 1095, "2.3800"),
    ("INS-ANN", "年金保险", "insurance", "R2", 3650, None),
    ("INS-ACC", "综合意外险", "insurance", "R1", 365, None),
    ("INS-CAR", "机动车辆险", "insurance", "R1", 365, None),
    ("LN-MORT", "个人住房贷款", "loan", None, 10950, None),
    ("LN-CONS", "个人消费贷款", "loan", None, 365, None),
    ("CC-GOLD", "金卡信用卡", "credit_card", None, None, None),
]

# Real county-level division codes (GB/T 2260) for the first six ID digits.
REGIONS = ["110105", "110108", "110101", "310115", "310104", "310101", "440305", "440106", "330106", "320106", "510107", "420106", "370102", "610113"]
MOBILE_PREFIXES = ["134", "135", "136", "137", "138", "139", "150", "151", "152", "157", "158", "159", "182", "183", "187", "188", "130", "131", "132", "155", "156", "185", "186", "133", "153", "180", "181", "189", "177", "199"]
OCCUPATIONS = ["教师", "医生", "工程师", "公务员", "企业主", "销售经理", "财务", "律师", "自由职业", "退休", "设计师", "程序员", "个体工商户", "科研人员"]
COMPLAINTS = [
    ("理财赎回到账慢", "客户反映理财产品赎回后三个工作日仍未到账，要求尽快处理并说明原因。"),
    ("服务态度差", "客户投诉网点柜员服务态度差，办理业务时不耐烦，流程繁琐。"),
    ("手机银行转账失败", "客户使用手机银行转账多次失败，提示系统繁忙，影响资金周转。"),
    ("信用卡年费争议", "客户对信用卡年费扣收有异议，认为办卡时未被告知收费规则。"),
    ("理财收益不及预期", "客户认为理财产品实际收益低于宣传的预期收益率，要求解释。"),
    ("排队等候时间长", "客户反映网点排队等候超过一小时，窗口开放数量不足。"),
]
INQUIRIES = [("理财产品赎回规则咨询", "客户咨询稳健增利理财的赎回规则及到账时间。"), ("大额存单利率咨询", "客户咨询三年期大额存单的起存金额和利率。")]


def make_id_number(rng: random.Random, birth: dt.date, male: bool) -> str:
    """A valid 18-digit resident ID: real region code, birth date, sex-parity sequence, checksum."""
    while True:
        seq = rng.randrange(0, 500) * 2 + (1 if male else 0)
        body = f"{rng.choice(REGIONS)}{birth:%Y%m%d}{seq:03d}"
        number = body + ric.calc_check_digit(body + "0")  # stdnum expects a (placeholder) check digit
        if ric.is_valid(number):  # the region code must have existed in the birth year
            return number


_MOBILE = FieldSpec("mobile", "cn_mobile", Label("手机号", "Mobile"))


def make_mobile(rng: random.Random) -> str:
    while True:
        candidate = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        try:
            return str(FIELD_TYPES["cn_mobile"].normalize(candidate, _MOBILE))
        except FieldError:
            continue


def _money(value: float) -> str:
    return str(Decimal(value).quantize(Decimal("0.01")))


def _aum(rng: random.Random) -> Decimal:
    """A retail bank's skew: ~1.2% private banking (≥ 6M), ~5% 1M–6M, the rest mostly 10k–500k."""
    r = rng.random()
    if r < 0.012:
        value = rng.uniform(6_000_000, 30_000_000)
    elif r < 0.062:
        value = math.exp(rng.uniform(math.log(1_000_000), math.log(6_000_000)))
    else:
        value = min(math.exp(rng.gauss(11.0, 1.1)), 990_000)
    return Decimal(value).quantize(Decimal("0.01"))


def _ts(day: dt.date, rng: random.Random) -> str:
    """A Beijing-time moment on ``day`` during banking hours, as ISO text."""
    return f"{day.isoformat()}T{rng.randrange(8, 21):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}+08:00"


def seed_branches(records: RecordService) -> dict[str, int]:
    """Create the demo branch tree (parents first); returns branch code → record id."""
    ids: dict[str, int] = {}
    for level in (None, "HO", "BJ_SH", "LEAF"):
        rows = [b for b in DEMO_BRANCHES if _level(b) == level]
        payloads = [{**{k: v for k, v in b.items() if k != "parent"}, "parent": ids.get(b["parent"]) if b["parent"] else None} for b in rows]
        for b, rid in zip(rows, records.bulk_insert(DEMO, "branch", payloads)):
            ids[b["code"]] = rid
    return ids


def _level(b: Mapping[str, Any]) -> str | None:
    if b["parent"] is None:
        return None
    if b["parent"] == "HO":
        return "HO"
    return "BJ_SH" if b["level"] == "branch" else "LEAF"


def seed_demo(
    records: RecordService,
    *,
    branches: Mapping[str, int],
    owners: Sequence[tuple[int, str]],
    customers: int = 2000,
    months: int = 24,
    seed: int = 20261128,
    today: dt.date | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Customers spread over ``owners`` (RM user id, branch code) with 360-degree history."""
    if not owners:
        raise ValueError("the demo needs at least one relationship manager")
    rng = random.Random(seed)
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    today = today or dt.date.today()
    start = today - dt.timedelta(days=months * 30)
    counts: dict[str, int] = {}

    product_ids = records.bulk_insert(
        DEMO,
        "product",
        [
            {"code": c, "name": n, "type": t, "risk_level": r, "term_days": d, "expected_yield": y, "on_sale": True}
            for c, n, t, r, d, y in DEMO_PRODUCTS
        ],
    )
    products = {p[0]: (pid, p) for p, pid in zip(DEMO_PRODUCTS, product_ids)}
    counts["product"] = len(product_ids)
    wealth = [code for code, (_, p) in products.items() if p[2] in ("wealth", "deposit", "bond") and p[4]]
    investable = [code for code, (_, p) in products.items() if p[2] in ("wealth", "fund", "deposit", "bond", "insurance")]

    used_ids: set[str] = set()
    used_mobiles: set[str] = set()
    done = 0
    while done < customers:
        n = min(BATCH, customers - done)
        people: list[dict[str, Any]] = []
        for i in range(n):
            male = rng.random() < 0.5
            birth = start - dt.timedelta(days=rng.randrange(20 * 365, 75 * 365))
            idn = make_id_number(rng, birth, male)
            while idn in used_ids:
                idn = make_id_number(rng, birth, male)
            used_ids.add(idn)
            mobile = make_mobile(rng)
            while mobile in used_mobiles:
                mobile = make_mobile(rng)
            used_mobiles.add(mobile)
            owner, branch_code = owners[(done + i) % len(owners)]
            aum = _aum(rng)
            silent = rng.random() < 0.10  # no transaction in the last 3+ months: churn risk
            people.append(
                {
                    "payload": {
                        "name": fake.name_male() if male else fake.name_female(),
                        "gender": "male" if male else "female",
                        "birth_date": birth.isoformat(),
                        "id_number": idn,
                        "mobile": mobile,
                        "email": fake.free_email() if rng.random() < 0.4 else None,
                        "occupation": rng.choice(OCCUPATIONS),
                        "risk_preference": rng.choices(
                            ["conservative", "moderately_conservative", "balanced", "growth", "aggressive"], [25, 30, 25, 13, 7]
                        )[0],
                        "aum": str(aum),
                        "lifecycle_stage": "declining" if silent else rng.choices(["new", "growing", "mature"], [20, 35, 45])[0],
                        "acquisition_channel": rng.choices(["outlet", "online", "mobile_app", "referral", "event", "partner"], [40, 15, 20, 12, 8, 5])[0],
                        "owner": owner,
                        "branch": branches[branch_code],
                        "opened_on": (today - dt.timedelta(days=rng.randrange(30, 3650))).isoformat(),
                    },
                    "aum": aum,
                    "silent": silent,
                    "owner": owner,
                }
            )
        ids = records.bulk_insert(DEMO, "customer", [p["payload"] for p in people])
        counts["customer"] = counts.get("customer", 0) + len(ids)
        rows = _related(rng, today, start, months, list(zip(ids, people)), products, wealth, investable)
        for entity in ("holding", "transaction", "interaction", "opportunity", "task", "ticket", "consent"):
            batch = rows[entity]
            for k in range(0, len(batch), BATCH * 5):
                records.bulk_insert(DEMO, entity, batch[k : k + BATCH * 5])
            counts[entity] = counts.get(entity, 0) + len(batch)
        done += n
        if progress is not None:
            progress(n)
    return counts


def _related(
    rng: random.Random,
    today: dt.date,
    start: dt.date,
    months: int,
    people: list[tuple[int, dict[str, Any]]],
    products: Mapping[str, tuple[int, Any]],
    wealth: list[str],
    investable: list[str],
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in ("holding", "transaction", "interaction", "opportunity", "task", "ticket", "consent")}
    span = (today - start).days
    for cid, p in people:
        aum: Decimal = p["aum"]
        owner = p["owner"]
        # holdings that roughly add up to the AUM; some wealth products mature within 15 days
        k = rng.randint(1, 4)
        weights = [rng.random() + 0.2 for _ in range(k)]
        for w in weights:
            code = rng.choice(investable)
            pid, prod = products[code]
            amount = (aum * Decimal(w / sum(weights))).quantize(Decimal("0.01"))
            if amount <= 0:
                continue
            began = today - dt.timedelta(days=rng.randrange(10, 700))
            term = prod[4]
            maturity = None
            if code in wealth:
                maturity = today + dt.timedelta(days=rng.randrange(1, 16)) if rng.random() < 0.12 else began + dt.timedelta(days=term or 365)
            out["holding"].append(
                {"customer": cid, "product": pid, "amount": str(amount), "start_date": began.isoformat(), "maturity_date": maturity.isoformat() if maturity else None}
            )
        # transactions over the period; silent customers stop 100–300 days ago
        scale = float(aum) / 20 + 500
        last_day = today - dt.timedelta(days=rng.randrange(100, 300)) if p["silent"] else today
        n_tx = max(1, int(rng.expovariate(1 / 18)))
        for _ in range(min(n_tx, months * 6)):
            day = start + dt.timedelta(days=rng.randrange(max(1, (last_day - start).days)))
            out["transaction"].append(
                {
                    "customer": cid,
                    "product": products[rng.choice(investable)][0] if rng.random() < 0.6 else None,
                    "amount": _money(max(10.0, rng.lognormvariate(math.log(scale), 0.9))),
                    "direction": rng.choices(["in", "out"], [55, 45])[0],
                    "channel": rng.choices(["counter", "mobile_app", "online", "atm", "rm"], [20, 45, 15, 10, 10])[0],
                    "occurred_at": _ts(day, rng),
                }
            )
        if not p["silent"] and rng.random() < 0.04:  # balance surge within the last 30 days
            out["transaction"].append(
                {"customer": cid, "amount": _money(float(aum) * rng.uniform(0.6, 2.0) + 200_000), "direction": "in", "channel": "counter",
                 "occurred_at": _ts(today - dt.timedelta(days=rng.randrange(1, 30)), rng)}
            )
        # contact log; silent customers got low service scores
        for _ in range(rng.randint(0, 6)):
            day = start + dt.timedelta(days=rng.randrange(span))
            low = p["silent"] and rng.random() < 0.7
            out["interaction"].append(
                {
                    "customer": cid,
                    "channel": rng.choice(["phone", "visit", "wechat", "sms", "email"]),
                    "occurred_at": _ts(day, rng),
                    "summary": rng.choice(["介绍稳健型理财产品", "回访客户近期资金安排", "提醒理财产品即将到期", "邀请参加财富讲座", "了解客户风险偏好变化"]),
                    "satisfaction": rng.randint(1, 3) if low else rng.randint(3, 5),
                    "owner": owner,
                }
            )
        if rng.random() < 0.3:
            out["opportunity"].append(
                {
                    "title": rng.choice(["推荐稳健增利理财", "大额存单续存", "基金定投开户", "配置年金保险"]),
                    "customer": cid,
                    "product": products[rng.choice(investable)][0],
                    "stage": rng.choice(["identified", "contacted", "proposal", "won", "lost"]),
                    "source": rng.choice(["manual", "maturity", "balance_surge"]),
                    "expected_amount": _money(float(aum) * rng.uniform(0.05, 0.4) + 10_000),
                    "due_date": (today + dt.timedelta(days=rng.randrange(-10, 30))).isoformat(),
                    "owner": owner,
                }
            )
        if rng.random() < 0.4:
            due = today + dt.timedelta(days=rng.randrange(-7, 14))
            out["task"].append(
                {
                    "title": rng.choice(["电话回访", "到期提醒", "风险测评更新", "资料补全"]),
                    "customer": cid,
                    "due_at": _ts(due, rng),
                    "status": "done" if due < today and rng.random() < 0.6 else "open",
                    "priority": rng.choice(["low", "normal", "high"]),
                    "owner": owner,
                }
            )
        if rng.random() < 0.1:
            complaint = rng.random() < 0.6
            subject, description = rng.choice(COMPLAINTS if complaint else INQUIRIES)
            opened = today - dt.timedelta(days=rng.randrange(1, 300))
            resolved = rng.random() < 0.7
            out["ticket"].append(
                {
                    "subject": subject,
                    "customer": cid,
                    "category": "complaint" if complaint else "inquiry",
                    "department": rng.choice(["retail", "operations", "customer_service"]),
                    "status": "resolved" if resolved else rng.choice(["new", "in_progress"]),
                    "description": description,
                    "opened_at": _ts(opened, rng),
                    "resolved_at": _ts(opened + dt.timedelta(days=rng.randrange(0, 5)), rng) if resolved else None,
                }
            )
        if rng.random() < 0.85:
            for purpose in ("marketing", "profiling"):
                granted = today - dt.timedelta(days=rng.randrange(30, 1500))
                r = rng.random()
                out["consent"].append(
                    {
                        "customer": cid,
                        "purpose": purpose,
                        "granted_at": _ts(granted, rng),
                        "expires_at": _ts(today - dt.timedelta(days=rng.randrange(1, 30)), rng) if r < 0.05 else None,
                        "withdrawn_at": _ts(granted + dt.timedelta(days=rng.randrange(1, 20)), rng) if 0.05 <= r < 0.12 else None,
                        "channel": rng.choice(["app", "counter", "paper", "online"]),
                        "evidence": f"AUTH-{cid}-{purpose[:3].upper()}",
                    }
                )
    return out
