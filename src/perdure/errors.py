"""Errors the API shows to users. Each carries the HTTP status it answers with."""

from __future__ import annotations


class PerdureError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PerdureError):
    status = 400


class Unauthorized(PerdureError):
    status = 401


class Forbidden(PerdureError):
    status = 403


class NotFound(PerdureError):
    status = 404


class Conflict(PerdureError):
    """The request is well-formed but the object's state does not allow it (AWE answers 400)."""

    status = 400


class NotImplementedOp(PerdureError):
    status = 501
