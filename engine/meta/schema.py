"""Validate metadata documents against the meta-schemas in ``metadata/schema``.

Validators are compiled once per process (``check_schema`` never runs on the hot path) and
every error is collected with its JSON pointer, so a refused document lists all its problems.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from ..errors import MetadataInvalid

__all__ = ["SCHEMA_DIR", "METADATA_DIR", "schema_errors", "validator_errors", "check_document", "pointer"]

METADATA_DIR = Path(__file__).resolve().parents[2] / "metadata"
SCHEMA_DIR = METADATA_DIR / "schema"
_BASE = "https://fincrm.local/schema/"


def pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


FIELD_TYPE_FORMAT = "fincrm-field-type"  # field.json's ``type``: a row of the field-type table


def _is_field_type(value: object) -> bool:
    from ..fieldtypes import known_field_type  # the table, plugin rows included (imported late: it imports meta.spec)

    return not isinstance(value, str) or known_field_type(value)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    checker.checks(FIELD_TYPE_FORMAT)(_is_field_type)
    return checker


@lru_cache(maxsize=None)
def _validators() -> dict[str, Draft202012Validator]:
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(doc)  # once, at load: a broken meta-schema fails fast
        resources.append((doc["$id"], Resource.from_contents(doc)))
    registry: Registry[Any] = Registry().with_resources(resources)
    out = {}
    for uri, resource in resources:
        name = uri.removeprefix(_BASE).removesuffix(".json")
        out[name] = Draft202012Validator(
            resource.contents, registry=registry, format_checker=_format_checker()
        )
    return out


def schema_errors(kind: str, doc: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, str]]:
    """Every meta-schema violation of ``doc`` as ``{"pointer", "message"}``, in document order."""
    validators = _validators()
    if kind not in validators:
        return [{"pointer": pointer(prefix + ("kind",)), "message": f"unknown metadata kind {kind!r}"}]
    return validator_errors(validators[kind], doc, prefix)


def validator_errors(validator: Draft202012Validator, doc: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, str]]:
    """Every violation of ``validator``'s schema by ``doc`` (e.g. a plugin action's params), the
    same way as :func:`schema_errors`."""
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        errors.append({"pointer": pointer(prefix + tuple(err.absolute_path)), "message": _message(err)})
    return errors


def _message(err: Any) -> str:
    # jsonschema echoes whole instances; keep messages short and free of submitted values
    if err.validator == "additionalProperties":
        return str(err.message).split(" were unexpected")[0].replace("Additional properties are not allowed ", "unknown property ")
    if err.validator in ("enum", "const"):
        return f"must be one of {err.validator_value!r}" if err.validator == "enum" else f"must be {err.validator_value!r}"
    if err.validator == "pattern":
        return f"does not match {err.validator_value!r}"
    if err.validator == "required":
        return str(err.message)
    if err.validator == "type":
        return f"must be of type {err.validator_value}"
    if err.validator == "format" and err.validator_value == FIELD_TYPE_FORMAT:
        from ..fieldtypes import FIELD_TYPES

        return f"unknown field type; one of {sorted(FIELD_TYPES)!r}"
    return str(err.message)[:300]


def check_document(kind: str, doc: Any) -> None:
    errors = schema_errors(kind, doc)
    if errors:
        raise MetadataInvalid(f"{kind} document is invalid", errors)
