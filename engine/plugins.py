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

Later hooks (field types, trigger actions, connectors) join :class:`FinCRMSpecs`.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import pluggy

__all__ = [
    "PROJECT",
    "hookspec",
    "hookimpl",
    "FinCRMSpecs",
    "OutboundMessage",
    "NotificationChannel",
    "Resolve",
    "PluginError",
    "plugin_manager",
    "register",
    "unregister",
    "notification_channels",
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


class PluginError(Exception):
    """A plugin broke the contract of a hook (reported when the hook is called, with its name)."""


class FinCRMSpecs:
    """The hooks FinCRM calls. Each returns plain data; the engine checks what comes back."""

    @hookspec
    def fincrm_notification_channels(self) -> Mapping[str, NotificationChannel]:  # type: ignore[empty-body]
        """Outbox channels this plugin provides, by name (``^[a-z][a-z0-9_]{0,31}$``)."""


_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager: hookspecs added, entry-point plugins loaded once."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                pm = pluggy.PluginManager(PROJECT)
                pm.add_hookspecs(FinCRMSpecs)
                pm.load_setuptools_entrypoints(PROJECT)
                _manager = pm
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
