"""One setting's value: how a string becomes it, which bounds it has, and why it was refused.

Durations are ``perdure.duration.Duration`` (Go strings outside, seconds inside); booleans are ``Flag``
(``true/false``, ``1/0``, ``yes/no``, ``on/off``); lists and maps arrive as ``a,b`` and ``k:v,k2:v2``
strings from configKV, environment variables and flags. ``coerce`` is the only place that turns such
a string into a value; pydantic checks the value against the field's type and bounds, and
``validation_messages`` says its refusals in the key's own units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo

from perdure.duration import format_duration, to_seconds

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A key or value the configuration cannot take; ``fields`` maps each bad key to why."""

    def __init__(self, message: str, fields: Mapping[str, str]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


def coerce_bool(value: Any) -> bool:
    """The boolean words every setting accepts: true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected true or false, not {value!r}")


#: A boolean setting (``coerce_bool``'s words).
Flag = Annotated[bool, BeforeValidator(coerce_bool)]


def leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    """``{"node.ttl": field, ...}``: every setting under ``model``, keyed by its dotted path."""
    leaves: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(leaf_fields(annotation, key + "."))
        else:
            leaves[key] = info
    return leaves


def is_duration(info: FieldInfo) -> bool:
    """A ``Duration`` field: seconds inside, a Go string such as ``5m0s`` outside."""
    return any(isinstance(m, BeforeValidator) and m.func is to_seconds for m in info.metadata)


#: pydantic keeps a field's bounds in its metadata as ``annotated_types`` ``Ge``/``Gt``/``Le``/``Lt``.
_BOUND_WORDS = (("ge", "at least"), ("gt", "more than"), ("le", "at most"), ("lt", "less than"))


def _limits(info: FieldInfo) -> list[tuple[str, float]]:
    """``[("ge", 1.0), ("le", 604800.0)]``: a field's bounds, in the order they were declared."""
    found: list[tuple[str, float]] = []
    for item in info.metadata:
        for name, _ in _BOUND_WORDS:
            value = getattr(item, name, None)
            if isinstance(value, int | float):
                found.append((name, float(value)))
    return found


def bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    """A field's (lowest, highest) allowed value; None where unbounded."""
    limits = dict(_limits(info))
    low = limits.get("ge", limits.get("gt"))
    high = limits.get("le", limits.get("lt"))
    return low, high


def describe_bounds(info: FieldInfo) -> str:
    """``at least 1s and at most 168h0m0s``: a field's bounds in its own units."""
    words = dict(_BOUND_WORDS)
    return " and ".join(f"{words[name]} {_shown(info, value)}" for name, value in _limits(info))


def _shown(info: FieldInfo, value: float) -> str:
    if is_duration(info):
        return format_duration(value)
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def coerce(info: FieldInfo, raw: Any) -> Any:
    """A string from configKV, the environment or a flag, as the field takes it: ``a,b`` for lists,
    ``k:v,k2:v2`` for maps, ``""`` as null for a list that may be null. Anything else (and any value
    that is not a string) goes to pydantic as it is, which checks types, words and bounds."""
    if not isinstance(raw, str):
        return raw
    annotation = info.annotation
    kinds = {get_origin(a) or a for a in (get_args(annotation) or (annotation,))} | {
        get_origin(annotation) or annotation
    }
    if dict in kinds:
        pairs: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"{item!r} is not key:value")
            pairs[name.strip()] = value.strip()
        return pairs
    if list in kinds and _list_of_models(annotation):
        try:
            value = json.loads(raw or "[]")
        except ValueError as exc:
            raise ValueError(f"expected a JSON array of objects: {exc}") from None
        if not isinstance(value, list):
            raise ValueError("expected a JSON array of objects")
        return value
    if list in kinds:
        items = [p.strip() for p in raw.split(",") if p.strip()]
        return items if items or type(None) not in kinds else None
    if annotation is int:
        return raw.strip()
    return raw


def _list_of_models(annotation: Any) -> bool:
    """``list[SomeModel]`` (``pool.pools``): set as a JSON array, since a comma list cannot say it."""
    return any(isinstance(a, type) and issubclass(a, BaseModel) for a in get_args(annotation))


_BOUND_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def validation_messages(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """``{key: why}`` for each error, with bounds said in the key's own units."""
    out: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        key = ".".join(str(p) for p in error["loc"])
        info = leaf_fields(model).get(key)
        message = error["msg"].removeprefix("Value error, ")
        beyond_go = info is not None and is_duration(info) and "out of range" in message
        if info is not None and (error["type"] in _BOUND_ERRORS or beyond_go):
            given = error["input"]
            if is_duration(info) and isinstance(given, int | float):
                given = format_duration(given)
            message = f"{given!r} is out of range: must be {describe_bounds(info)}"
        out[key] = f"{prefix}{key}: {message}" if prefix else message
    return out
