"""The quotes job: market prices from the quote feed plugins into the securities of every
published package that declares where quotes go.

A package says so in its ``quotes`` object (``metadata/schema/package.json``)::

    "quotes": {"entity": "security", "symbol": "code", "price": "last_price", "prev_close": "prev_close",
               "change_pct": "change_pct", "quoted_at": "quoted_at", "feed": "<optional feed name>"}

Each pass, for each such package: the symbols of every (not retained) record of ``entity`` are
sent to the feed in one call through the outbound-call wrapper
(:class:`engine.flows.interfaces.Interfaces`: every attempt in the call log, retries with
backoff, a dead letter when every attempt failed — its replay fetches fresh quotes). The
answer is checked quote by quote (a positive price and previous close; a bad quote is counted
as ``rejected`` and leaves its record as it was), then written in **one executemany UPDATE**
straight to the entity's table, with one audit entry for the batch.

Why the table and not the records service: quotes are public market data that the feed owns
(the fields are ``readonly``: no user or import writes them), arriving for thousands of
securities every few minutes. A per-record write would version, diff and audit each row —
thousands of history entries a pass that say nothing about a customer. So the job writes the
quote fields set-wise (a row only moves forward in quote time, so an older answer arriving late
never overwrites a newer one) and leaves ``version`` alone: no user edit can conflict with a
field users cannot write. What it did is still in the audit trail, once per batch
(``quotes_updated``: package, feed, counts, the first record ids).

The job does nothing, successfully, when no published package declares quotes or no feed plugin
is installed (the detail says which). Triggers that read the quotes (the securities package's
``quote_move_alert``) run after this job in the same pass.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Callable, Mapping

from sqlalchemy import Table, bindparam, or_, select, update

from ..errors import Conflict, FieldError, MetadataInvalid
from ..fieldtypes import FIELD_TYPES
from ..meta.spec import EntitySpec, FieldSpec
from ..plugins import QuoteFeed, quote_feeds
from ..runtime import Runtime, Snapshot
from ..security import audit
from ..security.principal import Principal
from .interfaces import Call, Caller, CallFailed, Interfaces

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = [
    "QuoteTarget",
    "quote_configs",
    "quote_config_errors",
    "resolve_target",
    "apply_quotes",
    "refresh_package",
    "refresh_quotes",
    "quotes_replayer",
]

log = logging.getLogger("fincrm.quotes")

SYSTEM = Principal.system("quotes")
FIRST_IDS = 20  # record ids named in the audit entry of a batch
PCT = Decimal(100)


@dataclass(frozen=True)
class QuoteTarget:
    """A package's quotes config resolved against the current metadata."""

    package: str
    spec: EntitySpec
    table: Table
    symbol: FieldSpec
    price: FieldSpec
    prev_close: FieldSpec
    change_pct: FieldSpec | None
    quoted_at: FieldSpec | None
    feed: str | None


# ---------------------------------------------------------------------- configuration


def quote_configs(snap: Snapshot) -> list[tuple[str, Mapping[str, Any]]]:
    """``(package name, quotes object)`` of every published package that declares quotes, in
    the packages' dependency order."""
    return [(str(p["name"]), p["quotes"]) for p in snap.packages if isinstance(p.get("quotes"), Mapping)]


# which field types each key of the quotes object accepts
_KEY_TYPES: dict[str, tuple[str, ...]] = {
    "symbol": ("string",),
    "price": ("decimal",),
    "prev_close": ("decimal",),
    "change_pct": ("decimal",),
    "quoted_at": ("datetime",),
}


def quote_config_errors(registry: Any, config: Mapping[str, Any], at: str = "/quotes") -> list[dict[str, str]]:
    """Every problem of a ``quotes`` object against the entities (``registry``): the entity must
    exist and each named field be a live, column-stored, unencrypted field of the right type (a
    string symbol, decimal prices and change, a date-time quote time). A publish can refuse a
    package with these; the job reports them for a package published before a field changed."""
    name = config.get("entity")
    spec = registry.entities.get(name) if isinstance(name, str) else None
    if spec is None:
        return [{"pointer": f"{at}/entity", "message": f"unknown entity {str(name)[:64]!r}"}]
    errors = []
    for key, types in _KEY_TYPES.items():
        fname = config.get(key)
        if fname is None:
            if key in ("change_pct", "quoted_at"):
                continue
            errors.append({"pointer": f"{at}/{key}", "message": "is required"})
            continue
        f = spec.live_field(fname) if isinstance(fname, str) else None
        if f is None:
            errors.append({"pointer": f"{at}/{key}", "message": f"{spec.name} has no field {str(fname)[:64]!r}"})
        elif f.type not in types:
            errors.append({"pointer": f"{at}/{key}", "message": f"{spec.name}.{f.name} is {f.type}, not {' or '.join(types)}"})
        elif f.storage != "column" or f.encrypted:
            errors.append({"pointer": f"{at}/{key}", "message": f"{spec.name}.{f.name} must be an unencrypted column (the quotes job writes it set-wise)"})
    return errors


