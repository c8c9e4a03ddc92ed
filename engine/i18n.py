"""Simplified Chinese for the engine's user-facing messages.

The engine raises its errors in English (the API's documented language, stable for clients and
logs). Pages show them in the user's language: :func:`translate` maps each known message (fixed
text or a pattern with placeholders) to its Chinese form and leaves unknown text as it is, so a
new message is never lost, only untranslated. One table, next to nothing else.
"""

from __future__ import annotations

import re

__all__ = ["translate"]

_FIXED = {
    # field validation (engine/fieldtypes.py)
    "contains control characters": "含有控制字符",
    "does not have the required format": "格式不符合要求",
    "does not hold a real birth date": "出生日期不存在",
    "does not start with a known administrative division code": "行政区划代码无效",
    "fails the GB 11643 check digit": "校验码错误（GB 11643）",
    "fails the card number check digit (Luhn)": "卡号校验位错误（Luhn）",
    "has a birth date in the future": "出生日期晚于今天",
    "is not a valid e-mail address": "不是有效的电子邮箱地址",
    "is not an assigned mainland mobile number range": "不是已分配的大陆手机号段",
    "is not one of the allowed options": "不在可选项中",
    "is out of range": "超出范围",
    "must be 12 to 19 digits": "应为12至19位数字",
    "must be a date (YYYY-MM-DD)": "应为日期（YYYY-MM-DD）",
    "must be a date-time (ISO 8601)": "应为日期时间（ISO 8601）",
    "must be a decimal number": "应为数字",
    "must be a list of options": "应为选项列表",
    "must be a record id": "应为记录编号",
    "must be a string": "应为文本",
    "must be an 11-digit mainland mobile number": "应为11位大陆手机号码",
    "must be an 18-character resident ID number": "应为18位居民身份证号码",
    "must be an http(s) URL": "应为 http(s) 网址",
    "must be an integer": "应为整数",
    "must be true or false": "应为是或否",
    # records service
    "is required": "必填",
    "is read-only": "只读",
    "is read-only for you": "您无权修改",
    "unknown field": "未知字段",
    "is already used by another record": "已被其他记录使用",
    "still references this record": "仍有记录引用此记录",
    "out of range": "超出范围",
    "record not found": "记录不存在",
    "invalid tag": "标签无效",
    "search text must be 1 to 100 characters": "搜索内容应为1至100个字符",
    "cursor is not valid": "分页游标无效",
    # break-glass access requests (engine/services/access.py)
    "must explain the need in 10 to 1000 characters": "请说明查看原因（10至1000字）",
    "must be a non-empty list of field names": "请至少选择一个字段",
    "access request is invalid": "查看申请填写有误",
    "access request not found": "查看申请不存在",
    "you cannot decide your own access request": "不能审批自己的申请",
    "access request was decided by someone else": "该申请已由他人处理",
}

_PATTERNS = [
    (r"has more than (\d+) digits", r"超过\1位数字"),
    (r"has more than (\d+) decimal places", r"小数位超过\1位"),
    (r"is longer than (\d+) characters", r"超过\1个字符"),
    (r"must be at least (.+)", r"不能小于\1"),
    (r"must be at most (.+)", r"不能大于\1"),
    (r"must be on or after (.+)", r"不能早于\1"),
    (r"must be on or before (.+)", r"不能晚于\1"),
    (r"(\w+) has invalid values", r"填写有误，请修正标红的字段"),
    (r"(\w+) refers to missing records", r"引用的记录不存在"),
    (r"(\w+) would duplicate a unique value", r"与已有记录重复"),
    (r"(\w+) \d+ was changed by someone else.*", r"此记录已被他人修改，请刷新后重试"),
    (r"(\w+) \d+ not found", r"记录不存在"),
    (r"this change would put the (\w+) outside what you may (\w+)", r"此修改将使记录超出您的权限范围"),
    (r"your role may not (\w+) (\w+)", r"您的角色无权执行此操作"),
    (r"field '(\w+)' cannot be (sorted|filtered).*", r"字段\1不能用于排序或筛选"),
    (r"unknown field '(\w+)'.*", r"未知字段\1"),
]
_COMPILED = [(re.compile(p + r"\Z"), r) for p, r in _PATTERNS]


def translate(message: str, lang: str) -> str:
    """``message`` in ``lang`` ("zh" or "en"); unknown messages come back unchanged."""
    if lang != "zh" or not message:
        return message
    fixed = _FIXED.get(message)
    if fixed is not None:
        return fixed
    for pattern, repl in _COMPILED:
        if pattern.match(message):
            return pattern.sub(repl, message)
    return message
