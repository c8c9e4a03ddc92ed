"""Outbound interfaces: every call FinCRM makes to a third party goes through one wrapper.

A data connector (provident fund, tax records …), a notification channel (SMS, e-mail …) or a
quote feed is called through :class:`Interfaces`, which

* logs every attempt in ``fincrm_interface_call``: kind (connector | channel | feed), target,
  operation, status (ok | error | timeout), HTTP status, latency, attempt number, the backoff
  waited before it, a masked summary of what was sent and a redacted error message — never the
  payload itself, never a customer's ID number, mobile or card number in clear;
* retries with exponential backoff (:class:`RetryPolicy`: attempts, base delay, timeout,
  from ``FINCRM_INTERFACE_*``), and retries only what a retry can fix (timeouts, connection
  errors, 5xx, 408, 429);
* parks a call whose every attempt failed in the dead-letter list
  (``fincrm_interface_dead_letter``), from which operations replay it.

What a dead letter keeps to replay the call is **references, not payloads**: the connector's
name and the customer's record id. A replay re-reads the customer's current data (and consent)
when it runs, so no C2 value is ever stored for a replay, a letter never sends stale data, and
a customer deleted or whose consent was withdrawn meanwhile is not sent anywhere. Replays are
single attempts (the operator replays again if it still fails): success resolves the letter,
failure keeps it open with one more attempt counted. Each replay is audited.

Notification channels keep the outbox's own retry and dead-letter bookkeeping
(:mod:`engine.flows.outbox`): each send is one logged attempt here, numbered by the outbox.

:func:`enrich` runs a data connector for one customer and stores what it returns on the
customer record (through the records service, as the caller: scoped, validated, audited).
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import os
import re
import time
import urllib.error
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Protocol, TypeVar, cast

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, and_, literal, or_, select, update

from ..errors import BadRequest, Conflict, FinCRMError, NotFound, ValidationFailed
from ..fieldtypes import FIELD_TYPES
from ..plugins import DataConnector, data_connectors
from ..runtime import Runtime
from ..security import audit
from ..security.authz import Authorizer, effective_mask
from ..security.consent import consent_clause
from ..security.masking import mask_value
from ..security.principal import Principal
from ..sqltypes import JsonDoc
from ..store.tables import system_metadata

if TYPE_CHECKING:
    from ..services.records import RecordService

__all__ = [
    "interface_call_table",
    "interface_dead_letter_table",
    "KINDS",
    "CALL_STATUSES",
    "LETTER_STATUSES",
    "INTERFACES_AREA",
    "RetryPolicy",
    "Call",
    "CallFailed",
    "Caller",
    "Interfaces",
    "InterfaceService",
    "classify",
    "redact",
    "summarize",
    "enrich",
]

log = logging.getLogger("fincrm.interfaces")

KINDS = ("connector", "channel", "feed", "action")  # action: a plugin trigger action's delivery (engine.flows.actions)
CALL_STATUSES = ("ok", "error", "timeout")
LETTER_STATUSES = ("open", "replaying", "resolved")
INTERFACES_AREA = "interfaces"  # permission area: read (call log, dead letters), update (replay, enrich)
TEXT_MAX = 500  # payload summaries and error messages are cut to this many characters
MAX_LIMIT = 500
REPLAY_LEASE = dt.timedelta(minutes=5)  # a replay whose process died is claimable again after this

# One row per attempt of an outbound call.
interface_call_table = Table(
    "fincrm_interface_call",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # connector | channel | feed | action
    Column("target", String(64), nullable=False),  # the connector, channel or feed name
    Column("operation", String(64), nullable=False),  # fetch | send | quote …
    Column("status", String(16), nullable=False),  # ok | error | timeout
    Column("http_status", Integer),
    Column("latency_ms", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),  # 1 for the first try of the call
    Column("delay_ms", Integer, nullable=False, default=0),  # backoff waited before this attempt
    Column("payload", String(TEXT_MAX)),  # masked summary of what was sent
    Column("error", String(TEXT_MAX)),  # redacted, truncated
    Column("run_id", String(36), nullable=False),  # the attempts of one call share it
    Column("dead_letter_id", BigInteger),  # the letter this call ended in, or replayed
    Column("created_at", DateTime, nullable=False),  # when the attempt started (UTC, microseconds)
    Index("ix_fincrm_interface_call_target", "target", "id"),
    Index("ix_fincrm_interface_call_status", "status", "id"),
    Index("ix_fincrm_interface_call_letter", "dead_letter_id"),
)

# Calls whose every attempt failed, kept for operations to replay.
interface_dead_letter_table = Table(
    "fincrm_interface_dead_letter",
    system_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("target", String(64), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("replay", JsonDoc, nullable=False),  # references only (record ids, names), never C2 values
    Column("payload", String(TEXT_MAX)),  # masked summary of the last attempt's payload
    Column("status", String(16), nullable=False),  # open | replaying | resolved
    Column("attempts", Integer, nullable=False),  # attempts made so far, replays included
    Column("last_status", String(16)),  # error | timeout
    Column("last_http_status", Integer),
    Column("last_error", String(TEXT_MAX)),
    Column("created_by", String(150)),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("claimed_at", DateTime),
    Column("resolved_at", DateTime),
    Column("resolved_by", String(150)),
    Index("ix_fincrm_interface_dead_letter_status", "status", "id"),
)


def _now() -> dt.datetime:
    """Naive UTC with microseconds: attempts a few milliseconds apart stay apart."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# ---------------------------------------------------------------------- retry policy