def resolve_target(snap: Snapshot, package: str, config: Mapping[str, Any]) -> QuoteTarget:
    """The config's entity and fields, or MetadataInvalid naming every problem."""
    errors = quote_config_errors(snap.registry, config, f"/package/{package}/quotes")
    if errors:
        raise MetadataInvalid(f"the quotes of package {package!r} do not fit the current metadata", errors)
    spec = snap.registry.entity(config["entity"])

    def field(key: str) -> FieldSpec | None:
        return spec.live_field(config[key]) if config.get(key) else None

    symbol, price, prev_close = field("symbol"), field("price"), field("prev_close")
    assert symbol is not None and price is not None and prev_close is not None  # checked above
    return QuoteTarget(
        package, spec, snap.tables[spec.name], symbol, price, prev_close, field("change_pct"), field("quoted_at"), config.get("feed")
    )


# ---------------------------------------------------------------------- writing quotes


def _utc(at: Any) -> dt.datetime:
    if not isinstance(at, dt.datetime):
        raise FieldError("quote time must be a datetime")
    moment: dt.datetime = at.astimezone(dt.timezone.utc).replace(tzinfo=None) if at.tzinfo is not None else at
    return moment.replace(microsecond=0)


def _money(value: Any, f: FieldSpec) -> Decimal:
    """A feed's number in the field's scale (feeds may quote more decimals than stored)."""
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise FieldError("must be a decimal number") from None
    if not d.is_finite() or d <= 0:
        raise FieldError("must be a positive number")
    checked: Decimal = FIELD_TYPES["decimal"].normalize(d.quantize(Decimal(1).scaleb(-f.scale), ROUND_HALF_UP), f)
    return checked


def _row(target: QuoteTarget, quote: Any) -> dict[str, Any]:
    """Bind values for one quote; FieldError if the quote is unusable."""
    price = _money(getattr(quote, "price", None), target.price)
    prev = _money(getattr(quote, "prev_close", None), target.prev_close)
    row: dict[str, Any] = {"_price": price, "_prev": prev, "_at": _utc(getattr(quote, "at", None))}
    if target.change_pct is not None:
        f = target.change_pct
        change = ((price - prev) / prev * PCT).quantize(Decimal(1).scaleb(-f.scale), ROUND_HALF_UP)
        row["_change"] = FIELD_TYPES["decimal"].normalize(change, f)
    return row


def apply_quotes(
    runtime: Runtime,
    target: QuoteTarget,
    quotes: Mapping[str, Any],
    *,
    now: dt.datetime,
    feed: str | None = None,
    actor: Principal = SYSTEM,
) -> dict[str, Any]:
    """Write ``quotes`` (symbol → :class:`engine.plugins.Quote`) to the target's records in one
    executemany UPDATE and one audit entry; a record only moves forward in quote time.
    Returns what happened: ``symbols`` (records of the entity), ``quoted`` (of them, answered),
    ``updated``, ``unknown`` (not answered), ``stale`` (answers older than the stored quote) —
    counts — and ``rejected``: the symbols whose quote was unusable."""
    t = target.table
    sym = t.c[target.symbol.name]
    stamp = t.c[target.quoted_at.name] if target.quoted_at is not None else None
    with runtime.engine.connect() as conn:
        cols = [t.c.id, sym] + ([stamp] if stamp is not None else [])
        stored = {r[1]: r for r in conn.execute(select(*cols).where(t.c.retained_at.is_(None), sym.is_not(None)))}
    rows: list[dict[str, Any]] = []
    rejected: list[str] = []
    stale = 0
    for symbol, quote in sorted(quotes.items(), key=lambda kv: str(kv[0])):
        found = stored.get(symbol)
        if found is None:
            continue  # a symbol nobody asked for: never invented into the table
        try:
            row = _row(target, quote)
        except FieldError as exc:
            log.warning("quote for %s from %s rejected: %s", symbol, feed or "?", exc)
            rejected.append(str(symbol)[:20])
            continue
        if stamp is not None and found[2] is not None and found[2] >= row["_at"]:
            stale += 1
            continue
        rows.append({"_id": found[0], **row})
    values: dict[str, Any] = {target.price.name: bindparam("_price"), target.prev_close.name: bindparam("_prev"), "updated_at": now.replace(microsecond=0)}
    if target.change_pct is not None:
        values[target.change_pct.name] = bindparam("_change")
    where = [t.c.id == bindparam("_id")]
    if stamp is not None:
        assert target.quoted_at is not None
        values[target.quoted_at.name] = bindparam("_at")
        where.append(or_(stamp.is_(None), stamp < bindparam("_at")))  # a late, older answer never wins
    elif rows:
        for r in rows:
            r.pop("_at")
    known = sum(1 for s in quotes if s in stored)
    result = {
        "package": target.package,
        "entity": target.spec.name,
        "feed": feed,
        "symbols": len(stored),
        "quoted": known,
        "updated": len(rows),
        "unknown": len(stored) - known,
        "rejected": rejected[:50],
        "stale": stale,
    }
    if not rows:
        return result
    with runtime.begin() as conn:
        conn.execute(update(t).where(*where).values(values), rows)
        audit.append(
            conn,
            audit.AuditEntry(
                actor=actor.username, actor_id=actor.user_id, action="quotes_updated", entity=target.spec.name, ip=actor.ip,
                detail={**result, "first_ids": [int(r["_id"]) for r in rows[:FIRST_IDS]]},
            ),
        )
    return result


