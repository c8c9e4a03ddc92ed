"""Reading import files: what a bank's spreadsheets really look like.

A file is recognised by its bytes, never by its name: an XLSX is a zip (``PK\\x03\\x04``), an
old ``.xls`` is an OLE container (refused with advice), anything with NUL bytes and no UTF-16
byte-order mark is binary (refused). Text is decoded as UTF-8 (with or without BOM), UTF-16
(with BOM, as Excel's "Unicode text" writes it) or GB18030 — the superset of GBK that Chinese
Excel exports use — checked over the whole file before a row is read, so a job never dies half
way on an undecodable byte. The delimiter (comma, tab, semicolon, pipe) is sniffed.

Cells come out as text (CSV) or as openpyxl gives them (XLSX: str, int, float, datetime, bool);
the importer coerces them per field. The header is the first non-empty row.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import re
import datetime as dt
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadRequest

__all__ = ["Source", "open_source", "split_lines", "MAX_COLUMNS", "MAX_CELL"]

MAX_COLUMNS = 500
MAX_CELL = 32_767  # Excel's own cell limit; longer text is no spreadsheet cell
_SAMPLE = 64 * 1024
_CHUNK = 1 << 20  # characters of text read at a time
_ZIP = b"PK\x03\x04"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

csv.field_size_limit(MAX_CELL + 1)


def _file_error(message: str) -> BadRequest:
    return BadRequest(message, [{"field": "file", "message": message}])


@dataclass
class Source:
    """An import file whose format, encoding and header are known; rows are read lazily."""

    path: Path
    format: str  # csv | xlsx
    encoding: str | None = None
    delimiter: str = ","
    headers: list[str] = field(default_factory=list)
    header_row: int = 1  # 1-based row number of the header in the file
    # set by ``count``: a CSV text without quotes, NULs or lone carriage returns, whose rows
    # are its lines (``line_batches``)
    plain: bool = False

    def rows(self) -> Iterator[tuple[int, list[Any]]]:
        """(row number in the file, cells) for every non-empty row after the header."""
        if self.format == "csv":  # cells are strings: a row of blanks joins to blank
            with self._csv() as reader:
                header = self.header_row
                for cells in reader:
                    if reader.line_num > header and "".join(cells).strip():
                        yield reader.line_num, cells
            return
        for number, cells in _xlsx_rows(self.path):
            if number > self.header_row and _filled(cells):
                yield number, cells

    def count(self) -> int:
        """The number of rows ``rows`` yields (see ``_count_lines`` for most CSV files)."""
        if self.format != "csv":
            return sum(1 for _ in self.rows())
        with open(self.path, encoding=self.encoding, newline="") as fh:
            lines = _count_lines(fh, self.delimiter)
        if lines is not None:
            self.plain = True
            return lines - 1  # the header is the first non-empty row: the others follow it
        with self._csv() as reader:
            return sum(1 for cells in reader if "".join(cells).strip()) - 1

    def line_batches(self, size: int, skip: int) -> Iterator[tuple[int, list[str]]]:
        """A plain CSV text (see ``count``) as (number of the first line, lines) holding ``size``
        of the rows ``rows`` yields each (the last may hold fewer), after the first ``skip``
        rows; blank lines among them stay in (``split_lines`` leaves them out). Lines are not
        split into cells here: an import's worker processes do that (``split_lines``), and
        sending them one text line per row costs a fraction of sending cells."""
        assert self.plain, "line_batches reads a file count() found plain"
        delimiter = self.delimiter
        # a line that may be blank: empty, or starting with white space or the delimiter (a
        # pattern that starts with a plain character is searched for fast)
        starts = f"[\\s{re.escape(delimiter)}]"
        maybe_blank = re.compile(rf"\n{starts}")
        first_blank = re.compile(starts)
        batch: list[str] = []
        first = number = self.header_row + 1  # the line number of batch[0]; of the next line
        rows = 0
        with open(self.path, encoding=self.encoding, newline="") as fh:
            for text in _texts_after(fh, self.header_row):
                lines = text.split("\n")
                if text and not (first_blank.match(text) or maybe_blank.search(text) or text.endswith("\n")):  # every line a row: slices
                    at = min(skip, len(lines))
                    skip -= at
                    number += at
                    if not batch:
                        first = number
                    while at < len(lines):
                        taken = lines[at : at + size - rows]
                        batch += taken
                        at += len(taken)
                        number += len(taken)
                        rows += len(taken)
                        if rows == size:
                            yield first, batch
                            batch, rows, first = [], 0, number
                    continue
                for line in lines:
                    number += 1
                    if _blank(line, delimiter):
                        if batch:
                            batch.append(line)
                        else:
                            first = number
                    elif skip:
                        skip -= 1
                        first = number
                    else:
                        batch.append(line)
                        rows += 1
                        if rows == size:
                            yield first, batch
                            batch, rows, first = [], 0, number
        if rows:
            yield first, batch

    def _raw_rows(self) -> Iterator[tuple[int, list[Any]]]:
        if self.format == "xlsx":
            yield from _xlsx_rows(self.path)
            return
        with self._csv() as reader:
            for cells in reader:
                yield reader.line_num, cells

    @contextlib.contextmanager
    def _csv(self) -> Iterator[Any]:
        with open(self.path, encoding=self.encoding, newline="") as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            try:
                yield reader
            except csv.Error as exc:
                raise _file_error(f"row {reader.line_num + 1}: the file is not valid CSV ({exc})") from None


def _count_lines(fh: Any, delimiter: str) -> int | None:
    """The non-blank rows of a CSV text without quote characters (what most exports write),
    counted by its lines in a fraction of the time the CSV reader takes; ``None`` for a text
    with a quote (a quoted cell may hold a line break), a lone carriage return or a NUL (the
    reader's own error), which the reader counts. A row is blank when only delimiters and
    white space remain, as ``Source.rows`` judges it: only a line starting with one of those
    can be, and only those lines are looked at."""
    edge = re.compile(rf"\n(?=[\s{re.escape(delimiter)}])")  # a line starting so (its \n before it)
    rows = 0
    tail = "\n"  # as if a line ended before the first
    while chunk := fh.read(_CHUNK):
        text = tail + chunk
        if '"' in text or "\x00" in text:
            return None
        crs = text.count("\r")
        if crs and crs != text.count("\r\n") + text.endswith("\r"):  # a lone CR ends a line for the reader
            return None
        cut = text.rfind("\n")  # the lines that end before it are complete; it starts the tail
        rows += text.count("\n", 0, cut)
        for m in edge.finditer(text, 0, cut + 1):
            start = m.start() + 1
            line = text[start : text.index("\n", start)]
            rows -= _blank(line, delimiter)
        text, tail = "", text[cut:]
    if tail.endswith("\r"):
        return None  # a lone CR at the very end
    return rows + (not _blank(tail, delimiter))


def _texts_after(fh: Any, header_row: int) -> Iterator[str]:
    """The lines of a plain CSV text after its first ``header_row`` lines, a few thousand at a
    time: whole lines joined by ``\n`` (CRLF line ends become LF), never an empty text for
    no lines."""
    tail = ""
    skip = header_row
    while chunk := fh.read(_CHUNK):
        text = tail + chunk
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # a CR at the very end is kept in the tail
        cut = text.rfind("\n")
        if cut < 0:
            tail = text
            continue
        text, tail = text[:cut], text[cut + 1 :]
        if skip:
            count = text.count("\n") + 1
            if skip >= count:
                skip -= count
                continue
            at = 0
            for _ in range(skip):
                at = text.index("\n", at) + 1
            text, skip = text[at:], 0
        yield text
    if tail and not skip:
        yield tail


def _filled(cells: list[Any]) -> bool:
    """Whether a row has a cell with more than white space in it."""
    return any(c not in (None, "") and not (isinstance(c, str) and not c.strip()) for c in cells)


def _blank(line: str, delimiter: str) -> bool:
    """Whether a line of a plain CSV text is a row ``Source.rows`` skips (only delimiters and
    white space)."""
    return not line.replace(delimiter, "").strip()


def split_lines(first: int, lines: list[str], delimiter: str) -> list[tuple[int, list[str]]]:
    """``Source.line_batches`` lines → (row number, cells) as ``Source.rows`` gives them."""
    return [(number, line.split(delimiter)) for number, line in enumerate(lines, first) if not _blank(line, delimiter)]


def _xlsx_rows(path: Path) -> Iterator[tuple[int, list[Any]]]:
    from openpyxl import load_workbook

    fh = open(path, "rb")  # a file object: openpyxl would judge a path by its extension
    try:
        wb = load_workbook(fh, read_only=True, data_only=False)
    except Exception as exc:  # openpyxl raises many kinds (zipfile, KeyError, XML errors) for bad files
        fh.close()
        raise _file_error(f"not a readable XLSX file ({type(exc).__name__})") from None
    try:
        ws = wb.active
        if ws is None:
            raise _file_error("the workbook has no sheet")
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
            cells = list(values)
            while cells and cells[-1] in (None, ""):
                cells.pop()
            yield number, cells
    finally:
        wb.close()
        fh.close()


def open_source(path: Path) -> Source:
    """Recognise ``path`` and read its header, or raise a 400 that says what is wrong."""
    size = path.stat().st_size
    if size == 0:
        raise _file_error("the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(_SAMPLE)
    if head.startswith(_ZIP):
        src = Source(path, "xlsx")
    elif head.startswith(_OLE):
        raise _file_error("Excel 97-2003 (.xls) files are not supported: save the sheet as .xlsx or CSV (UTF-8)")
    else:
        encoding = _detect_encoding(path, head)
        sample = head.decode(encoding, errors="ignore")
        src = Source(path, "csv", encoding=encoding, delimiter=_sniff_delimiter(sample))
    _read_header(src)
    return src


def _detect_encoding(path: Path, head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        candidates = ["utf-8-sig"]
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ["utf-16"]
    else:
        if b"\x00" in head:
            raise _file_error("this is a binary file, not CSV or XLSX")
        candidates = ["utf-8", "gb18030"]
    for encoding in candidates:
        if _decodes(path, encoding):
            if _looks_binary(head.decode(encoding, errors="ignore")):
                raise _file_error("this is a binary file, not CSV or XLSX")
            return encoding
    raise _file_error("the file's encoding is neither UTF-8 nor GBK/GB18030: save it as CSV (UTF-8)")


def _decodes(path: Path, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _looks_binary(text: str) -> bool:
    """Text full of control or unassigned characters is a binary file that happened to decode."""
    if not text:
        return False
    bad = sum(1 for ch in text[:4096] if (unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs") and ch not in "\r\n\t"))
    return bad > max(3, len(text[:4096]) // 100)


def _sniff_delimiter(sample: str) -> str:
    lines = [ln for ln in sample.splitlines()[:20] if ln.strip()]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=",\t;|").delimiter
    except csv.Error:
        return "\t" if "\t" in lines[0] and "," not in lines[0] else ","


def _read_header(src: Source) -> None:
    for number, cells in src._raw_rows():
        if not _filled(cells):  # the header is the first row ``Source.rows`` would not skip
            continue
        if len(cells) > MAX_COLUMNS:
            raise _file_error(f"the file has {len(cells)} columns; at most {MAX_COLUMNS} are read")
        headers = []
        for i, c in enumerate(cells):
            text = header_text(c)
            if len(text) > 200:
                raise _file_error(f"column {i + 1}: the header is longer than 200 characters")
            headers.append(text)
        src.headers = headers
        src.header_row = number
        return
    raise _file_error("the file is empty")


def header_text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, (dt.date, dt.datetime)):
        return cell.isoformat()
    return unicodedata.normalize("NFKC", str(cell)).strip()
