"""Export records to CSV or XLSX: the reader's row scope and masking, formula-safe, streamed.

Rows come from the records service page by page (keyset paging, 500 a page), so an export sees
exactly what the reader may see, masked as they would see it, and memory stays flat however
many rows there are. Every text cell that a spreadsheet would run as a formula (starting with
``= + - @``, a tab, CR or NUL, also after leading spaces) is prefixed with ``'``. The export is
audited when it finishes, with its filter and row count.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from openpyxl import Workbook

from ..errors import BadRequest
from ..meta.spec import EntitySpec, FieldSpec
from ..security.principal import Principal
from ..services.records import RecordService

__all__ = ["neutralise", "export_csv", "export_xlsx", "EXPORT_PAGE", "FORMATS"]

EXPORT_PAGE = 500
FORMATS = {"csv": "text/csv; charset=utf-8", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")


def neutralise(value: Any) -> Any:
    """A cell value a spreadsheet will show, never execute."""
    if isinstance(value, str) and value.lstrip(" ").startswith(_TRIGGERS):
        return "'" + value
    return value


def _plan(records: RecordService, principal: Principal, entity: str, fields: list[str] | None) -> tuple[EntitySpec, list[FieldSpec]]:
    records.authz.require(principal, entity, "export")
    v = records.view(principal, entity)
    visible = {f.name: f for f in v.visible()}
    if fields:
        unknown = [n for n in fields if n not in visible]
        if unknown:
            raise BadRequest(f"unknown field {unknown[0][:64]!r} in fields", [{"field": unknown[0][:64], "message": "unknown field"}])
        return v.spec, [visible[n] for n in fields]
    return v.spec, list(visible.values())


def _cell(f: FieldSpec, value: Any, *, typed: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if typed and f.type == "decimal" and isinstance(value, str) and "*" not in value:
        return Decimal(value)
    if typed and f.type in ("integer", "ref", "user") and isinstance(value, int):
        return value
    if isinstance(value, bool):
        return "是" if value else "否"
    if f.type in ("decimal", "integer") and not isinstance(value, str):
        return value
    return neutralise(str(value))


def _rows(records: RecordService, principal: Principal, entity: str, names: list[str], **query: Any) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        page = records.list(principal, entity, fields=names, limit=EXPORT_PAGE, cursor=cursor, **query)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return


def _audit(records: RecordService, principal: Principal, entity: str, fmt: str, count: int, query: dict[str, Any]) -> None:
    with records.runtime.begin() as conn:
        records.audit(conn, principal, "export", entity, None, {"format": fmt, "rows": count, "filter": query.get("filter"), "consent": query.get("consent")})


def export_csv(
    records: RecordService, principal: Principal, entity: str, *, fields: list[str] | None = None, lang: str = "zh", **query: Any
) -> Iterator[bytes]:
    """UTF-8 CSV with a BOM (Excel in Chinese locales needs it to read UTF-8)."""
    spec, cols = _plan(records, principal, entity, fields)
    names = [f.name for f in cols]

    def generate() -> Iterator[bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["id", *[neutralise(f.label.get(lang)) for f in cols]])
        yield b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")
        count = 0
        for item in _rows(records, principal, entity, names, **query):
            buf.seek(0)
            buf.truncate()
            writer.writerow([item["id"], *[_cell(f, item.get(f.name), typed=False) for f in cols]])
            count += 1
            yield buf.getvalue().encode("utf-8")
        _audit(records, principal, entity, "csv", count, query)

    return generate()


def export_xlsx(
    records: RecordService, principal: Principal, entity: str, *, fields: list[str] | None = None, lang: str = "zh", **query: Any
) -> Iterator[bytes]:
    """An XLSX built with openpyxl's write-only mode into a spooled file, then streamed."""
    spec, cols = _plan(records, principal, entity, fields)
    names = [f.name for f in cols]

    def generate() -> Iterator[bytes]:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet(title=spec.label.get(lang)[:31] or spec.name)
        ws.append(["id", *[neutralise(f.label.get(lang)) for f in cols]])
        count = 0
        for item in _rows(records, principal, entity, names, **query):
            ws.append([item["id"], *[_cell(f, item.get(f.name), typed=True) for f in cols]])
            count += 1
        with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as fh:
            wb.save(fh)
            fh.seek(0)
            while chunk := fh.read(256 * 1024):
                yield chunk
        _audit(records, principal, entity, "xlsx", count, query)

    return generate()
