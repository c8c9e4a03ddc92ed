"""Frozen trigger and action specs, and the automation snapshot that holds them with the flows.

Flow and trigger documents come from ``metadata/core/{flows,triggers}``, then published
packages, then runtime versions stored in ``fincrm_meta_doc``; they are validated against their
meta-schemas and against the entity registry (fields, conditions, actions — a plugin action's
params against the plugin's schema), every error listed with its JSON pointer, and frozen into
the snapshot next to the registry — so they reload with the metadata stamp in every process.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from ..errors import FieldError, FinCRMError, MetadataInvalid
from ..fieldtypes import FIELD_TYPES
from ..meta.registry import Registry
from ..meta.schema import METADATA_DIR, pointer, schema_errors, validator_errors
from ..meta.spec import EntitySpec, Label
from ..plugins import BUILTIN_ACTIONS, TriggerAction, params_validator, trigger_actions

__all__ = [
    "ActionSpec",
    "TriggerSpec",
    "Automation",
    "load_automation_documents",
    "build_automation",
    "customer_field",
    "resolve_params",
    "AUTOMATION_KINDS",
]

AUTOMATION_KINDS = ("flow", "trigger")
# each action type and the entity it creates, if any
CREATES = {"create_task": "task", "create_opportunity": "opportunity", "open_ticket": "ticket"}


@dataclass(frozen=True)
class ActionSpec:
    type: str
    title: Label | None = None
    body: Label | None = None
    assign: str = "owner"
    due_in_days: int | None = None
    priority: str | None = None
    source: str | None = None
    category: str | None = None
    department: str | None = None
    tag: str | None = None
    target: str = "record"
    to: str | None = None
    channel: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    marketing: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)  # a plugin action's, as checked at freeze

    @property
    def plugin(self) -> bool:
        """A plugin's action (engine.plugins.trigger_actions), not one the engine runs itself."""
        return self.type not in BUILTIN_ACTIONS

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> "ActionSpec":
        kw = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and k not in ("title", "body", "values", "params")}
        return cls(
            **kw,
            title=Label.of(doc["title"]) if "title" in doc else None,
            body=Label.of(doc["body"]) if "body" in doc else None,
            values=MappingProxyType(dict(doc.get("values", {}))),
            params=MappingProxyType(copy.deepcopy(dict(doc.get("params", {})))),
        )


@dataclass(frozen=True)
class TriggerSpec:
    name: str
    label: Label
    entity: str
    on: str
    condition: Mapping[str, Any]  # the filter document with params already substituted
    actions: tuple[ActionSpec, ...]
    events: tuple[str, ...] = ("create", "update")
    enabled: bool = True
    cycle: str = "once"
    cycle_field: str | None = None
    consent: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    description: Label | None = None

    def condition_json(self) -> str:
        return json.dumps(self.condition, sort_keys=True, default=str)

    def cycle_period(self, now: dt.datetime) -> str:
        """The cycle a firing at ``now`` belongs to (the record's cycle_field value is added in SQL)."""
        if self.cycle == "day":
            return now.strftime("%Y-%m-%d")
        if self.cycle == "week":
            year, week, _ = now.isocalendar()
            return f"{year}-W{week:02d}"
        if self.cycle == "month":
            return now.strftime("%Y-%m")
        if self.cycle == "year":
            return now.strftime("%Y")
        return "once"


@dataclass(frozen=True)
class Automation:
    triggers: Mapping[str, TriggerSpec] = field(default_factory=dict)
    flows: Mapping[str, Any] = field(default_factory=dict)  # name → FlowSpec (engine.flows.flowspec)
    documents: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)

    def triggers_for(self, entity: str, on: str) -> list[TriggerSpec]:
        return [t for t in self.triggers.values() if t.entity == entity and t.on == on and t.enabled]

    def flows_for(self, entity: str) -> list[Any]:
        return [f for f in self.flows.values() if f.entity == entity]


def load_automation_documents(root: Path | None = None) -> list[dict[str, Any]]:
    """Core flow and trigger documents, in name order."""
    root = root or METADATA_DIR / "core"
    docs = []
    for sub in ("flows", "triggers"):
        for path in sorted((root / sub).glob("*.json")):
            docs.append(json.loads(path.read_text(encoding="utf-8")))
    return docs


def customer_field(spec: EntitySpec) -> str | None:
    """How a record reaches its customer: ``id`` for customers, else its reference to one."""
    if spec.name == "customer":
        return "id"
    for f in spec.live_fields:
        if f.type == "ref" and f.ref == "customer":
            return f.name
    return None


