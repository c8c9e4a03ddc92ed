"""Example field type: ``cn_uscc``, the Unified Social Credit Code of an organisation
(统一社会信用代码, GB 32100-2015) — the 18-character number on every business licence, used for
corporate customers, employers and counterparties.

Switch it on with ``FINCRM_PLUGINS=plugins.cn_uscc``; then any entity may declare

    {"name": "uscc", "type": "cn_uscc", "label": {"zh": "统一社会信用代码", "en": "USCC"}, "unique": true}

Input is folded like the built-in identifiers (full-width characters to ASCII, spaces and
hyphens dropped, letters upper-cased) and checked with python-stdnum's ``stdnum.cn.uscc``:
18 characters, eight digits (registration authority, entity type, region) then ten of the
code's alphabet (digits and capitals without I, O, S, V, Z), and the GB 32100 check character.
Stored as its 18 characters; filters take the text operators; the mask rule is ``id`` (first
three and last four characters, like an identity number) for fields marked C2.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String
from stdnum.cn import uscc
from stdnum.exceptions import InvalidChecksum, ValidationError

from engine.errors import FieldError
from engine.fieldtypes import TEXT_OPS, FieldType, normalize_text
from engine.meta.spec import FieldSpec
from engine.plugins import hookimpl

__all__ = ["CN_USCC", "fincrm_field_types", "normalize"]

NAME = "cn_uscc"
PATTERN = "^[0-9]{8}[0-9A-HJ-NPQRTUWXY]{10}$"  # stdnum.cn.uscc's format, as JSON Schema shows it


def normalize(value: Any, f: FieldSpec) -> str:
    """The code's 18 characters, or FieldError saying what is wrong (never echoing the value)."""
    text = re.sub(r"[\s\-]", "", normalize_text(value)).upper()
    if not text:
        raise FieldError("must be a unified social credit code")
    try:
        return str(uscc.validate(text))
    except InvalidChecksum:
        raise FieldError("fails the GB 32100 check character") from None
    except ValidationError:
        raise FieldError("must be an 18-character unified social credit code (GB 32100)") from None


def _schema(f: FieldSpec) -> dict[str, Any]:
    return {"type": "string", "pattern": PATTERN, "minLength": 18, "maxLength": 18, "x-field-type": NAME}


CN_USCC = FieldType(NAME, lambda f: String(18), normalize, _schema, TEXT_OPS, mask="id", widget="text")


@hookimpl
def fincrm_field_types() -> dict[str, FieldType]:
    return {NAME: CN_USCC}
