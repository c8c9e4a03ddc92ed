"""Demo data of the bank template (``metadata/verticals/bank``), on top of the core demo.

What the package's scenarios need to show something on the first page:

- loan products carry their kind (the package seeds LN-MORT/LN-CONS/LN-BIZ; a core demo that
  created LN-MORT and LN-CONS first gets their ``loan_kind`` filled in);
- about 14% of customers hold a mortgage and 5% a consumer loan (``holding`` rows whose amount
  is the outstanding balance — a liability, not part of the AUM); those of them without a wealth
  product form the 房贷无理财 segment once the jobs pass runs its trigger;
- every borrower, and a quarter of the other customers, has a credit report summary
  (``credit_report``: score, total debt, arrears, inquiries), consistent with their repayments;
- every loan has its last 12 monthly instalments and the next one (``repayment_record``); about
  8% of borrowers paid some instalments late, and a third of those still owe the latest one
  (status ``overdue``: the 逾期客户 tag and the overdue flag of their loan applications);
- the customers with the largest AUM (private banking, at least 3) have two allocation reviews
  (``asset_allocation``, five asset classes, target ± 5 points), the latest within three weeks;
  about a third of them have drifted outside the range (a rebalancing task on the next pass);
- a few loan applications in every state of the bank's ``loan_approval`` flow, linked to the
  borrower's credit report (the flow and the overdue-flag trigger pick them up).

Everything is written through the records service as the system principal (validation,
encryption, audit) and is deterministic in ``ctx.seed``.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select

from ..security.principal import Principal
from . import DemoContext, customers_of

__all__ = ["seed_demo", "LOAN_PRODUCTS", "ASSET_CLASSES", "TARGET_MIX"]

DEMO = Principal.system("demo")
CENT = Decimal("0.01")
BATCH = 2000
MONTHS = 12  # repayment history per loan

# code → (name, loan kind, term in days, yearly rate %), as the package seeds them
LOAN_PRODUCTS: dict[str, tuple[str, str, int, str]] = {
    "LN-MORT": ("个人住房按揭贷款", "mortgage", 9125, "3.0500"),
    "LN-CONS": ("个人消费贷款", "consumer", 1095, "3.4000"),
    "LN-BIZ": ("个人经营贷款", "business", 1095, "3.2000"),
}
ASSET_CLASSES = ("cash", "fixed_income", "equity", "alternative", "insurance")
# strategic mix (%) per risk preference, in ASSET_CLASSES order
TARGET_MIX: dict[str, tuple[int, int, int, int, int]] = {
    "conservative": (15, 60, 5, 5, 15),
    "moderately_conservative": (10, 55, 15, 5, 15),
    "balanced": (10, 40, 30, 10, 10),
    "growth": (5, 30, 45, 12, 8),
    "aggressive": (5, 20, 55, 15, 5),
}
BAND = Decimal(5)  # the allowed drift either side of the target, in points
LOAN_PURPOSES = {
    "LN-MORT": ["购买首套自住住房", "购买改善型自住住房"],
    "LN-CONS": ["家庭装修", "购买家用汽车", "子女教育支出", "家电家具购置"],
    "LN-BIZ": ["个体工商户经营周转", "小微企业主采购备货", "门店装修扩张"],
}
STATES = ("draft", "branch_review", "risk_review", "committee_review", "approved", "rejected")


def _money(value: float | Decimal) -> str:
    return str(Decimal(value).quantize(CENT, ROUND_HALF_UP))


def _pct(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, min(day.day, 28))


def _installment(balance: Decimal, yearly_pct: str, months: int) -> Decimal:
    """The monthly payment of an annuity loan (equal instalments of principal and interest)."""
    r = Decimal(yearly_pct) / Decimal(1200)
    factor = (1 + r) ** months
    return (balance * r * factor / (factor - 1)).quantize(CENT, ROUND_HALF_UP)


def _insert(ctx: DemoContext, entity: str, rows: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for i in range(0, len(rows), BATCH):
        ids += ctx.records.bulk_insert(DEMO, entity, rows[i : i + BATCH])
    return ids


def _loan_products(ctx: DemoContext) -> tuple[dict[str, int], int]:
    """Code → id of the loan products, each with its ``loan_kind``; returns how many were created."""
    codes = list(LOAN_PRODUCTS)
    page = ctx.records.list(DEMO, "product", filter={"field": "code", "op": "in", "value": codes}, limit=len(codes), fields=["code", "loan_kind"])
    ids: dict[str, int] = {}
    for row in page.items:
        code = str(row["code"])
        ids[code] = int(row["id"])
        kind = LOAN_PRODUCTS[code][1]
        if row.get("loan_kind") != kind:  # created by the core demo before the package was published
            current = ctx.records.get(DEMO, "product", row["id"], fields=["loan_kind"])
            ctx.records.update(DEMO, "product", row["id"], {"loan_kind": kind}, current["version"])
    missing = [c for c in codes if c not in ids]
    payloads = [
        {"code": c, "name": LOAN_PRODUCTS[c][0], "type": "loan", "loan_kind": LOAN_PRODUCTS[c][1], "term_days": LOAN_PRODUCTS[c][2],
         "expected_yield": LOAN_PRODUCTS[c][3], "on_sale": True}
        for c in missing
    ]
    for code, rid in zip(missing, _insert(ctx, "product", payloads)):
        ids[code] = rid
    return ids, len(missing)


def _risk_preferences(ctx: DemoContext, ids: list[int]) -> dict[int, str]:
    snap = ctx.records.runtime.cached_snapshot()
    t = snap.tables["customer"]
    out: dict[int, str] = {}
    with ctx.records.runtime.engine.connect() as conn:
        for i in range(0, len(ids), 1000):
            for r in conn.execute(select(t.c.id, t.c.risk_preference).where(t.c.id.in_(ids[i : i + 1000]))):
                out[int(r.id)] = r.risk_preference or "balanced"
    return out


class _Borrower:
    """One loan of a customer, with what its repayment history did."""

    def __init__(self, customer: dict[str, Any], code: str, balance: Decimal, start: dt.date, term_months: int, account: str) -> None:
        self.customer = customer
        self.code = code
        self.balance = balance
        self.start = start
        self.term_months = term_months
        self.account = account
        self.late_days: list[int] = []  # days late of each instalment paid late
        self.owing = False  # the latest due instalment is still unpaid


def _loans(ctx: DemoContext, customers: list[dict[str, Any]], products: dict[str, int]) -> tuple[list[_Borrower], list[dict[str, Any]]]:
    """Who holds which loan (mortgages ~14%, consumer loans ~5%), and their holding rows."""
    rng = ctx.rng("bank:loans")
    today = ctx.today
    borrowers: list[_Borrower] = []
    for c in customers:
        draw = rng.random()
        if draw < 0.14:
            years = rng.choice((20, 25, 30))
            start = today - dt.timedelta(days=rng.randint(200, 3650))
            original = Decimal(rng.randint(60, 450) * 10_000)
            elapsed = (today - start).days / (years * 365)
            balance = (original * Decimal(str(1 - elapsed * 0.8))).quantize(CENT, ROUND_HALF_UP)
            borrowers.append(_Borrower(c, "LN-MORT", balance, start, years * 12, f"{rng.randrange(10**18, 10**19)}"))
        elif draw < 0.19:
            start = today - dt.timedelta(days=rng.randint(60, 700))
            balance = Decimal(rng.randint(3, 40) * 5_000)
            borrowers.append(_Borrower(c, "LN-CONS", balance, start, 36, f"{rng.randrange(10**18, 10**19)}"))
    holdings = [
        {
            "customer": b.customer["id"],
            "product": products[b.code],
            "amount": _money(b.balance),
            "start_date": b.start,
            "maturity_date": _add_months(b.start, b.term_months),
        }
        for b in borrowers
    ]
    return borrowers, holdings


def _repayments(ctx: DemoContext, borrowers: list[_Borrower]) -> list[dict[str, Any]]:
    """The last 12 instalments and the next one of every loan; some paid late, some still owed."""
    rng = ctx.rng("bank:repayments")
    today = ctx.today
    rows: list[dict[str, Any]] = []
    late = set(rng.sample(range(len(borrowers)), max(1, round(len(borrowers) * 0.08)))) if borrowers else set()
    for i, b in enumerate(borrowers):
        rate = LOAN_PRODUCTS[b.code][3]
        remaining = max(12, b.term_months - max(0, (today - b.start).days // 30))
        due_amount = _installment(b.balance, rate, remaining)
        day = min(b.start.day, 28)
        this_month = dt.date(today.year, today.month, day)
        next_due = this_month if this_month > today else _add_months(this_month, 1)
        dues = [d for d in (_add_months(next_due, -k) for k in range(MONTHS, 0, -1)) if d > b.start]
        late_slots: set[int] = set()
        if i in late and dues:
            late_slots = set(rng.sample(range(len(dues)), min(len(dues), rng.randint(1, 3))))
            b.owing = rng.random() < 0.35 and (today - dues[-1]).days >= 5
        for k, due in enumerate(dues):
            last = k == len(dues) - 1
            if last and b.owing:
                days = (today - due).days
                b.late_days.append(days)
                rows.append({"status": "overdue", "overdue_days": days, "paid_on": None, "amount_paid": None, "due_date": due})
            elif k in late_slots:
                days = min(rng.randint(3, 40), max(1, (today - due).days))
                b.late_days.append(days)
                rows.append({"status": "paid", "overdue_days": days, "paid_on": due + dt.timedelta(days=days), "amount_paid": _money(due_amount), "due_date": due})
            else:
                paid = due - dt.timedelta(days=rng.randint(0, 3))
                rows.append({"status": "paid", "overdue_days": 0, "paid_on": max(paid, b.start), "amount_paid": _money(due_amount), "due_date": due})
            rows[-1].update(customer=b.customer["id"], loan_account=b.account, amount_due=_money(due_amount))
        rows.append(
            {"customer": b.customer["id"], "loan_account": b.account, "due_date": next_due, "amount_due": _money(due_amount), "status": "pending", "overdue_days": 0}
        )
    return rows


def _credit_reports(ctx: DemoContext, customers: list[dict[str, Any]], borrowers: list[_Borrower]) -> tuple[list[dict[str, Any]], list[int]]:
    """A report summary for every borrower and a quarter of the others; returns the rows and
    the customer of each row."""
    rng = ctx.rng("bank:credit")
    today = ctx.today
    debt: dict[int, Decimal] = {}
    late: dict[int, list[int]] = {}
    for b in borrowers:
        cid = int(b.customer["id"])
        debt[cid] = debt.get(cid, Decimal(0)) + b.balance
        late.setdefault(cid, []).extend(b.late_days)
    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for c in customers:
        cid = int(c["id"])
        if cid not in debt and rng.random() >= 0.25:
            continue
        arrears = late.get(cid, [])
        extra = rng.randint(0, 2) if not arrears and rng.random() < 0.06 else 0  # arrears at other banks
        overdue = len(arrears) + extra
        longest = max(arrears) if arrears else (rng.randint(5, 60) if extra else 0)
        score = int(min(950, max(350, rng.gauss(720, 60) - overdue * 35 - longest)))
        card_debt = Decimal(rng.randint(0, 12) * 2_500) if rng.random() < 0.5 else Decimal(0)
        reported = today - dt.timedelta(days=rng.randint(3, 170))
        summary = (
            f"信用卡{rng.randint(0, 4)}张，贷款{1 if cid in debt else 0}笔；"
            + (f"近24个月逾期{overdue}次，最长{longest}天。" if overdue else "近24个月无逾期记录。")
        )
        rows.append(
            {
                "customer": cid,
                "report_no": f"PBOC{reported:%Y%m%d}{cid:010d}",
                "report_date": reported,
                "score": score,
                "total_debt": _money(debt.get(cid, Decimal(0)) + card_debt),
                "overdue_count_24m": overdue,
                "max_overdue_days": longest,
                "inquiries_6m": min(12, int(rng.expovariate(0.8))),
                "summary": summary,
            }
        )
        owners.append(cid)
    return rows, owners


def _allocations(ctx: DemoContext, customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two reviews of the largest-AUM customers' allocations (private banking, at least 3)."""
    rng = ctx.rng("bank:allocations")
    ranked = sorted((c for c in customers if c.get("aum") is not None), key=lambda c: (-Decimal(c["aum"]), c["id"]))
    top = [c for c in ranked if Decimal(c["aum"]) >= Decimal(6_000_000)]
    if len(top) < 3:
        top = ranked[: min(3, len(ranked))]
    risk = _risk_preferences(ctx, [int(c["id"]) for c in top])
    rows: list[dict[str, Any]] = []
    for c in top:
        mix = TARGET_MIX.get(risk.get(int(c["id"]), "balanced"), TARGET_MIX["balanced"])
        drifts = rng.random() < 0.35
        for as_of, latest in ((ctx.today - dt.timedelta(days=rng.randint(90, 110)), False), (ctx.today - dt.timedelta(days=rng.randint(2, 20)), True)):
            actual = [Decimal(t) + Decimal(str(round(rng.gauss(0, 1.6), 2))) for t in mix]
            if latest and drifts:  # equity ran up (or fell) past its range; fixed income took the other side
                move = Decimal(str(round(rng.uniform(6.5, 11), 2))) * (1 if rng.random() < 0.7 else -1)
                actual[2] += move
                actual[1] -= move
            actual = [max(Decimal(0), a) for a in actual]
            total = sum(actual)
            shares = [(a * 100 / total).quantize(CENT, ROUND_HALF_UP) for a in actual]
            shares[1] += Decimal(100) - sum(shares)  # rounding goes to fixed income
            aum = Decimal(c["aum"])
            for cls, target, share in zip(ASSET_CLASSES, mix, shares):
                t = Decimal(target)
                rows.append(
                    {
                        "customer": c["id"],
                        "as_of": as_of,
                        "asset_class": cls,
                        "target_pct": _pct(t),
                        "min_pct": _pct(max(Decimal(0), t - BAND)),
                        "max_pct": _pct(min(Decimal(100), t + BAND)),
                        "actual_pct": _pct(share),
                        "amount": _money(aum * share / 100),
                        "note": "年度检视" if not latest else ("权益类偏离配置区间，待再平衡" if drifts else "配置在区间内"),
                    }
                )
    return rows


