"""Bounds on what query parameters may carry, checked where they are parsed, the same on both databases.

The job columns that hold numbers a user can set or search by (``priority``, ``remaintasks``,
``resumed``) are 32-bit on PostgreSQL; SQLite would take more, but a value valid on one database must
be valid on the other, so both get PostgreSQL's range. Names are ``String(255)`` columns and
``clientgroups`` a ``String(1024)`` one. Anything beyond is a 400 that says what the range is, never a
database error.
"""

from __future__ import annotations

from collections.abc import Iterable

from perdure.errors import BadRequest
from perdure.jobmodel import MAX_INT32, check_clientgroups, check_name
from perdure.timeutil import parse_expiration

#: The most distinct fields one ``?query`` may filter on (each becomes one SQL clause; SQLite refuses
#: an expression tree deeper than 1,000, and no real query needs more than a handful).
MAX_QUERY_FIELDS = 50
#: The most values one field may be matched against (``?info.project=a,b,c``).
MAX_QUERY_VALUES = 1000
#: The longest expiration a job can be given: 100 years (microseconds past that overflow 64 bits).
MAX_EXPIRATION_S = 100 * 366 * 86_400


def int32(name: str, raw: str, *, minimum: int = -MAX_INT32 - 1) -> int:
    """An integer for a 32-bit column, or a 400 naming the parameter and its range."""
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw[:64]!r}") from None
    if not minimum <= value <= MAX_INT32:
        raise BadRequest(f"{name} must be an integer between {minimum} and {MAX_INT32}")
    return value


def int32_values(name: str, values: Iterable[str]) -> None:
    for raw in values:
        int32(name, raw)


def query_fields(fields: dict[str, list[str]]) -> None:
    if len(fields) > MAX_QUERY_FIELDS:
        raise BadRequest(f"a query may filter on at most {MAX_QUERY_FIELDS} fields, not {len(fields)}")
    for name, values in fields.items():
        if len(values) > MAX_QUERY_VALUES:
            raise BadRequest(f"{name}: at most {MAX_QUERY_VALUES} values, not {len(values)}")


def name(parameter: str, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise BadRequest(f"{parameter} {exc}") from None


def clientgroups(parameter: str, value: str) -> str:
    try:
        return check_clientgroups(value)
    except ValueError as exc:
        raise BadRequest(f"{parameter}: {exc}") from None


def expiration(value: str) -> str:
    try:
        seconds = parse_expiration(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if seconds > MAX_EXPIRATION_S:
        raise BadRequest(f"expiration must be at most {MAX_EXPIRATION_S // 86_400}D")
    return value
