"""Demo data of the insurance vertical: policies with payment cycles, beneficiaries,
purchase-intent records and claims in every stage, on top of the core demo.

What it makes, deterministically from ``ctx.seed`` and sized by the customers there are:

- the core demo's policies (one per insurance product held) get the fields the package adds —
  type, payment frequency, next due date, status, channel, insured person — through ordinary
  updates (validated, audited);
- about one customer in five gets a new policy (medical, accident, critical illness, life,
  annuity, property), with due dates spread so that some premiums fall due within the reminder
  window, some are in their 60-day grace period and a few have lapsed;
- beneficiaries for life, critical illness, annuity and accident cover (a few whose shares do
  not add up, for the share check), a purchase-intent record for most policies (a few missing
  or without the risk disclosure, for the compliance gap report), and claims in every stage of
  the claim path, the core demo's claim tickets linked to the customer's policy;
- tags a rule would have set on live data (理赔中, 保费逾期) and a few the RM sets by hand
  (续保意愿高/低).

Everything goes through the records service as the system principal ``demo``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

from faker import Faker

from ..demo import make_id_number, make_mobile
from ..fieldtypes import LOCAL_TZ
from ..security.principal import Principal
from . import DemoContext, customers_of

__all__ = ["seed_demo"]

DEMO = Principal.system("demo")
CENT = Decimal("0.01")
BATCH = 2000

# policy type → (product codes, weight of new policies, short-term renewable)
POLICY_TYPES: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "medical": (("INS-MED",), 30, True),
    "accident": (("INS-ACC",), 20, True),
    "critical_illness": (("INS-CI",), 20, False),
    "life": (("INS-LIFE", "INS-TERM"), 10, False),
    "annuity": (("INS-ANN",), 10, False),
    "property": (("INS-HOME",), 10, True),
}
PRODUCT_TYPE = {code: kind for kind, (codes, _, _) in POLICY_TYPES.items() for code in codes}
MONTHS = {"annual": 12, "semiannual": 6, "quarterly": 3, "monthly": 1}
CLAIM_TYPES = {
    "medical": ["medical", "hospital_allowance"],
    "accident": ["accident_disability", "medical"],
    "critical_illness": ["critical_illness"],
    "life": ["death"],
    "annuity": ["death"],
    "property": ["property_loss"],
}
CLAIM_SUBJECTS = {
    "medical": ("住院医疗费用理赔", "客户因{illness}住院治疗，产生医疗费用约{amount}元，已提交住院病历、费用清单及发票。"),
    "hospital_allowance": ("住院津贴理赔", "客户住院{days}天，申请住院津贴，已提交出院小结。"),
    "accident_disability": ("意外伤残理赔", "客户{date}因交通事故受伤，经鉴定构成伤残，申请意外伤残保险金，已提交伤残鉴定书。"),
    "critical_illness": ("重大疾病理赔", "客户确诊{illness}，申请重大疾病保险金，已提交诊断证明及病理报告。"),
    "death": ("身故保险金理赔", "被保险人身故，受益人申请身故保险金，已提交死亡证明及受益人身份证明。"),
    "property_loss": ("家庭财产损失理赔", "客户住宅因{cause}受损，申请家庭财产损失赔偿，已提交现场照片及维修报价。"),
}
ILLNESSES = ["急性阑尾炎", "肺炎", "腰椎间盘突出", "胆结石", "甲状腺结节", "冠心病"]
CRITICAL = ["恶性肿瘤", "急性心肌梗塞", "脑中风后遗症"]
PROPERTY_CAUSES = ["水管爆裂", "暴雨倒灌", "邻居家漏水"]
# the claim path's states, with how many of every hundred demo claims are in each
CLAIM_STAGES = [("new", 10), ("in_progress", 15), ("claim_review", 20), ("claim_decision", 10), ("claim_approved", 10), ("closed", 28), ("claim_rejected", 7)]
OPEN_CLAIM = {"new", "in_progress", "claim_review", "claim_decision", "claim_approved"}


def _money(value: float | Decimal) -> str:
    return str(Decimal(value).quantize(CENT, ROUND_HALF_UP))


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month + 1, d)
        except ValueError:
            continue
    raise ValueError(day)  # unreachable: every month has a 28th


def _moment(rng: random.Random, day: dt.date) -> dt.datetime:
    """A Beijing-time moment in office hours on ``day``."""
    return dt.datetime(day.year, day.month, day.day, rng.randint(9, 16), rng.randrange(60), rng.randrange(60), tzinfo=LOCAL_TZ)


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([p[0] for p in pairs], [p[1] for p in pairs])[0]


def _all(ctx: DemoContext, entity: str, fields: list[str], flt: Any = None) -> list[dict[str, Any]]:
    """Every record of ``entity`` (as the system sees it), page by page."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = ctx.records.list(DEMO, entity, filter=flt, fields=fields, limit=500, cursor=cursor, sort="id")
        out += page.items
        cursor = page.next_cursor
        if cursor is None:
            return out


