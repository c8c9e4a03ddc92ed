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
    # metadata changes (engine/services/meta.py, engine/meta/registry.py)
    "already a column": "已是独立列",
    "already exists": "已存在",
    "cannot be changed": "不可修改",
    "cannot be promoted": "不能转为独立列",
    "not allowed here": "此处不允许",
    "scale cannot exceed precision": "小数位数不能超过总位数",
    "set by the entity definition: give it another value": "由实体定义设置：请改为其他值",
    "unique, searchable and indexed fields must use column storage": "唯一、可检索或建索引的字段须使用独立列存储",
    "only column-stored fields can be indexed": "只有独立列存储的字段可以建索引",
    "only column-stored fields can be indexed: promote the field first": "只有独立列存储的字段可以建索引：请先转为独立列",
    "options of a multi_enum field cannot be removed": "多选字段的选项不能删除",
    "a unique encrypted field needs a blind index (searchable: true)": "唯一的加密字段需要盲索引（searchable: true）",
    "must name a field of type user": "须指定用户类型的字段",
    "field definition is invalid": "字段定义有误",
    "entity document is invalid": "实体定义有误",
    "layout is invalid": "布局设置有误",
    "metadata is invalid": "元数据有误",
    "nothing to change: give field_order, list_columns, sections or tag_sets": "没有要保存的修改",
    "storage can only change from json to column, on its own (promote)": "存储方式只能由 JSON 单独转为独立列（转列操作）",
    "your role may not configure any entity": "您的角色无权配置任何业务对象",
    "access request was decided by someone else": "该申请已由他人处理",
    # approval flows (engine/flows/approval.py)
    "is changed only through the flow's transitions": "只能通过流程操作变更",
    "the record does not meet this transition's conditions": "记录尚不满足此操作的条件",
    "approval decisions are made by people, not by the system": "审批须由人作出",
    "you have already approved this step; it needs another approver": "您已同意过此环节，还需其他审批人同意",
    "your approver slot of this step is already approved by someone else": "您所在的审批席位已由他人同意",
    "comment must be a string": "审批意见应为文本",
    "no self-approval": "不能审批自己的申请",
    "not an approver of this step": "不是此环节的审批人",
    # import (engine/io/sources.py, engine/io/importer.py, engine/web/imports_api.py, engine/web/import_page.py)
    "the file is empty": "文件是空的",
    "this is a binary file, not CSV or XLSX": "这是二进制文件，不是 CSV 或 XLSX",
    "Excel 97-2003 (.xls) files are not supported: save the sheet as .xlsx or CSV (UTF-8)": "不支持 Excel 97-2003（.xls）文件：请另存为 .xlsx 或 CSV（UTF-8）",
    "the file's encoding is neither UTF-8 nor GBK/GB18030: save it as CSV (UTF-8)": "文件编码既不是 UTF-8 也不是 GBK/GB18030：请另存为 CSV（UTF-8）",
    "the workbook has no sheet": "工作簿中没有工作表",
    "invalid import options": "导入选项有误",
    "unknown option": "未知选项",
    "must be insert or upsert": "应为“仅新增”或“新增或更新”",
    "must be skip, update or error": "应为“跳过”“更新”或“报错”",
    "must be skip_row or abort": "应为“跳过该行”或“整体放弃”",
    "must be a field name": "应为字段名",
    "must be an integer from 1 to 50000": "应为1至50000的整数",
    "must be a JSON object {column header: field name or null}": "应为 JSON 对象 {列标题: 字段名或 null}",
    "the file's columns cannot be imported as they are": "文件的列无法按现状导入，请调整列对应关系",
    "no such column in the file": "文件中没有此列",
    "the file has no id column": "文件中没有编号（id）列",
    "must be id or a unique field": "应为编号或唯一字段",
    "upsert needs a key: an id column or a unique field": "“新增或更新”需要匹配依据：编号列或唯一字段的列",
    "import job not found": "导入任务不存在",
    "the import file is gone or changed since the job started": "导入文件在任务开始后已被删除或修改",
    "the account that started this import is disabled": "发起此导入的账号已停用",
    "send the file as multipart form field 'file'": "请选择要上传的文件",
    "looks like a spreadsheet formula: import values, not formulas": "疑似表格公式：只能导入数值，不能导入公式",
    "changed": "已修改",
    "your role may not import any entity": "您的角色无权导入任何业务对象",
    "the file of this import job is no longer kept": "此导入任务的文件已不再保留",
    "missing or invalid CSRF token for a cookie-authenticated request": "页面已过期，请刷新后重试",
}

