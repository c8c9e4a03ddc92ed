"""Flow specs: ``flow`` documents checked against the entity registry and frozen.

A flow moves an enum field of an entity through named states by named transitions. The
meta-schema has already checked the document's shape; :func:`freeze_flow` checks everything
that needs the registry — the entity and its field, state and transition names, conditions and
routes (compiled, never run), approval steps, SLAs and on-enter actions — and lists every error
with its JSON pointer, so a broken flow is refused whole at load time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ..errors import FinCRMError
from ..meta.registry import Registry
from ..meta.spec import EntitySpec, Label
from .spec import ActionSpec, _action_errors, customer_field

__all__ = ["FlowSpec", "StateSpec", "TransitionSpec", "RouteSpec", "ApprovalSpec", "ApproverSpec", "freeze_flow"]

ConditionCheck = Callable[[EntitySpec, Mapping[str, Any]], None]


@dataclass(frozen=True)
class ApproverSpec:
    """One approver slot: holders of ``role``, or the supervisor of the record's owner."""

    role: str | None = None
    supervisor: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"supervisor": True} if self.supervisor else {"role": self.role}


@dataclass(frozen=True)
class ApprovalSpec:
    mode: str  # one | any | all
    approvers: tuple[ApproverSpec, ...]
    approve: str
    reject: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "approvers": [a.to_dict() for a in self.approvers], "approve": self.approve, "reject": self.reject}


@dataclass(frozen=True)
class StateSpec:
    name: str
    label: Label
    sla_hours: float | None = None
    escalate_role: str | None = None  # None with an SLA: the owner's supervisor
    on_enter: tuple[ActionSpec, ...] = ()
    approval: ApprovalSpec | None = None

    @property
    def escalate_to(self) -> dict[str, Any] | str | None:
        if self.sla_hours is None:
            return None
        return {"role": self.escalate_role} if self.escalate_role else "supervisor"


@dataclass(frozen=True)
class RouteSpec:
    state: str
    when: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TransitionSpec:
    name: str
    label: Label
    sources: tuple[str, ...]
    routes: tuple[RouteSpec, ...]
    roles: frozenset[str]
    condition: Mapping[str, Any] | None = None
    comment_required: bool = False

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(r.state for r in self.routes)


@dataclass(frozen=True)
class FlowSpec:
    name: str
    label: Label
    entity: str
    field: str
    initial: str
    states: tuple[StateSpec, ...]
    transitions: tuple[TransitionSpec, ...]
    description: Label | None = None
    _states: Mapping[str, StateSpec] = dc_field(default_factory=dict, compare=False, repr=False)
    _transitions: Mapping[str, TransitionSpec] = dc_field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_states", MappingProxyType({s.name: s for s in self.states}))
        object.__setattr__(self, "_transitions", MappingProxyType({t.name: t for t in self.transitions}))

    def state(self, name: str | None) -> StateSpec | None:
        return self._states.get(name or "")

    def transition(self, name: str) -> TransitionSpec | None:
        return self._transitions.get(name)

    def from_state(self, state: str | None) -> list[TransitionSpec]:
        """Transitions that leave ``state``, in document order."""
        return [t for t in self.transitions if state in t.sources]

    def decision(self, state: str | None, transition: str) -> str | None:
        """``approve`` or ``reject`` when ``transition`` decides ``state``'s approval step."""
        s = self.state(state)
        if s is None or s.approval is None:
            return None
        if transition == s.approval.approve:
            return "approve"
        if transition == s.approval.reject:
            return "reject"
        return None


def _check(check: ConditionCheck, spec: EntitySpec, condition: Mapping[str, Any], at: str) -> list[dict[str, str]]:
    try:
        check(spec, condition)
    except FinCRMError as exc:
        details = getattr(exc, "details", None) or []
        return [{"pointer": at, "message": f"{d.get('field')}: {d.get('message')}"} for d in details] or [{"pointer": at, "message": str(exc)}]
    return []


