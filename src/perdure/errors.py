"""Errors the API shows to users. Each carries the HTTP status it answers with."""

from __future__ import annotations

from typing import Any


class PerdureError(Exception):
    status = 400
    #: The management API's errorCode for this error, where it has a specific one.
    error_code: int | None = None

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Per-field detail, shown as ``fields`` in the management API's error shape.
        self.fields = fields


class BadRequest(PerdureError):
    status = 400


class Unauthorized(PerdureError):
    status = 401


class Forbidden(PerdureError):
    status = 403


class NotPrivileged(Forbidden):
    """Authenticated, but not in an admin group."""

    error_code = 2005


class Invalid(PerdureError):
    """A management request whose values cannot be applied (422, errorCode 1003)."""

    status = 422
    error_code = 1003


class NotFound(PerdureError):
    status = 404


class Conflict(PerdureError):
    """The request is well-formed but the object's state does not allow it (AWE answers 400)."""

    status = 400


class NotImplementedOp(PerdureError):
    status = 501