def resolve_params(node: Any, params: Mapping[str, Any], at: str, errors: list[dict[str, str]]) -> Any:
    """Replace every ``{"param": "name"}`` value in a condition by the trigger's parameter."""
    if isinstance(node, dict):
        if set(node) == {"param"}:
            name = node["param"]
            if name not in params:
                errors.append({"pointer": at, "message": f"unknown parameter {str(name)[:64]!r}"})
                return None
            return params[name]
        return {k: resolve_params(v, params, f"{at}/{k}", errors) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_params(v, params, f"{at}/{i}", errors) for i, v in enumerate(node)]
    return node


# A condition compiler is passed in by the caller (it needs tables and a dialect): it raises
# FinCRMError with details when the condition does not compile against the entity.
ConditionCheck = Callable[[EntitySpec, Mapping[str, Any]], None]


PLUGIN_ACTION_KEYS = frozenset({"type", "params", "marketing"})


def _plugin_action_errors(a: Mapping[str, Any], where: str, installed: Mapping[str, TriggerAction]) -> list[dict[str, str]]:
    """A plugin action: installed, only ``type``, ``params`` and ``marketing``, params valid for
    the plugin's ``params_schema`` and its ``check_params``."""
    kind = a["type"]
    action = installed.get(kind)
    if action is None:
        plugins = ", ".join(sorted(installed)) or "none installed"
        return [{"pointer": where + "/type", "message": f"unknown action {kind!r}: built in are {', '.join(sorted(BUILTIN_ACTIONS))}; plugin actions: {plugins}"}]
    errors = [
        {"pointer": f"{where}/{pointer((key,))[1:]}", "message": f"a plugin action takes only {', '.join(sorted(PLUGIN_ACTION_KEYS))}"}
        for key in a
        if key not in PLUGIN_ACTION_KEYS
    ]
    params = a.get("params", {})
    found = validator_errors(params_validator(action), params, ())
    errors += [{"pointer": where + "/params" + e["pointer"], "message": e["message"]} for e in found]
    check = getattr(action, "check_params", None)
    if not found and check is not None:
        try:
            more = list(check(copy.deepcopy(dict(params))))
        except Exception as exc:  # a plugin's own failure: the document cannot be checked, so it is refused
            more = [{"pointer": "", "message": f"the {kind} plugin could not check its params ({type(exc).__name__})"}]
        for e in more:
            rel = str(e.get("pointer", "")) if isinstance(e, Mapping) else ""
            message = str(e.get("message", "is invalid")) if isinstance(e, Mapping) else str(e)
            errors.append({"pointer": where + "/params" + (rel if not rel or rel.startswith("/") else "/" + rel), "message": message[:300]})
    return errors


def _action_errors(registry: Registry, spec: EntitySpec, actions: list[Mapping[str, Any]], at: str) -> list[dict[str, str]]:
    errors = []
    installed: Mapping[str, TriggerAction] | None = None
    for i, a in enumerate(actions):
        where = f"{at}/{i}"
        kind = a["type"]
        if kind not in BUILTIN_ACTIONS:
            if installed is None:
                installed = trigger_actions()
            errors += _plugin_action_errors(a, where, installed)
            if a.get("marketing") and customer_field(spec) is None:
                errors.append({"pointer": where, "message": f"{spec.name} records have no customer"})
            continue
        if "params" in a:
            errors.append({"pointer": where + "/params", "message": f"only plugin actions take params; {kind} is built in"})
        created = CREATES.get(kind)
        if created and created not in registry.entities:
            errors.append({"pointer": where + "/type", "message": f"needs the {created!r} entity"})
        owner_reachable = bool(spec.owner_field) or customer_field(spec) is not None
        if (created or kind == "notify") and not owner_reachable and a.get("to", "owner") != "customer":
            errors.append({"pointer": where, "message": f"{spec.name} records have no owner to assign to"})
        if created and created in registry.entities:
            target = registry.entity(created)
            for key, fname in (("priority", "priority"), ("source", "source"), ("category", "category"), ("department", "department")):
                if key in a:
                    f = target.live_field(fname)
                    if f is None or (f.options and a[key] not in f.option_values):
                        errors.append({"pointer": f"{where}/{key}", "message": f"not an option of {created}.{fname}"})
        if (kind in ("add_tag", "remove_tag") and a.get("target") == "customer") or a.get("to") == "customer" or a.get("marketing"):
            if customer_field(spec) is None:
                errors.append({"pointer": where, "message": f"{spec.name} records have no customer"})
        if kind == "set":
            for name, value in a["values"].items():
                f = spec.live_field(name)
                if f is None:
                    errors.append({"pointer": f"{where}/values/{name}", "message": "unknown field"})
                    continue
                if f.encrypted:
                    errors.append({"pointer": f"{where}/values/{name}", "message": "encrypted fields cannot be set by automation"})
                    continue
                try:
                    FIELD_TYPES[f.type].normalize(value, f)
                except FieldError as exc:
                    errors.append({"pointer": f"{where}/values/{name}", "message": str(exc)})
    return errors


