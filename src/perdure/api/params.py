"""Query strings the AWE way: flags by presence (``?suspend`` = ``?suspend=1``), values validated here."""

from __future__ import annotations

from starlette.datastructures import QueryParams

from perdure.errors import BadRequest


def flag(params: QueryParams, name: str) -> bool:
    return name in params


def integer(params: QueryParams, name: str, default: int, *, minimum: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return value


def number(params: QueryParams, name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {raw!r}") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise BadRequest(f"{name} must be a finite number of at least {minimum}")
    return value


def comma_values(params: QueryParams, name: str) -> list[str]:
    """Every value of a repeatable, comma-separated parameter."""
    values: list[str] = []
    for raw in params.getlist(name):
        values += [v for v in raw.split(",") if v != ""]
    return values
