"""Response shapes. Workflow endpoints answer in AWE's envelope, ``/api/v1`` in the management API's."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

#: The management API's error code for a request it cannot accept.
MGMT_INVALID_ARGUMENT = 1003
MGMT_ERROR_CODES = {400: 1003, 401: 2001, 403: 2005, 404: 1004, 405: 1005, 422: 1003, 500: 1000, 501: 1005}


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "data": data, "error": None}, status_code=status, headers=headers)


def page(data: list[Any], *, limit: int, offset: int, total: int) -> JSONResponse:
    return JSONResponse(
        {"status": 200, "data": data, "error": None, "limit": limit, "offset": offset, "total_count": total}
    )


def awe_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    """AWE's error envelope; a refusal of the worker protocol adds its ``code`` (``perdure.protocol``),
    which AWE workers ignore."""
    body: dict[str, Any] = {"status": status, "data": None, "error": [message]}
    if code is not None:
        body["code"] = code
    return JSONResponse(body, status_code=status)


def mgmt_error(status: int, message: str, fields: Any = None, error_code: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "statusCode": status,
        "errorCode": error_code or MGMT_ERROR_CODES.get(status, 1000),
        "message": message,
    }
    if fields is not None:
        body["fields"] = fields
    return JSONResponse(body, status_code=status)


def is_management(path: str) -> bool:
    return path.startswith(("/api/", "/nodes/")) or path.endswith(".log")


def error_for(
    path: str,
    status: int,
    message: str,
    fields: Any = None,
    error_code: int | None = None,
    *,
    code: str | None = None,
) -> JSONResponse:
    """Each API keeps its own error shape (spec/README.md)."""
    if is_management(path):
        return mgmt_error(status, message, fields, error_code)
    return awe_error(status, message, code)