_PATTERNS = [
    (r"unknown field type; one of (.+)", r"未知的字段类型，可选：\1"),
    (r"unknown action '([^']+)'.*", r"未知的动作类型“\1”"),
    (r"package '([^']+)' is invalid", r"模板包“\1”有误"),
    (r"package '([^']+)' is not published", r"模板包“\1”尚未发布"),
    (r"unknown package '([^']+)'.*", r"未知的模板包“\1”"),
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
    (r"(\d+) records fall outside the new bounds", r"有\1条记录超出新的取值范围"),
    (r"(\d+) records have longer values than (\d+) characters", r"有\1条记录长度超过\2个字符"),
    (r"(\d+) records have no value, so the field cannot become required", r"有\1条记录没有值，不能设为必填"),
    (r"(\d+) records use the options being removed", r"有\1条记录使用了要删除的选项"),
    (r"a column-stored (\w+) field cannot become (\w+)", r"独立列存储的\1字段不能改为\2"),
    (r"changing (\w+) to (\w+) could lose data; add a new field and migrate instead", r"由\1改为\2可能丢失数据：请新增字段后迁移"),
    (r"'(\w+)' cannot be changed on an existing field", r"已有字段的\1不可修改"),
    (r"(\w+) fields stay in JSON storage", r"\1字段只能使用 JSON 存储"),
    (r"field '(\w+)' is already a column", r"字段\1已是独立列"),
    (r"'(\w+)' is a reserved name", r"\1是保留名称"),
    (r"duplicate field '(\w+)'", r"字段\1重复"),
    (r"duplicate section '(\w+)'", r"分组\1重复"),
    (r"duplicate tag set '(\w+)'", r"标签集\1重复"),
    (r"duplicate tag '(.+)'", r"标签\1重复"),
    (r"column '(\w+)' is listed twice", r"列\1重复"),
    (r"field '(\w+)' is already in section '(\w+)'", r"字段\1已在分组\2中"),
    (r"unknown entity '(\w+)'", r"未知业务对象\1"),
    (r"entity '(\w+)' already exists", r"业务对象\1已存在"),
    (r"no version (\d+) of (\w+) '(\w+)'", r"\3没有第\1版"),
    (r"unknown field '(\w+)'.*", r"未知字段\1"),
    (r"the '(\w+)' transition needs a comment", r"此操作须填写审批意见"),
    (r"your role may not take the '(\w+)' transition", r"您的角色无权执行此操作"),
    (r"(\w+) \d+ is in state '(\w+)': the '(\w+)' transition does not leave it", r"记录当前状态不允许此操作，请刷新后重试"),
    (r"you cannot (approve|reject) a (\w+) you submitted, own or created: another approver must decide", r"不能审批自己提交、负责或创建的记录，请由其他审批人处理"),
    (r"you are not an approver of the '(\w+)' step", r"您不是此审批环节的审批人"),
    (r"this (\w+) does not meet the conditions of the '(\w+)' transition", r"记录尚不满足此操作的条件"),
    (r"your role may not (\w+) this (\w+)", r"您的角色无权对此记录执行此操作"),
    (r"(\w+) is changed only through the flow's transitions.*", r"状态只能通过流程操作变更，请使用详情页的流程按钮"),
    (r"a new (\w+) starts in '(\w+)': (\w+) is changed only through the flow's transitions", r"新记录须从初始状态开始，\3只能通过流程操作变更"),
    (r"starts as '(\w+)' and is changed only through the flow's transitions", r"须从初始状态开始，只能通过流程操作变更"),
    (r"comment is longer than (\d+) characters", r"审批意见超过\1个字符"),
    # import
    (r"row (\d+): the file is not valid CSV \((.+)\)", r"第\1行：不是有效的 CSV 文件（\2）"),
    (r"not a readable XLSX file \((\w+)\)", r"无法读取的 XLSX 文件（\1）"),
    (r"the file has (\d+) columns; at most (\d+) are read", r"文件有\1列，最多读取\2列"),
    (r"column (\d+): the header is longer than 200 characters", r"第\1列：列标题超过200个字符"),
    (r"duplicate column header \(columns (\d+) and (\d+)\)", r"列标题重复（第\1列和第\2列）"),
    (r"maps to '(\w+)' like column '(.+)'", r"与列“\2”对应同一字段（\1）"),
    (r"field '(\w+)' is read-only for you", r"您无权修改字段\1"),
    (r"required field (.+) / (.+) has no column", r"必填字段“\1”没有对应的列"),
    (r"no column matches a field of (\w+)", r"没有任何一列能对应到\1的字段"),
    (r"the file has no column for '(\w+)'", r"文件中没有字段\1的列"),
    (r"the upload is larger than (\d+) bytes", r"上传的文件超过\1字节"),
    (r"at most (\d+) bytes", r"最多\1字节"),
    (r"(\d+) rows have errors: nothing was imported", r"\1行有错误：未导入任何数据"),
    (r"longer than (\d+) characters", r"超过\1个字符"),
    (r"no user called '(.+)'", r"没有名为“\1”的用户"),
    (r"duplicate of row (\d+)", r"与第\1行重复"),
]
_COMPILED = [(re.compile(p + r"\Z"), r) for p, r in _PATTERNS]
_KEYED = re.compile(r"(?P<key>[a-z_][a-z0-9_]*): (?P<rest>.+)\Z", re.S)


_REFUSED = re.compile(r"(change to (?P<what>[\w.]+)|field '(?P<field>\w+)' cannot be archived): (?P<reasons>.+)\Z")


def translate(message: str, lang: str) -> str:
    """``message`` in ``lang`` ("zh" or "en"); unknown messages come back unchanged."""
    if lang != "zh" or not message:
        return message
    refused = _REFUSED.match(message.replace(" refused: ", ": "))
    if refused:
        head = f"修改{refused['what']}被拒绝" if refused["what"] else f"字段{refused['field']}不能归档"
        return head + "：" + "；".join(translate(r, lang) for r in refused["reasons"].split("; "))
    fixed = _FIXED.get(message)
    if fixed is not None:
        return fixed
    for pattern, repl in _COMPILED:
        if pattern.match(message):
            return pattern.sub(repl, message)
    keyed = _KEYED.match(message)  # "<field>: <message>", as forms list errors of no input
    if keyed and translate(keyed["rest"], lang) != keyed["rest"]:
        return f"{keyed['key']}：{translate(keyed['rest'], lang)}"
    return message
