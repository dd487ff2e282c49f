"""The answer to an exception a request handler raised, in the API's error shape."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from perdure.api.envelope import error_for
from perdure.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    NotImplementedOp,
    NotPrivileged,
    Unauthorized,
    Unavailable,
)
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


#: The one table of what each domain error answers with: its HTTP status and, where it has a specific
#: one, the management API's errorCode (None: the status's own, ``envelope.MGMT_ERROR_CODES``). The
#: store and the domain raise these errors knowing nothing of HTTP; a subclass not named here answers
#: as its nearest named ancestor. ``Conflict`` is 400 because AWE answers a state refusal 400.
DOMAIN_ANSWERS: dict[type[DomainError], tuple[int, int | None]] = {
    DomainError: (400, None),
    BadRequest: (400, None),
    Unauthorized: (401, None),
    Forbidden: (403, None),
    NotPrivileged: (403, 2005),
    Invalid: (422, 1003),
    NotFound: (404, None),
    Conflict: (400, None),
    NotImplementedOp: (501, None),
    Unavailable: (503, None),
}


def answer_of(exc: DomainError) -> tuple[int, int | None]:
    """The status and errorCode of a domain error: its own class's entry, else its nearest ancestor's."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ANSWERS:
            return DOMAIN_ANSWERS[cls]
    raise TypeError(f"not a domain error: {type(exc).__name__}")


def status_of(exc: DomainError | Refused) -> int:
    return REFUSAL_STATUS[exc.code] if isinstance(exc, Refused) else answer_of(exc)[0]


def refusal_body(exc: DomainError | Refused) -> dict[str, Any]:
    """An error as a report's ``next_error`` shows it: AWE's status and error, and the refusal's code."""
    body: dict[str, Any] = {"status": status_of(exc), "error": [exc.message]}
    if isinstance(exc, Refused):
        body["code"] = exc.code.value
    return body


#: nginx's status for "the client closed the request": what the access log shows for such a request.
CLIENT_CLOSED_REQUEST = 499


def response_for(request: Request, exc: Exception) -> JSONResponse:
    """A ``DomainError`` with its own status and message, a ``Refused`` with its status and code;
    anything else is logged and answered 500.

    A client that went away mid-request is no server error: it is logged at INFO, without a
    traceback, and answered 499 (which nobody reads, but the access log shows). A 500 closes the
    connection (``Connection: close``): after an unexpected error the server does not trust the
    connection's state, and says so instead of dropping a keep-alive connection unannounced.
    """
    if isinstance(exc, Refused):
        return error_for(request.url.path, status_of(exc), exc.message, code=exc.code.value)
    if isinstance(exc, DomainError):
        status, error_code = answer_of(exc)
        return error_for(request.url.path, status, exc.message, exc.fields, error_code)
    if isinstance(exc, ClientDisconnect):
        log.info("client went away during %s %s", request.method, request.url.path)
        return error_for(request.url.path, CLIENT_CLOSED_REQUEST, "client closed the request")
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    response = error_for(request.url.path, 500, f"internal error: {type(exc).__name__}")
    response.headers["Connection"] = "close"
    return response
