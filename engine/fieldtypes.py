"""The one field-type table.

Adding a field type is one row here: its column type, how a JSON-stored value is read back in
SQL, how an incoming value is checked and normalised, how a value is written to JSON, its JSON
Schema fragment, its default mask rule, its form widget and the filter operators it accepts.
Every other module (store, filters, validation, OpenAPI, pages) looks types up here.

Plugins add rows (the ``fincrm_field_types`` hook, :mod:`engine.plugins`): their types join this
table when the plugin manager loads, after the manager has checked them against the rules
:func:`plugin_type_problems` states (a name of their own, a widget, mask rule, JSON reading and
operators the engine knows). The meta-schema accepts a field ``type`` by asking
:func:`known_field_type`, so built-in and plugin types are one list.

Input rules shared by all types: text is NFKC-normalised (full-width digits become ASCII) and
patterns are matched with ``re.fullmatch(..., re.ASCII)``, so neither full-width digits nor a
trailing newline slip through. Error messages never echo the value (it may be personal data).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Boolean, Date, DateTime, Integer, String, Text
from sqlalchemy.types import TypeEngine
from stdnum import luhn
from stdnum import numdb
from stdnum.cn import ric

from .errors import FieldError
from .meta.spec import FieldSpec
from .sqltypes import IdType, JsonDoc, Money

__all__ = [
    "FieldType",
    "FIELD_TYPES",
    "BUILTIN_TYPES",
    "field_type",
    "known_field_type",
    "plugin_type_problems",
    "install_plugin_types",
    "normalize_text",
    "LOCAL_TZ",
    "TEXT_OPS",
    "EQ_OPS",
    "COMPARE_OPS",
    "DATE_OPS",
]

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DEC_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_SEPARATORS = re.compile(r"[\s\-]")
_MOBILE_PREFIX = re.compile(r"^(\+86|0086|86)(?=1\d{10}$)")
_MOBILE_RE = re.compile(r"1[3-9][0-9]{9}", re.ASCII)
_CN_ID_15 = re.compile(r"[0-9]{15}", re.ASCII)
_CN_ID_18 = re.compile(r"[0-9]{17}[0-9X]", re.ASCII)
_CARD_RE = re.compile(r"[0-9]{12,19}", re.ASCII)
INT64 = 2**63 - 1

COMPARE_OPS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "between", "is_null"})
TEXT_OPS = frozenset({"eq", "ne", "in", "nin", "contains", "startswith", "is_null"})
EQ_OPS = frozenset({"eq", "ne", "in", "nin", "is_null"})
DATE_OPS = COMPARE_OPS | {"within_next_days", "within_last_days", "older_than_days"}


def normalize_text(value: Any, *, multiline: bool = False, compat: bool = True) -> str:
    """Trimmed text without control characters. ``compat`` (NFKC) folds full-width digits and
    letters to ASCII for structured values; free text keeps its Chinese punctuation (NFC)."""
    if not isinstance(value, str):
        raise FieldError("must be a string")
    text = value if value.isascii() else unicodedata.normalize("NFKC" if compat else "NFC", value)  # both fix ASCII
    text = text.strip() if not multiline else text.strip("\x00 ")
    if _CONTROL.search(text) or (not multiline and ("\n" in text or "\r" in text)):
        raise FieldError("contains control characters")
    return text


def _digits(value: Any, what: str) -> str:
    """NFKC-normalise and drop the separators people type inside numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = normalize_text(value)
    if not text.isdigit():  # digits only: no separator to drop
        text = _SEPARATORS.sub("", text)
    if not text:
        raise FieldError(f"must be a {what}")
    return text


def _string(value: Any, f: FieldSpec, *, multiline: bool = False, default_max: int = 255) -> str | None:
    # names, notes, complaint texts keep "，（）：！"; patterned codes and typed strings fold
    text = normalize_text(value, multiline=multiline, compat=bool(f.pattern) or f.type not in ("string", "text"))
    limit = f.max_length or default_max
    if len(text) > limit:
        raise FieldError(f"is longer than {limit} characters")
    if f.pattern and text and not re.fullmatch(f.pattern, text, re.ASCII):
        raise FieldError("does not have the required format")
    return text or None


