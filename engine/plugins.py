"""Extension points: the pluggy hooks that plugins implement, and the one plugin manager.

A plugin is any object (usually a module) with functions marked ``@hookimpl`` and named after a
hook below. It is found through the setuptools entry-point group ``fincrm`` of an installed
distribution (``[project.entry-points.fincrm] sms = "my_sms_plugin"``) or registered in code
(:func:`register`, tests and embedding apps). Hooks so far:

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

Besides installed distributions, ``FINCRM_PLUGINS`` names plugin modules to load
(comma-separated import paths, e.g. ``plugins.provident_fund``): the way to switch on the
example plugins shipped in ``plugins/`` without packaging them.

Later hooks (field types, trigger actions) join :class:`FinCRMSpecs`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import pluggy

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
    ``FINCRM_PLUGINS`` loaded once."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                _manager = build_plugin_manager(env_plugin_modules())
    return _manager


def register(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin object in code (its hooks are checked against the specs now)."""
    pm = plugin_manager()
    registered = pm.register(plugin, name)
    pm.check_pending()
    return registered


def unregister(plugin: object) -> None:
    plugin_manager().unregister(plugin)


RESERVED_CHANNELS = frozenset({"inbox"})  # the built-in channel: stored and shown in the app


def notification_channels(pm: pluggy.PluginManager | None = None) -> dict[str, NotificationChannel]:
    """Every plugin channel by name. Two plugins naming the same channel, a plugin taking the
    built-in ``inbox`` name or a channel without ``send`` is a :class:`PluginError`."""
    pm = pm or plugin_manager()
    out: dict[str, NotificationChannel] = {}
    for impl in pm.hook.fincrm_notification_channels.get_hookimpls():
        provided = impl.function()
        if not provided:
            continue
        if not isinstance(provided, Mapping):
            raise PluginError(f"plugin {impl.plugin_name!r}: fincrm_notification_channels must return a dict of name → channel")
        for name, channel in provided.items():
            if name in RESERVED_CHANNELS:
                raise PluginError(f"plugin {impl.plugin_name!r}: channel name {name!r} is built in")
            if name in out:
                raise PluginError(f"plugin {impl.plugin_name!r}: channel {name!r} is provided by another plugin too")
            if not callable(getattr(channel, "send", None)):
                raise PluginError(f"plugin {impl.plugin_name!r}: channel {name!r} has no send(message, resolve) method")
            out[name] = channel
    return out


_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)


def data_connectors(pm: pluggy.PluginManager | None = None) -> dict[str, DataConnector]:
    """Every plugin data connector by name. A bad name, two plugins naming the same connector, or
    a connector without ``fetch`` or ``reads`` is a :class:`PluginError`."""
    pm = pm or plugin_manager()
    out: dict[str, DataConnector] = {}
    for impl in pm.hook.fincrm_data_connectors.get_hookimpls():
        provided = impl.function()
        if not provided:
            continue
        if not isinstance(provided, Mapping):
            raise PluginError(f"plugin {impl.plugin_name!r}: fincrm_data_connectors must return a dict of name → connector")
        for name, connector in provided.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise PluginError(f"plugin {impl.plugin_name!r}: connector name {str(name)[:40]!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
            if name in out:
                raise PluginError(f"plugin {impl.plugin_name!r}: connector {name!r} is provided by another plugin too")
            if not callable(getattr(connector, "fetch", None)):
                raise PluginError(f"plugin {impl.plugin_name!r}: connector {name!r} has no fetch(customer, timeout=…) method")
            reads = getattr(connector, "reads", None)
            if isinstance(reads, str) or not isinstance(reads, Sequence) or not all(isinstance(r, str) for r in reads):
                raise PluginError(f"plugin {impl.plugin_name!r}: connector {name!r} must list the customer fields it reads in `reads`")
            out[name] = connector
    return out
