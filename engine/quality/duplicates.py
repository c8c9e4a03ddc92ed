"""Duplicate groups of an entity, as its ``dedupe`` metadata defines them, within the reader's
row scope.

- Key groups: records with equal values in every key field, found in SQL with window functions
  (an encrypted field compares through its blind index column, never in clear).
- Fuzzy groups: records equal in the ``same`` fields whose ``field`` (a name) is similar. SQL
  buckets candidates by the ``same`` fields and the first ``prefix`` characters of the name;
  Python compares names within a bucket (``difflib`` ratio of the normalised texts, 1.0 when
  they are equal after normalisation) and links records at or above the threshold.

Output is bounded: at most ``limit`` groups per definition and page (cursor: the smallest id
of the last group or bucket seen), at most :data:`GROUP_RECORDS` records shown per group (the
group's full size is given). Records are rendered by the records service, masked exactly as the
reader sees them in lists; key values themselves never leave the server. A definition that
uses a field hidden from the reader is not run for them (equal values would still tell them
something about it); masked fields may group: that two records share a value is what dedup is.
"""

from __future__ import annotations

import builtins
import difflib
import unicodedata
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.sql.elements import ColumnElement

from ..errors import BadRequest, InvalidCursor, NotFound
from ..meta.spec import DedupeKeySpec, FieldSpec, FuzzyDedupeSpec
from ..security.principal import Principal
from ..services.records import RecordService
from ..store.query import field_expr

__all__ = ["duplicate_groups", "name_similarity", "GROUP_RECORDS", "MAX_LIMIT"]

GROUP_RECORDS = 10  # records shown per group
MAX_LIMIT = 50  # groups per definition and page (50 × 10 records: one list call of ≤ 500)
RENDER_CHUNK = 500  # records rendered per list call (the records service's page limit)
BUCKET_ROWS = 200  # records of one fuzzy bucket compared in Python
MAX_BUCKETS = 1000  # fuzzy buckets scanned per page before handing back a cursor
_DROP = str.maketrans("", "", " \t·•.-_'’")


def name_similarity(a: str, b: str) -> float:
    """1.0 for names equal after normalisation (NFKC, case, spaces and dots dropped), else the
    difflib ratio of the normalised texts."""
    na, nb = _normal(a), _normal(b)
    if na == nb:
        return 1.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROP)


def duplicate_groups(
    records: RecordService, principal: Principal, entity: str, *, rule: str | None = None, limit: int = 20, cursor: str | None = None
) -> dict[str, Any]:
    v = records.view(principal, entity)
    records.authz.require(principal, entity, "read")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", [{"field": "limit", "message": "out of range"}])
    dedupe = v.spec.dedupe
    definitions: list[DedupeKeySpec | FuzzyDedupeSpec] = [*dedupe.keys, *dedupe.fuzzy] if dedupe else []
    if rule is not None:
        definitions = [d for d in definitions if d.name == rule]
        if not definitions:
            raise NotFound(f"{entity} has no duplicate rule {rule[:64]!r}", [{"field": "rule", "message": "unknown rule"}])
    if cursor is not None and rule is None:
        raise BadRequest("a cursor pages one duplicate rule: pass rule=<name> with it", [{"field": "cursor", "message": "needs rule"}])
    after = _cursor(cursor)
    found: list[tuple[DedupeKeySpec | FuzzyDedupeSpec, list[dict[str, Any]], int | None]] = []
    out_rules: list[dict[str, Any]] = []
    with records.runtime.engine.connect() as conn:
        for d in definitions:
            uses = (d.fields if isinstance(d, DedupeKeySpec) else (d.field, *d.same))
            hidden = [n for n in uses if v.access[n].view == "hidden"]
            if hidden:
                out_rules.append(_head(d) | {"available": False, "reason": f"uses fields hidden from you: {', '.join(hidden)}"})
                continue
            if isinstance(d, DedupeKeySpec):
                groups, next_after = _key_groups(conn, v, d, after, limit)
            else:
                groups, next_after = _fuzzy_groups(conn, v, d, after, limit)
            found.append((d, groups, next_after))
    ids = sorted({rid for _, groups, _ in found for g in groups for rid in g["ids"]})
    rendered: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), RENDER_CHUNK):  # one list call per 500 records shown
        chunk = ids[start : start + RENDER_CHUNK]
        page = records.list(principal, entity, filter={"field": "id", "op": "in", "value": chunk}, limit=len(chunk), sort="id")
        rendered.update((r["id"], r) for r in page.items)
    for d, groups, next_after in found:
        items = []
        for g in groups:
            shown = [rendered[i] for i in g["ids"] if i in rendered]
            if len(shown) < 2:
                continue  # changed since the scan (e.g. merged meanwhile)
            item: dict[str, Any] = {"size": g["size"], "records": shown}
            if "score" in g:
                item["score"] = g["score"]
            items.append(item)
        out_rules.append(_head(d) | {"available": True, "groups": items, "next_cursor": None if next_after is None else str(next_after)})
    order = {d.name: i for i, d in enumerate(definitions)}
    out_rules.sort(key=lambda r: order[r["name"]])
    return {"entity": entity, "rules": out_rules}


def _head(d: DedupeKeySpec | FuzzyDedupeSpec) -> dict[str, Any]:
    if isinstance(d, DedupeKeySpec):
        return {"name": d.name, "label": d.label.to_dict(), "kind": "key", "fields": list(d.fields)}
    return {"name": d.name, "label": d.label.to_dict(), "kind": "fuzzy", "fields": [d.field, *d.same], "threshold": d.threshold}


