"""Synthetic demo data for a Chinese retail bank, generated deterministically.

Everything goes through :meth:`RecordService.bulk_insert` as the system principal, so every
value passes the real validators (GB 11643 ID checksums, assigned mobile ranges, decimals).

The data is shaped for the features that read it:

- customers: gender matches the ID number's sex digit, birth date is the ID's, region codes
  are real (and existed in the birth year); ages, occupations, risk preferences, acquisition
  channels and lifecycle stages follow age, tenure and wealth;
- AUM is skewed like a retail book: a log-normal mass (median ≈ 70k CNY, mostly 10k–500k),
  5% affluent (1M–6M) and about 1% private banking (≥ 6M);
- rare traits (private banking, silence, surges, maturities, complaints, overdue tasks,
  withdrawn consents) are dealt by quota per batch, at random places, so even a 40-customer
  demo shows each of them;
- holdings (1–4, suitable for the customer's risk preference) add up to the AUM exactly;
  fixed-term products roll over, and some wealth products mature within 15 days;
- transactions over ``months`` months: a Poisson count around a per-customer activity rate,
  amounts scaled to AUM, channels by age, hours by channel; ~10% of customers have been
  silent for 3+ months (churn risk, most with a low service score), a few had a balance surge;
- contact log with 1–5 service scores, opportunities from past trigger events and manual
  cross-selling, tasks (some overdue), tickets (complaints with Chinese descriptions, low-score
  remediation, inquiries, claims), PIPL consents (most granted; some withdrawn or expired).

Upcoming events (maturities within 15 days, recent surges) are left for the trigger engine:
the opportunities created here come from events in the past, so a trigger run adds, not
duplicates.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from faker import Faker
from stdnum.cn import ric

from .errors import FieldError
from .fieldtypes import FIELD_TYPES, LOCAL_TZ
from .meta.spec import FieldSpec, Label
from .security.principal import Principal
from .services.records import RecordService

__all__ = [
    "DEMO_BRANCHES",
    "DEMO_PRODUCTS",
    "DemoProduct",
    "seed_branches",
    "seed_demo",
    "make_id_number",
    "make_mobile",
    "sample_aum",
    "seed_knowledge_base",
    "KNOWLEDGE_ARTICLES",
]

DEMO = Principal.system("demo")
CUSTOMER_BATCH = 500  # customers generated, inserted and reported to ``progress`` at a time
ROW_BATCH = 2000  # rows per bulk_insert call for related records
CENT = Decimal("0.01")
ENTITIES = (
    "product", "customer", "holding", "transaction", "interaction", "opportunity", "task", "ticket", "consent", "insurance_policy", "survey_response",
)

DEMO_BRANCHES: list[dict[str, Any]] = [
    {"code": "HO", "name": "总行", "level": "head_office", "city": "北京", "parent": None},
    {"code": "BJ", "name": "北京分行", "level": "branch", "city": "北京", "parent": "HO"},
    {"code": "BJ01", "name": "北京朝阳支行", "level": "sub_branch", "city": "北京", "parent": "BJ"},
    {"code": "SH", "name": "上海分行", "level": "branch", "city": "上海", "parent": "HO"},
    {"code": "SH01", "name": "上海浦东支行", "level": "sub_branch", "city": "上海", "parent": "SH"},
]


@dataclass(frozen=True)
class DemoProduct:
    code: str
    name: str
    type: str
    risk_level: str | None  # R1–R5 (suitability); None for liabilities
    term_days: int | None  # fixed term; None for open-ended products
    expected_yield: str | None  # % per year

    @property
    def risk_rank(self) -> int:
        return int(self.risk_level[1]) if self.risk_level else 0

    @property
    def is_asset(self) -> bool:
        return self.type in ("deposit", "wealth", "fund", "bond", "insurance")


# Rates and names in the style of a large Chinese bank's 2025–2026 shelf.
DEMO_PRODUCTS: list[DemoProduct] = [
    DemoProduct("DEP-CUR", "活期储蓄", "deposit", "R1", None, "0.0500"),
    DemoProduct("DEP-3M", "三个月整存整取", "deposit", "R1", 90, "0.6500"),
    DemoProduct("DEP-1Y", "一年期整存整取", "deposit", "R1", 365, "0.9500"),
    DemoProduct("DEP-LCD3", "三年期大额存单", "deposit", "R1", 1095, "1.5500"),
    DemoProduct("WM-CASH", "天天利现金管理理财", "wealth", "R1", None, "1.4500"),
    DemoProduct("WM-90D", "稳享90天持有期理财", "wealth", "R2", 90, "2.3000"),
    DemoProduct("WM-180D", "稳健增利180天理财", "wealth", "R2", 180, "2.5000"),
    DemoProduct("WM-1Y", "安盈一年定开固收理财", "wealth", "R2", 365, "2.8000"),
    DemoProduct("WM-PLUS", "睿选固收+一年持有期理财", "wealth", "R3", 365, "3.2000"),
    DemoProduct("WM-PB", "私行尊享多元配置理财", "wealth", "R4", 730, "4.0000"),
    DemoProduct("FD-BOND", "中短债债券基金A", "fund", "R2", None, None),
    DemoProduct("FD-MIX", "均衡优选混合基金", "fund", "R3", None, None),
    DemoProduct("FD-EQ", "科技创新股票基金", "fund", "R4", None, None),
    DemoProduct("FD-QDII", "全球精选QDII基金", "fund", "R5", None, None),
    DemoProduct("BD-GOV3", "三年期储蓄国债(电子式)", "bond", "R1", 1095, "1.6300"),
    DemoProduct("INS-ANN", "鑫享年金保险", "insurance", "R2", 3650, "2.5000"),
    DemoProduct("INS-ACC", "综合意外伤害保险", "insurance", "R1", 365, None),
    DemoProduct("LN-MORT", "个人住房按揭贷款", "loan", None, 9125, "3.0500"),
    DemoProduct("LN-CONS", "个人消费贷款", "loan", None, 1095, "3.4000"),
    DemoProduct("CC-GOLD", "金卡信用卡", "credit_card", None, None, None),
]
_PRODUCT = {p.code: p for p in DEMO_PRODUCTS}

RISK_RANK = {"conservative": 1, "moderately_conservative": 2, "balanced": 3, "growth": 4, "aggressive": 5}
RISK_PREFERENCES = list(RISK_RANK)

# County-level division codes (GB/T 2260) for the first six ID digits: the branch's own city
# most of the time, other provinces for the rest. Codes created after a customer's birth year
# fall back to one that existed then (the validator checks that, see stdnum.cn.ric).
LOCAL_REGIONS: dict[str, list[str]] = {
    "北京": ["110101", "110102", "110105", "110106", "110107", "110108", "110109", "110111", "110112", "110114"],
    "上海": ["310101", "310104", "310105", "310106", "310107", "310109", "310110", "310112", "310113", "310115"],
}
OTHER_REGIONS = [
    "120101", "120103", "120104", "130102", "140105", "210102", "220102", "230102", "320102", "320106",
    "330106", "330122", "340121", "350203", "360121", "370102", "410105", "420106", "430104", "430121",
    "440106", "440305", "500103", "510107", "510121", "610113", "610323",
]
# Mainland mobile prefixes (operators' 3-digit network codes); numbers are checked against the
# assigned ranges by the validator itself.
MOBILE_PREFIXES = [
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "147", "150", "151", "152",
    "153", "155", "156", "157", "158", "159", "166", "173", "175", "176", "177", "178", "180", "181",
    "182", "183", "184", "185", "186", "187", "188", "189", "191", "195", "198", "199",
]
OCCUPATIONS = [
    ("企业职员", 18), ("工程师", 8), ("教师", 7), ("医生", 5), ("护士", 3), ("公务员", 6), ("企业主", 5),
    ("个体工商户", 8), ("销售经理", 5), ("财务人员", 5), ("律师", 2), ("程序员", 6), ("设计师", 3),
    ("科研人员", 3), ("自由职业", 5), ("金融从业人员", 3), ("外卖/快递从业人员", 2), ("学生", 2),
]
EMAIL_DOMAINS = [("qq.com", 40), ("163.com", 25), ("126.com", 10), ("sina.com", 5), ("gmail.com", 8), ("outlook.com", 7), ("foxmail.com", 5)]
PIPL_EFFECTIVE = dt.date(2021, 11, 1)  # banks re-collected consents when PIPL took effect

COMPLAINTS = [
    ("理财赎回到账慢", "客户于{date}赎回{wealth}，已过{days}个工作日资金仍未到账，多次致电客服未得到明确答复，要求尽快到账并说明原因。", "operations"),
    ("服务态度差", "客户反映在{branch}办理业务时柜员服务态度差、解释不耐心，要求网点负责人致歉并整改。", "retail"),
    ("理财收益不及预期", "客户购买的{wealth}实际年化收益明显低于销售时介绍的业绩比较基准，认为存在误导销售，要求给出解释。", "retail"),
    ("手机银行转账失败", "客户使用手机银行向他行转账{amount}元多次失败，页面提示系统繁忙，资金周转受到影响。", "operations"),
    ("信用卡年费争议", "客户对信用卡年费扣收有异议，表示办卡时被告知首年免年费，要求退还已扣年费。", "customer_service"),
    ("排队等候时间长", "客户反映{branch}排队等候超过一小时，开放窗口数量少，老年客户无人引导。", "retail"),
    ("营销电话骚扰", "客户表示已多次明确拒绝，仍频繁接到理财营销电话，要求停止营销并撤回营销授权。", "customer_service"),
    ("大额存单提前支取利息损失", "客户提前支取大额存单，对按活期利率计息不满，认为办理时未充分告知提前支取规则。", "retail"),
    ("账户被止付未告知", "客户账户因风控原因被临时止付，事先未收到任何通知，影响正常消费，要求尽快解除并说明原因。", "risk"),
    ("基金亏损销售误导", "客户购买的{fund}亏损约{pct}%，认为客户经理销售时未充分揭示风险，风险测评流于形式。", "retail"),
    ("转账手续费争议", "客户通过手机银行跨行转账{amount}元被收取手续费，认为此前宣传手机银行转账免手续费，要求退还并说明收费依据。", "operations"),
    ("房贷提前还款受阻", "客户申请房贷提前还款，网点告知需提前两个月预约并支付违约金，客户认为签合同时未说明，要求尽快办理。", "retail"),
    ("挂失补卡进度慢", "客户借记卡遗失后办理挂失补卡，新卡迟迟未寄到，其间无法正常使用手机银行转账，要求加快办理进度。", "operations"),
    ("保险理赔进度慢", "客户提交{product}理赔材料已超过{days}周，理赔进度一直显示审核中，多次询问客户经理未获答复。", "claims"),
    ("小额账户管理费扣收", "客户发现借记卡被扣收小额账户管理费，办卡时未被告知收费标准，要求退还已扣费用并取消收费。", "customer_service"),
    ("转账限额调整繁琐", "客户需向家人转账{amount}元，手机银行单日转账限额不足，提高限额须本人到网点办理，客户认为流程繁琐。", "operations"),
]
INQUIRIES = [
    ("理财产品赎回规则咨询", "客户咨询{wealth}的赎回规则、到账时间及是否收取赎回费。"),
    ("大额存单利率咨询", "客户咨询三年期大额存单起存金额、当前利率及能否转让。"),
    ("储蓄国债购买咨询", "客户咨询储蓄国债的发行时间、购买渠道及提前兑取规则。"),
    ("个人养老金账户咨询", "客户咨询个人养老金账户开户流程、年度缴存上限及个税优惠。"),
]
SERVICE_REQUESTS = [
    ("修改预留手机号", "客户更换手机号码，申请修改预留手机号并同步短信通知设置。"),
    ("补打账户对账单", "客户申请补打近一年的账户对账单，用于办理出国签证。"),
    ("挂失补卡", "客户借记卡遗失，已办理口头挂失，申请正式挂失并补办新卡。"),
]
LOW_SCORE_ISSUES = ["等候时间过长", "产品收益不及预期", "客户经理回复不及时", "手机银行操作复杂", "业务办理流程繁琐"]
INTERACTION_NOTES: dict[str, list[str]] = {
    "phone": [
        "电话回访，客户近期资金安排稳定，暂无新增投资需求。",
        "电话提醒{product}即将到期，客户表示到期后考虑续作。",
        "电话介绍新发行的{wealth}，客户表示需要与家人商量后答复。",
        "电话沟通风险测评即将到期，已预约到网点重新测评。",
        "电话了解客户子女教育金规划需求，约定下周面谈。",
    ],
    "visit": [
        "客户到网点面谈，完成资产配置检视，建议适当增加{product}配置。",
        "上门拜访客户，了解养老规划需求并介绍个人养老金账户。",
        "邀请客户参加财富管理沙龙，客户到场并咨询市场走势。",
    ],
    "wechat": [
        "企业微信推送本周市场观点，客户回复询问{product}近期收益。",
        "企业微信发送节日问候及理财到期提醒。",
        "企业微信解答客户关于手机银行转账限额的问题。",
    ],
    "sms": ["短信告知{product}到期资金已返还至活期账户。", "短信推送新发行储蓄国债认购提醒。"],
    "email": ["邮件发送季度资产对账单及市场展望报告。", "邮件发送个人养老金政策解读材料。"],
}
TASK_TITLES = ["电话回访", "理财到期提醒", "风险测评到期更新", "身份证件到期更新", "客户资料补全", "生日关怀", "资产配置检视"]
CROSS_SELL = [
    ("推荐办理信用卡", "CC-GOLD"),
    ("推荐个人消费贷款", "LN-CONS"),
    ("基金定投开户", "FD-MIX"),
    ("配置年金保险", "INS-ANN"),
    ("大额存单认购", "DEP-LCD3"),
    ("储蓄国债认购", "BD-GOV3"),
    ("固收+理财配置", "WM-PLUS"),
]


# ------------------------------------------------------------------ identity numbers, mobiles


@lru_cache(maxsize=None)
def _region_existed(code: str, year: int) -> bool:
    body = f"{code}{year}0101001"
    return bool(ric.is_valid(body + ric.calc_check_digit(body + "0")))


def _region(rng: random.Random, city: str, year: int) -> str:
    pool = LOCAL_REGIONS[city] if city in LOCAL_REGIONS and rng.random() < 0.6 else OTHER_REGIONS
    code = rng.choice(pool)
    if _region_existed(code, year):
        return code
    older = [c for c in pool if _region_existed(c, year)] or [c for c in LOCAL_REGIONS["北京"] if _region_existed(c, year)]
    return rng.choice(older)


def make_id_number(rng: random.Random, birth: dt.date, male: bool, city: str = "北京") -> str:
    """A valid 18-digit resident ID (GB 11643): region code, birth date, a sequence number whose
    last digit is odd for men and even for women, and the ISO 7064 MOD 11-2 check character."""
    seq = rng.randrange(0, 500) * 2 + 1 if male else rng.randrange(1, 500) * 2
    body = f"{_region(rng, city, birth.year)}{birth:%Y%m%d}{seq:03d}"
    return body + ric.calc_check_digit(body + "0")  # stdnum expects a (placeholder) check digit


_MOBILE = FieldSpec("mobile", "cn_mobile", Label("手机号", "Mobile"))


def make_mobile(rng: random.Random) -> str:
    """An 11-digit mobile number in a range assigned to a mainland operator."""
    while True:
        candidate = rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
        try:
            return str(FIELD_TYPES["cn_mobile"].normalize(candidate, _MOBILE))
        except FieldError:
            continue


# ------------------------------------------------------------------ small helpers


def _money(value: float | Decimal) -> str:
    return str(Decimal(value).quantize(CENT, ROUND_HALF_UP))


def sample_aum(rng: random.Random, tier: str = "mass") -> Decimal:
    """AUM in CNY for a customer of a tier: ``mass`` is log-normal (median 70k, σ 1.0) below
    1M; ``affluent`` log-uniform 1M–6M; ``private`` (private banking) Pareto from 6M."""
    if tier == "private":
        value = 6_000_000 * rng.paretovariate(1.6)
        while value > 80_000_000:
            value = 6_000_000 * rng.paretovariate(1.6)
    elif tier == "affluent":
        value = math.exp(rng.uniform(math.log(1_000_000), math.log(6_000_000)))
    else:
        value = rng.lognormvariate(math.log(70_000), 1.0)
        while value >= 1_000_000:
            value = rng.lognormvariate(math.log(70_000), 1.0)
    return Decimal(value).quantize(CENT, ROUND_HALF_UP)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([p[0] for p in pairs], [p[1] for p in pairs])[0]


def _moment(rng: random.Random, day: dt.date, channel: str = "any") -> dt.datetime:
    """A Beijing-time moment on ``day`` in hours that fit the channel (outlets keep office
    hours, weekends included as most city outlets do; the app is used until late evening)."""
    if channel in ("counter", "rm", "visit"):
        hour = rng.randint(9, 16)
    elif channel in ("mobile_app", "online", "wechat"):
        hour = _weighted(rng, [(7, 2), (8, 4), (9, 5), (10, 6), (11, 6), (12, 7), (13, 5), (14, 5), (15, 5), (16, 5), (17, 5), (18, 6), (19, 7), (20, 8), (21, 8), (22, 5), (23, 2)])
    else:
        hour = rng.randint(8, 20)
    return dt.datetime(day.year, day.month, day.day, hour, rng.randrange(60), rng.randrange(60), tzinfo=LOCAL_TZ)


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _day_between(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    span = (last - first).days
    return first + dt.timedelta(days=rng.randint(0, span)) if span > 0 else first


# ------------------------------------------------------------------ branches and products


def seed_branches(records: RecordService) -> dict[str, int]:
    """Create the demo branch tree (parents first, one bulk insert per level); returns
    branch code → record id. Branches already present (same code) are reused."""
    codes = [b["code"] for b in DEMO_BRANCHES]
    found = records.list(DEMO, "branch", filter={"field": "code", "op": "in", "value": codes}, limit=len(codes), fields=["code"])
    ids: dict[str, int] = {r["code"]: r["id"] for r in found.items}
    pending = [b for b in DEMO_BRANCHES if b["code"] not in ids]
    while pending:
        ready = [b for b in pending if b["parent"] is None or b["parent"] in ids]
        if not ready:
            raise ValueError("DEMO_BRANCHES has a parent that is not in the list")
        payloads = [{**{k: v for k, v in b.items() if k != "parent"}, "parent": ids[b["parent"]] if b["parent"] else None} for b in ready]
        for b, rid in zip(ready, records.bulk_insert(DEMO, "branch", payloads)):
            ids[b["code"]] = rid
        pending = [b for b in pending if b["code"] not in ids]
    return ids


def _seed_products(records: RecordService) -> tuple[dict[str, int], int]:
    """Product code → id; products already present (same code) are reused, not duplicated."""
    codes = [p.code for p in DEMO_PRODUCTS]
    found = records.list(DEMO, "product", filter={"field": "code", "op": "in", "value": codes}, limit=len(codes), fields=["code"])
    ids: dict[str, int] = {r["code"]: r["id"] for r in found.items}
    missing = [p for p in DEMO_PRODUCTS if p.code not in ids]
    if missing:
        payloads = [
            {"code": p.code, "name": p.name, "type": p.type, "risk_level": p.risk_level, "term_days": p.term_days, "expected_yield": p.expected_yield, "on_sale": True}
            for p in missing
        ]
        for p, rid in zip(missing, records.bulk_insert(DEMO, "product", payloads)):
            ids[p.code] = rid
    return ids, len(missing)


# ------------------------------------------------------------------ customers


@dataclass
class _Person:
    payload: dict[str, Any]
    owner: int
    branch_name: str
    age: int
    tier: str  # mass | affluent | private
    aum: Decimal
    risk: str
    opened: dt.date
    silent: bool  # no transaction in the last 3+ months (churn risk)
    surge: bool  # a large inflow in the last two weeks
    maturing: bool  # a wealth product maturing within 15 days
    holdings: list[tuple[DemoProduct, Decimal, dt.date, dt.date | None, bool]] = field(default_factory=list)  # …, renewed
    low_scores: int = 0
    complains: bool = False  # files a complaint (quota: every batch has some)
    overdue: bool = False  # has an overdue follow-up task (quota)
    withdraws: bool = False  # withdrew the marketing consent (quota)
    complained_of_marketing: bool = False
    past_surge: tuple[dt.date, float] | None = None  # an earlier large inflow (day, amount)


class _Demo:
    def __init__(
        self, seed: int, today: dt.date, months: int, branches: Mapping[str, int], owners: Sequence[tuple[int, str]], products: Mapping[str, int]
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.fake = Faker("zh_CN")
        self.fake.seed_instance(seed)
        self.today = today
        self.yesterday = today - dt.timedelta(days=1)
        self.start = today - dt.timedelta(days=round(months * 30.44))
        self.branches = branches
        self.owners = owners
        self.product_ids = products
        self.city = {b["code"]: b["city"] for b in DEMO_BRANCHES}
        self.branch_name = {b["code"]: b["name"] for b in DEMO_BRANCHES}
        self.used_ids: set[str] = set()
        self.used_mobiles: set[str] = set()
        self.assets = [p for p in DEMO_PRODUCTS if p.is_asset]

    # ---------------------------------------------------------- one batch of customers

    def people(self, first_index: int, n: int) -> list[_Person]:
        rng = self.rng
        order = list(range(n))
        rng.shuffle(order)  # rare traits by exact quota, at random places (≥ 1 each per batch)
        quotas = {"private": max(1, round(n * 0.012)), "affluent": max(1, round(n * 0.05)), "silent": max(1, round(n * 0.10)), "surge": max(1, round(n * 0.03))}
        private = set(order[: quotas["private"]])
        affluent = set(order[quotas["private"] : quotas["private"] + quotas["affluent"]])
        rng.shuffle(order)
        silent = set(order[: quotas["silent"]])
        surge = set(order[quotas["silent"] : quotas["silent"] + quotas["surge"]])
        maturing_quota = max(1, round(n * 0.08))
        out = []
        for i in range(n):
            tier = "private" if i in private else "affluent" if i in affluent else "mass"
            out.append(self.person(first_index + i, tier, i in silent, i in surge))
        # wealth maturing within 15 days: customers who may hold R2 wealth and have for a while
        eligible = [p for p in out if RISK_RANK[p.risk] >= 2 and p.opened <= self.today - dt.timedelta(days=200)]
        for p in rng.sample(eligible, min(maturing_quota, len(eligible))):
            p.maturing = True
        for p in rng.sample(out, max(1, round(n * 0.03))):
            p.complains = True
        for p in rng.sample(out, max(1, round(n * 0.04))):
            p.overdue = True
        for p in rng.sample(out, max(1, round(n * 0.05))):
            p.withdraws = True
        return out

    def person(self, index: int, tier: str, silent: bool, surge: bool) -> _Person:
        rng, fake, today = self.rng, self.fake, self.today
        owner, branch_code = self.owners[index % len(self.owners)]
        city = self.city.get(branch_code, "北京")
        male = rng.random() < 0.49
        age = int(min(85, max(20, rng.gauss(44 if tier == "mass" else 52, 13))))
        birth = today - dt.timedelta(days=age * 365 + rng.randrange(365))
        id_number = make_id_number(rng, birth, male, city)
        while id_number in self.used_ids:
            id_number = make_id_number(rng, birth, male, city)
        self.used_ids.add(id_number)
        mobile = make_mobile(rng)
        while mobile in self.used_mobiles:
            mobile = make_mobile(rng)
        self.used_mobiles.add(mobile)
        name = fake.last_name() + (fake.first_name_male() if male else fake.first_name_female())

        # account opened over the last ten years, at 18 or older; silent customers are not new
        earliest = max(today - dt.timedelta(days=3650), _add_years(birth, 18))
        latest = today - dt.timedelta(days=420 if silent else 7)
        opened = _day_between(rng, earliest, latest) if earliest <= latest else earliest
        tenure = (today - opened).days

        aum = sample_aum(rng, tier)
        if age >= 60:
            risk = _weighted(rng, [("conservative", 40), ("moderately_conservative", 40), ("balanced", 15), ("growth", 4), ("aggressive", 1)])
        elif tier != "mass":
            risk = _weighted(rng, [("conservative", 8), ("moderately_conservative", 27), ("balanced", 35), ("growth", 22), ("aggressive", 8)])
        else:
            risk = _weighted(rng, [("conservative", 20), ("moderately_conservative", 32), ("balanced", 28), ("growth", 13), ("aggressive", 7)])
        if age >= (60 if male else 55) and rng.random() < 0.8:  # statutory retirement ages
            occupation = "退休"
        else:
            occupation = _weighted(rng, OCCUPATIONS if age < 26 else [o for o in OCCUPATIONS if o[0] != "学生"])
            if tier == "private" and rng.random() < 0.5:
                occupation = rng.choice(["企业主", "企业高管", "律师", "医生"])
        if silent:
            stage = "churned" if rng.random() < 0.25 else "declining"
        elif tenure < 365:
            stage = "new"
        else:
            stage = _weighted(rng, [("growing", 60), ("mature", 40)] if tenure < 3 * 365 else [("growing", 25), ("mature", 75)])
        if opened < dt.date(2019, 1, 1):
            channel = _weighted(rng, [("outlet", 60), ("referral", 15), ("event", 10), ("partner", 5), ("online", 5), ("mobile_app", 5)])
        else:
            channel = _weighted(rng, [("mobile_app", 35), ("outlet", 28), ("online", 15), ("referral", 12), ("event", 5), ("partner", 5)])
        email = None
        if rng.random() < (0.5 if age < 50 else 0.2):
            domain = _weighted(rng, EMAIL_DOMAINS)
            local = str(rng.randrange(10**5, 10**10)) if domain == "qq.com" and rng.random() < 0.7 else f"{fake.user_name()}{rng.randrange(100) if rng.random() < 0.5 else ''}"
            email = f"{local}@{domain}"
        payload = {
            "name": name,
            "gender": "male" if male else "female",
            "birth_date": birth,
            "id_number": id_number,
            "mobile": mobile,
            "email": email,
            "occupation": occupation,
            "risk_preference": risk,
            "aum": _money(aum),
            "lifecycle_stage": stage,
            "acquisition_channel": channel,
            "owner": owner,
            "branch": self.branches[branch_code],
            "opened_on": opened,
        }
        return _Person(payload, owner, self.branch_name.get(branch_code, "营业网点"), age, tier, aum, risk, opened, silent, surge, False)

    # ---------------------------------------------------------- holdings

    def holdings(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        suitable = [x for x in self.assets if x.risk_rank <= RISK_RANK[p.risk] and (x.code != "WM-PB" or p.tier == "private")]
        k = _weighted(rng, [(1, 30), (2, 35), (3, 22), (4, 13)] if p.tier == "mass" else [(2, 15), (3, 40), (4, 45)])
        picked: list[DemoProduct] = [_PRODUCT["DEP-CUR"]] if rng.random() < 0.85 else []
        others = [x for x in suitable if x.code != "DEP-CUR"]
        popularity = {"deposit": 3.0, "wealth": 3.0, "fund": 1.5, "bond": 1.0, "insurance": 1.0}
        while len(picked) < k and others:
            choice = rng.choices(others, [popularity[x.type] * (3.0 if x.code == "WM-PB" else 1.0) for x in others])[0]
            picked.append(choice)
            others.remove(choice)
        tenure = (today - p.opened).days

        def can_mature_soon(x: DemoProduct) -> bool:  # bought after the account was opened
            return x.type == "wealth" and x.term_days is not None and 0 < x.term_days <= tenure - 15

        if p.maturing and not any(can_mature_soon(x) for x in picked):
            fixed = [x for x in suitable if can_mature_soon(x)]
            if fixed:
                if len(picked) >= 4:
                    picked.pop()
                picked.append(rng.choice(fixed))
        if not picked:
            picked = [_PRODUCT["DEP-CUR"]]
        # split the AUM in cents: gamma weights (demand deposits take a smaller share when rich)
        weights = [rng.gammavariate(1.5, 1.0) * (0.4 if x.code == "DEP-CUR" and len(picked) > 1 else 1.0) for x in picked]
        cents = int(p.aum * 100)
        shares = [int(cents * w / sum(weights)) for w in weights]
        shares[max(range(len(shares)), key=lambda j: shares[j])] += cents - sum(shares)
        rows = []
        maturing_done = False
        for product, share in zip(picked, shares):
            if share <= 0:
                continue
            began = _day_between(rng, p.opened, self.yesterday)
            maturity = None
            rolls = 0
            if product.term_days:
                term = dt.timedelta(days=product.term_days)
                if p.maturing and not maturing_done and can_mature_soon(product):
                    maturity = today + dt.timedelta(days=rng.randint(1, 15))
                    began = maturity - term
                    maturing_done = True
                else:
                    rolls = (self.yesterday - began).days // product.term_days  # fixed terms roll over
                    began += rolls * term
                    maturity = began + term
            amount = Decimal(share) / 100
            p.holdings.append((product, amount, began, maturity, rolls > 0))
            rows.append({"customer": cid, "product": self.product_ids[product.code], "amount": _money(amount), "start_date": began, "maturity_date": maturity})
        return rows

    # ---------------------------------------------------------- transactions

    def transactions(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        first = max(self.start, p.opened)
        last = today - dt.timedelta(days=rng.randint(95, 400)) if p.silent else self.yesterday
        rows: list[dict[str, Any]] = []
        if last < first:
            return rows
        activity = {"mass": 1.0, "affluent": 1.5, "private": 2.0}[p.tier]
        rate = rng.gammavariate(1.6, 0.55) * activity  # transactions per month, varies by customer
        n = min(_poisson(rng, rate * ((last - first).days + 1) / 30.44), 10 * ((last - first).days // 30 + 1))
        days = [_day_between(rng, first, last) for _ in range(n)]
        recent_from = max(first, today - dt.timedelta(days=60))
        if not p.silent and not any(d >= recent_from for d in days):
            days.append(_day_between(rng, recent_from, self.yesterday))  # active customers: one in the last 60 days
        typical = min(max(float(p.aum) * 0.05, 300.0), 3_000_000.0)
        held = [self.product_ids[h[0].code] for h in p.holdings]
        if p.age >= 60:
            channels = [("counter", 38), ("mobile_app", 27), ("atm", 14), ("online", 6), ("rm", 15)]
        else:
            channels = [("counter", 12), ("mobile_app", 55), ("online", 15), ("atm", 8), ("rm", 10 if p.tier == "mass" else 25)]
        for day in sorted(days):
            amount = typical * rng.lognormvariate(0, 0.8)
            if amount >= 1000 and rng.random() < 0.5:
                amount = round(amount, -2)  # people move round sums
            channel = _weighted(rng, channels)
            rows.append(
                {
                    "customer": cid,
                    "product": rng.choice(held) if held and rng.random() < 0.65 else None,
                    "amount": _money(max(amount, 10.0)),
                    "direction": "in" if rng.random() < 0.52 else "out",
                    "channel": channel,
                    "occurred_at": _moment(rng, day, channel),
                }
            )
        surges = []
        if p.surge and not p.silent:  # recent: left for the balance-surge trigger
            surges.append(max(today - dt.timedelta(days=rng.randint(1, 14)), p.opened))
        if rng.random() < 0.04 * (2 if p.tier != "mass" else 1) and first < last - dt.timedelta(days=60):
            surges.append(_day_between(rng, first, last - dt.timedelta(days=30)))  # earlier one, followed up
        for day in surges:
            amount = max(200_000.0, round(float(p.aum) * rng.uniform(0.8, 2.5), -3))
            channel = rng.choice(["counter", "online", "mobile_app"])
            rows.append({"customer": cid, "product": None, "amount": _money(amount), "direction": "in", "channel": channel, "occurred_at": _moment(rng, day, channel)})
            if day < today - dt.timedelta(days=30):
                p.past_surge = (day, amount)
        return rows

    # ---------------------------------------------------------- contact log

    def interactions(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng = self.rng
        first = max(self.start, p.opened)
        n = _poisson(rng, {"mass": 3.0, "affluent": 7.0, "private": 14.0}[p.tier] * ((self.yesterday - first).days + 1) / 730)
        rows = []
        for j in range(n):
            channel = _weighted(rng, [("phone", 35), ("wechat", 30), ("visit", 15 if p.tier == "mass" else 35), ("sms", 12), ("email", 8)])
            day = _day_between(rng, first, self.yesterday)
            rows.append(self._interaction(cid, p, channel, day, low=p.silent and rng.random() < 0.6))
        if p.silent and rng.random() < 0.8:  # churn risk: a low service score in the last half year
            day = _day_between(rng, max(first, self.today - dt.timedelta(days=180)), self.yesterday)
            rows.append(self._interaction(cid, p, rng.choice(["phone", "visit", "wechat"]), day, low=True))
        return rows

    def _interaction(self, cid: int, p: _Person, channel: str, day: dt.date, low: bool) -> dict[str, Any]:
        rng = self.rng
        product = rng.choice(p.holdings)[0].name if p.holdings else "活期储蓄"
        wealth = rng.choice([x.name for x in self.assets if x.type == "wealth"])
        summary = rng.choice(INTERACTION_NOTES[channel]).format(product=product, wealth=wealth)
        score: int | None = None
        if channel in ("phone", "visit", "wechat"):
            score = rng.randint(1, 3) if low else _weighted(rng, [(5, 48), (4, 34), (3, 11), (2, 4), (1, 3)])
            if score <= 2:
                summary += f"客户评价较低，反映{rng.choice(LOW_SCORE_ISSUES)}。"
                p.low_scores += 1
        return {"customer": cid, "channel": channel, "occurred_at": _moment(rng, day, channel), "summary": summary, "satisfaction": score, "owner": p.owner}

    # ---------------------------------------------------------- opportunities and tasks

    def opportunities(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        rows = []

        def add(title: str, code: str, source: str, amount: float, due: dt.date, stages: Sequence[tuple[str, float]]) -> None:
            rows.append(
                {
                    "title": title,
                    "customer": cid,
                    "product": self.product_ids[code],
                    "stage": _weighted(rng, stages),
                    "source": source,
                    "expected_amount": _money(max(amount, 1000.0)),
                    "due_date": due,
                    "owner": p.owner,
                }
            )

        closed = [("won", 45), ("lost", 30), ("contacted", 15), ("proposal", 10)]
        # past trigger events: earlier maturities of the wealth held, past surges, renewals
        for product, amount, began, _, renewed in p.holdings:
            if not renewed or began < self.start:
                continue
            if product.type == "wealth" and rng.random() < 0.35:
                add(f"{product.name}到期资金续作", product.code, "maturity", float(amount), began, closed)
            if product.type == "insurance" and product.term_days == 365 and rng.random() < 0.5:
                add(f"{product.name}续保", product.code, "policy_expiry", 300.0 + rng.randrange(5) * 100, began, closed)
        if p.past_surge is not None:
            surge_day, inflow = p.past_surge
            targets = [c for c in ("WM-1Y", "DEP-LCD3", "BD-GOV3", "WM-PLUS") if _PRODUCT[c].risk_rank <= RISK_RANK[p.risk]]
            add("大额资金流入-资产配置建议", rng.choice(targets), "balance_surge", inflow * rng.uniform(0.3, 0.8), surge_day + dt.timedelta(days=7), closed)
        # manual cross-selling, within the customer's risk level
        if rng.random() < 0.25:
            offers = [(t, c) for t, c in CROSS_SELL if _PRODUCT[c].risk_rank <= RISK_RANK[p.risk]]
            if p.tier == "private":
                offers.append(("私行专享产品配置", "WM-PB"))
            title, code = rng.choice(offers)
            due = today + dt.timedelta(days=rng.randint(-30, 45))
            stages = [("identified", 30), ("contacted", 30), ("proposal", 25), ("won", 10), ("lost", 5)] if due >= today else closed
            add(title, code, "manual", float(p.aum) * rng.uniform(0.05, 0.3) + 5000, due, stages)
        return rows

    def tasks(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        rows = []
        planned = [today + dt.timedelta(days=rng.randint(-20, 20)) for _ in range(_weighted(rng, [(0, 55), (1, 33), (2, 12)]))]
        if p.overdue:
            planned.append(today - dt.timedelta(days=rng.randint(1, 10)))
        for j, due in enumerate(planned):
            if p.overdue and j == len(planned) - 1:
                status = "open"
            elif due < today:
                status = _weighted(rng, [("done", 62), ("open", 28), ("escalated", 7), ("cancelled", 3)])  # open = overdue
            else:
                status = _weighted(rng, [("open", 94), ("done", 6)])
            title = "流失预警回访" if p.silent and rng.random() < 0.5 else rng.choice(TASK_TITLES)
            rows.append(
                {
                    "title": title,
                    "customer": cid,
                    "due_at": _moment(rng, due, "counter"),
                    "status": status,
                    "priority": _weighted(rng, [("low", 20), ("normal", 60), ("high", 20 if p.tier == "mass" else 45)]),
                    "notes": "逾期未完成，已提醒主管关注。" if status == "escalated" else None,
                    "owner": p.owner,
                }
            )
        return rows

    # ---------------------------------------------------------- tickets

    def tickets(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        rows = []
        first = max(self.start, p.opened)
        kinds = ["complaint"] if p.complains else []
        if rng.random() < (0.25 if p.silent else 0.05):
            kinds.append(_weighted(rng, [("complaint", 50), ("inquiry", 28), ("service", 16), ("claim", 6)]))
        for kind in kinds:
            if kind == "claim" and not any(h[0].type == "insurance" for h in p.holdings):
                kind = "complaint"
            opened = _day_between(rng, first, self.yesterday)
            slots = {
                "wealth": self._held(p, "wealth"),
                "fund": self._held(p, "fund"),
                "product": self._held(p, "insurance"),
                "branch": p.branch_name,
                "date": f"{opened - dt.timedelta(days=rng.randint(3, 10)):%Y年%m月%d日}",
                "days": rng.randint(3, 7),
                "amount": f"{rng.randrange(5, 200) * 1000:,}",
                "pct": rng.randint(8, 35),
            }
            if kind == "complaint":
                subject, text, department = rng.choice(COMPLAINTS)
                if subject == "营销电话骚扰":
                    p.complained_of_marketing = True
                owner = None  # routed to the department's queue
            elif kind == "inquiry":
                subject, text = rng.choice(INQUIRIES)
                department, owner = "customer_service", p.owner
            elif kind == "service":
                subject, text = rng.choice(SERVICE_REQUESTS)
                department, owner = "operations", p.owner
            else:
                subject, text = "意外险理赔申请", "客户因意外受伤就医，产生医疗费用约{amount}元，申请{product}理赔，已提交发票及病历资料。"
                department, owner = "claims", None
            rows.append(self._ticket(cid, subject, text.format(**slots), kind, department, opened, owner))
        if p.low_scores and rng.random() < 0.25:  # a low survey score opens a remediation ticket
            opened = _day_between(rng, max(first, today - dt.timedelta(days=180)), self.yesterday)
            text = f"客户在服务回访中给出{rng.randint(1, 2)}分，反映{rng.choice(LOW_SCORE_ISSUES)}，需网点跟进整改并再次回访。"
            rows.append(self._ticket(cid, "低分回访整改", text, "service", "retail", opened, p.owner))
        return rows

    # ---------------------------------------------------------- policies and surveys

    def _own_rng(self, cid: int, what: str) -> random.Random:
        """A generator of its own per customer: adding these rows leaves every other demo row
        exactly as it was for the same seed."""
        return random.Random(f"{self.seed}-{what}-{cid}")

    def policies(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        """One policy per insurance product held; yearly covers renew on their anniversary, so
        some expire within the next 30 days (the renewal reminders' scenario)."""
        rng = self._own_rng(cid, "policy")
        rows = []
        for k, (product, amount, began, maturity, _rolled) in enumerate(h for h in p.holdings if h[0].type == "insurance"):
            end = maturity or began + dt.timedelta(days=365)
            if product.term_days == 365 and rng.random() < 0.12:
                end = self.today + dt.timedelta(days=rng.randint(1, 30))
                began = end - dt.timedelta(days=365)
            premium = (amount / 10 if product.term_days and product.term_days > 365 else Decimal(rng.choice([98, 198, 298, 498])))
            rows.append(
                {
                    "policy_no": f"P{self.today:%y}{cid:09d}{k}",
                    "customer": cid,
                    "product": self.product_ids[product.code],
                    "premium": _money(premium),
                    "sum_insured": _money(amount * 3 if product.term_days and product.term_days > 365 else Decimal(rng.choice([100000, 200000, 500000]))),
                    "start_date": began,
                    "end_date": end,
                    "renewal_status": "pending",
                }
            )
        return rows

    def surveys(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        """NPS answers from about a quarter of the customers over the last half year; those with
        low service scores mostly answer as detractors (0–6)."""
        rng = self._own_rng(cid, "survey")
        if rng.random() > (0.6 if p.low_scores else 0.25):
            return []
        score = rng.randint(0, 6) if p.low_scores and rng.random() < 0.8 else rng.choices(range(11), [1, 1, 1, 1, 2, 3, 5, 10, 20, 25, 20])[0]
        day = self.today - dt.timedelta(days=rng.randint(1, 180))
        return [{"customer": cid, "survey": "nps", "score": score, "channel": rng.choice(["sms", "wechat", "app", "phone"]), "responded_at": _moment(rng, day, "mobile_app")}]

    def _held(self, p: _Person, kind: str) -> str:
        """The name of a product of this type the customer holds (or one from the shelf)."""
        names = [h[0].name for h in p.holdings if h[0].type == kind]
        return self.rng.choice(names or [x.name for x in DEMO_PRODUCTS if x.type == kind])

    def _ticket(self, cid: int, subject: str, text: str, kind: str, department: str, opened: dt.date, owner: int | None) -> dict[str, Any]:
        rng = self.rng
        opened_at = _moment(rng, opened, "counter")
        age_days = (self.today - opened).days
        status = _weighted(rng, [("resolved", 55), ("closed", 40), ("in_progress", 5)]) if age_days > 15 else _weighted(rng, [("new", 30), ("in_progress", 40), ("resolved", 30)])
        resolved_at = None
        if status in ("resolved", "closed"):
            hours = min(rng.lognormvariate(math.log(40 if kind == "complaint" else 12), 0.9), 24 * 30.0)
            resolved_at = min(opened_at + dt.timedelta(hours=hours), dt.datetime.combine(self.yesterday, dt.time(23, 59), tzinfo=LOCAL_TZ))
            resolved_at = max(resolved_at, opened_at)
        return {
            "subject": subject,
            "customer": cid,
            "category": kind,
            "department": department,
            "status": status,
            "description": text,
            "opened_at": opened_at,
            "resolved_at": resolved_at,
            "owner": owner,
        }

    # ---------------------------------------------------------- consents (PIPL)

    def consents(self, cid: int, p: _Person) -> list[dict[str, Any]]:
        rng, today = self.rng, self.today
        if rng.random() < 0.10 and not p.withdraws:
            return []  # never asked or refused: kept out of marketing lists
        granted = min(max(p.opened, PIPL_EFFECTIVE + dt.timedelta(days=rng.randint(0, 240))), self.yesterday)
        channel = _weighted(rng, [("counter", 40), ("app", 40), ("online", 12), ("paper", 8)])
        expires = granted + dt.timedelta(days=3 * 365) if rng.random() < 0.2 else None  # some have expired by now
        grants: list[tuple[str, dt.date, dt.date | None, float]] = [
            ("marketing", granted, expires, 1.0 if p.withdraws or p.complained_of_marketing else 0.02),
            ("profiling", granted, expires, 0.02),
        ]
        if rng.random() < 0.08:  # asked for with a loan application in the last two years, valid for one
            asked = min(max(p.opened, today - dt.timedelta(days=rng.randint(30, 720))), self.yesterday)
            grants.append(("credit_inquiry", asked, asked + dt.timedelta(days=365), 0.0))
        rows = []
        for purpose, since, until, withdraw_chance in grants:
            withdrawn = None
            if rng.random() < withdraw_chance and since < self.yesterday:
                withdrawn = _moment(rng, _day_between(rng, since + dt.timedelta(days=1), self.yesterday), "mobile_app")
            rows.append(
                {
                    "customer": cid,
                    "purpose": purpose,
                    "granted_at": _moment(rng, since, "counter" if channel in ("counter", "paper") else "mobile_app"),
                    "expires_at": _moment(rng, until, "any") if until else None,
                    "withdrawn_at": withdrawn,
                    "channel": channel,
                    "evidence": f"PIPL-{since:%Y%m%d}-{cid:08d}-{purpose[:3].upper()}",
                }
            )
        return rows


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
    """Customers spread over ``owners`` (RM user id, branch code) with 360-degree history.

    The same ``seed`` and ``today`` give the same data. ``progress(n)`` is called after each
    batch with the number of customers it finished. Returns the rows created per entity."""
    if not owners:
        raise ValueError("the demo needs at least one relationship manager")
    unknown = sorted({code for _, code in owners if code not in branches})
    if unknown:
        raise ValueError(f"owners refer to unknown branch codes: {', '.join(unknown)}")
    if customers < 0 or months < 1:
        raise ValueError("customers must be ≥ 0 and months ≥ 1")
    today = today or dt.datetime.now(LOCAL_TZ).date()
    counts = dict.fromkeys(ENTITIES, 0)
    products, counts["product"] = _seed_products(records)
    demo = _Demo(seed, today, months, branches, owners, products)
    done = 0
    while done < customers:
        n = min(CUSTOMER_BATCH, customers - done)
        people = demo.people(done, n)
        ids = records.bulk_insert(DEMO, "customer", [p.payload for p in people])
        counts["customer"] += len(ids)
        rows: dict[str, list[dict[str, Any]]] = {e: [] for e in ENTITIES[2:]}
        for cid, p in zip(ids, people):
            rows["holding"] += demo.holdings(cid, p)  # first: the others read what is held
            rows["transaction"] += demo.transactions(cid, p)
            rows["interaction"] += demo.interactions(cid, p)  # before tickets: low scores
            rows["opportunity"] += demo.opportunities(cid, p)
            rows["task"] += demo.tasks(cid, p)
            rows["ticket"] += demo.tickets(cid, p)  # before consents: complaints withdraw them
            rows["consent"] += demo.consents(cid, p)
            rows["insurance_policy"] += demo.policies(cid, p)
            rows["survey_response"] += demo.surveys(cid, p)
        for entity, batch in rows.items():
            for k in range(0, len(batch), ROW_BATCH):
                records.bulk_insert(DEMO, entity, batch[k : k + ROW_BATCH])
            counts[entity] += len(batch)
        done += n
        if progress is not None:
            progress(n)
    return counts


# ------------------------------------------------------------------ knowledge base

# (title, category, keywords, body, published): what branch and contact-centre staff look up
KNOWLEDGE_ARTICLES: list[tuple[str, str, str, str, bool]] = [
    ("借记卡挂失与补卡流程", "process", "挂失 补卡 借记卡",
     "借记卡遗失或被盗后，客户可通过客服热线、手机银行或网点办理口头挂失，口头挂失有效期为五天。"
     "有效期内客户须本人持有效身份证件到任一网点办理正式挂失，正式挂失七天后可补领新卡，也可同时申请加急补卡。"
     "代理人办理挂失须出示代理人及客户本人身份证件。挂失后原卡绑定的快捷支付、代扣协议需在新卡到手后重新绑定。", True),
    ("信用卡挂失与盗刷处理", "process", "信用卡 挂失 盗刷",
     "发现信用卡遗失或疑似盗刷，请立即致电信用卡客服热线办理挂失并冻结账户。对不认可的交易，客户须在账单日后三十天内提出争议，"
     "并提供报案回执、本人当日所在地证明等材料。经核实属于盗刷的，按银行卡伪卡交易处理规定办理赔付，处理期间暂停对争议款项计收利息。", True),
    ("手机银行转账限额说明", "system", "转账限额 手机银行 提额",
     "手机银行默认单笔转账限额五万元、单日累计二十万元，使用数字证书或U盾可提高至单笔五十万元、单日一百万元。"
     "客户可在手机银行“安全中心-转账限额”中自行调低限额；调高限额需完成人脸识别，超过默认上限的须本人持身份证件到网点办理。"
     "新设备首次登录后二十四小时内转账限额为五千元，用于防范电信网络诈骗。", True),
    ("跨行转账手续费标准", "product", "手续费 跨行转账 收费标准",
     "通过手机银行、网上银行办理本行及跨行人民币转账免收手续费。柜面跨行转账按金额分档收费：一万元以下每笔五元，"
     "一万元至十万元每笔十元，十万元以上每笔按金额的万分之一收取、最高五十元。加急汇款另收加急费。收费标准以网点公示的服务价目表为准。", True),
    ("小额账户管理费减免政策", "compliance", "小额账户管理费 减免 收费",
     "按照监管要求，我行已对客户指定的一个本行账户（含借记卡）免收小额账户管理费和年费，开户时未指定的，系统默认以最早开立的账户作为免费账户。"
     "客户对扣收有异议的，客户经理应核实是否为客户唯一账户，确属应免未免的，当日发起退费流程并向客户致歉。", True),
    ("理财产品赎回规则", "product", "理财产品 赎回 到账时间",
     "开放式理财产品在开放日十五点前提交的赎回申请按当日净值确认，资金一般于T+1个工作日到账；封闭式理财产品到期前不能赎回，"
     "到期后本金及收益于到期日后三个工作日内返还至签约账户。现金管理类产品支持每日一万元额度内的快速赎回，实时到账。"
     "赎回是否收取赎回费以产品说明书为准，客户经理须在销售时提示。", True),
    ("理财收益与业绩比较基准", "compliance", "业绩比较基准 收益 误导销售",
     "理财产品的业绩比较基准不代表产品的未来表现和实际收益，不构成对收益的承诺。销售人员不得将业绩比较基准表述为预期收益率或保本收益，"
     "不得夸大过往业绩。客户因收益低于业绩比较基准投诉的，应调取双录资料核实销售过程，并向客户说明净值波动原因。", True),
    ("风险测评与产品适当性", "compliance", "风险测评 风险等级 适当性",
     "个人客户首次购买理财、基金等产品前须完成风险承受能力测评，测评结果有效期一年，到期前客户经理应提醒客户重新测评。"
     "我行产品风险等级分为R1至R5，客户只能购买与其风险承受能力相匹配的产品；六十五周岁以上客户购买R3及以上产品须执行双录。"
     "严禁代客户填写问卷或诱导客户修改测评结果。", True),
    ("房贷提前还款办理指南", "process", "房贷 提前还款 违约金",
     "个人住房贷款提前还款须提前十五个工作日通过手机银行或经办网点预约，预约成功后在约定日前将还款资金存入还款账户。"
     "提前还款分为部分提前还款和全部结清，部分提前还款后可选择缩短贷款期限或减少月供。合同约定收取违约金的，违约金一般为提前还款本金的百分之一，"
     "贷款发放满三年后免收。全部结清后请客户到网点申请办理抵押注销。", True),
    ("个人消费贷款常见问题", "faq", "消费贷 额度 用途",
     "个人消费贷款额度根据客户收入、资产和征信情况综合核定，最高五十万元，期限最长五年。贷款资金不得用于购房、证券投资和理财等监管禁止的用途，"
     "银行将进行受托支付或事后用途检查。还款方式为按月等额本息或先息后本，如需提前还款，可通过手机银行自助办理且不收违约金。", True),
    ("大额存单购买与转让", "product", "大额存单 转让 利率",
     "个人大额存单起存金额二十万元，期限有三个月至三年多个档次，利率以发行时公布的为准。大额存单可在手机银行办理转让，"
     "转让价格由买卖双方协商确定；未到期也可办理提前支取，提前支取部分按活期利率计息。购买时须向客户充分提示提前支取规则。", True),
    ("大额存单提前支取利息计算", "faq", "提前支取 利息 大额存单",
     "大额存单提前支取的部分按支取日挂牌活期存款利率计息，未支取部分按原利率继续计息，部分提前支取的次数以产品说明为准。"
     "客户对利息损失有异议的，应出示购买时签署的产品说明及风险提示书，确认已告知提前支取规则；未充分告知的，按投诉处理流程上报。", True),
    ("储蓄国债购买与提前兑取", "product", "储蓄国债 提前兑取",
     "储蓄国债（电子式）每月十日左右发行，客户可通过网点或手机银行购买，每人每期购买上限为五百万元。持有满六个月后可办理提前兑取，"
     "按实际持有时间和相应档次利率计息，并收取本金千分之一的手续费。国债额度紧张，发行首日上午额度常常售罄，请提前提醒有意向的客户。", True),
    ("个人养老金账户开立", "process", "个人养老金 开户 税收优惠",
     "个人养老金资金账户可通过手机银行或网点开立，每人只能开立一个。每年缴存上限一万二千元，缴存额可在个人所得税前扣除，"
     "领取时按百分之三缴纳个人所得税。资金可用于购买储蓄存款、理财产品、商业养老保险和公募基金，达到领取条件前不能提前支取。", True),
    ("保险理赔申请与进度查询", "process", "保险理赔 理赔进度 材料",
     "客户出险后应在四十八小时内报案，并按险种提交理赔申请书、身份证件、银行卡、病历、发票等材料。代理保险产品的理赔由保险公司审核，"
     "银行负责协助收集材料和跟进进度。理赔超过三十天未结案的，客户经理应主动向保险公司催办并将进度告知客户，避免升级为投诉。", True),
    ("代理保险犹豫期与退保", "compliance", "犹豫期 退保 保险",
     "期限一年以上的人身保险产品设有十五天犹豫期，客户在犹豫期内退保的，扣除不超过十元的工本费后退还全部保费。"
     "犹豫期后退保只能领取保单现金价值，可能造成较大损失。销售时须向客户讲解犹豫期和退保规则，并对六十周岁以上客户执行双录。", True),
    ("投诉处理流程与时限", "process", "投诉 工单 处理时限",
     "客户投诉由首问责任人受理并当即登记工单，按投诉内容派发至对应部门：服务类至网点，产品类至零售部，理赔类至理赔岗，风控类至风控部。"
     "一般投诉须在十五日内办结，复杂投诉不超过三十日，处理过程中每五个工作日向客户反馈进度。办结后由客服中心回访，客户不满意的重新派单。", True),
    ("NPS回访与低分整改", "process", "NPS 回访 整改",
     "客户在满意度回访中给出零至六分的，系统自动生成整改工单派给客户经理。客户经理须在四十八小时内回访了解原因，"
     "制定整改措施并在工单中记录；同一客户连续两次低分的，由网点负责人亲自回访。整改完成三十天后进行二次回访。", True),
    ("营销电话与客户授权", "compliance", "营销电话 授权 个人信息保护",
     "根据《个人信息保护法》，向客户进行电话、短信营销须取得客户的营销授权，客户明确拒绝或撤回授权的，应在系统中立即登记并停止营销。"
     "外呼名单由系统按授权状态自动筛选，严禁使用个人手机号对无授权客户营销。客户投诉营销骚扰的，须在一个工作日内处理并反馈。", True),
    ("账户止付与解除", "compliance", "止付 冻结 解除",
     "账户因涉嫌电信网络诈骗、异常交易被风控止付的，客户可携本人身份证件到开户网点说明交易背景，提供相关证明材料，"
     "经核实无异常后解除止付。司法冻结须由有权机关出具解除冻结通知，网点无权代为解除。止付时应通过短信告知客户原因及解除途径。", True),
    ("修改预留手机号", "process", "预留手机号 修改 短信通知",
     "客户更换手机号的，可在手机银行通过人脸识别加原手机验证码自助修改；原手机号已停用的，须本人持身份证件到网点办理。"
     "修改后，账户变动短信通知、动态验证码均发送至新号码。代办不予受理。", True),
    ("个人存款证明开立", "process", "存款证明 签证 冻结",
     "客户办理签证、留学等需要存款证明的，可到网点申请开立，开立时所证明的存款将被冻结至证明有效期结束，期间不能支取。"
     "每份存款证明收费二十元，同时开具多份的每份另收十元。可开立中英文版本。", True),
    ("信用卡年费规则", "product", "信用卡 年费 减免",
     "普卡、金卡首年免年费，当年刷卡满六次可免次年年费；白金卡年费按卡种收取，满足消费金额条件可减免。客户对年费扣收有异议的，"
     "应核实办卡时告知的年费政策，属于销售人员误导的，为客户办理年费退还并在工单中记录。", True),
    ("信用卡分期手续费说明", "product", "分期 手续费 信用卡",
     "信用卡账单分期和消费分期按期收取分期手续费，不同期数费率不同，须在办理前向客户展示年化利率。提前结清分期的，"
     "剩余未收的手续费是否收取以分期协议为准。不得仅宣传每期费率而回避年化利率。", True),
    ("手机银行登录与人脸识别常见问题", "system", "手机银行 登录 人脸识别",
     "手机银行提示“系统繁忙”时，请客户升级到最新版本并切换网络后重试；连续五次密码错误将锁定二十四小时，可通过忘记密码自助重置。"
     "人脸识别失败多因光线或佩戴口罩，客户可改用短信验证码加交易密码认证。仍无法解决的，请转客服热线技术支持。", True),
    ("网点排队分流服务规范", "process", "排队 分流 大堂经理",
     "高峰时段大堂经理应主动询问客户办理的业务，引导可在自助设备、手机银行办理的客户分流；排队超过三十分钟须增开窗口。"
     "对老年客户、残障客户提供优先服务和专人引导。客户因排队时间长不满的，应致歉并说明分流措施。", True),
    ("客户资产配置检视话术", "faq", "资产配置 检视 话术",
     "资产配置检视每半年至少一次。建议以客户的目标和期限为起点：短期流动性资金配置现金管理类产品，中期配置固收类理财和大额存单，"
     "长期资金视风险承受能力配置基金定投和保险。检视时回顾上次建议的执行情况，避免频繁推荐产品。", True),
    ("反洗钱客户身份识别要点", "compliance", "反洗钱 身份识别 尽职调查",
     "开立账户、办理五万元以上现金存取或一次性金融服务时，须核对客户有效身份证件并留存影印件。发现客户身份信息过期的，应提醒客户更新，"
     "逾期未更新的按规定中止部分业务。对可疑交易应在五个工作日内提交可疑交易报告，不得向客户泄露。", True),
    ("基金定投开通与终止", "product", "基金定投 开通 终止",
     "客户可通过手机银行选择基金、扣款日期和金额开通定投，每期最低一百元。连续三期扣款失败的，定投协议自动终止。"
     "终止定投不影响已购份额，赎回份额按基金赎回规则办理。", True),
    ("理财到期资金续作提醒（草稿）", "process", "到期 续作 提醒",
     "理财产品到期前十五天，系统将生成到期提醒任务派给客户经理。客户经理应联系客户确认到期资金安排，有续作意向的推荐同风险等级产品。"
     "本文待零售部审定后发布。", False),
]


def seed_knowledge_base(records: RecordService, owner: int | None = None) -> int:
    """The demo knowledge base (~30 articles on products, processes, compliance and FAQs;
    one an unpublished draft), maintained by ``owner``. Titles already there are skipped, so
    running it twice adds nothing. Returns the number of articles created."""
    have: set[str] = set()
    cursor = None
    while True:
        page = records.list(DEMO, "knowledge_article", fields=["title"], limit=500, cursor=cursor)
        have |= {str(r["title"]) for r in page.items}
        cursor = page.next_cursor
        if cursor is None:
            break
    rows = [
        {"title": title, "category": category, "keywords": keywords, "body": body, "published": published, "owner": owner}
        for title, category, keywords, body, published in KNOWLEDGE_ARTICLES
        if title not in have
    ]
    if rows:
        records.bulk_insert(DEMO, "knowledge_article", rows)
    return len(rows)


# ------------------------------------------------------------------ acquisition costs

# Illustrative cost of acquiring one customer through each channel (CNY): outlets and events
# cost the most, referrals and the app the least (channel_cost rows feed /analytics/channels).
CHANNEL_UNIT_COST = {"outlet": 420, "event": 350, "partner": 260, "online": 160, "mobile_app": 90, "referral": 60}


def seed_channel_costs(records: RecordService, *, months: int = 24, today: dt.date | None = None, seed: int = 20261128) -> int:
    """Monthly acquisition costs (``channel_cost``) for the ``months`` months up to ``today``:
    per channel, the customers it brought in that month (counted in SQL) times its unit cost,
    ±20% noise (no row for a month without acquisitions). Months already booked for a channel
    are left alone. Returns the rows created."""
    from sqlalchemy import String, cast, func, select

    today = today or dt.datetime.now(LOCAL_TZ).date()
    first = today.replace(day=1)
    index = first.year * 12 + first.month - 1 - (months - 1)
    month_days = [dt.date((index + k) // 12, (index + k) % 12 + 1, 1) for k in range(months)]
    view = records.view(DEMO, "customer")
    t = view.table
    opened, channel = t.c.opened_on, t.c.acquisition_channel
    month_key = func.substr(cast(opened, String(10)), 1, 7)  # 'YYYY-MM' on both databases
    stmt = (
        select(channel, month_key.label("m"), func.count().label("n"))
        .where(view.scope(), opened >= month_days[0], opened <= today, channel.is_not(None))
        .group_by(channel, month_key)
    )
    with records.runtime.engine.connect() as conn:
        acquired = {(r[0], r[1]): int(r[2]) for r in conn.execute(stmt)}
    booked = records.list(DEMO, "channel_cost", filter={"field": "month", "op": "gte", "value": month_days[0].isoformat()}, limit=500, fields=["channel", "month"])
    have = {(r["channel"], r["month"]) for r in booked.items}
    rng = random.Random(seed)
    rows = []
    for day in month_days:
        for ch, unit in CHANNEL_UNIT_COST.items():
            if (ch, day.isoformat()) in have:
                continue
            n = acquired.get((ch, day.isoformat()[:7]), 0)
            if n:
                cost = n * unit * rng.uniform(0.8, 1.2)
                rows.append({"channel": ch, "month": day.isoformat(), "cost": _money(cost), "note": "演示数据"})
    if rows:
        records.bulk_insert(DEMO, "channel_cost", rows)
    return len(rows)
