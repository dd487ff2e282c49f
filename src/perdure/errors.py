"""Errors the API shows to users. Each carries the HTTP status it answers with."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    #: The management API's errorCode for this error, where it has a specific one.
    error_code: int | None = None

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Per-field detail, shown as ``fields`` in the management API's error shape.
        self.fields = fields


class BadRequest(DomainError):
    status = 400


class Unauthorized(DomainError):
    status = 401


class Forbidden(DomainError):
    status = 403


class NotPrivileged(Forbidden):
    """Authenticated, but not in an admin group."""

    error_code = 2005


class Invalid(DomainError):
    """A management request whose values cannot be applied (422, errorCode 1003)."""

    status = 422
    error_code = 1003


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    """The request is well-formed but the object's state does not allow it (AWE answers 400)."""

    status = 400


class NotImplementedOp(DomainError):
    status = 501
