"""The one error root of FinCRM, and how each error reaches a client.

Every error the engine raises on purpose derives from :class:`FinCRMError`; the web layer maps
it to one HTTP status and one ``code`` in one place (``engine.web.errors``)::

    FinCRMError                      (500 internal_error — never raised directly)
    ├── BadRequest                   400 malformed_request   body is not JSON, not an object …
    │   ├── InvalidFilter            400 invalid_filter      unknown field/op, bad filter value
    │   ├── InvalidSort              400 invalid_sort        unknown or unsortable sort key
    │   └── InvalidCursor            400 invalid_cursor      cursor tampered with or stale
    ├── NotAuthenticated             401 unauthenticated
    ├── Forbidden                    403 forbidden
    ├── NotFound                     404 not_found           unknown entity, field or record id
    ├── Conflict                     409 conflict
    │   ├── VersionConflict          409 version_conflict    stale If-Match / version
    │   ├── DuplicateValue           409 duplicate           unique field already used
    │   └── UnsafeChange             409 unsafe_change       metadata change that would lose data
    ├── PayloadTooLarge              413 payload_too_large
    ├── ValidationFailed             422 validation_error    invalid values; details name fields
    │   └── MetadataInvalid          422 metadata_invalid    details carry JSON pointers
    ├── RateLimited                  429 rate_limited
    └── BackupError                  400 backup_refused      bundle missing, tampered, for another
                                                             database or keyring (``fincrm restore``)

``details`` is a list of ``{"field": …, "message": …}`` (metadata errors use ``"pointer"``).
Messages never carry the rejected value itself: it may be a customer's personal data.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FinCRMError",
    "BadRequest",
    "InvalidFilter",
    "InvalidSort",
    "InvalidCursor",
    "NotAuthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "VersionConflict",
    "DuplicateValue",
    "UnsafeChange",
    "PayloadTooLarge",
    "ValidationFailed",
    "MetadataInvalid",
    "RateLimited",
    "BackupError",
    "FieldError",
]


class FieldError(ValueError):
    """A single value failed a field type's check; collected into :class:`ValidationFailed`."""


class FinCRMError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(FinCRMError):
    status, code = 400, "malformed_request"


class InvalidFilter(BadRequest):
    code = "invalid_filter"


class InvalidSort(BadRequest):
    code = "invalid_sort"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class NotAuthenticated(FinCRMError):
    status, code = 401, "unauthenticated"


class Forbidden(FinCRMError):
    status, code = 403, "forbidden"


class NotFound(FinCRMError):
    status, code = 404, "not_found"


class Conflict(FinCRMError):
    status, code = 409, "conflict"


class VersionConflict(Conflict):
    code = "version_conflict"


class DuplicateValue(Conflict):
    code = "duplicate"


class UnsafeChange(Conflict):
    code = "unsafe_change"


class PayloadTooLarge(FinCRMError):
    status, code = 413, "payload_too_large"


class ValidationFailed(FinCRMError):
    status, code = 422, "validation_error"


class MetadataInvalid(ValidationFailed):
    code = "metadata_invalid"


class RateLimited(FinCRMError):
    status, code = 429, "rate_limited"


class BackupError(FinCRMError):
    """A backup could not be written, or a bundle was refused before anything was replaced."""

    status, code = 400, "backup_refused"