# ---------------------------------------------------------------------- fetching


def _pick_feed(target: QuoteTarget, feeds: Mapping[str, QuoteFeed]) -> tuple[str | None, str | None]:
    """(feed name, reason it is skipped): the named feed, or the only one installed."""
    if target.feed is not None:
        return (target.feed, None) if target.feed in feeds else (None, f"quote feed {target.feed!r} is not installed")
    if len(feeds) == 1:
        return next(iter(feeds)), None
    raise Conflict(
        f"{len(feeds)} quote feeds are installed ({', '.join(sorted(feeds))}): name one in the quotes of package {target.package!r}",
        [{"field": "quotes.feed", "message": "several feeds installed"}],
    )


def refresh_package(
    runtime: Runtime,
    target: QuoteTarget,
    feeds: Mapping[str, QuoteFeed],
    caller: Caller,
    *,
    now: dt.datetime,
    actor: Principal = SYSTEM,
) -> dict[str, Any]:
    """Fetch quotes for every symbol of the target's entity from its feed (one call through
    ``caller``) and write them; raises :class:`CallFailed` when the call failed."""
    name, skipped = _pick_feed(target, feeds)
    if name is None:
        return {"package": target.package, "skipped": skipped}
    t = target.table
    sym = t.c[target.symbol.name]
    with runtime.engine.connect() as conn:
        symbols = [str(s) for s in conn.execute(select(sym).where(t.c.retained_at.is_(None), sym.is_not(None)).distinct().order_by(sym)).scalars()]
    if not symbols:
        return {"package": target.package, "feed": name, "symbols": 0, "skipped": f"no {target.spec.name} records to quote"}
    feed = feeds[name]
    call = Call(
        "feed", name, "quotes", f"package={target.package}, symbols={len(symbols)}", {"package": target.package, "feed": name}, actor.username
    )
    answer = caller.call(call, lambda timeout: feed.quotes(list(symbols), timeout=timeout))
    if not isinstance(answer, Mapping):
        raise Conflict(f"quote feed {name!r} returned {type(answer).__name__}, not a mapping of symbol to quote")
    wanted = set(symbols)
    return apply_quotes(runtime, target, {s: q for s, q in answer.items() if s in wanted}, now=now, feed=name, actor=actor)


def refresh_quotes(
    runtime: Runtime,
    now: dt.datetime | None = None,
    *,
    feeds: Mapping[str, QuoteFeed] | None = None,
    interfaces: Interfaces | None = None,
) -> dict[str, Any]:
    """The job: every published package's quotes refreshed. ``{"packages": [...], "updated",
    "failed"}``, or ``{"skipped": <why>}`` when there is nothing to do. A package whose feed call
    failed (dead-lettered) or whose config no longer fits is counted in ``failed``; the other
    packages are still refreshed."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    snap = runtime.snapshot()
    configs = quote_configs(snap)
    if not configs:
        return {"skipped": "no published package declares quotes", "updated": 0, "failed": 0}
    available = quote_feeds() if feeds is None else dict(feeds)
    if not available:
        return {"skipped": "no quote feed plugin is installed", "packages": [p for p, _ in configs], "updated": 0, "failed": 0}
    caller = interfaces or Interfaces(runtime)
    results: list[dict[str, Any]] = []
    failed = 0
    for package, config in configs:
        try:
            target = resolve_target(snap, package, config)
            results.append(refresh_package(runtime, target, available, caller, now=now))
        except (CallFailed, Conflict, MetadataInvalid) as exc:  # this package failed; the others go on
            failed += 1
            log.warning("quotes of package %s failed: %s", package, exc.message)
            entry: dict[str, Any] = {"package": package, "error": type(exc).__name__, "message": exc.message[:300]}
            if isinstance(exc, CallFailed):
                entry["dead_letter"] = exc.dead_letter_id
            results.append(entry)
    return {"packages": results, "updated": sum(int(r.get("updated", 0)) for r in results), "failed": failed}


def quotes_replayer(
    records: "RecordService", feeds: Callable[[], Mapping[str, QuoteFeed]] = quote_feeds
) -> Callable[[Principal, Mapping[str, Any], Caller], Any]:
    """Replays a feed dead letter: the package's quotes fetched afresh, once (a replay never
    sends yesterday's request: quotes are only worth having current)."""

    def replay(principal: Principal, ref: Mapping[str, Any], caller: Caller) -> Any:
        package = ref.get("package")
        runtime = records.runtime
        snap = runtime.snapshot()
        config = next((c for p, c in quote_configs(snap) if p == package), None)
        if config is None:
            raise Conflict(f"package {str(package)[:64]!r} is not published or declares no quotes: nothing to replay")
        target = resolve_target(snap, str(package), config)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        return refresh_package(runtime, target, feeds(), caller, now=now, actor=principal)

    return replay