def _cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    try:
        value = int(cursor)
    except (TypeError, ValueError):
        raise InvalidCursor("cursor is not valid") from None
    if not 0 <= value < 2**63:
        raise InvalidCursor("cursor is not valid")
    return value


def _key_expr(v: Any, f: FieldSpec) -> ColumnElement[Any]:
    """What two records must share: the blind index of an encrypted field, else the value."""
    return v.table.c[f.blind_index_column] if f.encrypted else field_expr(v.table, f)


def _key_groups(conn: Connection, v: Any, d: DedupeKeySpec, after: int, limit: int) -> tuple[builtins.list[dict[str, Any]], int | None]:
    """Groups of records in scope sharing every key, each named by its smallest id; one
    statement: the window computes each record's group, the page picks ``limit`` groups."""
    t = v.table
    keys = [_key_expr(v, v.spec.field(n)) for n in d.fields]
    rows = (
        select(
            t.c.id,
            func.min(t.c.id).over(partition_by=keys).label("g"),
            func.count().over(partition_by=keys).label("n"),
            func.row_number().over(partition_by=keys, order_by=t.c.id).label("rn"),
        )
        .where(v.scope(), *[k.is_not(None) for k in keys])
        .cte("fincrm_dup")
    )
    page = select(rows.c.g).where(rows.c.n > 1, rows.c.g > after).distinct().order_by(rows.c.g).limit(limit + 1).subquery()
    stmt = (
        select(rows.c.g, rows.c.id, rows.c.n)
        .select_from(rows.join(page, rows.c.g == page.c.g))
        .where(rows.c.rn <= GROUP_RECORDS)
        .order_by(rows.c.g, rows.c.id)
    )
    groups: dict[int, dict[str, Any]] = {}
    for g, rid, n in conn.execute(stmt):
        groups.setdefault(int(g), {"size": int(n), "ids": []})["ids"].append(int(rid))
    ordered = [groups[g] for g in sorted(groups)]
    if len(ordered) > limit:
        return ordered[:limit], sorted(groups)[limit - 1]
    return ordered, None


def _fuzzy_groups(conn: Connection, v: Any, d: FuzzyDedupeSpec, after: int, limit: int) -> tuple[builtins.list[dict[str, Any]], int | None]:
    """Similar names within buckets (equal ``same`` fields and name prefix), bucket by bucket
    in id order until ``limit`` groups are found or :data:`MAX_BUCKETS` buckets were scanned."""
    t = v.table
    name_f = v.spec.field(d.field)
    name = field_expr(t, name_f)
    bucket = [_key_expr(v, v.spec.field(n)) for n in d.same]
    if d.prefix:
        bucket.append(func.substr(name, 1, d.prefix))
    rows = (
        select(
            t.c.id,
            name.label("name"),
            func.min(t.c.id).over(partition_by=bucket).label("g"),
            func.count().over(partition_by=bucket).label("n"),
            func.row_number().over(partition_by=bucket, order_by=t.c.id).label("rn"),
        )
        .where(v.scope(), name.is_not(None), *[k.is_not(None) for k in bucket])
        .cte("fincrm_fuzzy")
    )
    groups: list[dict[str, Any]] = []
    scanned = 0
    batch = max(limit * 2, 50)
    while True:
        page = select(rows.c.g).where(rows.c.n > 1, rows.c.g > after).distinct().order_by(rows.c.g).limit(batch).subquery()
        stmt = (
            select(rows.c.g, rows.c.id, rows.c.name)
            .select_from(rows.join(page, rows.c.g == page.c.g))
            .where(rows.c.rn <= BUCKET_ROWS)
            .order_by(rows.c.g, rows.c.id)
        )
        buckets: dict[int, list[tuple[int, str]]] = {}
        for g, rid, text in conn.execute(stmt):
            buckets.setdefault(int(g), []).append((int(rid), str(text)))
        for g in sorted(buckets):
            groups += _similar(buckets[g], d.threshold)
            scanned += 1
            after = g
            if len(groups) >= limit or scanned >= MAX_BUCKETS:
                return groups, after  # more buckets may follow: the cursor resumes after this one
        if len(buckets) < batch:
            return groups, None


def _similar(members: list[tuple[int, str]], threshold: float) -> list[dict[str, Any]]:
    """Link every pair of records whose names are similar enough; each connected set of two
    or more is a group, scored by its weakest link."""
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    weakest: dict[int, float] = {}
    links: list[tuple[int, int, float]] = []
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            score = name_similarity(members[i][1], members[j][1])
            if score >= threshold:
                links.append((i, j, score))
                parent[root(j)] = root(i)
    for i, j, score in links:
        r = root(i)
        weakest[r] = min(weakest.get(r, 1.0), score)
    clusters: dict[int, list[int]] = {}
    for i in range(len(members)):
        clusters.setdefault(root(i), []).append(members[i][0])
    out: list[dict[str, Any]] = []
    for r, ids in clusters.items():
        if len(ids) > 1:
            ids.sort()
            out.append({"size": len(ids), "ids": ids[:GROUP_RECORDS], "score": round(weakest[r], 4)})
    out.sort(key=lambda g: int(g["ids"][0]))
    return out
