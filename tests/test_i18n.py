"""Every message the field types can raise reads in Chinese on the pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.i18n import translate

SOURCE = (Path(__file__).resolve().parents[1] / "engine" / "fieldtypes.py").read_text(encoding="utf-8")
FIXED = sorted(set(re.findall(r'FieldError\("([^"{]+)"', SOURCE)))


@pytest.mark.parametrize("message", FIXED)
def test_each_fixed_field_message_has_chinese(message: str) -> None:
    zh = translate(message, "zh")
    assert zh != message and re.search(r"[\u4e00-\u9fff]", zh)
    assert translate(message, "en") == message


@pytest.mark.parametrize(
    "message,expected",
    [
        ("has more than 2 decimal places", "小数位超过2位"),
        ("is longer than 100 characters", "超过100个字符"),
        ("must be at least 0", "不能小于0"),
        ("customer 12 was changed by someone else; reload and try again", "此记录已被他人修改，请刷新后重试"),
        ("something new", "something new"),  # unknown text is kept, never lost
    ],
)
def test_patterns_and_unknown_messages(message: str, expected: str) -> None:
    assert translate(message, "zh") == expected