def _env_number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number (got {raw[:20]!r})") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g} (got {value:g})")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all, waiting ``base_delay`` × 2^(n-2) seconds (at most
    ``max_delay``) before attempt n, each attempt given ``timeout`` seconds.

    From the environment: ``FINCRM_INTERFACE_ATTEMPTS`` (3), ``FINCRM_INTERFACE_BACKOFF`` (0.5 s),
    ``FINCRM_INTERFACE_MAX_BACKOFF`` (10 s), ``FINCRM_INTERFACE_TIMEOUT`` (5 s)."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if self.timeout <= 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("timeouts and delays cannot be negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RetryPolicy":
        env = os.environ if env is None else env
        return cls(
            attempts=int(_env_number(env, "FINCRM_INTERFACE_ATTEMPTS", 3, 1, 20)),
            base_delay=_env_number(env, "FINCRM_INTERFACE_BACKOFF", 0.5, 0, 600),
            max_delay=_env_number(env, "FINCRM_INTERFACE_MAX_BACKOFF", 10, 0, 3600),
            timeout=_env_number(env, "FINCRM_INTERFACE_TIMEOUT", 5, 0.001, 600),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (none before the first)."""
        if attempt <= 1:
            return 0.0
        return float(min(self.base_delay * (1 << (attempt - 2)), self.max_delay))


# ---------------------------------------------------------------------- redaction

_EMAIL = re.compile(r"[^\s@<>\"'=&?/]+@[^\s@<>\"'=&?/]+")
_NUMBER = re.compile(r"(?<![0-9A-Za-z])[0-9][0-9 \-]{5,}[0-9Xx]?(?![0-9A-Za-z])")  # IDs, mobiles, cards, however spaced
_DIGITS = re.compile(r"[0-9]{6,}")  # a long digit run inside a token


def redact(text: str, values: Collection[str] = ()) -> str:
    """``text`` fit for the call log and logs: the ``values`` (clear data the call was given) cut
    out, e-mail addresses and long numbers replaced, at most :data:`TEXT_MAX` characters."""
    for value in sorted((v for v in values if isinstance(v, str) and len(v) >= 2), key=len, reverse=True):
        text = text.replace(value, "***")
    text = _EMAIL.sub("***@***", text)
    text = _NUMBER.sub("***", text)
    text = _DIGITS.sub("***", text)
    return text[:TEXT_MAX]


def _summary_value(value: Any, rule: str | None) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if rule is not None:
        return mask_value(rule, str(value))
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} items]"
    if isinstance(value, Mapping):
        return f"{{{len(value)} keys}}"
    text = redact(str(value))
    return text if len(text) <= 40 else text[:39] + "…"


def summarize(payload: Mapping[str, Any], masks: Mapping[str, str | None] | None = None) -> str:
    """A masked one-line summary of ``payload``: values with a mask rule (engine.security.masking)
    masked by it, other strings stripped of long numbers and e-mails and shortened, nested data
    reduced to its size."""
    masks = masks or {}
    parts = [f"{k}={_summary_value(v, masks.get(k))}" for k, v in payload.items()]
    return redact(", ".join(parts), ())  # a mask may still leave a long digit run: never more than the rule shows


# ---------------------------------------------------------------------- classification


def classify(exc: BaseException) -> tuple[str, int | None, bool]:
    """(status, HTTP status, worth retrying) of a failed attempt."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return "timeout", None, True
    if isinstance(exc, urllib.error.HTTPError):
        code = int(exc.code)
        return "error", code, code >= 500 or code in (408, 429)
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, TimeoutError):
            return "timeout", None, True
        return "error", None, True  # refused, unreachable, DNS: the other side may come back
    # other HTTP clients: an ``http_status`` / ``status_code`` attribute, or one on ``response``
    # (requests, httpx)
    for holder in (exc, getattr(exc, "response", None)):
        for attr in ("http_status", "status_code"):
            found = getattr(holder, attr, None)
            if isinstance(found, int) and not isinstance(found, bool) and 100 <= found <= 599:
                return "error", found, found >= 500 or found in (408, 429)
    return "error", None, True


