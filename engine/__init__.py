"""FinCRM's metadata engine: specs from metadata, records through one service, security in SQL.

The public surface below is what the web layer, the CLI, jobs and tests use; everything else is
internal and may move.
"""

from __future__ import annotations

from .errors import (
    BadRequest,
    Conflict,
    DuplicateValue,
    FieldError,
    FinCRMError,
    Forbidden,
    InvalidCursor,
    InvalidFilter,
    InvalidSort,
    MetadataInvalid,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsafeChange,
    ValidationFailed,
    VersionConflict,
)
from .fieldtypes import FIELD_TYPES, FieldType
from .meta.registry import Registry, build_registry, load_core_documents
from .meta.spec import EntitySpec, FieldSpec, Label, RelationSpec
from .runtime import Runtime, Snapshot
from .security.crypto import Keyring
from .security.principal import Principal
from .services.meta import MetaService
from .services.records import Page, RecordService

__all__ = [
    "BadRequest",
    "Conflict",
    "DuplicateValue",
    "EntitySpec",
    "FIELD_TYPES",
    "FieldError",
    "FieldSpec",
    "FieldType",
    "FinCRMError",
    "Forbidden",
    "InvalidCursor",
    "InvalidFilter",
    "InvalidSort",
    "Keyring",
    "Label",
    "MetaService",
    "MetadataInvalid",
    "NotAuthenticated",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "Principal",
    "RateLimited",
    "RecordService",
    "Registry",
    "RelationSpec",
    "Runtime",
    "Snapshot",
    "UnsafeChange",
    "ValidationFailed",
    "VersionConflict",
    "build_registry",
    "load_core_documents",
]
