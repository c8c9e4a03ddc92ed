"""Chinese text: one jieba segmenter for the process (finance dictionary, stop words) and the
complaint keywords of each period — what customers complain about, from ticket text in the
reader's row scope.

Segmenter
    A private ``jieba.Tokenizer`` (never the global ``jieba.dt``, which other code may
    reconfigure) with the bank's user dictionary (``data/finance_dict.txt``: 理财产品, 手续费,
    挂失 …) and stop words (``data/stop_words.txt``: 的, 了, 我, 你们, 客户 …). Loading jieba's
    dictionary takes about a second, so it happens on first use, once per process, under a lock.
    Its prefix-dictionary cache goes to a directory only this user can write (jieba's default
    is a shared ``/tmp/jieba.cache`` that it loads with ``marshal``).

Keywords (``complaint_keywords``)
    One SQL statement reads, for each period, the newest :data:`SAMPLE_PER_PERIOD` tickets of the
    category (subject and the first :data:`DESCRIPTION_CHARS` characters of the description,
    nothing else) with the period's total count; jieba then ranks the words of each period
    with TF-IDF (``extract_tags``) or TextRank. Words are cut without jieba's HMM new-word
    guessing and kept only with noun/verb parts of speech, so a keyword is a dictionary word:
    people's names (``nr``), places (``ns``), Latin strings (``eng``) and numerals never are.
    Digit runs (mobiles, ID and card numbers, amounts, dates), e-mail addresses and links are
    removed before segmentation in any case. Only the ticket fields the reader sees in clear
    are read; a reader who sees neither gets a 403.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import threading
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest, Forbidden
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.query import compile_filter, field_expr
from .nps import bucket_expr, parse_as_of, period_windows, timestamp_expr

__all__ = [
    "DATA_DIR",
    "FINANCE_DICT",
    "STOP_WORDS",
    "Segmenter",
    "segmenter",
    "scrub",
    "complaint_keywords",
    "METHODS",
    "SAMPLE_PER_PERIOD",
    "DESCRIPTION_CHARS",
    "MAX_KEYWORD_PERIODS",
    "MAX_TOP",
]

DATA_DIR = Path(__file__).with_name("data")
FINANCE_DICT = DATA_DIR / "finance_dict.txt"
STOP_WORDS = DATA_DIR / "stop_words.txt"

METHODS = ("tfidf", "textrank")
SAMPLE_PER_PERIOD = 5000  # newest tickets analysed per period (the count covers them all)
DESCRIPTION_CHARS = 1000  # of each description, cut in SQL
MAX_KEYWORD_PERIODS = 24
MAX_TOP = 100
# parts of speech a keyword may have: nouns, verbs, verbal/adjectival nouns, idioms, fixed
# phrases, abbreviations, organisations, other proper nouns
KEYWORD_POS = ("n", "nz", "nt", "vn", "v", "an", "l", "i", "j")
# words every ticket of a category carries, so they say nothing about what it is about (stop
# words for keywords only: a knowledge-base search for 投诉 must still work)
TICKET_WORDS = frozenset({"投诉", "咨询", "工单", "不满", "异议"})

_DIGITS = re.compile(r"[0-9]+(?:[.,:/-][0-9]+)*")
_CONTACTS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|(?:https?://|www\.)\S+", re.ASCII | re.IGNORECASE)


def scrub(text: str) -> str:
    """Text fit for segmentation: NFKC (full-width digits become ASCII first), without links,
    e-mail addresses and digit runs, so no such number can become a word."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTACTS.sub(" ", text)
    return _DIGITS.sub(" ", text)


def _cache_dir() -> str:
    """A directory for jieba's dictionary cache that no other local user can write into."""
    path = Path(tempfile.gettempdir()) / f"fincrm-jieba-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if not path.is_symlink() and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return str(path)
    except OSError:
        pass  # e.g. a read-only temp dir: a fresh private directory below
    return tempfile.mkdtemp(prefix="fincrm-jieba-")