# ---------------------------------------------------------------------- the wrapper

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """What is called: ``kind`` (connector | channel | feed), ``target`` (its name),
    ``operation``; ``payload``: the masked summary to log (see :func:`summarize`); ``replay``:
    the references a replay needs (record ids, names — never personal data), or None if the
    call cannot be replayed (then it is not dead-lettered either); ``actor``: who caused it."""

    kind: str
    target: str
    operation: str
    payload: str = ""
    replay: Mapping[str, Any] | None = None
    actor: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"interface kind must be one of {', '.join(KINDS)}")


class CallFailed(FinCRMError):
    """Every attempt of an outbound call failed (or one that retrying cannot fix). The call is in
    the dead-letter list when ``dead_letter_id`` is set."""

    status, code = 502, "interface_failed"

    def __init__(self, message: str, *, call_status: str, http_status: int | None, attempts: int, dead_letter_id: int | None) -> None:
        super().__init__(message)
        self.call_status = call_status
        self.http_status = http_status
        self.attempts = attempts
        self.dead_letter_id = dead_letter_id


class Caller(Protocol):
    """Runs one outbound call (``fn(timeout)``) and returns its result, or raises :class:`CallFailed`."""

    def call(self, call: Call, fn: Callable[[float], T], *, scrub: Collection[str] = ()) -> T: ...


@dataclass(frozen=True)
class _Attempt:
    status: str
    http_status: int | None
    retryable: bool
    error: str | None


_OK = _Attempt("ok", None, False, None)