def _products(ctx: DemoContext) -> dict[str, int]:
    """Insurance product code → id (the package's seed and the core demo's shelf)."""
    rows = _all(ctx, "product", ["code"], {"field": "type", "op": "eq", "value": "insurance"})
    return {str(r["code"]): int(r["id"]) for r in rows}


class _Schedule:
    """Premium due dates and status of one policy at ``today``."""

    def __init__(self, rng: random.Random, today: dt.date, start: dt.date, end: dt.date | None, frequency: str, payment_years: int | None) -> None:
        self.due: dt.date | None = None
        self.status = "in_force"
        if end is not None and end < today:
            self.status = "matured"
            return
        if frequency == "single":
            return
        months = MONTHS[frequency]
        last_due = _add_months(start, 12 * payment_years) if payment_years else end
        k = 1
        due = _add_months(start, months)
        while due <= today:  # the premium due today counts as paid; the next one is ahead
            k += 1
            due = _add_months(start, months * k)
        if (last_due is not None and due >= last_due) or (end is not None and due > end):
            return  # paid up: no premium left to pay
        roll = rng.random()
        if roll < 0.10 and k > 1:  # the last premium was not paid: in the grace period
            earlier = _add_months(start, months * (k - 1))
            if (today - earlier).days <= 60:
                self.due, self.status = earlier, "grace"
                return
        if roll > 0.975 and k > 2:  # unpaid for more than 60 days: lapsed
            earlier = _add_months(start, months * (k - 2)) if months < 3 else _add_months(start, months * (k - 1))
            if (today - earlier).days > 60:
                self.due, self.status = earlier, "lapsed"
                return
        self.due = due