def _integer(value: Any, f: FieldSpec) -> int:
    if isinstance(value, bool):
        raise FieldError("must be an integer")
    if isinstance(value, int):
        n = value
    elif isinstance(value, Decimal) and value == value.to_integral_value():
        n = int(value)
    elif isinstance(value, str) and _INT_RE.fullmatch(normalize_text(value)):
        n = int(normalize_text(value))
    else:
        raise FieldError("must be an integer")
    if abs(n) > INT64:
        raise FieldError("is out of range")
    _bounds(n, f)
    return n


def _decimal(value: Any, f: FieldSpec) -> Decimal:
    if isinstance(value, bool):
        raise FieldError("must be a decimal number")
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, (int, Decimal)):
        d = Decimal(value)
    elif isinstance(value, str):
        text = normalize_text(value).replace(",", "")
        if not _DEC_RE.fullmatch(text):
            raise FieldError("must be a decimal number")
        try:
            d = Decimal(text)
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards
            raise FieldError("must be a decimal number") from exc
    else:
        raise FieldError("must be a decimal number")
    if not d.is_finite():
        raise FieldError("must be a decimal number")
    if d.adjusted() >= f.precision - f.scale:  # before quantize, which fails past the context's 28 digits
        raise FieldError(f"has more than {f.precision} digits")
    q = d.quantize(_quantum(f.scale))
    if q != d:  # exact unless digits past the scale were not zeros
        raise FieldError(f"has more than {f.scale} decimal places")
    if q and q.adjusted() + f.scale + 1 > f.precision:  # its digits, as stored
        raise FieldError(f"has more than {f.precision} digits")
    _bounds(q, f)
    return q


@functools.lru_cache(maxsize=64)
def _quantum(scale: int) -> Decimal:
    return Decimal(1).scaleb(-scale)


def _bounds(n: Any, f: FieldSpec) -> None:
    if f.min is not None and n < type(n)(f.min):
        raise FieldError(f"must be at least {f.min}")
    if f.max is not None and n > type(n)(f.max):
        raise FieldError(f"must be at most {f.max}")


_TRUE = {"true", "1", "yes", "y", "是", "t"}
_FALSE = {"false", "0", "no", "n", "否", "f"}