def _owner_reachable(registry: Registry, spec: EntitySpec) -> bool:
    """Whether a record of ``spec`` has an owner (its own, or its customer's)."""
    if spec.owner_field:
        return True
    cf = customer_field(spec)
    return bool(cf and cf != "id" and "customer" in registry.entities and registry.entity("customer").owner_field)


def freeze_flow(doc: Mapping[str, Any], registry: Registry, check: ConditionCheck) -> tuple[FlowSpec | None, list[dict[str, str]]]:
    """The frozen flow, or None and every error (``{"pointer", "message"}``, pointers into ``doc``)."""
    spec = registry.entities.get(doc["entity"])
    if spec is None:
        return None, [{"pointer": "/entity", "message": f"unknown entity {doc['entity']!r}"}]
    errors: list[dict[str, str]] = []
    f = spec.live_field(doc["field"])
    options: frozenset[str] = frozenset()
    if f is None:
        errors.append({"pointer": "/field", "message": f"unknown field {doc['field']!r} on {spec.name}"})
    elif f.type != "enum":
        errors.append({"pointer": "/field", "message": f"{spec.name}.{f.name} is a {f.type} field; a flow needs an enum field"})
    else:
        options = f.option_values
    owner_ok = _owner_reachable(registry, spec)

    state_names: set[str] = set()
    for i, s in enumerate(doc["states"]):
        if s["name"] in state_names:
            errors.append({"pointer": f"/states/{i}/name", "message": f"duplicate state {s['name']!r}"})
        state_names.add(s["name"])
        if f is not None and f.type == "enum" and s["name"] not in options:
            errors.append({"pointer": f"/states/{i}/name", "message": f"{s['name']!r} is not an option of {spec.name}.{f.name}"})
    transition_names: set[str] = set()
    for i, t in enumerate(doc["transitions"]):
        if t["name"] in transition_names:
            errors.append({"pointer": f"/transitions/{i}/name", "message": f"duplicate transition {t['name']!r}"})
        transition_names.add(t["name"])

    if doc["initial"] not in state_names:
        errors.append({"pointer": "/initial", "message": f"{doc['initial']!r} is not a state of this flow"})
    elif f is not None and f.default is not None and f.default != doc["initial"]:
        errors.append({"pointer": "/initial", "message": f"{spec.name}.{f.name} defaults to {f.default!r}, not the initial state"})

    by_name = {t["name"]: t for t in doc["transitions"]}
    for i, s in enumerate(doc["states"]):
        at = f"/states/{i}"
        if "escalate" in s and "sla_hours" not in s:
            errors.append({"pointer": f"{at}/escalate", "message": "escalate needs sla_hours"})
        if "sla_hours" in s:
            if "task" not in registry.entities:
                errors.append({"pointer": f"{at}/sla_hours", "message": "escalations create tasks: needs the 'task' entity"})
            if s.get("escalate", "supervisor") == "supervisor" and not owner_ok:
                errors.append({"pointer": f"{at}/escalate", "message": f"{spec.name} records have no owner whose supervisor could be escalated to"})
        actions = list(s.get("on_enter", []))
        errors += _action_errors(registry, spec, actions, f"{at}/on_enter")
        for j, a in enumerate(actions):
            if a["type"] == "set" and doc["field"] in a.get("values", {}):
                errors.append({"pointer": f"{at}/on_enter/{j}/values/{doc['field']}", "message": "the flow's own field changes only through transitions"})
        approval = s.get("approval")
        if approval is None:
            continue
        if approval["mode"] == "one" and len(approval["approvers"]) != 1:
            errors.append({"pointer": f"{at}/approval/approvers", "message": "mode 'one' takes exactly one approver; use 'any' or 'all' for several"})
        for j, a in enumerate(approval["approvers"]):
            if a.get("supervisor") and not owner_ok:
                errors.append({"pointer": f"{at}/approval/approvers/{j}", "message": f"{spec.name} records have no owner with a supervisor"})
        for key in ("approve", "reject"):
            name = approval[key]
            if name not in by_name:
                errors.append({"pointer": f"{at}/approval/{key}", "message": f"{name!r} is not a transition of this flow"})
            elif s["name"] not in by_name[name]["from"]:
                errors.append({"pointer": f"{at}/approval/{key}", "message": f"transition {name!r} does not leave state {s['name']!r}"})
        if approval["approve"] == approval["reject"]:
            errors.append({"pointer": f"{at}/approval/reject", "message": "approve and reject must be different transitions"})

    for i, t in enumerate(doc["transitions"]):
        at = f"/transitions/{i}"
        for j, source in enumerate(t["from"]):
            if source not in state_names:
                errors.append({"pointer": f"{at}/from/{j}", "message": f"{source!r} is not a state of this flow"})
        to = t["to"]
        if isinstance(to, str):
            if to not in state_names:
                errors.append({"pointer": f"{at}/to", "message": f"{to!r} is not a state of this flow"})
        else:
            for k, route in enumerate(to):
                if route["state"] not in state_names:
                    errors.append({"pointer": f"{at}/to/{k}/state", "message": f"{route['state']!r} is not a state of this flow"})
                if "when" in route:
                    errors += _check(check, spec, route["when"], f"{at}/to/{k}/when")
                    if k == len(to) - 1:
                        errors.append({"pointer": f"{at}/to/{k}", "message": "the last route must have no 'when': it is taken when no other matches"})
                elif k < len(to) - 1:
                    errors.append({"pointer": f"{at}/to/{k}", "message": "a route without 'when' must come last (the routes after it are never taken)"})
        if "condition" in t:
            errors += _check(check, spec, t["condition"], f"{at}/condition")

    if errors:
        return None, errors
    return _freeze(doc, spec), []