class Interfaces:
    """The wrapper. ``policy`` fixes the retry policy (default: read from the environment at
    each call, so operators change it without a restart); ``sleep`` is how backoff waits."""

    def __init__(self, runtime: Runtime, policy: RetryPolicy | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.runtime = runtime
        self.policy = policy
        self.sleep = sleep

    def current_policy(self) -> RetryPolicy:
        return self.policy if self.policy is not None else RetryPolicy.from_env()

    # one attempt ----------------------------------------------------------

    def attempt(
        self,
        call: Call,
        fn: Callable[[float], T],
        *,
        attempt: int = 1,
        timeout: float | None = None,
        delay: float = 0.0,
        run_id: str | None = None,
        dead_letter_id: int | None = None,
        scrub: Collection[str] = (),
    ) -> T:
        """One logged attempt: ``fn(timeout)``'s result, or its exception re-raised after the row
        is written (the outbox uses this: it does its own retrying)."""
        timeout = self.current_policy().timeout if timeout is None else timeout
        result, _, failure = self._run(call, fn, attempt, timeout, delay, run_id, dead_letter_id, scrub)
        if failure is not None:
            raise failure
        return cast(T, result)

    def _run(
        self, call: Call, fn: Callable[[float], T], attempt: int, timeout: float, delay: float, run_id: str | None,
        dead_letter_id: int | None, scrub: Collection[str],
    ) -> tuple[T | None, _Attempt, Exception | None]:
        """Call ``fn`` once and log the attempt. Only ``fn``'s own failure is an outcome: a failure
        to write the log row propagates (it is ours, not the third party's, and never retried)."""
        started = _now()
        t0 = time.perf_counter()
        try:
            result = fn(timeout)
        except Exception as exc:
            latency = time.perf_counter() - t0
            status, http_status, retryable = classify(exc)
            outcome = _Attempt(status, http_status, retryable, _error_text(exc, scrub))
            self._log(call, started, latency, attempt, delay, run_id, dead_letter_id, outcome)
            return None, outcome, exc
        self._log(call, started, time.perf_counter() - t0, attempt, delay, run_id, dead_letter_id, _OK)
        return result, _OK, None

    def _log(
        self, call: Call, started: dt.datetime, latency: float, attempt: int, delay: float, run_id: str | None,
        dead_letter_id: int | None, outcome: _Attempt,
    ) -> None:
        with self.runtime.begin() as conn:
            conn.execute(
                interface_call_table.insert().values(
                    kind=call.kind, target=call.target[:64], operation=call.operation[:64], status=outcome.status,
                    http_status=outcome.http_status, latency_ms=int(round(latency * 1000)), attempt=attempt,
                    delay_ms=int(round(delay * 1000)), payload=redact(call.payload) if call.payload else None, error=outcome.error,
                    run_id=run_id or str(uuid.uuid4()), dead_letter_id=dead_letter_id, created_at=started,
                )
            )
        if outcome.status != "ok":
            http = f" (HTTP {outcome.http_status})" if outcome.http_status else ""
            log.warning("%s %s.%s attempt %d: %s%s", call.kind, call.target, call.operation, attempt, outcome.status, http)

    # a call with retries ------------------------------------------------

    def call(self, call: Call, fn: Callable[[float], T], *, scrub: Collection[str] = ()) -> T:
        """Run ``fn(timeout)`` with retries and backoff; its result, or :class:`CallFailed` after
        the call went to the dead-letter list (when ``call.replay`` says how to replay it).
        ``scrub``: clear values the call was given, cut out of any error text."""
        policy = self.current_policy()
        run_id = str(uuid.uuid4())
        last = _Attempt("error", None, False, None)
        n = 0
        for n in range(1, policy.attempts + 1):
            wait = policy.delay(n)
            if wait:
                self.sleep(wait)
            result, last, _ = self._run(call, fn, n, policy.timeout, wait, run_id, None, scrub)
            if last.status == "ok":
                return cast(T, result)
            if not last.retryable:
                break
        letter_id = self._dead_letter(call, run_id, n, last) if call.replay is not None else None
        where = f"; dead letter {letter_id}" if letter_id is not None else ""
        raise CallFailed(
            f"{call.kind} {call.target}.{call.operation} failed after {n} attempt{'s' if n != 1 else ''} "
            f"({last.status}{f', HTTP {last.http_status}' if last.http_status else ''}){where}",
            call_status=last.status, http_status=last.http_status, attempts=n, dead_letter_id=letter_id,
        )

    def _dead_letter(self, call: Call, run_id: str, attempts: int, last: _Attempt) -> int:
        now = _now()
        d = interface_dead_letter_table
        with self.runtime.begin() as conn:
            letter_id = int(
                conn.execute(
                    d.insert().values(
                        kind=call.kind, target=call.target[:64], operation=call.operation[:64], replay=dict(call.replay or {}),
                        payload=redact(call.payload) if call.payload else None, status="open", attempts=attempts,
                        last_status=last.status, last_http_status=last.http_status, last_error=last.error, created_by=call.actor,
                        created_at=now, updated_at=now,
                    ).returning(d.c.id)
                ).scalar_one()
            )
            c = interface_call_table
            conn.execute(update(c).where(c.c.run_id == run_id).values(dead_letter_id=letter_id))
        log.warning("%s %s.%s: dead letter %d after %d attempts", call.kind, call.target, call.operation, letter_id, attempts)
        return letter_id

    # replaying a dead letter ------------------------------------------------

    def replaying(self, letter: Mapping[str, Any]) -> "_ReplayCaller":
        return _ReplayCaller(self, letter)


class _ReplayCaller:
    """The caller a replay runs with: one attempt, numbered after the letter's earlier ones,
    linked to the letter, never a new letter."""

    def __init__(self, interfaces: Interfaces, letter: Mapping[str, Any]) -> None:
        self.interfaces = interfaces
        self.letter = letter
        self.outcome: _Attempt | None = None
        self.payload: str | None = None

    def call(self, call: Call, fn: Callable[[float], T], *, scrub: Collection[str] = ()) -> T:
        if self.outcome is not None:
            raise RuntimeError("a replay makes one call")
        attempt = int(self.letter["attempts"]) + 1
        self.payload = call.payload
        timeout = self.interfaces.current_policy().timeout
        result, self.outcome, _ = self.interfaces._run(call, fn, attempt, timeout, 0.0, str(uuid.uuid4()), int(self.letter["id"]), scrub)
        if self.outcome.status != "ok":
            o = self.outcome
            raise CallFailed(
                f"replay of dead letter {self.letter['id']} failed ({o.status}{f', HTTP {o.http_status}' if o.http_status else ''})",
                call_status=o.status, http_status=o.http_status, attempts=attempt, dead_letter_id=int(self.letter["id"]),
            )
        return cast(T, result)


def _error_text(exc: BaseException, scrub: Collection[str]) -> str:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        message = str(exc.reason)
    return redact(f"{type(exc).__name__}: {message}", scrub)


# ---------------------------------------------------------------------- connectors: enrich a customer

Replayer = Callable[[Principal, Mapping[str, Any], Caller], Any]


def _customer_masks(records: "RecordService") -> dict[str, str | None]:
    spec = records.runtime.cached_snapshot().registry.entity("customer")
    return {f.name: effective_mask(f) for f in spec.fields}


def enrich(
    records: "RecordService",
    principal: Principal,
    customer_id: int,
    connector: str,
    *,
    interfaces: Interfaces | None = None,
    connectors: Mapping[str, DataConnector] | None = None,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """Run data connector ``connector`` for one customer and store what it returns on the record.

    The caller must be able to read and update the customer (their scope applies). The fields the
    connector ``reads`` are read in clear only for the call (the read is audited), and only if the
    customer has active consent for the connector's ``purpose``. The result's keys that are fields
    of the customer entity are written as the caller (validated, versioned, audited); others are
    listed as ``ignored``. Raises :class:`CallFailed` when the call failed (then it is a dead
    letter that replays with the customer's id)."""
    interfaces = interfaces or Interfaces(records.runtime)
    caller = caller or interfaces
    available = data_connectors() if connectors is None else connectors
    found = available.get(connector)
    if found is None:
        known = ", ".join(sorted(available)) or "none installed"
        raise NotFound(f"no data connector {connector[:40]!r} (connectors: {known})")
    current = records.get(principal, "customer", customer_id, fields=[])  # the caller's scope: NotFound outside it
    records.authz.require(principal, "customer", "update")
    snap = records.runtime.cached_snapshot()
    spec = snap.registry.entity("customer")
    reads = [str(r) for r in found.reads]
    unknown = [r for r in reads if spec.live_field(r) is None]
    if unknown:
        raise Conflict(f"connector {connector!r} reads customer fields this installation does not have: {', '.join(unknown)}")
    purpose = getattr(found, "purpose", None)
    if purpose:
        with records.runtime.engine.connect() as conn:
            consented = conn.execute(select(consent_clause(snap, literal(int(current["id"])), str(purpose)))).scalar()
        if not consented:
            raise Conflict(
                f"customer {current['id']} has no active consent for {purpose}: connector {connector!r} may not be called for them",
                [{"field": "consent", "message": f"needs {purpose}"}],
            )
    system = Principal.system("interfaces")
    clear = records.get(system, "customer", customer_id, fields=reads) if reads else {"id": current["id"]}
    given = {"id": clear["id"], **{r: clear.get(r) for r in reads}}
    masks = _customer_masks(records)
    call = Call(
        "connector", connector, "fetch", summarize(given, masks), {"customer_id": int(current["id"]), "connector": connector}, principal.username
    )
    values = [str(v) for k, v in given.items() if k != "id" and v not in (None, "")]
    try:
        result = caller.call(call, lambda timeout: found.fetch(dict(given), timeout=timeout), scrub=values)
    finally:
        with records.runtime.begin() as conn:
            records.audit(conn, principal, "connector_read", "customer", int(current["id"]), {"connector": connector, "fields": reads})
    if not isinstance(result, Mapping):
        raise ValidationFailed(f"connector {connector!r} returned {type(result).__name__}, not a mapping of customer fields")
    writable = {k: v for k, v in result.items() if isinstance(k, str) and spec.live_field(k) is not None and k not in ("id", "version")}
    ignored = sorted(str(k) for k in result if k not in writable)
    if not writable:
        raise ValidationFailed(
            f"connector {connector!r} returned no field the customer entity has ({', '.join(ignored)[:200] or 'nothing'}): "
            "add those fields to the customer entity (docs/interfaces.md)"
        )
    latest = records.get(principal, "customer", customer_id, fields=[])
    updated = records.update(principal, "customer", customer_id, dict(writable), latest["version"])
    return {"customer_id": int(current["id"]), "connector": connector, "fields": sorted(writable), "ignored": ignored, "version": updated["version"]}


def connector_replayer(records: "RecordService", connectors: Callable[[], Mapping[str, DataConnector]] = data_connectors) -> Replayer:
    """Replays a connector letter: :func:`enrich` again, for the customer it names, as the replaying user."""

    def replay(principal: Principal, ref: Mapping[str, Any], caller: Caller) -> Any:
        customer_id, name = ref.get("customer_id"), ref.get("connector")
        if not isinstance(customer_id, int) or not isinstance(name, str):
            raise Conflict("this dead letter does not say which customer and connector to replay")
        return enrich(records, principal, customer_id, name, connectors=connectors(), caller=caller)

    return replay


# ---------------------------------------------------------------------- operations: log, letters, replay


def _dump(value: Any) -> str | None:
    return None if value is None else str(FIELD_TYPES["datetime"].dump(value))


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", [{"field": "limit", "message": "out of range"}])
    return limit


def _choice(value: str | None, allowed: Iterable[str], name: str) -> str | None:
    allowed = tuple(allowed)
    if value and value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}", [{"field": name, "message": "unknown value"}])
    return value or None


class InterfaceService:
    """What operations see and do (area ``interfaces``: read, update): the call log, the dead
    letters, replays, and running a connector for a customer."""

    def __init__(
        self,
        records: "RecordService",
        authz: Authorizer,
        *,
        interfaces: Interfaces | None = None,
        connectors: Callable[[], Mapping[str, DataConnector]] = data_connectors,
    ) -> None:
        self.records = records
        self.runtime = records.runtime
        self.authz = authz
        self.interfaces = interfaces or Interfaces(records.runtime)
        self.connectors = connectors
        from .actions import action_replayer  # actions imports this module
        from .quotes import quotes_replayer  # so does quotes

        self.replayers: dict[str, Replayer] = {
            "connector": connector_replayer(records, connectors),
            "action": action_replayer(records.runtime),
            "feed": quotes_replayer(records),
        }

    # reading ------------------------------------------------------------

    def _newest_first(self, stmt: Any, id_col: Any, before: int | None, limit: int, item: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """One page of ``stmt`` newest first: ``{"items", "next_before"}`` (the id to pass as
        ``before`` for the next page, None on the last)."""
        if before is not None:
            stmt = stmt.where(id_col < before)
        limit = _limit(limit)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(id_col.desc()).limit(limit + 1)).all()
        return {"items": [item(r) for r in rows[:limit]], "next_before": rows[limit - 1].id if len(rows) > limit else None}

    @staticmethod
    def _call_item(r: Any) -> dict[str, Any]:
        return {
            "id": r.id, "kind": r.kind, "target": r.target, "operation": r.operation, "status": r.status, "http_status": r.http_status,
            "latency_ms": r.latency_ms, "attempt": r.attempt, "delay_ms": r.delay_ms, "payload": r.payload, "error": r.error,
            "run_id": r.run_id, "dead_letter_id": r.dead_letter_id, "created_at": _dump(r.created_at),
        }

    def calls(
        self,
        principal: Principal,
        *,
        target: str | None = None,
        status: str | None = None,
        kind: str | None = None,
        dead_letter: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """The call log, newest first (``before``: an id, for the next page)."""
        self.authz.require(principal, INTERFACES_AREA, "read")
        c = interface_call_table
        stmt = select(c)
        if target:
            stmt = stmt.where(c.c.target == target[:64])
        if _choice(status, CALL_STATUSES, "status"):
            stmt = stmt.where(c.c.status == status)
        if _choice(kind, KINDS, "kind"):
            stmt = stmt.where(c.c.kind == kind)
        if dead_letter is not None:
            stmt = stmt.where(c.c.dead_letter_id == dead_letter)
        return self._newest_first(stmt, c.c.id, before, limit, self._call_item)

    @staticmethod
    def _letter_item(r: Any) -> dict[str, Any]:
        return {
            "id": r.id, "kind": r.kind, "target": r.target, "operation": r.operation, "status": r.status, "attempts": r.attempts,
            "last_status": r.last_status, "last_http_status": r.last_http_status, "last_error": r.last_error, "payload": r.payload,
            "replay": dict(r.replay or {}), "created_by": r.created_by, "created_at": _dump(r.created_at), "updated_at": _dump(r.updated_at),
            "resolved_at": _dump(r.resolved_at), "resolved_by": r.resolved_by,
        }

    def dead_letters(self, principal: Principal, *, status: str | None = None, target: str | None = None, before: int | None = None, limit: int = 100) -> dict[str, Any]:
        """The dead-letter list, newest first; ``status=open`` for what still needs a replay."""
        self.authz.require(principal, INTERFACES_AREA, "read")
        d = interface_dead_letter_table
        stmt = select(d)
        if _choice(status, LETTER_STATUSES, "status"):
            stmt = stmt.where(d.c.status == status)
        if target:
            stmt = stmt.where(d.c.target == target[:64])
        return self._newest_first(stmt, d.c.id, before, limit, self._letter_item)

    def dead_letter(self, principal: Principal, letter_id: int) -> dict[str, Any]:
        self.authz.require(principal, INTERFACES_AREA, "read")
        d = interface_dead_letter_table
        with self.runtime.engine.connect() as conn:
            row = conn.execute(select(d).where(d.c.id == letter_id)).first()
        if row is None:
            raise NotFound(f"dead letter {letter_id} not found")
        return self._letter_item(row)

    def connector_list(self, principal: Principal) -> builtins.list[dict[str, Any]]:
        """The installed data connectors: name, the fields they read, the consent they need."""
        self.authz.require(principal, INTERFACES_AREA, "read")
        return [
            {"name": name, "reads": [str(r) for r in c.reads], "purpose": getattr(c, "purpose", None)}
            for name, c in sorted(self.connectors().items())
        ]

    # acting ---------------------------------------------------------------

    def enrich(self, principal: Principal, connector: str, customer_id: int) -> dict[str, Any]:
        """:func:`enrich` for operations: ``{"ok": True, …}``, or ``{"ok": False, "dead_letter": …}``
        when the call failed and was parked for replay."""
        self.authz.require(principal, INTERFACES_AREA, "update")
        try:
            done = enrich(self.records, principal, customer_id, connector, interfaces=self.interfaces, connectors=self.connectors())
        except CallFailed as exc:
            letter = self.dead_letter(principal, exc.dead_letter_id) if exc.dead_letter_id is not None else None
            return {"ok": False, "status": exc.call_status, "http_status": exc.http_status, "attempts": exc.attempts, "error": exc.message, "dead_letter": letter}
        return {"ok": True, **done}

    def replay(self, principal: Principal, letter_id: int) -> dict[str, Any]:
        """Run a dead letter's call again, once, as ``principal``. ``{"ok", "letter", "result"|"error"}``:
        success resolves the letter; a failed call keeps it open with one more attempt; an error
        on our side (the customer is gone, consent withdrawn …) is raised after the letter is
        released, with what happened in its ``last_error``."""
        self.authz.require(principal, INTERFACES_AREA, "update")
        d = interface_dead_letter_table
        now = _now()
        with self.runtime.begin() as conn:
            claimed = conn.execute(
                update(d)
                .where(d.c.id == letter_id, or_(d.c.status == "open", and_(d.c.status == "replaying", d.c.claimed_at < now - REPLAY_LEASE)))
                .values(status="replaying", claimed_at=now, updated_at=now)
                .returning(d.c.id, d.c.kind, d.c.attempts, d.c.replay)
            ).first()
            if claimed is None:
                row = conn.execute(select(d.c.status).where(d.c.id == letter_id)).first()
                if row is None:
                    raise NotFound(f"dead letter {letter_id} not found")
                raise Conflict(f"dead letter {letter_id} is {row.status}: only open letters can be replayed")
        letter = dict(claimed._mapping)
        replayer = self.replayers.get(letter["kind"])
        caller = self.interfaces.replaying(letter)
        try:
            if replayer is None:
                raise Conflict(f"{letter['kind']} dead letters cannot be replayed in this installation")
            result = replayer(principal, dict(letter["replay"] or {}), caller)
        except CallFailed as exc:
            self._settle(principal, letter, caller, None, exc.message)
            return {"ok": False, "letter": self.dead_letter(principal, letter_id), "error": exc.message}
        except BaseException as exc:
            reason = exc.message if isinstance(exc, FinCRMError) else f"{type(exc).__name__}: replay failed"
            self._settle(principal, letter, caller, None, redact(reason))
            raise
        self._settle(principal, letter, caller, result, None)
        return {"ok": True, "letter": self.dead_letter(principal, letter_id), "result": result}

    def _settle(self, principal: Principal, letter: Mapping[str, Any], caller: _ReplayCaller, result: Any, failure: str | None) -> None:
        d = interface_dead_letter_table
        now = _now()
        outcome = caller.outcome
        values: dict[str, Any] = {"updated_at": now, "claimed_at": None}
        if outcome is not None:
            values["attempts"] = d.c.attempts + 1
            if caller.payload:
                values["payload"] = redact(caller.payload)
        if failure is None:
            values.update(status="resolved", resolved_at=now, resolved_by=principal.username)
        else:
            values.update(status="open", last_error=(outcome.error if outcome is not None and outcome.error else failure)[:TEXT_MAX])
            if outcome is not None and outcome.status != "ok":
                values.update(last_status=outcome.status, last_http_status=outcome.http_status)
        with self.runtime.begin() as conn:
            conn.execute(update(d).where(d.c.id == letter["id"], d.c.status == "replaying").values(**values))
            audit.append(
                conn,
                audit.AuditEntry(
                    actor=principal.username, actor_id=principal.user_id, action="interface_replay", entity=None, record_id=None,
                    detail={"dead_letter_id": int(letter["id"]), "kind": letter["kind"], "ok": failure is None}, ip=principal.ip,
                ),
            )