class _Maker:
    def __init__(self, ctx: DemoContext, products: dict[str, int]) -> None:
        self.ctx = ctx
        self.today = ctx.today
        self.rng = ctx.rng("insurance")
        self.fake = Faker("zh_CN")
        self.fake.seed_instance(ctx.seed + 8)
        self.products = products
        self.used_ids: set[str] = set()

    def person(self, age: int, male: bool | None = None) -> tuple[str, str, str]:
        """(name, ID number, mobile) of a made-up person of about ``age``."""
        rng = self.rng
        male = rng.random() < 0.5 if male is None else male
        birth = self.today - dt.timedelta(days=max(age, 0) * 365 + rng.randrange(365))
        id_number = make_id_number(rng, birth, male)
        while id_number in self.used_ids:
            id_number = make_id_number(rng, birth, male)
        self.used_ids.add(id_number)
        name = self.fake.last_name() + (self.fake.first_name_male() if male else self.fake.first_name_female())
        return name, id_number, make_mobile(rng)

    def insured(self) -> dict[str, Any]:
        relation = _weighted(self.rng, [("self", 70), ("spouse", 12), ("child", 12), ("parent", 6)])
        if relation == "self":
            return {"insured_relation": "self"}
        age = {"spouse": 40, "child": 10, "parent": 68}[relation] + self.rng.randint(-5, 5)
        name, id_number, _ = self.person(age)
        return {"insured_relation": relation, "insured_name": name, "insured_id_number": id_number}

    def terms(self, kind: str, start: dt.date | None = None, end: dt.date | None = None, code: str = "") -> dict[str, Any]:
        """Cover, premium and payment terms of a policy of ``kind`` (product ``code``): ``start``
        and ``end`` are the cover's when known (the core demo's policies), else chosen here."""
        rng, today = self.rng, self.today
        short = POLICY_TYPES[kind][2]
        if short:
            start = start or today - dt.timedelta(days=rng.randint(0, 364))
            end = end or start + dt.timedelta(days=365)
            frequency = "monthly" if kind == "medical" and rng.random() < 0.3 else "annual"
            years = None
            premium = Decimal(rng.choice([198, 298, 398, 598, 898, 1280]))
            insured = {"medical": 2_000_000, "accident": 500_000, "property": 300_000}[kind]
            sum_insured = Decimal(insured)
        else:
            start = start or today - dt.timedelta(days=rng.randint(20, 3650))
            if kind == "annuity":
                end, years = end or start + dt.timedelta(days=3650), rng.choice([3, 5, 10])
                frequency = "single" if rng.random() < 0.3 else "annual"
                premium = Decimal(rng.choice([10_000, 20_000, 50_000, 100_000]))
                sum_insured = premium * (years if frequency != "single" else 1)
            elif kind == "life":
                end = end or (_add_months(start, 240) if code == "INS-TERM" else None)  # term life, or whole life
                years = rng.choice([10, 20])
                frequency = _weighted(rng, [("annual", 75), ("semiannual", 10), ("monthly", 15)])
                premium = Decimal(rng.choice([3_600, 6_800, 12_000, 25_000]))
                sum_insured = Decimal(rng.choice([500_000, 1_000_000, 2_000_000]))
            else:  # critical illness, to age 70 or so
                end = end or start + dt.timedelta(days=365 * 30)
                years = rng.choice([10, 20, 30])
                frequency = _weighted(rng, [("annual", 70), ("semiannual", 10), ("quarterly", 5), ("monthly", 15)])
                premium = Decimal(rng.choice([4_800, 7_200, 9_600, 15_000]))
                sum_insured = Decimal(rng.choice([300_000, 500_000, 800_000]))
        if frequency == "single":
            years = None
        schedule = _Schedule(rng, today, start, end, frequency, years)
        return {
            "policy_type": kind,
            "payment_frequency": frequency,
            "payment_years": years,
            "renewal_cycle_months": 12 if short else None,
            "next_premium_due": schedule.due,
            "policy_status": schedule.status,
            "channel": _weighted(rng, [("bancassurance", 50), ("agent", 20), ("online", 20), ("telemarketing", 10)]),
            "start_date": start,
            "end_date": end,
            "premium": _money(premium),
            "sum_insured": _money(sum_insured),
            **self.insured(),
        }

    def beneficiaries(self, policy: dict[str, Any]) -> list[dict[str, Any]]:
        """Named beneficiaries of a policy (none: the statutory heirs), shares per order."""
        rng = self.rng
        if policy["policy_type"] not in ("life", "critical_illness", "annuity", "accident") or rng.random() < 0.3:
            return []
        splits = _weighted(rng, [([Decimal(100)], 45), ([Decimal(50), Decimal(50)], 30), ([Decimal(60), Decimal(40)], 15), ([Decimal(40), Decimal(30), Decimal(30)], 10)])
        if rng.random() < 0.04:  # entered wrongly: the share check lists it
            splits = [s - Decimal(10) if i == 0 else s for i, s in enumerate(splits)]
        rows = [(1, share) for share in splits]
        if rng.random() < 0.2:
            rows.append((2, Decimal(100)))
        out = []
        for order, share in rows:
            relation = _weighted(rng, [("spouse", 40), ("child", 35), ("parent", 20), ("sibling", 5)])
            age = {"spouse": 42, "child": 14, "parent": 70, "sibling": 40}[relation] + rng.randint(-6, 6)
            name, id_number, mobile = self.person(age)
            out.append(
                {
                    "policy": policy["id"],
                    "customer": policy["customer"],
                    "name": name,
                    "id_number": id_number,
                    "mobile": mobile if relation != "child" else None,
                    "relation": relation,
                    "benefit_order": order,
                    "share_pct": _money(share),
                }
            )
        return out

    def intent_record(self, policy: dict[str, Any], owner: int | None) -> dict[str, Any] | None:
        """The purchase-intent recording of a sale (a few are missing or incomplete)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.05 or owner is None or policy.get("start_date") is None:
            return None  # never recorded: the compliance gap report lists the policy
        start = policy["start_date"]
        start = dt.date.fromisoformat(start) if isinstance(start, str) else start
        day = start - dt.timedelta(days=rng.randint(1, 10))
        suitability = _weighted(rng, [("matched", 94), ("mismatch_confirmed", 4), ("not_assessed", 2)])
        digest = hashlib.sha256(f"{self.ctx.seed}:{policy['policy_no']}:recording".encode()).hexdigest()
        return {
            "policy": policy["id"],
            "customer": policy["customer"],
            "recorded_at": _moment(rng, min(day, self.today)),
            "channel": policy.get("channel") or "bancassurance",
            "recording_ref": f"SL{day:%Y%m%d}-{policy['policy_no']}",
            "recording_sha256": digest,
            "risk_disclosed": roll >= 0.08,  # 3% recorded without the risk disclosure confirmed
            "terms_explained": True,
            "cooling_off_explained": rng.random() < 0.97,
            "suitability_result": suitability,
            "customer_statement": "本人已了解产品风险，坚持投保，后果自行承担。" if suitability == "mismatch_confirmed" else None,
            "agent": owner,
        }

    def claim(self, policy: dict[str, Any], n: int) -> dict[str, Any]:
        """A claim ticket on ``policy`` in a stage of the claim path."""
        rng, today = self.rng, self.today
        kind = rng.choice(CLAIM_TYPES[policy["policy_type"]])
        stage = _weighted(rng, CLAIM_STAGES)
        age = {"new": (0, 2), "in_progress": (1, 6), "claim_review": (3, 25), "claim_decision": (10, 35)}.get(stage, (15, 150))
        opened_day = today - dt.timedelta(days=rng.randint(*age))
        opened = _moment(rng, opened_day)
        claimed = Decimal(rng.randrange(3, 80) * 1000) if kind in ("medical", "hospital_allowance", "property_loss") else Decimal(policy["sum_insured"])
        subject, text = CLAIM_SUBJECTS[kind]
        slots = {
            "illness": rng.choice(CRITICAL if kind == "critical_illness" else ILLNESSES),
            "amount": f"{claimed:,.0f}",
            "days": rng.randint(3, 15),
            "date": f"{opened_day - dt.timedelta(days=rng.randint(3, 20)):%Y年%m月%d日}",
            "cause": rng.choice(PROPERTY_CAUSES),
        }
        row: dict[str, Any] = {
            "subject": subject,
            "customer": policy["customer"],
            "category": "claim",
            "department": "claims",
            "status": stage,
            "description": text.format(**slots),
            "opened_at": opened,
            "owner": None,
            "policy": policy["id"],
            "claim_no": f"CL{opened_day:%y%m%d}{n:05d}",
            "claim_type": kind,
            "incident_date": opened_day - dt.timedelta(days=rng.randint(1, 20)),
            "claimed_amount": _money(claimed),
        }
        if stage in ("claim_approved", "closed"):
            row["approved_amount"] = _money(claimed * Decimal(rng.choice(["1", "1", "0.9", "0.8"])))
        if stage in ("closed", "claim_rejected"):
            hours = rng.uniform(24 * 3, 24 * 40)
            resolved = opened + dt.timedelta(hours=hours)
            latest = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(17, 0), tzinfo=LOCAL_TZ)
            row["resolved_at"] = max(opened, min(resolved, latest))
        return row


def seed_demo(ctx: DemoContext) -> dict[str, int]:
    """Create the insurance demo records; returns how many were created per entity."""
    records = ctx.records
    products = _products(ctx)
    make = _Maker(ctx, products)
    rng = make.rng
    customers = customers_of(ctx)
    owner_of = {int(c["id"]): c["owner"] for c in customers}
    counts = {"insurance_policy": 0, "beneficiary": 0, "purchase_intent_record": 0, "ticket": 0}

    # the core demo's policies: the fields the package adds, kept consistent with their cover
    fields = ["policy_no", "customer", "product", "start_date", "end_date", "premium", "sum_insured", "policy_type"]
    existing = [p for p in _all(ctx, "insurance_policy", fields) if not p.get("policy_type")]
    code_of = {v: k for k, v in products.items()}
    for p in existing:
        code = code_of.get(p.get("product") or 0, "")
        terms = make.terms(PRODUCT_TYPE.get(code, "accident"), _date(p.get("start_date")), _date(p.get("end_date")), code)
        payload = {k: v for k, v in terms.items() if k not in ("start_date", "end_date", "premium", "sum_insured")}
        records.update(DEMO, "insurance_policy", p["id"], payload, p["version"])
        p.update(payload)

    # new policies for about a fifth of the customers
    weights = [(kind, spec[1]) for kind, spec in POLICY_TYPES.items()]
    new_rows: list[dict[str, Any]] = []
    for c in customers:
        if rng.random() >= 0.2:
            continue
        for k in range(1 if rng.random() < 0.85 else 2):
            kind = _weighted(rng, weights)
            code = rng.choice([x for x in POLICY_TYPES[kind][0] if x in products] or [""])
            if not code:
                continue
            terms = make.terms(kind, code=code)
            new_rows.append({"policy_no": f"IP{ctx.today:%y}{int(c['id']):09d}{k}", "customer": c["id"], "product": products[code], "renewal_status": "pending", **terms})
    for i in range(0, len(new_rows), BATCH):
        chunk = new_rows[i : i + BATCH]
        for row, rid in zip(chunk, records.bulk_insert(DEMO, "insurance_policy", chunk)):
            row["id"] = rid
    counts["insurance_policy"] = len(new_rows)

    policies = [p for p in existing if p.get("policy_type")] + new_rows
    beneficiaries = [b for p in policies for b in make.beneficiaries(p)]
    intents = [r for p in policies if (r := make.intent_record(p, owner_of.get(int(p["customer"])))) is not None]
    for entity, rows in (("beneficiary", beneficiaries), ("purchase_intent_record", intents)):
        for i in range(0, len(rows), BATCH):
            records.bulk_insert(DEMO, entity, rows[i : i + BATCH])
        counts[entity] = len(rows)

    # claims: new ones in every stage, and the core demo's claim tickets tied to a policy
    by_customer: dict[int, list[dict[str, Any]]] = {}
    for p in policies:
        by_customer.setdefault(int(p["customer"]), []).append(p)
    claimable = [p for p in policies if p.get("policy_status") in ("in_force", "grace", "matured") and p.get("sum_insured")]
    wanted = max(8, round(len(claimable) * 0.04)) if claimable else 0
    chosen = rng.sample(claimable, min(wanted, len(claimable)))
    claims = [make.claim(p, n) for n, p in enumerate(chosen, 1)]
    if claims:
        records.bulk_insert(DEMO, "ticket", claims)
    counts["ticket"] = len(claims)
    core_claims = _all(ctx, "ticket", ["customer", "status", "policy"], {"and": [{"field": "category", "op": "eq", "value": "claim"}, {"field": "policy", "op": "is_null", "value": True}]})
    for n, t in enumerate(core_claims, len(claims) + 1):
        own = by_customer.get(int(t["customer"]))
        if not own:
            continue
        p = rng.choice(own)
        amount = Decimal(rng.randrange(5, 200) * 1000)
        values: dict[str, Any] = {
            "policy": p["id"],
            "claim_type": rng.choice(CLAIM_TYPES[p.get("policy_type") or "accident"]),
            "claim_no": f"CL{ctx.today:%y%m%d}{n:05d}",
            "claimed_amount": _money(amount),
        }
        if t["status"] in ("resolved", "closed"):
            values["approved_amount"] = _money(amount * Decimal("0.9"))
        records.update(DEMO, "ticket", t["id"], values, t["version"])

    # tags a rule sets on live data, and the renewal intent RMs record by hand
    open_claims = {int(c["customer"]) for c in claims if c["status"] in OPEN_CLAIM}
    in_grace = {int(p["customer"]) for p in policies if p.get("policy_status") == "grace"}
    for cid in sorted(open_claims):
        records.add_tag(DEMO, "customer", cid, "理赔中", source="rule")
    for cid in sorted(in_grace):
        records.add_tag(DEMO, "customer", cid, "保费逾期", source="rule")
    soon = ctx.today + dt.timedelta(days=60)
    renewing = sorted({int(p["customer"]) for p in policies if p.get("renewal_cycle_months") and (end := _date(p.get("end_date"))) is not None and end <= soon})
    for cid in renewing:
        roll = rng.random()
        if roll < 0.4:
            records.add_tag(DEMO, "customer", cid, "续保意愿高")
        elif roll < 0.55:
            records.add_tag(DEMO, "customer", cid, "续保意愿低")
    return counts


def _date(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
