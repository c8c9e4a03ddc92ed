"""Text insight (issue #7 parts 4 and 5): complaint keywords per period with jieba, the
knowledge base's full-text search, and the NPS trend — each within the caller's row scope."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from engine.fieldtypes import LOCAL_TZ
from engine.security.principal import Principal
from tests.api_helpers import app, assert_error, client, login, shared_app  # noqa: F401  (module-wide app)

SYSTEM = Principal.system("test")
AS_OF = "2026-03-15"  # periods: 2026-01, 2026-02, 2026-03


class Crm:
    """API calls as a user, and seeding as the system (bulk inserts, no write hooks)."""

    def __init__(self, app: Any, client: Any, login: Any) -> None:
        self.app, self.client, self.login = app, client, login
        with app.app_context():
            self.uid = {u: int(app.appbuilder.sm.find_user(username=u).id) for u in ("admin", "rm1", "rm2")}

    def get(self, user: str, path: str, **params: Any) -> Any:
        return self.client.get(path, query_string=params, headers=self.login(user))

    def ok(self, user: str, path: str, **params: Any) -> Any:
        resp = self.get(user, path, **params)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.json

    def post(self, user: str, entity: str, **values: Any) -> dict[str, Any]:
        resp = self.client.post(f"/api/v1/records/{entity}", json=values, headers=self.login(user))
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.json  # type: ignore[no-any-return]

    def seed(self, entity: str, rows: list[dict[str, Any]]) -> list[int]:
        with self.app.app_context():
            return self.app.extensions["fincrm"].records.bulk_insert(SYSTEM, entity, rows)  # type: ignore[no-any-return]

    def customers(self, owner: str, names: list[str]) -> list[int]:
        return self.seed("customer", [{"name": n, "owner": self.uid[owner]} for n in names])


@pytest.fixture
def crm(app: Any, client: Any, login: Any) -> Crm:
    return Crm(app, client, login)


def local(text: str) -> str:
    """A Beijing wall-clock time as the API takes it."""
    return text + "+08:00"


# ---------------------------------------------------------------------- complaint keywords

RM1_MARCH = [
    "客户王小明反映理财产品赎回后手续费扣收过高，联系电话13800138000，要求退还手续费。",
    "王小明认为购买理财产品时未告知赎回手续费，身份证号110101199003071234，要求解释。",
    "手机银行转账收取手续费不合理，卡号6222021234567890123，客户张伟要求减免手续费。",
    "理财产品收益低于业绩比较基准，张伟质疑理财经理误导销售，邮箱zhangwei88@qq.com，并对手续费有异议。",
    "客户张伟对理财产品提前赎回的手续费标准不满，来电号码１３９００１３９０００。",
]
NAMES = ("王小明", "张伟", "zhangwei")
RM1_FEBRUARY = [
    "网点排队等候时间超过一小时，柜员服务态度冷淡。",
    "客户反映网点排队时间长，大堂经理服务态度差。",
]
RM2_MARCH = [
    "客户信用卡被盗刷两笔，要求银行赔付盗刷损失。",
    "信用卡境外盗刷未及时拦截，客户要求冻结卡片并调查盗刷交易。",
    "客户称信用卡被盗刷后客服处理缓慢，盗刷金额尚未退回。",
]


def _tickets(crm: Crm) -> dict[str, Any]:
    a, b = crm.customers("rm1", ["赵一", "钱二"])
    (c,) = crm.customers("rm2", ["孙三"])

    def ticket(customer: int, text: str, when: str, category: str = "complaint") -> dict[str, Any]:
        return {"subject": "客户投诉", "customer": customer, "category": category, "description": text, "opened_at": local(when)}

    rows = [ticket(a if i % 2 else b, text, f"2026-03-{i + 2:02d}T10:00:00") for i, text in enumerate(RM1_MARCH)]
    rows += [ticket(a, text, f"2026-02-{i + 10:02d}T09:30:00") for i, text in enumerate(RM1_FEBRUARY)]
    rows += [ticket(c, text, f"2026-03-{i + 3:02d}T11:00:00") for i, text in enumerate(RM2_MARCH)]
    rows.append(ticket(a, "客户咨询存款证明开立流程及所需材料。", "2026-03-06T10:00:00", "inquiry"))
    rows.append(ticket(a, "上年度的手续费投诉，不在统计窗口内。", "2025-12-20T10:00:00"))
    crm.seed("ticket", rows)
    return {"rm1": [a, b], "rm2": [c]}


def _words(period: dict[str, Any]) -> list[str]:
    return [k["word"] for k in period["keywords"]]


@pytest.mark.parametrize("method", ["tfidf", "textrank"])
def test_keywords_per_period_show_what_customers_complain_about(crm: Crm, method: str) -> None:
    _tickets(crm)
    body = crm.ok("admin", "/api/v1/insight/keywords", period="month", periods=3, as_of=AS_OF, method=method, top=10)
    assert [p["period"] for p in body["items"]] == ["2026-01", "2026-02", "2026-03"]
    jan, feb, mar = body["items"]
    assert (jan["tickets"], feb["tickets"], mar["tickets"]) == (0, len(RM1_FEBRUARY), len(RM1_MARCH) + len(RM2_MARCH))
    assert jan["keywords"] == [] and mar["analysed"] == mar["tickets"]
    assert {"手续费", "理财产品"} <= set(_words(mar)[:5]) and "盗刷" in _words(mar)
    assert "排队" in _words(feb) and "服务态度" in _words(feb) and "手续费" not in _words(feb)
    fee = next(k for k in mar["keywords"] if k["word"] == "手续费")
    assert fee["tickets"] == len(RM1_MARCH) and fee["weight"] > 0
    assert "存款证明" not in _words(mar)  # an inquiry, not a complaint
    assert body["category_label"] == {"zh": "投诉", "en": "Complaint"}
    for period in body["items"]:  # no phone, ID or card number (full-width ones included), name or e-mail is a keyword
        words = _words(period)
        assert not any(ch.isdigit() or ch.isascii() for word in words for ch in word), period["keywords"]
        assert not any(name in word or word in name for name in NAMES for word in words), period["keywords"]
    inquiries = crm.ok("admin", "/api/v1/insight/keywords", periods=3, as_of=AS_OF, category="inquiry", method=method)
    assert "存款证明" in _words(inquiries["items"][-1])


def test_keywords_come_only_from_the_readers_customers(crm: Crm) -> None:
    _tickets(crm)
    for method in ("tfidf", "textrank"):
        rm1 = crm.ok("rm1", "/api/v1/insight/keywords", periods=3, as_of=AS_OF, method=method, top=50)
        assert [p["tickets"] for p in rm1["items"]] == [0, len(RM1_FEBRUARY), len(RM1_MARCH)]
        assert all("盗刷" not in _words(p) for p in rm1["items"]), rm1
        assert "手续费" in _words(rm1["items"][-1])
        rm2 = crm.ok("rm2", "/api/v1/insight/keywords", periods=3, as_of=AS_OF, method=method, top=50)
        assert [p["tickets"] for p in rm2["items"]] == [0, 0, len(RM2_MARCH)]
        assert "盗刷" in _words(rm2["items"][-1]) and "手续费" not in _words(rm2["items"][-1])


def test_keywords_periods_are_beijing_calendar_weeks_and_quarters(crm: Crm) -> None:
    (a,) = crm.customers("rm1", ["周七"])
    crm.seed(
        "ticket",
        [
            # 2026-03-31 23:30 in Beijing is still March (15:30 UTC); 04-01 00:30 is April
            {"subject": "投诉", "customer": a, "category": "complaint", "description": "信用卡年费争议", "opened_at": local("2026-03-31T23:30:00")},
            {"subject": "投诉", "customer": a, "category": "complaint", "description": "信用卡年费争议", "opened_at": local("2026-04-01T00:30:00")},
        ],
    )
    quarters = crm.ok("rm1", "/api/v1/insight/keywords", period="quarter", periods=2, as_of="2026-04-02")["items"]
    assert [(q["period"], q["start"], q["end"], q["tickets"]) for q in quarters] == [("2026-Q1", "2026-01-01", "2026-03-31", 1), ("2026-Q2", "2026-04-01", "2026-06-30", 1)]
    weeks = crm.ok("rm1", "/api/v1/insight/keywords", period="week", periods=2, as_of="2026-04-02")["items"]
    assert [(w["period"], w["start"], w["tickets"]) for w in weeks] == [("2026-W13", "2026-03-23", 0), ("2026-W14", "2026-03-30", 2)]
    assert "年费" in _words(weeks[-1])


@pytest.mark.parametrize(
    "params, field",
    [
        ({"period": "year"}, "period"),
        ({"periods": "0"}, "periods"),
        ({"periods": "-3"}, "periods"),
        ({"periods": "25"}, "periods"),
        ({"periods": "six"}, "periods"),
        ({"top": "0"}, "top"),
        ({"top": "1e3"}, "top"),
        ({"method": "lda"}, "method"),
        ({"category": "spam"}, "category"),
        ({"as_of": "2026-13-01"}, "as_of"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_keywords_refuse_bad_parameters_naming_them(crm: Crm, params: dict[str, str], field: str) -> None:
    assert_error(crm.get("rm1", "/api/v1/insight/keywords", **params), 400, field=field)


# ---------------------------------------------------------------------- knowledge base

ARTICLES = {
    "prepay": (
        "房贷提前还款办理流程",
        "process",
        "提前还款 房贷",
        "个人住房贷款提前还款需提前15个工作日通过手机银行或网点预约。提前还款分为部分提前还款和全部提前还款，"
        "部分提前还款后可选择缩短期限或减少月供。提前还款违约金按合同约定收取，部分产品满一年后免收。",
    ),
    "consumer": (
        "个人消费贷款常见问题",
        "faq",
        "消费贷",
        "消费贷款额度根据客户收入与征信情况核定，用途须符合监管要求，不得用于购房或投资。贷款期限最长五年，"
        "按月等额本息还款，如需提前还款请联系客户经理。",
    ),
    "lost_card": (
        "借记卡挂失与补卡",
        "process",
        "挂失 补卡",
        "借记卡遗失后请立即通过客服热线或手机银行办理口头挂失，口头挂失有效期五天，期间须持本人有效身份证件到网点办理正式挂失并补办新卡。",
    ),
    "wealth": (
        "理财产品风险等级说明",
        "product",
        "风险等级",
        "我行理财产品按风险由低到高分为R1至R5五个等级，销售前须完成客户风险测评，客户只能购买与其风险承受能力相匹配的产品。",
    ),
}
DRAFT = ("理财赎回到账规则（草稿）", "product", "赎回", "开放式理财产品赎回资金一般在T+1日到账，遇节假日顺延。")


def _article(crm: Crm, key: str | None = None, *, published: bool = True, doc: tuple[str, str, str, str] | None = None) -> int:
    title, category, keywords, body = doc or ARTICLES[key or ""]
    return int(crm.post("admin", "knowledge_article", title=title, category=category, keywords=keywords, body=body, published=published)["id"])


def _hits(crm: Crm, user: str, q: str, **params: Any) -> list[dict[str, Any]]:
    return crm.ok(user, "/api/v1/kb/search", q=q, **params)["items"]  # type: ignore[no-any-return]


def test_kb_search_finds_words_inside_longer_text_and_ranks_the_better_match_first(crm: Crm) -> None:
    ids = {key: _article(crm, key) for key in ARTICLES}
    hits = _hits(crm, "rm1", "提前还款")
    assert [h["id"] for h in hits[:2]] == [ids["prepay"], ids["consumer"]]
    assert hits[0]["score"] > hits[1]["score"] > 0
    assert hits[0]["title"] == "房贷提前还款办理流程" and hits[0]["category"] == "process"
    assert hits[0]["category_label"] == {"zh": "业务流程", "en": "Process"}
    assert "提前还款" in hits[1]["snippet"] and len(hits[1]["snippet"]) <= 130
    # words the index holds only as parts of longer ones: 理财 in 理财产品, 口头 in 口头挂失, 测评 in 风险测评
    assert [h["id"] for h in _hits(crm, "rm1", "理财")] == [ids["wealth"]]
    assert [h["id"] for h in _hits(crm, "rm1", "测评")] == [ids["wealth"]]
    assert ids["lost_card"] in [h["id"] for h in _hits(crm, "rm1", "怎么办理挂失")]
    assert _hits(crm, "rm1", "保险理赔") == []
    assert [h["id"] for h in _hits(crm, "rm1", "房贷", limit=1)] == [ids["prepay"]]


def test_kb_search_hides_unpublished_articles_from_readers_who_do_not_configure(crm: Crm) -> None:
    draft = _article(crm, doc=DRAFT, published=False)
    assert _hits(crm, "rm1", "赎回到账") == []
    assert [h["id"] for h in _hits(crm, "admin", "赎回到账")] == [draft]
    resp = crm.client.patch(f"/api/v1/records/knowledge_article/{draft}", json={"published": True, "version": 1}, headers=crm.login("admin"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [h["id"] for h in _hits(crm, "rm1", "赎回到账")] == [draft]


def test_kb_index_follows_updates_deletes_and_rows_written_without_the_hook(crm: Crm) -> None:
    ids = {key: _article(crm, key) for key in ("prepay", "consumer", "lost_card")}
    assert ids["lost_card"] in [h["id"] for h in _hits(crm, "rm1", "挂失")]
    resp = crm.client.patch(
        f"/api/v1/records/knowledge_article/{ids['lost_card']}",
        json={"version": 1, "title": "借记卡冻结与解冻", "keywords": "冻结", "body": "账户被司法冻结时须由有权机关解除冻结，网点无法代为解冻。"},
        headers=crm.login("admin"),
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert _hits(crm, "rm1", "挂失") == []
    assert [h["id"] for h in _hits(crm, "rm1", "解冻")] == [ids["lost_card"]]
    resp = crm.client.delete(f"/api/v1/records/knowledge_article/{ids['consumer']}", headers=crm.login("admin"))
    assert resp.status_code in (200, 204), resp.get_data(as_text=True)
    assert [h["id"] for h in _hits(crm, "rm1", "提前还款")] == [ids["prepay"]]
    # written in bulk (imports, the demo): no write hook ran, the next search indexes them
    (seeded,) = crm.seed("knowledge_article", [{"title": "大额存单转让规则", "category": "product", "body": "大额存单可在手机银行办理转让，转让价格由双方协商。", "published": True}])
    assert [h["id"] for h in _hits(crm, "rm1", "大额存单转让")] == [seeded]
    kb = crm.app.extensions["fincrm_kb"]
    with crm.app.app_context():
        assert kb.sync() == 0  # nothing left stale or orphaned
        assert kb.rebuild() == 3
    assert [h["id"] for h in _hits(crm, "rm1", "大额存单")] == [seeded]


HOSTILE = [
    '" OR 1=1 --',
    "*",
    "NEAR(还款 房贷)",
    "房贷 OR 还款 AND NOT 挂失",
    '"提前还款',
    "-挂失",
    "挂失*",
    "'; DROP TABLE knowledge_article; --",
    "<script>alert('挂失')</script>",
    "还款 & !房贷 | (挂失",
    "还款:* <-> 房贷",
    "title:挂失",
    "%_\\",
    "\x00挂失",
    "🙂 挂失",
]


def test_kb_search_survives_hostile_queries(crm: Crm) -> None:
    ids = {key: _article(crm, key) for key in ("prepay", "lost_card")}
    for q in HOSTILE:
        resp = crm.get("rm1", "/api/v1/kb/search", q=q)
        assert resp.status_code in (200, 400), (q, resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.status_code == 400:
            assert_error(resp, 400, field="q")
        else:
            assert isinstance(resp.json["items"], list)
    assert [h["id"] for h in _hits(crm, "rm1", "<script>alert('挂失')</script>")] == [ids["lost_card"]]
    assert [h["id"] for h in _hits(crm, "rm1", '"提前还款')][:1] == [ids["prepay"]]
    assert {h["id"] for h in _hits(crm, "rm1", "'; DROP TABLE knowledge_article; --")} <= set(ids.values())
    assert len(_hits(crm, "admin", "房贷 挂失")) == 2  # the table is still there


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "的了吗，。！"}, "q"),
        ({"q": "挂" * 201}, "q"),
        ({"q": "挂失", "limit": "0"}, "limit"),
        ({"q": "挂失", "limit": "51"}, "limit"),
        ({"q": "挂失", "limit": "ten"}, "limit"),
        ({"q": "挂失", "sort": "title"}, "sort"),
    ],
)
def test_kb_search_refuses_bad_parameters_naming_them(crm: Crm, params: dict[str, str], field: str) -> None:
    assert_error(crm.get("rm1", "/api/v1/kb/search", **params), 400, field=field)


# ---------------------------------------------------------------------- NPS


def _expected(responses: list[tuple[int, str, int, str]], customers: set[int], survey: str = "nps") -> dict[str, dict[str, Any]]:
    """Per month (Beijing time): responses, bands and NPS, computed from the raw rows."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"responses": 0, "promoters": 0, "passives": 0, "detractors": 0})
    for customer, kind, score, when in responses:
        if customer not in customers or kind != survey:
            continue
        month = dt.datetime.fromisoformat(local(when)).astimezone(LOCAL_TZ).strftime("%Y-%m")
        row = out[month]
        row["responses"] += 1
        row["promoters" if score >= 9 else "passives" if score >= 7 else "detractors"] += 1
    for row in out.values():
        nps = Decimal(100 * (row["promoters"] - row["detractors"])) / row["responses"]
        row["nps"] = float(nps.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    return out


def _responses(crm: Crm) -> tuple[list[tuple[int, str, int, str]], dict[str, set[int]]]:
    a, b = crm.customers("rm1", ["吴八", "郑九"])
    (c,) = crm.customers("rm2", ["王十"])
    raw = [
        (a, "nps", 10, "2026-01-05T10:00:00"),
        (b, "nps", 6, "2026-01-12T10:00:00"),
        (a, "nps", 8, "2026-01-31T23:30:00"),  # still January in Beijing
        (b, "nps", 9, "2026-02-01T00:30:00"),  # February in Beijing, January in UTC
        (c, "nps", 0, "2026-02-03T10:00:00"),
        (c, "nps", 2, "2026-02-04T10:00:00"),
        (a, "nps", 7, "2026-02-20T10:00:00"),
        (b, "service_followup", 1, "2026-02-21T10:00:00"),
        (a, "nps", 3, "2026-03-01T08:00:00"),
        (b, "nps", 9, "2026-03-02T08:00:00"),
        (c, "nps", 10, "2026-03-03T08:00:00"),
        (a, "nps", 10, "2026-03-10T08:00:00"),
        (a, "nps", 4, "2025-12-31T10:00:00"),  # before the window
    ]
    crm.seed("survey_response", [{"customer": cust, "survey": kind, "score": score, "responded_at": local(when)} for cust, kind, score, when in raw])
    return raw, {"rm1": {a, b}, "rm2": {c}, "admin": {a, b, c}}


def test_nps_trend_equals_a_computation_from_the_raw_responses_within_scope(crm: Crm) -> None:
    raw, scope = _responses(crm)
    for user in ("admin", "rm1", "rm2"):
        body = crm.ok(user, "/api/v1/analytics/nps", period="month", periods=3, as_of=AS_OF)
        expected = _expected(raw, scope[user])
        assert [i["period"] for i in body["items"]] == ["2026-01", "2026-02", "2026-03"]
        for item in body["items"]:
            want = expected.get(item["period"], {"responses": 0, "promoters": 0, "passives": 0, "detractors": 0, "nps": None})
            got = {k: item[k] for k in ("responses", "promoters", "passives", "detractors", "nps")}
            assert got == want, (user, item["period"], got, want)
        assert body["total"]["responses"] == sum(i["responses"] for i in body["items"])
    rm1 = crm.ok("rm1", "/api/v1/analytics/nps", periods=3, as_of=AS_OF)
    assert rm1["items"][1]["detractors"] == 0  # rm2's customer's zeros are not rm1's
    followups = crm.ok("admin", "/api/v1/analytics/nps", periods=3, as_of=AS_OF, survey="service_followup")
    assert [i["responses"] for i in followups["items"]] == [0, 1, 0] and followups["items"][1]["nps"] == -100.0
    quarter = crm.ok("admin", "/api/v1/analytics/nps", period="quarter", periods=1, as_of=AS_OF)["items"][0]
    month_total = crm.ok("admin", "/api/v1/analytics/nps", period="month", periods=3, as_of=AS_OF)["total"]
    assert quarter["period"] == "2026-Q1" and quarter["responses"] == month_total["responses"] and quarter["nps"] == month_total["nps"]


@pytest.mark.parametrize(
    "params, field",
    [({"period": "day"}, "period"), ({"periods": "61"}, "periods"), ({"survey": "csat"}, "survey"), ({"as_of": "2026-02-30"}, "as_of"), ({"as_of": "9999-12-31"}, "as_of"), ({"x": "1"}, "x")],
)
def test_nps_refuses_bad_parameters_naming_them(crm: Crm, params: dict[str, str], field: str) -> None:
    assert_error(crm.get("rm1", "/api/v1/analytics/nps", **params), 400, field=field)


def test_a_low_nps_score_opens_a_remediation_ticket_and_scores_stay_within_0_to_10(crm: Crm) -> None:
    customer = crm.post("rm1", "customer", name="冯十一")["id"]

    def remediation() -> list[dict[str, Any]]:
        flt = '{"field": "customer", "op": "eq", "value": %d}' % customer
        items = crm.ok("rm1", "/api/v1/records/ticket", filter=flt)["items"]
        return [t for t in items if t["subject"] == "NPS低分客户回访整改"]

    crm.post("rm1", "survey_response", customer=customer, survey="nps", score=9)
    assert remediation() == []
    crm.post("rm1", "survey_response", customer=customer, survey="nps", score=3)
    tickets = remediation()
    assert len(tickets) == 1 and tickets[0]["category"] == "complaint" and tickets[0]["status"] == "new"
    for score in (-1, 11):
        resp = crm.client.post("/api/v1/records/survey_response", json={"customer": customer, "survey": "nps", "score": score}, headers=crm.login("rm1"))
        assert_error(resp, 422, field="score")
    now = dt.datetime.now(LOCAL_TZ).date().isoformat()
    trend = crm.ok("rm1", "/api/v1/analytics/nps", periods=1, as_of=now)["items"][0]
    assert (trend["responses"], trend["promoters"], trend["detractors"], trend["nps"]) == (2, 1, 1, 0.0)


# ---------------------------------------------------------------------- bounds and demo data


def test_keywords_read_at_most_the_sample_of_newest_tickets_per_period(crm: Crm, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.insight.text as text

    _tickets(crm)
    monkeypatch.setattr(text, "SAMPLE_PER_PERIOD", 2)
    march = crm.ok("rm1", "/api/v1/insight/keywords", periods=1, as_of=AS_OF, top=50)["items"][0]
    assert (march["tickets"], march["analysed"]) == (len(RM1_MARCH), 2)
    # only the two newest (opened 03-06 and 03-05) were read; both are about fees
    assert max(k["tickets"] for k in march["keywords"]) <= 2 and "手续费" in _words(march)


def test_demo_knowledge_base_is_searchable_and_seeds_once(crm: Crm) -> None:
    from engine.demo import KNOWLEDGE_ARTICLES, seed_knowledge_base

    records = crm.app.extensions["fincrm"].records
    with crm.app.app_context():
        assert seed_knowledge_base(records, crm.uid["admin"]) == len(KNOWLEDGE_ARTICLES) >= 30
        assert seed_knowledge_base(records, crm.uid["admin"]) == 0
    hits = _hits(crm, "rm1", "信用卡丢了怎么挂失")
    assert hits and "挂失" in hits[0]["title"]
    assert _hits(crm, "rm1", "房贷提前还款违约金")[0]["title"] == "房贷提前还款办理指南"
    drafts = [title for title, *_rest, published in KNOWLEDGE_ARTICLES if not published]
    assert drafts and all(h["title"] not in drafts for h in _hits(crm, "rm1", "理财到期续作", limit=50))
    assert any(h["title"] in drafts for h in _hits(crm, "admin", "理财到期续作", limit=50))
