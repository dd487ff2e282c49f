"""Domain errors: what went wrong, in the domain's words. The store and the domain raise these without
knowing HTTP; the API's one table (``perdure.api.errors.DOMAIN_ANSWERS``) says which status and
management errorCode each answers with."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Per-field detail, shown as ``fields`` in the management API's error shape.
        self.fields = fields


class BadRequest(DomainError):
    """The request itself is wrong: a missing or malformed value."""


class Unauthorized(DomainError):
    """No credentials, or credentials that prove nothing."""


class Forbidden(DomainError):
    """Authenticated, but this caller may not do this."""


class NotPrivileged(Forbidden):
    """Authenticated, but not in an admin group."""


class Invalid(DomainError):
    """A management request whose values cannot be applied."""


class NotFound(DomainError):
    """No such object (or none this caller may see)."""


class Conflict(DomainError):
    """The request is well-formed but the object's state does not allow it."""


class NotImplementedOp(DomainError):
    """An operation of the API this server does not offer."""


class Unavailable(DomainError):
    """Something the server depends on did not answer: the same request may succeed later."""