def _boolean(value: Any, f: FieldSpec) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = normalize_text(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise FieldError("must be true or false")


def _date(value: Any, f: FieldSpec) -> dt.date:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        d = value
    else:
        text = normalize_text(value).replace("/", "-")
        try:
            d = dt.date.fromisoformat(text) if len(text) == 10 else dt.date.fromisoformat("x")
        except ValueError as exc:
            raise FieldError("must be a date (YYYY-MM-DD)") from exc
    if f.min is not None and d < dt.date.fromisoformat(f.min):
        raise FieldError(f"must be on or after {f.min}")
    if f.max is not None and d > dt.date.fromisoformat(f.max):
        raise FieldError(f"must be on or before {f.max}")
    return d


def _datetime(value: Any, f: FieldSpec) -> dt.datetime:
    """Aware input is converted to UTC; naive input is read as Beijing time. Stored naive UTC."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        text = normalize_text(value)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise FieldError("must be a date-time (ISO 8601)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    # whole seconds: JSON-stored values then compare correctly as ISO strings
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def _enum(value: Any, f: FieldSpec) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FieldError("is not one of the allowed options")
    text = normalize_text(value) if isinstance(value, str) else value
    if text not in f.option_values:
        raise FieldError("is not one of the allowed options")
    return str(text)


def _multi_enum(value: Any, f: FieldSpec) -> list[str]:
    if not isinstance(value, list):
        raise FieldError("must be a list of options")
    out: list[str] = []
    for item in value:
        v = _enum(item, f)
        if v not in out:
            out.append(v)
    return out


def _ref(value: Any, f: FieldSpec) -> int:
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    n = _integer(value, FieldSpec(name=f.name, type="integer", label=f.label))
    if n <= 0:
        raise FieldError("must be a record id")
    return n


def _email(value: Any, f: FieldSpec) -> str | None:
    text = _string(value, f, default_max=254)
    if text is None:
        return None
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise FieldError("is not a valid e-mail address") from exc
    return str(info.normalized)


def _cn_mobile(value: Any, f: FieldSpec) -> str:
    """A mainland China mobile number, stored as its 11 digits."""
    text = _digits(value, "mobile number")
    if len(text) != 11 or text[0] != "1":
        text = _MOBILE_PREFIX.sub("", text)
        text = text.replace("(", "").replace(")", "")
    if not _MOBILE_RE.fullmatch(text):
        raise FieldError("must be an 11-digit mainland mobile number")
    if not _mobile_range_assigned(text):
        raise FieldError("is not an assigned mainland mobile number range")
    return text


# libphonenumber's own pattern of the mainland's mobile ranges (from its metadata, so it moves
# with the library). For every 7-digit number segment (号段) 1300000–1999999 its verdict equals
# parse + is_valid_number + number_type ∈ {MOBILE, FIXED_LINE_OR_MOBILE} (checked exhaustively
# with phonenumbers 9.0; tests/test_engine.py keeps sampling it): ~1 µs instead of ~70 µs a
# number, which is what an import of a million customers needs.
def _mobile_pattern() -> re.Pattern[str]:
    meta = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    pattern = meta.mobile.national_number_pattern if meta is not None and meta.mobile is not None else None
    if not pattern:  # pragma: no cover - the library always ships CN metadata
        raise RuntimeError("phonenumbers has no mobile pattern for CN")
    return re.compile(str(pattern))


_CN_MOBILE_RANGES = _mobile_pattern()


def _mobile_range_assigned(number: str) -> bool:
    return _CN_MOBILE_RANGES.fullmatch(number) is not None


def _cn_id_from_15(text: str) -> str:
    body = text[:6] + "19" + text[6:]
    return body + ric.calc_check_digit(body + "0")  # stdnum expects a (placeholder) check digit


def _cn_id(value: Any, f: FieldSpec) -> str:
    """A resident identity number (GB 11643): checksum and a real birth date; 15 digits upgraded."""
    text = _digits(value, "resident ID number").upper()
    if len(text) == 15 and _CN_ID_15.fullmatch(text):
        text = _cn_id_from_15(text)
    if not _CN_ID_18.fullmatch(text):
        raise FieldError("must be an 18-character resident ID number")
    if ric.calc_check_digit(text) != text[-1]:
        raise FieldError("fails the GB 11643 check digit")
    try:  # digits 7-14 are YYYYMMDD (what stdnum's get_birth_date reads, without its re-cleaning)
        born = dt.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError as exc:
        raise FieldError("does not hold a real birth date") from exc
    if _after_today(born):
        raise FieldError("has a birth date in the future")
    # A real ID keeps the code of the district that issued it, even when that district was
    # renamed or merged later; stdnum's birth-year check would reject such customers, so the
    # code only has to exist in the division table at some time.
    if not _region_known(text[:6]):
        raise FieldError("does not start with a known administrative division code")
    return text


_TODAY = [dt.date.min]  # a date that has been today: never after today, whatever the hour


def _after_today(day: dt.date) -> bool:
    if day <= _TODAY[0]:
        return False
    _TODAY[0] = dt.date.today()
    return day > _TODAY[0]


@functools.lru_cache(maxsize=16384)
def _region_known(code: str) -> bool:
    """The six digits name a county-level division in GB/T 2260 (at any time)."""
    return any("county" in props for _, props in numdb.get("cn/loc").info(code))


def _bank_card(value: Any, f: FieldSpec) -> str:
    text = _digits(value, "card number")
    if not _CARD_RE.fullmatch(text):
        raise FieldError("must be 12 to 19 digits")
    if not luhn.is_valid(text):
        raise FieldError("fails the card number check digit (Luhn)")
    return text


def _url(value: Any, f: FieldSpec) -> str | None:
    text = _string(value, f, default_max=2048)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FieldError("must be an http(s) URL")
    return text


def _dump_plain(v: Any) -> Any:
    return v


def _dump_decimal(v: Any) -> Any:
    return None if v is None else str(v)


def _dump_date(v: Any) -> Any:
    return None if v is None else v.isoformat()


def _dump_datetime(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if v.tzinfo is not None:
        v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return v.isoformat() + "Z"  # stored values are naive UTC


@dataclass(frozen=True)
class FieldType:
    name: str
    column: Callable[[FieldSpec], TypeEngine[Any]]
    normalize: Callable[[Any, FieldSpec], Any]
    schema: Callable[[FieldSpec], dict[str, Any]]
    ops: frozenset[str]
    json_as: str = "string"  # how a json-stored value is read in SQL: string|integer|numeric|boolean|json
    dump: Callable[[Any], Any] = _dump_plain
    mask: str | None = None  # mask rule for C2 fields of this type that name none themselves
    widget: str = "text"


def _s(extra: dict[str, Any] | None = None, **kw: Any) -> Callable[[FieldSpec], dict[str, Any]]:
    def schema(f: FieldSpec) -> dict[str, Any]:
        out: dict[str, Any] = dict(kw)
        if extra:
            out.update(extra)
        if f.type in ("string", "text", "email", "url") and f.max_length:
            out["maxLength"] = f.max_length
        if f.type in ("enum",):
            out["enum"] = sorted(f.option_values)
        if f.type == "multi_enum":
            out["items"] = {"type": "string", "enum": sorted(f.option_values)}
        if f.type in ("integer",) and f.min is not None:
            out["minimum"] = f.min
        if f.type in ("integer",) and f.max is not None:
            out["maximum"] = f.max
        return out

    return schema


FIELD_TYPES: dict[str, FieldType] = {
    t.name: t
    for t in (
        FieldType("string", lambda f: String(f.max_length or 255), _string, _s(type="string"), TEXT_OPS),
        FieldType(
            "text",
            lambda f: Text(),
            lambda v, f: _string(v, f, multiline=True, default_max=10000),
            _s(type="string"),
            frozenset({"contains", "is_null"}),
            widget="textarea",
        ),
        FieldType("integer", lambda f: IdType, _integer, _s(type="integer"), COMPARE_OPS, "integer", widget="number"),
        FieldType(
            "decimal",
            lambda f: Money(f.precision, f.scale),
            _decimal,
            _s(type=["string", "number"], format="decimal"),
            COMPARE_OPS,
            "numeric",
            _dump_decimal,
            widget="decimal",
        ),
        FieldType("boolean", lambda f: Boolean(), _boolean, _s(type="boolean"), frozenset({"eq", "ne", "is_null"}), "boolean", widget="checkbox"),
        FieldType("date", lambda f: Date(), _date, _s(type="string", format="date"), DATE_OPS, dump=_dump_date, widget="date"),
        FieldType(
            "datetime", lambda f: DateTime(), _datetime, _s(type="string", format="date-time"), DATE_OPS, dump=_dump_datetime, widget="datetime"
        ),
        FieldType("enum", lambda f: String(64), _enum, _s(type="string"), EQ_OPS, widget="select"),
        FieldType("multi_enum", lambda f: JsonDoc, _multi_enum, _s(type="array"), frozenset({"has", "is_null"}), "json", widget="multiselect"),
        FieldType("ref", lambda f: IdType, _ref, _s(type="integer", minimum=1), EQ_OPS, "integer", widget="ref"),
        FieldType("user", lambda f: Integer(), _ref, _s(type="integer", minimum=1), EQ_OPS, "integer", widget="user"),
        FieldType("email", lambda f: String(254), _email, _s(type="string", format="email"), TEXT_OPS, mask="email", widget="email"),
        FieldType("cn_mobile", lambda f: String(11), _cn_mobile, _s(type="string", pattern="^1[3-9][0-9]{9}$"), TEXT_OPS, mask="mobile", widget="tel"),
        FieldType("cn_id", lambda f: String(18), _cn_id, _s(type="string", pattern="^[0-9]{17}[0-9X]$"), TEXT_OPS, mask="id", widget="text"),
        FieldType("bank_card", lambda f: String(19), _bank_card, _s(type="string", pattern="^[0-9]{12,19}$"), TEXT_OPS, mask="card", widget="text"),
        FieldType("url", lambda f: String(2048), _url, _s(type="string", format="uri"), TEXT_OPS, widget="url"),
    )
}

# Encrypted fields are stored as ciphertext: only equality through the blind index remains.
ENCRYPTED_OPS = frozenset({"eq", "in", "is_null"})


def field_type(name: str) -> FieldType:
    return FIELD_TYPES[name]


# ---------------------------------------------------------------------- plugin rows

BUILTIN_TYPES = frozenset(FIELD_TYPES)
TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
KNOWN_WIDGETS = frozenset(t.widget for t in FIELD_TYPES.values())
KNOWN_OPS = frozenset().union(*(t.ops for t in FIELD_TYPES.values()))
JSON_READINGS = frozenset({"string", "integer", "numeric", "boolean", "json"})


def plugin_type_problems(name: Any, ftype: Any) -> list[str]:
    """What is wrong with a plugin's row ``name → ftype`` (empty: it may join the table)."""
    if not isinstance(name, str) or not TYPE_NAME.fullmatch(name):
        return [f"field type name {str(name)[:40]!r} must match ^[a-z][a-z0-9_]{{0,31}}$"]
    if name in BUILTIN_TYPES:
        return [f"field type {name!r} is built in"]
    if not isinstance(ftype, FieldType):
        return [f"field type {name!r} must be an engine.fieldtypes.FieldType, not {type(ftype).__name__}"]
    from .security.masking import MASKS  # masking is below this module; imported when a plugin loads

    problems = []
    if ftype.name != name:
        problems.append(f"field type {name!r} is named {ftype.name!r} inside")
    for attr in ("column", "normalize", "schema", "dump"):
        if not callable(getattr(ftype, attr)):
            problems.append(f"field type {name!r}: {attr} must be callable")
    if not isinstance(ftype.ops, frozenset) or not ftype.ops or not ftype.ops <= KNOWN_OPS:
        problems.append(f"field type {name!r}: ops must be a non-empty frozenset of {sorted(KNOWN_OPS)}")
    if ftype.json_as not in JSON_READINGS:
        problems.append(f"field type {name!r}: json_as must be one of {sorted(JSON_READINGS)}")
    if ftype.mask is not None and ftype.mask not in MASKS:
        problems.append(f"field type {name!r}: mask must be one of {sorted(MASKS)} or None")
    if ftype.widget not in KNOWN_WIDGETS:
        problems.append(f"field type {name!r}: widget must be one of {sorted(KNOWN_WIDGETS)}")
    return problems


def install_plugin_types(types: Mapping[str, FieldType]) -> None:
    """Make ``types`` the plugin rows of :data:`FIELD_TYPES` (replacing earlier plugin rows; the
    built-in rows stay). The plugin manager calls this with rows it has checked."""
    for name, ftype in types.items():
        problems = plugin_type_problems(name, ftype)
        if problems:
            raise ValueError("; ".join(problems))
    for name in [n for n in FIELD_TYPES if n not in BUILTIN_TYPES]:
        del FIELD_TYPES[name]
    FIELD_TYPES.update(types)


def known_field_type(name: Any) -> bool:
    """Whether ``name`` is a row of the table: a built-in type, or a plugin's once the plugin
    manager has loaded (loaded here if it has not yet, so a plugin type in stored metadata is
    known when the metadata is first read)."""
    if not isinstance(name, str):
        return False
    if name in FIELD_TYPES:
        return True
    from .plugins import plugin_manager  # the plugin rows join the table when the manager loads

    plugin_manager()
    return name in FIELD_TYPES