def freeze_trigger(doc: Mapping[str, Any], registry: Registry, check: ConditionCheck) -> tuple[TriggerSpec | None, list[dict[str, str]]]:
    errors: list[dict[str, str]] = []
    spec = registry.entities.get(doc["entity"])
    if spec is None:
        return None, [{"pointer": "/entity", "message": f"unknown entity {doc['entity']!r}"}]
    params = dict(doc.get("params", {}))
    condition = resolve_params(copy.deepcopy(doc["condition"]), params, "/condition", errors)
    if not errors:
        try:
            check(spec, condition)
        except FinCRMError as exc:
            details = getattr(exc, "details", None) or []
            errors += [{"pointer": "/condition", "message": f"{d.get('field')}: {d.get('message')}"} for d in details] or [
                {"pointer": "/condition", "message": str(exc)}
            ]
    cf = doc.get("cycle_field")
    if cf and (spec.live_field(cf) is None or spec.live_field(cf).encrypted):  # type: ignore[union-attr]
        errors.append({"pointer": "/cycle_field", "message": f"unknown field {cf!r}"})
    if doc.get("consent"):
        consent = registry.entities.get("consent")
        purpose = consent.field("purpose") if consent else None
        purposes = purpose.option_values if purpose is not None else frozenset()
        if doc["consent"] not in purposes:
            errors.append({"pointer": "/consent", "message": f"unknown consent purpose; one of {sorted(purposes)}"})
        if customer_field(spec) is None:
            errors.append({"pointer": "/consent", "message": f"{spec.name} records have no customer"})
    errors += _action_errors(registry, spec, list(doc["actions"]), "/actions")
    if doc["on"] == "schedule" and "events" in doc:
        errors.append({"pointer": "/events", "message": "events apply to change triggers only"})
    if errors:
        return None, errors
    return (
        TriggerSpec(
            name=doc["name"],
            label=Label.of(doc["label"], doc["name"]),
            description=Label.of(doc["description"]) if "description" in doc else None,
            entity=spec.name,
            on=doc["on"],
            events=tuple(doc.get("events", ("create", "update"))),
            enabled=doc.get("enabled", True),
            condition=MappingProxyType(condition),
            cycle=doc.get("cycle", "once"),
            cycle_field=cf,
            consent=doc.get("consent"),
            params=MappingProxyType(params),
            actions=tuple(ActionSpec.of(a) for a in doc["actions"]),
        ),
        [],
    )


def build_automation(registry: Registry, documents: Sequence[Mapping[str, Any]], check: ConditionCheck) -> Automation:
    """Validate and freeze flow and trigger documents (later documents of a name replace earlier
    ones: core → package → runtime). Raises MetadataInvalid listing every error."""
    from .flowspec import freeze_flow

    trigger_actions()  # loads the plugin manager, so a broken plugin stops the start here, not a later job
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    errors: list[dict[str, str]] = []
    for doc in documents:
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        if kind not in AUTOMATION_KINDS:
            continue
        errs = schema_errors(str(kind), doc)
        where = f"/{kind}/{doc.get('name')}"
        errors += [{"pointer": where + e["pointer"], "message": e["message"]} for e in errs]
        if not errs:
            latest[(str(kind), doc["name"])] = doc
    triggers: dict[str, TriggerSpec] = {}
    flows: dict[str, Any] = {}
    for (kind, name), doc in latest.items():
        where = f"/{kind}/{name}"
        if kind == "trigger":
            trig, errs = freeze_trigger(doc, registry, check)
            if trig is not None:
                triggers[name] = trig
        else:
            flow, errs = freeze_flow(doc, registry, check)
            if flow is not None:
                flows[name] = flow
        errors += [{"pointer": where + e["pointer"], "message": e["message"]} for e in errs]
    # a flow's state moves only through its transitions: no trigger may set that field
    governed = {(f.entity, f.field): name for name, f in flows.items()}
    for name, trig in triggers.items():
        for i, action in enumerate(trig.actions):
            for field_name in action.values if action.type == "set" else ():
                if (trig.entity, field_name) in governed:
                    errors.append(
                        {
                            "pointer": f"/trigger/{name}/actions/{i}/values/{field_name}",
                            "message": f"{field_name} is changed only through the transitions of flow {governed[(trig.entity, field_name)]!r}",
                        }
                    )
    if errors:
        raise MetadataInvalid("flow or trigger metadata is invalid", errors)
    return Automation(
        triggers=MappingProxyType(triggers),
        flows=MappingProxyType(flows),
        documents=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in latest.items()}),
    )


__all__ += ["freeze_trigger", "pointer"]
