"""Query strings the AWE way: flags by presence (``?suspend`` = ``?suspend=1``), values validated here;
and request bodies read only up to a limit."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.requests import Request

from perdure.errors import BadRequest


def flag(params: QueryParams, name: str) -> bool:
    return name in params


#: Values are stored in 64-bit columns.
MAX_INT = 2**63 - 1


def integer(
    params: QueryParams, name: str, default: int, *, minimum: int | None = None, maximum: int = MAX_INT
) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    if value > maximum:
        raise BadRequest(f"{name} must be at most {maximum}")
    return value


def number(
    params: QueryParams, name: str, default: float, *, minimum: float = 0.0, maximum: float = float(MAX_INT)
) -> float:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {raw!r}") from None
    if not minimum <= value <= maximum:  # also false for NaN
        raise BadRequest(f"{name} must be a number between {minimum} and {maximum:.0f}")
    return value


def comma_values(params: QueryParams, name: str) -> list[str]:
    """Every value of a repeatable, comma-separated parameter."""
    values: list[str] = []
    for raw in params.getlist(name):
        values += [v for v in raw.split(",") if v != ""]
    return values


async def body_at_most(request: Request, limit: int, too_large: BadRequest) -> bytes:
    """The whole body, refused with ``too_large`` as soon as it is known to pass ``limit`` bytes (by
    its Content-Length, or while streaming), so an oversized body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
