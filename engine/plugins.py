"""Extension points: the pluggy hooks that plugins implement, and the one plugin manager.

A plugin is any object (usually a module) with functions marked ``@hookimpl`` and named after a
hook below. It is found through the setuptools entry-point group ``fincrm`` of an installed
distribution (``[project.entry-points.fincrm] sms = "my_sms_plugin"``) or registered in code
(:func:`register`, tests and embedding apps). The hooks (docs/plugins.md has a guide and an
example for each):

``fincrm_notification_channels()``
    ``{name: channel}``: outbox channels beside the built-in ``inbox``. A channel has
    ``send(message, resolve)``; it raises on failure (the outbox retries with backoff) and
    returns on success. ``resolve(kind, id)`` gives the recipient's contact data at send time
    (a customer's name, mobile and e-mail in clear, a staff member's e-mail), so no address is
    ever stored in the outbox: a channel must not keep or log what it resolves.

``fincrm_data_connectors()``
    ``{name: connector}``: third parties that enrich a customer's profile (provident fund, tax
    records …). A connector names the customer fields it needs in clear (``reads``) and the
    consent purpose the customer must have granted (``purpose``, or None); ``fetch(customer,
    timeout=…)`` gets those fields and returns ``{customer field: value}``. It raises on failure
    (a timeout, an HTTP error): :mod:`engine.flows.interfaces` logs every attempt, retries with
    backoff and parks what still fails in the dead-letter list. See docs/interfaces.md.

``fincrm_field_types()``
    ``{name: FieldType}``: field types beside the built-in ones. They join the one field-type
    table (:data:`engine.fieldtypes.FIELD_TYPES`) when the plugin manager loads — name, widget,
    mask rule, operators checked — so metadata may use them like any built-in type.

``fincrm_trigger_actions()``
    ``{name: TriggerAction}``: actions that triggers and flow states name like the built-in
    ones (``{"type": "<name>", "params": {...}}``). The action's ``params_schema`` (and its
    optional ``check_params``) checks the params when the metadata is frozen; ``run(context)``
    runs inside the trigger's transaction for the whole set of records and returns the
    deliveries to queue; each delivery is sent after the commit by the jobs pass through
    ``send(delivery, timeout=…)`` (:mod:`engine.flows.interfaces`: logged, retried,
    dead-lettered). ``run`` gets no database connection and ``send`` is never called inside a
    transaction.

``fincrm_quote_feeds()``
    ``{name: feed}``: market quote sources for the securities quotes job. ``feed.quotes(symbols,
    timeout=…)`` returns ``{symbol: Quote}`` for the symbols it knows (unknown symbols are left
    out, never invented); it raises on a failure or a malformed answer.

Every hook's result is checked when it is read (names, clashes with built-ins and between
plugins, the methods each kind needs); a broken plugin is a :class:`PluginError` naming it.

Besides installed distributions, ``FINCRM_PLUGINS`` names plugin modules to load
(comma-separated import paths, e.g. ``plugins.provident_fund``): the way to switch on the
example plugins shipped in ``plugins/`` without packaging them.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import re
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import pluggy
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .fieldtypes import FieldType, install_plugin_types, plugin_type_problems

__all__ = [
    "PROJECT",
    "hookspec",
    "hookimpl",
    "FinCRMSpecs",
    "OutboundMessage",
    "NotificationChannel",
    "Resolve",
    "DataConnector",
    "PluginError",
    "plugin_manager",
    "build_plugin_manager",
    "env_plugin_modules",
    "register",
    "unregister",
    "notification_channels",
    "data_connectors",
    "field_types",
    "ActionTarget",
    "ActionContext",
    "TriggerAction",
    "BUILTIN_ACTIONS",
    "trigger_actions",
    "params_validator",
    "Quote",
    "QuoteFeed",
    "quote_feeds",
]

PROJECT = "fincrm"  # pluggy project name and setuptools entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class OutboundMessage:
    """One outbox row as a channel sees it: who (a reference, never an address) and what."""

    id: int
    channel: str
    recipient_kind: str  # user | customer
    recipient_id: int
    subject: str
    body: str
    source: str | None
    entity: str | None
    record_id: int | None
    created_at: dt.datetime
    attempt: int  # 1 for the first try


Resolve = Callable[[str, int], dict[str, Any]]


@runtime_checkable
class NotificationChannel(Protocol):
    def send(self, message: OutboundMessage, resolve: Resolve) -> None: ...


@runtime_checkable
class DataConnector(Protocol):
    """A third party that enriches a customer's profile.

    ``reads``: the customer fields ``fetch`` needs, read in clear when it is called (the read is
    audited; ask for as few as the protocol needs). ``purpose``: the consent purpose
    (``data_sharing``, ``credit_inquiry`` …) the customer must have granted, or None.
    ``fetch`` returns ``{customer field name: value}``; values are checked like any write."""

    reads: Sequence[str]
    purpose: str | None

    def fetch(self, customer: Mapping[str, Any], *, timeout: float) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Quote:
    """One market quote."""

    symbol: str
    price: Decimal  # last price
    prev_close: Decimal  # previous close
    at: dt.datetime  # quote time, naive UTC


@runtime_checkable
class QuoteFeed(Protocol):
    """A market quote source: ``{symbol: Quote}`` for the requested symbols it knows."""

    def quotes(self, symbols: Sequence[str], *, timeout: float) -> Mapping[str, Quote]: ...


@dataclass(frozen=True)
class ActionTarget:
    """One record an action runs for, with the people and customer it concerns: the record's
    owner (for records without one, their customer's owner), that owner's supervisor, and the
    customer it belongs to (its own id for a customer)."""

    record_id: int
    owner_id: int | None
    supervisor_id: int | None
    customer_id: int | None


@dataclass(frozen=True)
class ActionContext:
    """What a plugin action is run with: the whole set of records a trigger firing (or a flow
    state's entry) claimed, and where it comes from."""

    action: str  # the action's name (its ``type`` in the metadata)
    source: str  # ``trigger:<name>`` or ``flow:<name>``
    entity: str
    targets: tuple[ActionTarget, ...]
    params: Mapping[str, Any]  # as written in the metadata, checked against params_schema
    now: dt.datetime  # naive UTC
    label: Mapping[str, str]  # the trigger's (or flow state's) label, {"zh", "en"}

    @property
    def origin(self) -> str:
        """``trigger`` or ``flow``."""
        return self.source.partition(":")[0]

    @property
    def name(self) -> str:
        """The trigger's (or flow's) name."""
        return self.source.partition(":")[2]

    @property
    def record_ids(self) -> list[int]:
        return [t.record_id for t in self.targets]


@runtime_checkable
class TriggerAction(Protocol):
    """An action for triggers and flow states.

    ``params_schema``: JSON Schema (2020-12) of the action's ``params`` object, checked when the
    metadata is frozen; an optional ``check_params(params) -> [{"pointer", "message"}]`` adds
    checks a schema cannot make (pointers relative to ``params``). ``run(context)`` is called
    inside the trigger's transaction, once for the whole set of records, and returns the
    deliveries to queue (JSON objects of at most 64 KB each: record ids and names, never
    personal data); they commit or roll back with the firing. ``send(delivery, timeout=…)``
    is called after the commit, by the jobs pass, once per delivery and attempt; it raises on
    failure (retried with backoff, then a dead letter operations can replay)."""

    params_schema: Mapping[str, Any]

    def run(self, context: ActionContext) -> Sequence[Mapping[str, Any]]: ...

    def send(self, delivery: Mapping[str, Any], *, timeout: float) -> None: ...


class PluginError(Exception):
    """A plugin broke the contract of a hook (reported when the hook is called, with its name)."""


class FinCRMSpecs:
    """The hooks FinCRM calls. Each returns plain data; the engine checks what comes back."""

    @hookspec
    def fincrm_notification_channels(self) -> Mapping[str, NotificationChannel]:  # type: ignore[empty-body]
        """Outbox channels this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``)."""

    @hookspec
    def fincrm_data_connectors(self) -> Mapping[str, DataConnector]:  # type: ignore[empty-body]
        """Data connectors this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``)."""

    @hookspec
    def fincrm_field_types(self) -> Mapping[str, FieldType]:  # type: ignore[empty-body]
        """Field types this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``, not a built-in)."""

    @hookspec
    def fincrm_trigger_actions(self) -> Mapping[str, TriggerAction]:  # type: ignore[empty-body]
        """Trigger and flow actions this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``, not a built-in)."""

    @hookspec
    def fincrm_quote_feeds(self) -> Mapping[str, QuoteFeed]:  # type: ignore[empty-body]
        """Market quote feeds this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``)."""


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def build_plugin_manager(modules: Sequence[str] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the entry-point plugins and ``modules`` (import paths)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(FinCRMSpecs)
    if entry_points:
        pm.load_setuptools_entrypoints(PROJECT)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(f"FINCRM_PLUGINS names {name!r}, which cannot be imported ({exc}); fix the module path or unset it") from exc
        if not pm.is_registered(module):
            pm.register(module, name)
    pm.check_pending()
    return pm


def env_plugin_modules(value: str | None = None) -> list[str]:
    """The module paths listed in ``FINCRM_PLUGINS`` (comma- or space-separated)."""
    raw = os.environ.get("FINCRM_PLUGINS", "") if value is None else value
    return [m for m in re.split(r"[\s,]+", raw) if m]


def plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager: hookspecs added, entry-point plugins and the modules in
    ``FINCRM_PLUGINS`` loaded once, their field types joined to the field-type table."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                pm = build_plugin_manager(env_plugin_modules())
                install_plugin_types(field_types(pm))
                _manager = pm
    return _manager


def register(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin object in code (its hooks are checked against the specs now, and its
    field types against the table: a broken one is refused and left unregistered)."""
    pm = plugin_manager()
    with _lock:
        registered = pm.register(plugin, name)
        try:
            pm.check_pending()
            install_plugin_types(field_types(pm))
        except Exception:
            pm.unregister(plugin)
            raise
    return registered


def unregister(plugin: object) -> None:
    """Unregister a plugin; its field types leave the table."""
    pm = plugin_manager()
    with _lock:
        pm.unregister(plugin)
        install_plugin_types(field_types(pm))


RESERVED_CHANNELS = frozenset({"inbox"})  # the built-in channel: stored and shown in the app


def _collect(
    pm: pluggy.PluginManager | None,
    hook: str,
    noun: str,
    check: Callable[[str, Any], str | None],
    *,
    reserved: frozenset[str] = frozenset(),
    named: bool = True,
) -> dict[str, Any]:
    """What every plugin returns from ``hook`` (a dict of name → object), checked the same way
    for every hook: a dict, names matching ``^[a-z][a-z0-9_]{0,31}$`` (``named``), not a built-in
    name, not provided twice, and ``check(name, obj)`` (a problem, or None). Any problem is a
    :class:`PluginError` naming the plugin."""
    pm = pm or plugin_manager()
    out: dict[str, Any] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        provided = impl.function()
        if not provided:
            continue
        who = f"plugin {impl.plugin_name!r}"
        if not isinstance(provided, Mapping):
            raise PluginError(f"{who}: {hook} must return a dict of name → {noun}")
        for name, obj in provided.items():
            if named and (not isinstance(name, str) or not _NAME.fullmatch(name)):
                raise PluginError(f"{who}: {noun} name {str(name)[:40]!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
            if name in reserved:
                raise PluginError(f"{who}: {noun} name {name!r} is built in")
            if name in out:
                raise PluginError(f"{who}: {noun} {name!r} is provided by another plugin too")
            problem = check(name, obj)
            if problem:
                raise PluginError(f"{who}: {problem}")
            out[name] = obj
    return out


_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)


def notification_channels(pm: pluggy.PluginManager | None = None) -> dict[str, NotificationChannel]:
    """Every plugin channel by name. Two plugins naming the same channel, a plugin taking the
    built-in ``inbox`` name or a channel without ``send`` is a :class:`PluginError`."""

    def check(name: str, channel: Any) -> str | None:
        return None if callable(getattr(channel, "send", None)) else f"channel {name!r} has no send(message, resolve) method"

    return _collect(pm, "fincrm_notification_channels", "channel", check, reserved=RESERVED_CHANNELS)


def data_connectors(pm: pluggy.PluginManager | None = None) -> dict[str, DataConnector]:
    """Every plugin data connector by name. A bad name, two plugins naming the same connector, or
    a connector without ``fetch`` or ``reads`` is a :class:`PluginError`."""

    def check(name: str, connector: Any) -> str | None:
        if not callable(getattr(connector, "fetch", None)):
            return f"connector {name!r} has no fetch(customer, timeout=…) method"
        reads = getattr(connector, "reads", None)
        if isinstance(reads, str) or not isinstance(reads, Sequence) or not all(isinstance(r, str) for r in reads):
            return f"connector {name!r} must list the customer fields it reads in `reads`"
        return None

    return _collect(pm, "fincrm_data_connectors", "connector", check)


def field_types(pm: pluggy.PluginManager | None = None) -> dict[str, FieldType]:
    """Every plugin field type by name, checked (:func:`engine.fieldtypes.plugin_type_problems`):
    a bad name, a built-in name, two plugins naming the same type, something that is not a
    ``FieldType``, or a widget, mask rule, operator or JSON reading the engine does not know is a
    :class:`PluginError`."""

    def check(name: str, ftype: Any) -> str | None:
        return "; ".join(plugin_type_problems(name, ftype)) or None

    return _collect(pm, "fincrm_field_types", "field type", check, named=False)


# the actions the engine runs itself (engine.flows.actions); plugin actions take other names
BUILTIN_ACTIONS = frozenset({"create_task", "create_opportunity", "open_ticket", "add_tag", "remove_tag", "notify", "set"})

_validators: dict[str, Draft202012Validator] = {}  # params schema (as JSON) → its validator


def params_validator(action: TriggerAction) -> Draft202012Validator:
    """The validator of ``action``'s ``params_schema`` (cached by content); SchemaError when the
    schema is not a JSON Schema object."""
    schema = getattr(action, "params_schema", None)
    if not isinstance(schema, Mapping):
        raise SchemaError("params_schema must be a JSON Schema object")
    try:
        key = json.dumps(schema, sort_keys=True, default=str)
    except (TypeError, ValueError):
        raise SchemaError("params_schema must be plain JSON") from None
    found = _validators.get(key)
    if found is None:
        plain = json.loads(key)
        Draft202012Validator.check_schema(plain)
        found = Draft202012Validator(plain, format_checker=Draft202012Validator.FORMAT_CHECKER)
        if len(_validators) > 256:  # plugins that build a new schema each call: stay bounded
            _validators.clear()
        _validators[key] = found
    return found


def trigger_actions(pm: pluggy.PluginManager | None = None) -> dict[str, TriggerAction]:
    """Every plugin trigger action by name. A bad name, a built-in action's name, two plugins
    naming the same action, an action without ``run`` or ``send``, or a ``params_schema`` that
    is not a JSON Schema object is a :class:`PluginError`."""

    def check(name: str, action: Any) -> str | None:
        for method in ("run", "send"):
            if not callable(getattr(action, method, None)):
                return f"action {name!r} has no {method}() method"
        if getattr(action, "check_params", None) is not None and not callable(action.check_params):
            return f"action {name!r}: check_params must be a method"
        try:
            params_validator(action)
        except SchemaError as exc:
            return f"action {name!r}: params_schema is not a JSON Schema ({exc.message[:200]})"
        return None

    return _collect(pm, "fincrm_trigger_actions", "action", check, reserved=BUILTIN_ACTIONS)


def quote_feeds(pm: pluggy.PluginManager | None = None) -> dict[str, QuoteFeed]:
    """Every plugin quote feed by name. A bad name, two plugins naming the same feed, or a feed
    without ``quotes`` is a :class:`PluginError`."""

    def check(name: str, feed: Any) -> str | None:
        return None if callable(getattr(feed, "quotes", None)) else f"quote feed {name!r} has no quotes(symbols, timeout=…) method"

    return _collect(pm, "fincrm_quote_feeds", "quote feed", check)