class _WithoutHMM:
    """jieba's POS tokenizer as ``jieba.analyse`` calls it, with HMM new-word guessing off:
    unknown character runs (names, mostly) stay single characters, which never rank."""

    def __init__(self, pos: Any) -> None:
        self._pos = pos

    def cut(self, sentence: str) -> Iterator[Any]:
        return self._pos.cut(sentence, HMM=False)  # type: ignore[no-any-return]


class Segmenter:
    """The process's jieba tokenizer, POS tagger, TF-IDF extractor and stop words."""

    def __init__(self) -> None:
        import jieba  # imported here: jieba.posseg and jieba.analyse read dictionaries on import
        import jieba.analyse
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)  # not a line per process about building the prefix dict
        tokenizer = jieba.Tokenizer()
        tokenizer.tmp_dir = _cache_dir()
        tokenizer.initialize()
        tokenizer.load_userdict(str(FINANCE_DICT))
        pos = jieba.posseg.POSTokenizer(tokenizer)
        pos.makesure_userdict_loaded()  # the user words' tags, now rather than in a racing first cut
        self.tokenizer = tokenizer
        self.pos = _WithoutHMM(pos)
        self.stop_words = frozenset(w.strip() for w in STOP_WORDS.read_text(encoding="utf-8").splitlines() if w.strip())
        # a shallow copy shares jieba's IDF table (read-only) instead of loading it again
        tfidf = copy.copy(jieba.analyse.default_tfidf)
        tfidf.tokenizer = tokenizer
        tfidf.postokenizer = self.pos
        tfidf.stop_words = set(tfidf.stop_words) | self.stop_words | TICKET_WORDS
        self._tfidf = tfidf
        self._textrank_class = jieba.analyse.TextRank

    def words(self, text: str, *, search: bool = False, distinct: bool = True) -> list[str]:
        """Words of ``text`` in order (lower-cased; ``distinct``: each once), without stop
        words, spaces and punctuation. ``search``: jieba's search mode, which adds the shorter
        words inside long ones (理财产品 → 理财, 产品, 理财产品), as a full-text index wants."""
        text = unicodedata.normalize("NFKC", text)
        pieces = self.tokenizer.cut_for_search(text, HMM=False) if search else self.tokenizer.cut(text, HMM=False)
        out: list[str] = []
        for piece in pieces:
            word = piece.strip().lower()
            if word and word not in self.stop_words and any(ch.isalnum() for ch in word):
                out.append(word)
        return list(dict.fromkeys(out)) if distinct else out

    def keywords(self, text: str, top: int, method: str) -> list[tuple[str, float]]:
        """The ``top`` keywords of ``text`` with their weights (TF-IDF or TextRank)."""
        if method == "textrank":
            # TextRank keeps per-call state (its POS filter): one small instance per call
            ranker = self._textrank_class()
            ranker.tokenizer = ranker.postokenizer = self.pos
            ranker.stop_words = set(self._tfidf.stop_words)
            found = ranker.textrank(text, topK=top, withWeight=True, allowPOS=KEYWORD_POS)
        else:
            found = self._tfidf.extract_tags(text, topK=top, withWeight=True, allowPOS=KEYWORD_POS)
        return [(str(word), float(weight)) for word, weight in found]


_lock = threading.Lock()
_segmenter: Segmenter | None = None


def segmenter() -> Segmenter:
    """The process's segmenter, loaded on first use (about a second), once."""
    global _segmenter
    found = _segmenter
    if found is None:
        with _lock:
            if _segmenter is None:
                _segmenter = Segmenter()
            found = _segmenter
    return found


# ---------------------------------------------------------------------- complaint keywords


def _choice(value: Any, allowed: Iterable[str], field: str) -> str:
    options = sorted(allowed)
    if not isinstance(value, str) or value not in options:
        raise BadRequest(f"{field} must be one of: {', '.join(options)}", [{"field": field, "message": f"must be one of {', '.join(options)}"}])
    return value


