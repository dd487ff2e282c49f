"""One exception family for everything the SDK raises, so a caller needs one ``except``.

``PerdureError`` here is the *client side* family; the server's own ``perdure.errors`` is unrelated.
"""

from __future__ import annotations

from typing import Any

from perdure.protocol import Refusal, refusal_code
from perdure.retry import TransientError


class PerdureError(Exception):
    """Base of every SDK error; ``str()`` is one line fit to show a user."""

    #: Whether the same request may succeed later (the server was unreachable or overloaded): only
    #: ``ServerUnavailable``; an answered error, 500 included, would be answered the same way again.
    retryable = False


class ApiError(PerdureError):
    """The server answered with an error. ``message`` is the API's own text; ``payload`` the body as sent
    (AWE's ``{"status","data","error"}`` or the management API's ``{"statusCode","errorCode",...}``).
    ``refusal`` is the worker protocol's code for a refusal (``perdure.protocol``), None for any other
    error (or a server too old to send one)."""

    def __init__(
        self,
        status: int,
        message: str,
        payload: Any = None,
        *,
        error_code: int | None = None,
        fields: dict[str, Any] | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        self.status = status
        self.refusal = refusal
        self.message = message
        self.payload = payload
        self.error_code = error_code
        self.fields = fields or {}
        detail = "; ".join(f"{k}: {v}" for k, v in self.fields.items())
        super().__init__(f"{status}: {message}" + (f" ({detail})" if detail else ""))


class BadRequestError(ApiError):
    """400 (and 422): the request, or the object's state, does not allow it."""


class AuthError(ApiError):
    """401 (no or bad token) or 403 (not allowed)."""


class NotFoundError(ApiError):
    """404: no such job, workunit, client, node or file."""


class ServerUnavailable(PerdureError, TransientError):
    """The server could not be reached, or kept answering 502/503/504 (or 429 with a Retry-After)
    through every retry (``perdure.retry``). ``retry_after``: the seconds the server asked to wait."""

    retryable = True

    def __init__(self, url: str, reason: str, retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"cannot reach {url}: {reason}")


class WaitTimeout(PerdureError):
    """``Job.wait`` gave up before the job finished; ``job`` is its last state."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} is still {job.state} after {timeout:g}s")


def error_for(status: int, payload: Any, text: str) -> ApiError:
    """The right subclass for a status, with the message taken from either API's error shape."""
    message, code, fields = text[:300] or f"HTTP {status}", None, None
    refusal = None
    if isinstance(payload, dict):
        if isinstance(payload.get("message"), str):  # management API
            message = payload["message"]
            code = payload.get("errorCode") if isinstance(payload.get("errorCode"), int) else None
            fields = payload.get("fields") if isinstance(payload.get("fields"), dict) else None
        elif payload.get("error"):  # AWE envelope
            error = payload["error"]
            message = "; ".join(map(str, error)) if isinstance(error, list) else str(error)
            refusal = refusal_code(payload.get("code"))
    cls: type[ApiError] = ApiError
    if status in (400, 422):
        cls = BadRequestError
    elif status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFoundError
    return cls(status, message, payload, error_code=code, fields=fields, refusal=refusal)


__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "NotFoundError",
    "PerdureError",
    "ServerUnavailable",
    "WaitTimeout",
    "error_for",
]
