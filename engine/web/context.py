"""The services one app holds, reachable from any view as ``services()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from ..runtime import Runtime
from ..security.authz import Authorizer
from ..services.audit_log import AuditLog
from ..services.meta import MetaService
from ..services.records import RecordService

__all__ = ["Services", "services"]


@dataclass
class Services:
    runtime: Runtime
    authz: Authorizer
    records: RecordService = field(init=False)
    meta: MetaService = field(init=False)
    audit_log: AuditLog = field(init=False)
    principal_cache: dict[Any, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records = RecordService(self.runtime, self.authz)
        self.meta = MetaService(self.runtime, self.authz)
        self.audit_log = AuditLog(self.runtime, self.authz)


def services() -> Services:
    return current_app.extensions["fincrm"]  # type: ignore[no-any-return]
