"""The answer to an exception a request handler raised, in the API's error shape."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from perdure.api.envelope import error_for
from perdure.errors import PerdureError

log = logging.getLogger("perdure.server")


def response_for(request: Request, exc: Exception) -> JSONResponse:
    """A ``PerdureError`` with its own status and message; anything else is logged and answered 500."""
    if isinstance(exc, PerdureError):
        return error_for(request.url.path, exc.status, exc.message, exc.fields, exc.error_code)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_for(request.url.path, 500, f"internal error: {type(exc).__name__}")
