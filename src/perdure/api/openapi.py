"""What the OpenAPI schema says of routes that read their query strings by hand.

Most routes take ``request.query_params`` themselves (AWE's flags by presence, ``?query&<any field>``),
so FastAPI cannot see their parameters, and a schema-driven client or fuzzer could not reach their
parsers. ``openapi_extra`` declares them here, without changing how requests are handled (the
worker's fast path in ``fastpath.py`` is untouched). ``errors`` declares the error answers.
"""

from __future__ import annotations

from typing import Any

_AWE_ERROR = {
    "type": "object",
    "properties": {
        "status": {"type": "integer"},
        "data": {"nullable": True},
        "error": {"type": "array", "items": {"type": "string"}},
    },
}
_MGMT_ERROR = {
    "type": "object",
    "properties": {
        "statusCode": {"type": "integer"},
        "errorCode": {"type": "integer"},
        "message": {"type": "string"},
        "fields": {},
    },
}
_MEANING = {
    400: "The request is not acceptable; the message says why",
    401: "Authentication is required",
    403: "Not allowed for this user",
    404: "No such object",
    409: "The workunit is no longer leased to this client",
    405: "Method not allowed (see the Allow header)",
    422: "A value cannot be applied",
    501: "An operation AWE defines but this request does not name",
}

INT32 = 2**31 - 1
INT64 = 2**63 - 1


def errors(*statuses: int, management: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the error answers a route gives, in its API's error shape."""
    schema = _MGMT_ERROR if management else _AWE_ERROR
    return {
        status: {"description": _MEANING[status], "content": {"application/json": {"schema": schema}}}
        for status in statuses
    }


def flag(name: str, description: str) -> dict[str, Any]:
    """AWE's flag by presence: ``?suspend`` (any value, or none)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "allowEmptyValue": True,
        "description": description,
        "schema": {"type": "string"},
    }


def text(
    name: str, description: str, *, max_length: int | None = None, required: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def integer(
    name: str, description: str, *, minimum: int | None = None, maximum: int = INT64
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "maximum": maximum}
    if minimum is not None:
        schema["minimum"] = minimum
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def number(name: str, description: str, *, minimum: float = 0, maximum: float) -> dict[str, Any]:
    schema = {"type": "number", "minimum": minimum, "maximum": maximum}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def query(*parameters: dict[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra=`` declaring query parameters (and a request body)."""
    extra: dict[str, Any] = {"parameters": list(parameters)}
    if body is not None:
        extra["requestBody"] = body
    return extra


JOB_SCRIPT_BODY = {
    "required": True,
    "description": "An AWE job script (docs/job-scripts.md), as the multipart file `upload` or as JSON",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"upload": {"type": "string", "format": "binary"}},
                "required": ["upload"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "info": {"type": "object"},
                    "tasks": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["tasks"],
            }
        },
    },
}


def client_param() -> dict[str, Any]:
    """``?client=<id>``: the worker's client id, required by the worker's data and checkpoint routes."""
    return text("client", "The calling worker's client id", required=True)


def json_body(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON request body (an object, unless ``schema`` says more)."""
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def binary_body(description: str) -> dict[str, Any]:
    """Raw bytes as the request body."""
    return {
        "required": True,
        "description": description,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }


NODE_UPLOAD_BODY = {
    "required": True,
    "description": "The file in `upload` (or one numbered part, e.g. `1`), and optional JSON `attributes`",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "upload": {"type": "string", "format": "binary"},
                    "attributes": {"type": "string", "format": "binary"},
                },
            }
        }
    },
}

KV_SCHEMA = {
    "type": "object",
    "properties": {"kvMap": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["kvMap"],
}
LOG_SCHEMA = {
    "type": "object",
    "properties": {
        "level": {"type": "string"},
        "maxSizeMB": {"type": "integer"},
        "maxBackups": {"type": "integer"},
        "file": {"type": "string"},
    },
}
NODE_REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "info": {"type": "object"},
        "files": {"type": "array", "items": {"type": "string"}},
        "group": {"type": "string"},
    },
}

PROFILE_BODY = {
    "required": True,
    "description": "The client profile (id, group, apps, ...): the multipart field `profile`, or JSON",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"profile": {"type": "string", "format": "binary"}},
                "required": ["profile"],
            }
        },
        "application/json": {"schema": {"type": "object"}},
    },
}
