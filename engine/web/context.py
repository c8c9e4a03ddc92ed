"""The services one app holds, reachable from any view as ``services()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from ..runtime import Runtime
from ..security.policy import CasbinAuthorizer
from ..services.access import AccessRequests
from ..services.audit_log import AuditLog
from ..services.meta import MetaService
from ..services.notifications import Notifications
from ..services.records import RecordService
from ..services.packages import PackageService
from ..services.roles import RoleService
from ..services.staff import StaffService
from ..services.views import SavedViews
from ..flows.triggers import TriggerEngine
from ..flows.approval import FlowEngine
from ..services.automation import AutomationDocs

__all__ = ["Services", "services", "ensure_fab_role"]


@dataclass
class Services:
    runtime: Runtime
    authz: CasbinAuthorizer
    records: RecordService = field(init=False)
    meta: MetaService = field(init=False)
    audit_log: AuditLog = field(init=False)
    roles: RoleService = field(init=False)
    access: AccessRequests = field(init=False)
    staff: StaffService = field(init=False)
    views: SavedViews = field(init=False)
    notifications: Notifications = field(init=False)
    triggers: TriggerEngine = field(init=False)
    flows: FlowEngine = field(init=False)
    automation: AutomationDocs = field(init=False)
    packages: PackageService = field(init=False)
    principal_cache: dict[Any, Any] = field(default_factory=dict)
    importer: Any = None  # engine.io.importer.Importer, made on first use (it needs the data dir)

    def __post_init__(self) -> None:
        self.records = RecordService(self.runtime, self.authz)
        self.meta = MetaService(self.runtime, self.authz)
        self.audit_log = AuditLog(self.runtime, self.authz)
        self.roles = RoleService(self.runtime, self.authz)
        self.access = AccessRequests(self.runtime, self.records)
        self.staff = StaffService(self.runtime, self.authz)
        self.views = SavedViews(self.records)
        self.notifications = Notifications(self.runtime, self.authz)
        self.triggers = TriggerEngine(self.runtime, self.records).install()  # on-change triggers run inside writes
        self.flows = FlowEngine(self.runtime, self.records).install()  # flow fields change only through transitions
        self.automation = AutomationDocs(self.runtime, self.authz, self.meta)
        self.packages = PackageService(self.runtime, self.authz, self.roles, self.records)


def services() -> Services:
    return current_app.extensions["fincrm"]  # type: ignore[no-any-return]


def ensure_fab_role(name: str) -> None:
    """Membership lives in Flask-AppBuilder's users/roles: every role document has a FAB role."""
    sm = current_app.appbuilder.sm  # type: ignore[attr-defined]
    if sm.find_role(name) is None:
        sm.add_role(name)
