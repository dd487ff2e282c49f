"""The answer to an exception a request handler raised, in the API's error shape."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from perdure.api.envelope import error_for
from perdure.errors import PerdureError
from perdure.protocol import Refusal, Refused

log = logging.getLogger("perdure.server")

#: The HTTP status of each refusal of the worker protocol (AWE answers most refusals 400).
REFUSAL_STATUS: dict[Refusal, int] = {
    Refusal.CLIENT_NOT_FOUND: 400,
    Refusal.CLIENT_DELETED: 400,
    Refusal.CLIENT_SUSPENDED: 400,
    Refusal.OUTPUTS_MISSING: 400,
    Refusal.LEASE_LOST: 409,
    Refusal.NO_WORK: 400,
}


def status_of(exc: PerdureError | Refused) -> int:
    return REFUSAL_STATUS[exc.code] if isinstance(exc, Refused) else exc.status


def refusal_body(exc: PerdureError | Refused) -> dict[str, Any]:
    """An error as a report's ``next_error`` shows it: AWE's status and error, and the refusal's code."""
    body: dict[str, Any] = {"status": status_of(exc), "error": [exc.message]}
    if isinstance(exc, Refused):
        body["code"] = exc.code.value
    return body


def response_for(request: Request, exc: Exception) -> JSONResponse:
    """A ``PerdureError`` with its own status and message, a ``Refused`` with its status and code;
    anything else is logged and answered 500."""
    if isinstance(exc, Refused):
        return error_for(request.url.path, status_of(exc), exc.message, code=exc.code.value)
    if isinstance(exc, PerdureError):
        return error_for(request.url.path, exc.status, exc.message, exc.fields, exc.error_code)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_for(request.url.path, 500, f"internal error: {type(exc).__name__}")