def _freeze(doc: Mapping[str, Any], spec: EntitySpec) -> FlowSpec:
    states = []
    for s in doc["states"]:
        approval = None
        if "approval" in s:
            a = s["approval"]
            approval = ApprovalSpec(
                mode=a["mode"],
                approvers=tuple(ApproverSpec(role=x.get("role"), supervisor=bool(x.get("supervisor"))) for x in a["approvers"]),
                approve=a["approve"],
                reject=a["reject"],
            )
        escalate = s.get("escalate")
        states.append(
            StateSpec(
                name=s["name"],
                label=Label.of(s["label"], s["name"]),
                sla_hours=float(s["sla_hours"]) if "sla_hours" in s else None,
                escalate_role=escalate["role"] if isinstance(escalate, dict) else None,
                on_enter=tuple(ActionSpec.of(x) for x in s.get("on_enter", [])),
                approval=approval,
            )
        )
    transitions = []
    for t in doc["transitions"]:
        to = t["to"]
        routes = (
            (RouteSpec(state=to),)
            if isinstance(to, str)
            else tuple(RouteSpec(state=r["state"], when=MappingProxyType(copy.deepcopy(r["when"])) if "when" in r else None) for r in to)
        )
        transitions.append(
            TransitionSpec(
                name=t["name"],
                label=Label.of(t["label"], t["name"]),
                sources=tuple(t["from"]),
                routes=routes,
                roles=frozenset(t["roles"]),
                condition=MappingProxyType(copy.deepcopy(t["condition"])) if "condition" in t else None,
                comment_required=bool(t.get("comment_required", False)),
            )
        )
    return FlowSpec(
        name=doc["name"],
        label=Label.of(doc["label"], doc["name"]),
        description=Label.of(doc["description"]) if "description" in doc else None,
        entity=spec.name,
        field=doc["field"],
        initial=doc["initial"],
        states=tuple(states),
        transitions=tuple(transitions),
    )
