"""The engine below the web layer: field types, metadata pipeline, filters and paging, crypto."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from engine.errors import FieldError, InvalidCursor, InvalidFilter, InvalidSort, MetadataInvalid
from engine.fieldtypes import FIELD_TYPES
from engine.meta.registry import build_registry, load_core_documents
from engine.meta.spec import FieldSpec, Label, Option
from engine.runtime import Runtime
from engine.security.authz import BasicAuthorizer
from engine.security.crypto import DecryptError, Keyring, aad_for, load_master_key
from engine.security.masking import mask_value
from engine.security.principal import Principal
from engine.services.records import RecordService

SYSTEM = Principal.system("test")
L = Label("测试", "Test")


def f(type_: str, **kw: Any) -> FieldSpec:
    return FieldSpec("x", type_, L, **kw)


@pytest.mark.parametrize(
    "type_,raw,expected",
    [
        ("cn_id", "11010519491231002x", "11010519491231002X"),
        ("cn_id", "110105 19491231 002X", "11010519491231002X"),
        ("cn_id", "１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
        ("cn_id", "110105491231002", "11010519491231002X"),  # 15 digits → 18
        ("cn_mobile", "+86 138-0013-8000", "13800138000"),
        ("cn_mobile", "0086 13800138000", "13800138000"),
        ("cn_mobile", "１３８００１３８０００", "13800138000"),
        ("bank_card", "6222 0212 3456 7894", "6222021234567894"),
        ("decimal", "1,234.50", Decimal("1234.50")),
        ("decimal", 12, Decimal("12.00")),
        ("decimal", "1.230", Decimal("1.23")),
        ("integer", "42", 42),
        ("boolean", "是", True),
        ("date", "2024/02/29", dt.date(2024, 2, 29)),
        ("datetime", "2026-01-01T08:00:00", dt.datetime(2026, 1, 1, 0, 0)),  # Beijing → UTC
        ("datetime", "2026-01-01T08:00:00Z", dt.datetime(2026, 1, 1, 8, 0)),
        ("email", "Li.Lei@Example.COM", "Li.Lei@example.com"),
        ("url", "https://bank.example/x", "https://bank.example/x"),
        ("cn_mobile", "13800138000\n", "13800138000"),  # surrounding whitespace is cleaned, never stored
        ("cn_id", " 11010519491231002X\n", "11010519491231002X"),
    ],
)
def test_valid_values_are_normalised(type_: str, raw: Any, expected: Any) -> None:
    assert FIELD_TYPES[type_].normalize(raw, f(type_)) == expected


@pytest.mark.parametrize(
    "type_,raw",
    [
        ("cn_id", "110105194912310021"),  # bad checksum
        ("cn_id", "110105199902300013"),  # 30 February
        ("cn_mobile", "12800138000"),
        ("cn_mobile", "1380013800"),
        ("bank_card", "6222021234567895"),  # Luhn
        ("decimal", "1.234"),
        ("decimal", "NaN"),
        ("decimal", "Infinity"),
        ("decimal", True),
        ("decimal", "12345678901234567.0"),  # more than 18 digits with scale 2
        ("integer", True),
        ("integer", "4.5"),
        ("integer", 2**63),
        ("boolean", "maybe"),
        ("date", "2023-02-29"),
        ("date", "yesterday"),
        ("datetime", "not a time"),
        ("email", "no-at-sign"),
        ("url", "javascript:alert(1)"),
        ("string", "line\nbreak"),
        ("string", "nul\x00byte"),
        ("string", "x" * 256),
    ],
)
def test_invalid_values_are_refused_without_echoing_them(type_: str, raw: Any) -> None:
    with pytest.raises(FieldError) as err:
        FIELD_TYPES[type_].normalize(raw, f(type_))
    if isinstance(raw, str) and len(raw) > 3:
        assert raw.strip() not in str(err.value)


def test_patterns_match_ascii_digits_only() -> None:
    spec = f("string", pattern="[0-9]{4}")
    assert FIELD_TYPES["string"].normalize("1234", spec) == "1234"
    assert FIELD_TYPES["string"].normalize("１２３４", spec) == "1234"  # NFKC first
    with pytest.raises(FieldError):
        FIELD_TYPES["string"].normalize("١٢٣٤", spec)  # Arabic-Indic digits are no \\d here


def test_enum_and_multi_enum() -> None:
    spec = f("enum", options=(Option("a", L), Option("b", L)))
    assert FIELD_TYPES["enum"].normalize("a", spec) == "a"
    with pytest.raises(FieldError):
        FIELD_TYPES["enum"].normalize("c", spec)
    multi = f("multi_enum", options=spec.options)
    assert FIELD_TYPES["multi_enum"].normalize(["b", "a", "b"], multi) == ["b", "a"]


@pytest.mark.parametrize(
    "rule,value,masked",
    [("name", "王小明", "王**"), ("name", "欧阳娜娜", "欧***"), ("mobile", "13812345678", "138****5678"),
     ("id", "110105194912311234", "110***********1234"), ("card", "6222021234561234", "尾号1234"), ("email", "li@x.cn", "l***@x.cn")],
)
def test_mask_rules(rule: str, value: str, masked: str) -> None:
    assert mask_value(rule, value) == masked


def test_core_metadata_builds_and_an_invalid_document_lists_every_error() -> None:
    reg = build_registry(load_core_documents())
    assert {"customer", "branch", "holding", "transaction", "consent"} <= set(reg.entities)
    bad = {
        "kind": "entity", "name": "Bad-Name", "label": {"zh": "坏"},
        "fields": [{"name": "a", "type": "nope", "label": {"zh": "a", "en": "a"}}, {"name": "b", "type": "enum", "label": {"zh": "b", "en": "b"}}],
    }
    with pytest.raises(MetadataInvalid) as err:
        build_registry(load_core_documents() + [bad])
    pointers = {d["pointer"] for d in err.value.details}
    assert {"/entity/Bad-Name/name", "/entity/Bad-Name/label", "/entity/Bad-Name/fields/0/type", "/entity/Bad-Name/fields/1"} <= pointers


@pytest.mark.parametrize(
    "field,problem",
    [
        ({"name": "r", "type": "ref", "ref": "martian", "label": {"zh": "r", "en": "r"}}, "unknown entity"),
        ({"name": "u", "type": "string", "unique": True, "storage": "json", "label": {"zh": "u", "en": "u"}}, "column storage"),
        ({"name": "version", "type": "string", "label": {"zh": "v", "en": "v"}}, "reserved"),
        ({"name": "d", "type": "decimal", "default": "abc", "label": {"zh": "d", "en": "d"}}, "default"),
    ],
)
def test_semantic_metadata_errors(field: dict[str, Any], problem: str) -> None:
    doc = {"kind": "entity", "name": "thing", "label": {"zh": "物", "en": "Thing"}, "fields": [field]}
    with pytest.raises(MetadataInvalid) as err:
        build_registry(load_core_documents() + [doc])
    assert any(problem in d["message"] for d in err.value.details)


def test_overlays_merge_fields_by_name() -> None:
    overlay = {"kind": "entity_overlay", "name": "customer", "fields": [{"name": "occupation", "max_length": 20}, {"name": "hobby", "type": "string", "label": {"zh": "爱好", "en": "Hobby"}, "storage": "json"}]}
    spec = build_registry(load_core_documents(), [overlay]).entity("customer")
    assert spec.field("occupation").max_length == 20 and spec.field("occupation").label.zh == "职业"  # type: ignore[union-attr]
    assert spec.field("hobby").storage == "json"  # type: ignore[union-attr]


# ------------------------------------------------------------------ filters and paging on a real DB

THING = {
    "kind": "entity", "name": "thing", "label": {"zh": "物", "en": "Thing"},
    "fields": [
        {"name": f"{kind}_{store}", "type": kind, "label": {"zh": kind, "en": kind}, "storage": store,
         **({"options": [{"value": v, "label": {"zh": v, "en": v}} for v in ("a", "b", "c")]} if kind in ("enum", "multi_enum") else {})}
        for kind in ("string", "integer", "decimal", "date", "datetime", "boolean", "enum", "multi_enum")
        for store in ("column", "json")
        if not (kind == "multi_enum" and store == "column")
    ] + [{"name": "multi_enum_column", "type": "multi_enum", "label": {"zh": "m", "en": "m"}, "options": [{"value": v, "label": {"zh": v, "en": v}} for v in ("a", "b", "c")]}],
}


@pytest.fixture
def things(db_url: str) -> Any:
    rt = Runtime(db_url, Keyring(b"k" * 32), b"secret", core_documents=load_core_documents() + [THING])
    rt.init_schema()
    svc = RecordService(rt, BasicAuthorizer())
    rows = []
    for i in range(30):
        row: dict[str, Any] = {}
        for store in ("column", "json"):
            row.update({
                f"string_{store}": None if i % 7 == 0 else f"s{i % 5}",
                f"integer_{store}": i % 6,
                f"decimal_{store}": f"{(i % 4) * 10}.5",
                f"date_{store}": (dt.date(2026, 1, 1) + dt.timedelta(days=i)).isoformat(),
                f"datetime_{store}": f"2026-01-{1 + i % 28:02d}T10:00:00Z",
                f"boolean_{store}": i % 2 == 0,
                f"enum_{store}": "abc"[i % 3],
                f"multi_enum_{store}": ["a", "b"] if i % 2 else ["c"],
            })
        rows.append(row)
    svc.bulk_insert(SYSTEM, "thing", rows)
    yield svc
    rt.dispose()


CONDITIONS = [
    ("string", "eq", "s1"), ("string", "ne", "s1"), ("string", "in", ["s1", "s2"]), ("string", "nin", ["s1"]),
    ("string", "contains", "1"), ("string", "startswith", "s"), ("string", "is_null", True),
    ("integer", "gt", 3), ("integer", "lte", 2), ("integer", "between", [1, 3]),
    ("decimal", "gte", "20"), ("decimal", "lt", "10.5"), ("decimal", "eq", "30.50"),
    ("date", "gt", "2026-01-20"), ("date", "between", ["2026-01-05", "2026-01-09"]),
    ("datetime", "lt", "2026-01-10T00:00:00Z"),
    ("boolean", "eq", True), ("enum", "in", ["a", "c"]), ("multi_enum", "has", "b"),
]


@pytest.mark.parametrize("kind,op,value", CONDITIONS)
def test_filters_behave_the_same_for_column_and_json_storage(things: RecordService, kind: str, op: str, value: Any) -> None:
    got = {}
    for store in ("column", "json"):
        page = things.list(SYSTEM, "thing", filter={"field": f"{kind}_{store}", "op": op, "value": value}, limit=500)
        got[store] = sorted(r["id"] for r in page.items)
    assert got["column"] == got["json"]
    assert 0 < len(got["column"]) < 30 or (op == "is_null" and got["column"])


def test_and_or_not_nest(things: RecordService) -> None:
    flt = {"and": [{"field": "integer_json", "op": "gte", "value": 2}, {"not": {"or": [{"field": "enum_column", "op": "eq", "value": "a"}, {"field": "boolean_json", "op": "eq", "value": True}]}}]}
    items = things.list(SYSTEM, "thing", filter=flt, limit=500).items
    assert items and all(i["integer_json"] >= 2 and i["enum_column"] != "a" and i["boolean_json"] is False for i in items)


@pytest.mark.parametrize(
    "flt,error",
    [
        ({"field": "nope", "op": "eq", "value": 1}, InvalidFilter),
        ({"field": "integer_json", "op": "regex", "value": 1}, InvalidFilter),
        ({"field": "integer_json", "op": "gt", "value": "many"}, InvalidFilter),
        ({"field": "integer_json; drop table e_thing", "op": "eq", "value": 1}, InvalidFilter),
        ({"and": {"field": "x"}}, InvalidFilter),
        ({"field": "integer_json", "op": "in", "value": list(range(1001))}, InvalidFilter),
        ({"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{"and": [{}]}]}]}]}]}]}]}]}]}]}]}, InvalidFilter),
    ],
)
def test_bad_filters_are_refused(things: RecordService, flt: Any, error: type) -> None:
    with pytest.raises(error):
        things.list(SYSTEM, "thing", filter=flt)


def test_like_wildcards_are_literal(things: RecordService) -> None:
    assert things.list(SYSTEM, "thing", filter={"field": "string_json", "op": "contains", "value": "%"}).items == []
    assert things.list(SYSTEM, "thing", filter={"field": "string_column", "op": "startswith", "value": "_"}).items == []


@pytest.mark.parametrize("sort", ["string_column,-integer_json", "-decimal_json,date_column", "-string_json", "boolean_column,-datetime_json"])
def test_keyset_pages_walk_every_row_once_in_order(things: RecordService, sort: str) -> None:
    everything = things.list(SYSTEM, "thing", sort=sort, limit=500).items
    seen: list[int] = []
    cursor = None
    while True:
        page = things.list(SYSTEM, "thing", sort=sort, limit=7, cursor=cursor)
        seen += [r["id"] for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [r["id"] for r in everything] and len(seen) == 30
    first = sort.split(",")[0]
    key = first.lstrip("-")
    values = [r[key] for r in everything if r[key] is not None]
    assert values == sorted(values, reverse=first.startswith("-"))
    assert all(r[key] is None for r in everything[len(values):])  # NULLs last


def test_cursors_cannot_be_forged_or_reused_across_sorts(things: RecordService) -> None:
    cursor = things.list(SYSTEM, "thing", sort="integer_json", limit=5).next_cursor
    assert cursor
    body, sig = cursor.split(".")
    with pytest.raises(InvalidCursor):
        things.list(SYSTEM, "thing", sort="integer_json", cursor=body[:-2] + "AA." + sig)
    with pytest.raises(InvalidCursor):
        things.list(SYSTEM, "thing", sort="-integer_json", cursor=cursor)
    with pytest.raises(InvalidSort):
        things.list(SYSTEM, "thing", sort="integer_json;drop")
    with pytest.raises(InvalidSort):
        things.list(SYSTEM, "thing", sort="multi_enum_json")


# ------------------------------------------------------------------ crypto


def test_aes_gcm_binds_values_to_their_row() -> None:
    ring = Keyring(os.urandom(32))
    token = ring.encrypt("11010519491231002X", aad_for("e_customer", "id_number", 1))
    assert "11010519491231002X" not in token and token.startswith(f"v1.{ring.current_id}.")
    assert ring.decrypt(token, aad_for("e_customer", "id_number", 1)) == "11010519491231002X"
    with pytest.raises(DecryptError):
        ring.decrypt(token, aad_for("e_customer", "id_number", 2))
    with pytest.raises(DecryptError):
        ring.decrypt(token[:-4] + "AAAA", aad_for("e_customer", "id_number", 1))


def test_rotation_keeps_old_values_readable_and_blind_indexes_stable() -> None:
    old, new, index = os.urandom(32), os.urandom(32), os.urandom(32)
    before = Keyring(old, index_key=index)
    token = before.encrypt("secret", b"aad")
    after = Keyring(new, previous=[old], index_key=index)
    assert after.decrypt(token, b"aad") == "secret"
    assert after.blind_index("customer.id_number", "X") == before.blind_index("customer.id_number", "X")
    assert Keyring(new).decrypt(after.encrypt("v", b"a"), b"a") == "v"
    with pytest.raises(DecryptError):
        Keyring(new).decrypt(token, b"aad")


def test_generated_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = load_master_key(None, path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(None, path) == key
    assert load_master_key(base64.b64encode(b"e" * 32).decode(), path) == b"e" * 32


def test_bulk_insert_is_all_or_nothing(records: RecordService) -> None:
    good = {"code": "OK1", "name": "好"}
    with pytest.raises(Exception):
        records.bulk_insert(SYSTEM, "branch", [good, {"code": "bad code!", "name": "坏"}])
    assert records.count(SYSTEM, "branch") == 0


def test_no_plaintext_in_the_encrypted_column(records: RecordService) -> None:
    c = records.create(SYSTEM, "customer", {"name": "甲", "id_number": "11010519491231002X"})
    with records.runtime.engine.connect() as conn:
        raw = conn.execute(text("select id_number, id_number__bi from e_customer where id = :i"), {"i": c["id"]}).one()
    assert "11010519491231002X" not in raw[0] and len(raw[1]) == 64
    found = records.list(SYSTEM, "customer", filter={"field": "id_number", "op": "eq", "value": "11010519491231002x"}).items
    assert [x["id"] for x in found] == [c["id"]]


@pytest.mark.parametrize("number", ["310115196006151230", "440305197006151232"])
def test_real_ids_keep_the_code_of_a_district_created_after_their_birth(number: str) -> None:
    # 浦东新区 (1992) and 南山区 (1990) issued these numbers to people born before the districts
    assert FIELD_TYPES["cn_id"].normalize(number, f("cn_id")) == number


def test_free_text_keeps_chinese_punctuation_while_codes_fold_to_ascii() -> None:
    complaint = "客户反映，排队（超过1小时）：要求整改！"
    assert FIELD_TYPES["text"].normalize(complaint, f("text")) == complaint
    assert FIELD_TYPES["string"].normalize("ＡＢ１２", f("string", pattern="[A-Z0-9]+")) == "AB12"


def test_mobile_range_check_agrees_with_phonenumbers_full_parse() -> None:
    """The mobile-range pattern in fieldtypes gives the verdict parse + is_valid_number + number_type give."""
    import random

    import phonenumbers

    from engine.fieldtypes import _mobile_range_assigned

    def full(text: str) -> bool:
        try:
            n = phonenumbers.parse(text, "CN")
        except phonenumbers.NumberParseException:
            return False
        return phonenumbers.is_valid_number(n) and phonenumbers.number_type(n) in (
            phonenumbers.PhoneNumberType.MOBILE,
            phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        )

    rng = random.Random(11)
    for _ in range(5000):
        text = "1" + str(rng.randrange(3, 10)) + f"{rng.randrange(10**9):09d}"
        assert _mobile_range_assigned(text) == full(text), text


def test_reads_by_id_and_first_pages_use_a_pool_that_keeps_generic_plans_keyset_pages_plan_with_the_values(runtime: Runtime, records: RecordService) -> None:
    """PostgreSQL: keyset pages plan with their actual values (a generic plan of `aum <= $1 …`
    can scan the table); a read by primary key or a first page may settle on its generic plan.
    SQLite: one pool."""
    system = Principal.system("test")
    rid = records.create(system, "branch", {"code": "P1", "name": "总行"})["id"]
    calls: list[Any] = []
    original = type(runtime).point_reads

    def spy(self: Any) -> Any:
        engine = original.fget(self)  # type: ignore[attr-defined]
        calls.append(engine)
        return engine

    records.create(system, "branch", {"code": "P2", "name": "分行"})
    try:
        type(runtime).point_reads = property(spy)  # type: ignore[method-assign,assignment]
        assert records.get(system, "branch", rid)["code"] == "P1"
        first = records.list(system, "branch", limit=1, sort="code")
        assert records.list(system, "branch", limit=1, sort="code", cursor=first.next_cursor).items[0]["code"] == "P2"
    finally:
        type(runtime).point_reads = original  # type: ignore[method-assign]
    assert calls == [runtime.point_engine, runtime.point_engine]  # the get and the first page, not the second
    if runtime.dialect != "postgresql":
        assert runtime.point_engine is runtime.primary_engine
        return
    with runtime.point_engine.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "auto"
    with runtime.primary_engine.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
    assert runtime.point_engine in runtime.engines()