def _applications(
    ctx: DemoContext, borrowers: list[_Borrower], report_of: dict[int, int], products: dict[str, int]
) -> list[dict[str, Any]]:
    """Loan applications in every state of the flow, by borrowers who have a credit report."""
    rng = ctx.rng("bank:applications")
    n = max(len(STATES), round(24 * ctx.scale))
    pool = [b for b in borrowers if int(b.customer["id"]) in report_of] or borrowers
    if not pool:
        return []
    # those still owing an instalment first: their applications show the overdue flag
    pool = sorted(pool, key=lambda b: (not b.owing, int(b.customer["id"])))
    picked = pool[:2] + rng.sample(pool[2:], min(len(pool) - 2, n - 2)) if len(pool) > 2 else pool
    rows = []
    for i, b in enumerate(picked[:n]):
        code = rng.choice(("LN-CONS", "LN-BIZ", "LN-MORT")) if b.code != "LN-MORT" else rng.choice(("LN-CONS", "LN-BIZ"))
        status = STATES[i % len(STATES)]
        if status == "committee_review" and not b.owing:  # as the flow routes: a large amount (or overdue history)
            amount = Decimal(rng.choice((3_500_000, 5_000_000, 8_000_000)))
        else:
            amount = Decimal(rng.choice((80_000, 150_000, 300_000, 500_000, 1_200_000, 2_000_000)))
        rows.append(
            {
                "customer": b.customer["id"],
                "product": products[code],
                "credit_report": report_of[int(b.customer["id"])] if int(b.customer["id"]) in report_of else None,
                "amount": _money(amount),
                "term_months": 36 if code != "LN-MORT" else 240,
                "purpose": rng.choice(LOAN_PURPOSES[code]),
                "status": status,
                "owner": b.customer["owner"],
            }
        )
    return rows


def seed_demo(ctx: DemoContext) -> dict[str, int]:
    """The bank template's demo records on top of the core demo; returns rows created per entity."""
    counts = dict.fromkeys(("product", "holding", "repayment_record", "credit_report", "asset_allocation", "loan_application"), 0)
    products, counts["product"] = _loan_products(ctx)
    customers = customers_of(ctx)
    if not customers:
        return counts
    borrowers, holdings = _loans(ctx, customers, products)
    counts["holding"] = len(_insert(ctx, "holding", holdings))
    counts["repayment_record"] = len(_insert(ctx, "repayment_record", _repayments(ctx, borrowers)))
    reports, report_customers = _credit_reports(ctx, customers, borrowers)
    report_ids = _insert(ctx, "credit_report", reports)
    counts["credit_report"] = len(report_ids)
    counts["asset_allocation"] = len(_insert(ctx, "asset_allocation", _allocations(ctx, customers)))
    report_of = dict(zip(report_customers, report_ids))
    counts["loan_application"] = len(_insert(ctx, "loan_application", _applications(ctx, borrowers, report_of, products)))
    return counts