def complaint_keywords(
    records: RecordService,
    principal: Principal,
    *,
    period: Any = "month",
    periods: Any = 6,
    top: Any = 20,
    method: Any = "tfidf",
    category: Any = "complaint",
    as_of: Any = None,
) -> dict[str, Any]:
    """For each period (oldest first): how many tickets of ``category`` the reader's customers
    opened, how many were analysed, and the ``top`` keywords with weights and the number of
    analysed tickets mentioning each."""
    windows = period_windows(period, periods, parse_as_of(as_of), MAX_KEYWORD_PERIODS)
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise BadRequest(f"top must be between 1 and {MAX_TOP}", [{"field": "top", "message": f"must be between 1 and {MAX_TOP}"}])
    method = _choice(method, METHODS, "method")
    v = records.view(principal, "ticket")
    records.authz.require(principal, "ticket", "read")
    spec, t = v.spec, v.table
    category_f = spec.live_field("category")
    if category_f is None:
        raise BadRequest("tickets have no category field in this metadata")
    category = _choice(category, category_f.option_values, "category")
    texts: list[ColumnElement[Any]] = []
    for name, limit in (("subject", 200), ("description", DESCRIPTION_CHARS)):
        f = spec.live_field(name)
        if f is not None and v.clear(f) and not f.encrypted:
            texts.append(func.substr(field_expr(t, f), 1, limit).label(name))
    if not texts:
        raise Forbidden("ticket subjects and descriptions are hidden from your role")
    ts = timestamp_expr(v, "opened_at")
    rows = (
        select(bucket_expr(ts, windows).label("bucket"), ts.label("ts"), t.c.id, *texts)
        .where(
            v.scope(),
            compile_filter(v.filter_context(), {"field": category_f.name, "op": "eq", "value": category}),
            ts >= windows[0].start_utc,
            ts < windows[-1].end_utc,
        )
        .subquery()
    )
    ranked = select(
        rows,
        func.row_number().over(partition_by=rows.c.bucket, order_by=(rows.c.ts.desc(), rows.c.id.desc())).label("rn"),
        func.count().over(partition_by=rows.c.bucket).label("n"),
    ).subquery()
    stmt = select(ranked.c.bucket, ranked.c.n, *(ranked.c[c.name] for c in texts)).where(ranked.c.rn <= SAMPLE_PER_PERIOD)
    per_period: dict[int, list[str]] = defaultdict(list)
    totals: dict[int, int] = {}
    with records.runtime.engine.connect() as conn:
        for row in conn.execute(stmt):
            bucket = int(row[0])
            totals[bucket] = int(row[1])
            text = "。".join(str(part) for part in row[2:] if part)
            if text:
                per_period[bucket].append(scrub(text))
    seg = segmenter() if per_period else None
    items = []
    for i, w in enumerate(windows):
        docs = per_period.get(i, [])
        keywords: list[dict[str, Any]] = []
        if docs and seg is not None:
            for word, weight in seg.keywords("\n".join(docs), top, method):
                keywords.append({"word": word, "weight": round(weight, 4), "tickets": sum(1 for d in docs if word in d)})
        items.append({**w.to_dict(), "tickets": totals.get(i, 0), "analysed": len(docs), "keywords": keywords})
    return {
        "period": period,
        "method": method,
        "category": category,
        "category_label": next(o.label.to_dict() for o in category_f.options if o.value == category),
        "sample_per_period": SAMPLE_PER_PERIOD,
        "items": items,
        "labels": {
            "keywords": {"zh": "热点关键词", "en": "Top keywords"},
            "tickets": {"zh": "工单数", "en": "Tickets"},
            "analysed": {"zh": "分析工单数", "en": "Tickets analysed"},
            "weight": {"zh": "权重", "en": "Weight"},
        },
    }
