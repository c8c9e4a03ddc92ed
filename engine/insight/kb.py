"""Knowledge-base full-text search over ``knowledge_article`` records, Chinese segmented by jieba.

The index is one table, ``fincrm_kb_fts``, holding for each article its id, the version it was
built from and its words — jieba's search-mode segmentation (``cut_for_search``: 理财产品 →
理财, 产品, 理财产品) joined by spaces, title and keywords apart from the body:

- SQLite: an FTS5 virtual table (rowid = article id) with the default ``unicode61`` tokenizer,
  which splits the space-separated words again exactly where jieba put the spaces; ranked by
  ``bm25`` with the title counting :data:`TITLE_WEIGHT` times the body.
- PostgreSQL: a table with a generated ``tsvector`` (``to_tsvector('simple', …)``, the title
  at weight A and the body at B) under a GIN index; ranked by ``ts_rank``.

A query is cut in jieba's precise mode (the index holds the shorter words too, so 理财 finds
理财产品), stop words and punctuation dropped; an article matches if it holds any of the words
(OR), and the rank puts those holding more of them, more often, in the title, first. Each word
reaches the database as a bound parameter — inside FTS5 as a quoted string, in PostgreSQL
through ``plainto_tsquery`` per word — so query syntax typed by a user (``"``, ``*``,
``NEAR``, ``OR``, ``-``, ``&``, ``!``) is just text.

Readers get articles of the ``knowledge_article`` read scope; only published ones unless they
may configure the entity. Title and body must be visible to them in clear (the index holds
both; searching hidden text would reveal it).

Keeping the index right — consistent by design, not by every writer remembering it:

- :meth:`KnowledgeBase.install` puts a hook in ``RecordService.after_write``: creates and
  updates re-index the article inside the writer's own transaction (committed or rolled back
  with it).
- Deletes send no after-write event, and bulk inserts, imports, restores and other processes
  without the hook write too. So every search first compares the index with the table in one
  pass (articles missing from the index or indexed at another version; index rows whose
  article is gone) and re-indexes just those. Search results are joined to the article table
  in the same statement, so a deleted article never shows even before that clean-up. The
  check is two anti-joins over article ids — cheap at knowledge-base sizes (thousands).
- :meth:`KnowledgeBase.rebuild` re-indexes everything (after a tokenizer or dictionary change).

The index table is created on first use (DDL constants, no input in them); whether it exists is
re-checked whenever the metadata version moves (a restore moves it and may drop the table).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Computed,
    Connection,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    column,
    delete,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    table as table_clause,
    text,
    true,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest, Forbidden
from ..meta.spec import FieldSpec
from ..runtime import Snapshot
from ..security.authz import effective_mask, permits
from ..security.masking import mask_value
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.query import field_expr
from .text import segmenter

__all__ = ["KnowledgeBase", "ENTITY", "INDEX_TABLE", "MAX_QUERY", "MAX_LIMIT", "TITLE_WEIGHT"]

ENTITY = "knowledge_article"
INDEX_TABLE = "fincrm_kb_fts"
TITLE_FIELDS = ("title", "keywords")
BODY_FIELDS = ("body",)
MAX_QUERY = 200
MAX_LIMIT = 50
MAX_TERMS = 32
TITLE_WEIGHT = 3.0
SNIPPET_BEFORE, SNIPPET_AFTER = 30, 90
_CHUNK = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # NUL and friends: no database text may hold them


class _SqliteIndex:
    """FTS5 virtual table; rowid is the article id."""

    ddl = [text(f"CREATE VIRTUAL TABLE IF NOT EXISTS {INDEX_TABLE} USING fts5(title, body, version UNINDEXED, tokenize = 'unicode61')")]
    table = table_clause(INDEX_TABLE, column("rowid", Integer), column("title", Text), column("body", Text), column("version", Integer))
    id = table.c.rowid
    version = table.c.version
    _fts: ColumnElement[Any] = literal_column(INDEX_TABLE)

    def write(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        conn.execute(delete(self.table).where(self.id.in_([r["id"] for r in rows])))
        conn.execute(insert(self.table), [{"rowid": r["id"], "title": r["title"], "body": r["body"], "version": r["version"]} for r in rows])

    def matches(self, terms: Sequence[str]) -> ColumnElement[bool]:
        # each word a quoted FTS5 string ("" escapes a quote), OR-ed; the whole query one parameter
        query = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        return self._fts.bool_op("MATCH")(literal(query, Text))

    def score(self, terms: Sequence[str]) -> ColumnElement[Any]:
        # bm25 is lower for better matches; its weights follow the columns (title, body, version)
        return literal(0.0) - func.bm25(self._fts, literal_column(repr(TITLE_WEIGHT)), literal_column("1.0"), literal_column("0.0"))


_SIMPLE: ColumnElement[Any] = literal_column("'simple'::regconfig")  # the text-search configuration: no stemming, no stop words


class _PostgresIndex:
    """A table with a generated tsvector under a GIN index."""

    metadata = MetaData()
    table = Table(
        INDEX_TABLE,
        metadata,
        Column("article_id", BigInteger, primary_key=True, autoincrement=False),
        Column("version", Integer, nullable=False),
        Column("title", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column(
            "tsv",
            pg.TSVECTOR,
            Computed(
                "setweight(to_tsvector('simple'::regconfig, title), 'A') || setweight(to_tsvector('simple'::regconfig, body), 'B')",
                persisted=True,
            ),
        ),
        Index(f"ix_{INDEX_TABLE}_tsv", "tsv", postgresql_using="gin"),
    )
    id = table.c.article_id
    version = table.c.version

    def write(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        stmt = pg.insert(self.table).values([{"article_id": r["id"], "title": r["title"], "body": r["body"], "version": r["version"]} for r in rows])
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[self.id],
                set_={"title": stmt.excluded.title, "body": stmt.excluded.body, "version": stmt.excluded.version},
                where=self.version <= stmt.excluded.version,  # a slower re-index never overwrites a newer one
            )
        )

    def _query(self, terms: Sequence[str]) -> ColumnElement[Any]:
        query: ColumnElement[Any] = func.plainto_tsquery(_SIMPLE, literal(terms[0], Text))
        for term in terms[1:]:
            query = query.op("||")(func.plainto_tsquery(_SIMPLE, literal(term, Text)))  # tsquery OR
        return query

    def matches(self, terms: Sequence[str]) -> ColumnElement[bool]:
        return self.table.c.tsv.bool_op("@@")(self._query(terms))

    def score(self, terms: Sequence[str]) -> ColumnElement[Any]:
        return func.ts_rank(self.table.c.tsv, self._query(terms))


class KnowledgeBase:
    """Search, and the index behind it, for one records service (one app)."""

    def __init__(self, records: RecordService) -> None:
        self.records = records
        self.runtime = records.runtime
        self.index: _SqliteIndex | _PostgresIndex = _PostgresIndex() if self.runtime.dialect == "postgresql" else _SqliteIndex()
        self._lock = threading.Lock()
        self._seen_at: int | None = None  # metadata version at which the index table was last seen

    # ------------------------------------------------------------------ the index

    def install(self) -> "KnowledgeBase":
        """Re-index articles inside every create/update transaction (idempotent)."""
        with self._lock:
            if self._on_write not in self.records.after_write:
                self.records.after_write.append(self._on_write)
        return self

    def _exists(self, conn: Connection, version: int) -> bool:
        if self._seen_at == version:
            return True
        if inspect(conn).has_table(INDEX_TABLE):
            self._seen_at = version
            return True
        return False

    def ensure(self) -> Snapshot:
        """The index table exists (created if not); returns the snapshot it was checked at."""
        snap = self.runtime.cached_snapshot()
        if self._seen_at == snap.version:
            return snap
        with self.runtime.engine.connect() as conn:
            if self._exists(conn, snap.version):
                return snap
        try:
            with self.runtime.begin() as conn:
                if isinstance(self.index, _PostgresIndex):
                    self.index.metadata.create_all(conn, checkfirst=True)
                else:
                    for ddl in self.index.ddl:
                        conn.execute(ddl)
        except DBAPIError:
            # another process created it at the same moment; anything else is re-raised
            with self.runtime.engine.connect() as conn:
                if not inspect(conn).has_table(INDEX_TABLE):
                    raise
        self._seen_at = snap.version
        return snap

    def _on_write(self, conn: Connection, snap: Snapshot, entity: str, ids: list[int], event: str, principal: Principal) -> None:
        if entity != ENTITY or not ids:
            return
        if not self._exists(conn, snap.version):
            return  # no index yet: the first search builds it, these articles included
        for k in range(0, len(ids), _CHUNK):
            rows = self._documents(conn, snap, ids[k : k + _CHUNK])
            if rows:
                self.index.write(conn, rows)

    def _documents(self, conn: Connection, snap: Snapshot, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Index rows (id, version, title words, body words) of the articles ``ids``."""
        spec = snap.registry.entity(ENTITY)
        t = snap.tables[ENTITY]
        title_fields = [f for f in (spec.live_field(n) for n in TITLE_FIELDS) if f is not None and not f.encrypted]
        body_fields = [f for f in (spec.live_field(n) for n in BODY_FIELDS) if f is not None and not f.encrypted]
        cols = [field_expr(t, f).label(f"f{i}") for i, f in enumerate(title_fields + body_fields)]
        seg = segmenter()
        out = []
        for row in conn.execute(select(t.c.id, t.c.version, *cols).where(t.c.id.in_(list(ids)))):
            values = [str(x) if x is not None else "" for x in row[2:]]
            title = " ".join(values[: len(title_fields)])
            body = " ".join(values[len(title_fields) :])
            out.append(
                {
                    "id": int(row[0]),
                    "version": int(row[1]),
                    "title": " ".join(seg.words(title, search=True, distinct=False)),
                    "body": " ".join(seg.words(body, search=True, distinct=False)),
                }
            )
        return out

    def sync(self) -> int:
        """Bring the index in line with the article table; returns how many entries changed."""
        snap = self.ensure()
        t = snap.tables[ENTITY]
        ix = self.index
        stale_q = select(t.c.id).select_from(t.outerjoin(ix.table, ix.id == t.c.id)).where(or_(ix.id.is_(None), ix.version != t.c.version))
        orphan_q = select(ix.id).select_from(ix.table.outerjoin(t, t.c.id == ix.id)).where(t.c.id.is_(None))
        with self.runtime.engine.connect() as conn:
            stale = sorted(int(r[0]) for r in conn.execute(stale_q))
            orphans = sorted(int(r[0]) for r in conn.execute(orphan_q))
        changed = self._reindex(snap, stale)
        if orphans:
            with self.runtime.begin() as conn:
                for k in range(0, len(orphans), _CHUNK):
                    conn.execute(delete(ix.table).where(ix.id.in_(orphans[k : k + _CHUNK])))
            changed += len(orphans)
        return changed

    def _reindex(self, snap: Snapshot, ids: Sequence[int]) -> int:
        """Segment outside the write transaction (it can take a while), then write the rows
        whose article is still at the version segmented."""
        t = snap.tables[ENTITY]
        done = 0
        for k in range(0, len(ids), _CHUNK):
            chunk = list(ids[k : k + _CHUNK])
            with self.runtime.engine.connect() as conn:
                rows = self._documents(conn, snap, chunk)
            if not rows:
                continue
            with self.runtime.begin() as conn:
                current = dict(conn.execute(select(t.c.id, t.c.version).where(t.c.id.in_(chunk))).all())
                fresh = [r for r in rows if current.get(r["id"]) == r["version"]]
                if fresh:
                    self.index.write(conn, fresh)
            done += len(fresh)
        return done

    def rebuild(self) -> int:
        """Re-index every article (e.g. after a dictionary change); returns how many."""
        snap = self.ensure()
        with self.runtime.begin() as conn:
            conn.execute(delete(self.index.table))
        t = snap.tables[ENTITY]
        with self.runtime.engine.connect() as conn:
            ids = [int(r[0]) for r in conn.execute(select(t.c.id).order_by(t.c.id))]
        return self._reindex(snap, ids)

    # ------------------------------------------------------------------ search

    def search(self, principal: Principal, q: Any, limit: Any = 20) -> dict[str, Any]:
        """Articles matching ``q`` best first: ``{"items": [{id, title, category, snippet,
        score}], "terms": [words searched]}``."""
        if not isinstance(q, str) or not q.strip():
            raise BadRequest("q is required: the words to search for", [{"field": "q", "message": "is required"}])
        if len(q) > MAX_QUERY:
            raise BadRequest(f"q is too long (at most {MAX_QUERY} characters)", [{"field": "q", "message": f"at most {MAX_QUERY} characters"}])
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", [{"field": "limit", "message": f"must be between 1 and {MAX_LIMIT}"}])
        v = self.records.view(principal, ENTITY)
        self.records.authz.require(principal, ENTITY, "read")
        spec, t = v.spec, v.table
        indexed = [f for f in (spec.live_field(n) for n in TITLE_FIELDS + BODY_FIELDS) if f is not None]
        if any(not v.clear(f) for f in indexed):
            raise Forbidden("knowledge-base search needs the article text visible to your role")
        terms = segmenter().words(_CONTROL.sub(" ", q))[:MAX_TERMS]
        if not terms:
            raise BadRequest(
                "q holds no searchable words (only common words or punctuation)", [{"field": "q", "message": "no searchable words"}]
            )
        self.sync()
        ix = self.index
        where: list[ColumnElement[bool]] = [v.scope(), ix.matches(terms)]
        published = spec.live_field("published")
        if published is not None and not self._may_configure(principal):
            where.append(field_expr(t, published) == true())
        title_f, body_f, category_f = spec.live_field("title"), spec.live_field("body"), spec.live_field("category")
        shown = [f for f in (title_f, category_f, body_f) if f is not None]
        score = ix.score(terms).label("score")
        stmt = (
            select(t.c.id, *(field_expr(t, f).label(f.name) for f in shown), score)
            .select_from(ix.table.join(t, t.c.id == ix.id))
            .where(*where)
            .order_by(score.desc(), t.c.id)
            .limit(limit)
        )
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        items = []
        for row in rows:
            m = row._mapping
            category = _shown(v, category_f, m.get("category")) if category_f is not None else None
            items.append(
                {
                    "id": int(m["id"]),
                    "title": _shown(v, title_f, m.get("title")) if title_f is not None else None,
                    "category": category,
                    "category_label": _option_label(category_f, category),
                    "snippet": snippet(str(m.get("body") or ""), terms) if body_f is not None else None,
                    "score": float(f"{float(m['score'] or 0):.6g}"),
                }
            )
        return {"items": items, "terms": terms}

    def _may_configure(self, principal: Principal) -> bool:
        return permits(self.records.authz, principal, ENTITY, "configure")


def _shown(v: Any, f: FieldSpec, value: Any) -> Any:
    """A value as this reader may see it (masked by the field's rule, or not at all)."""
    access = v.access.get(f.name)
    if access is None or access.view == "hidden":
        return None
    if access.view == "masked":
        return mask_value(effective_mask(f) or "full", value)
    return value


def _option_label(f: FieldSpec | None, value: Any) -> dict[str, str] | None:
    if f is None:
        return None
    for o in f.options:
        if o.value == value:
            return o.label.to_dict()
    return None


def snippet(body: str, terms: Iterable[str]) -> str:
    """A short passage of ``body`` around the first searched word it contains (its start when
    none is found verbatim), on one line, with … where it was cut."""
    flat = " ".join(body.split())
    lower = flat.lower()
    hits = [p for p in (lower.find(term) for term in terms) if p >= 0]
    at = min(hits) if hits else 0
    start = max(0, at - SNIPPET_BEFORE)
    end = min(len(flat), at + SNIPPET_AFTER)
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")
