"""Durations written the Go way: the one parser and printer every part of Perdure uses.

Input is Go's ``time.ParseDuration`` (``300ms``, ``1.5h``, ``1h30m``, ``-2m``), plus ``d`` for
24 hours, because people write ``--since 7d``; output is Go's ``Duration.String()`` (``1h30m0s``,
``500ms``), which never uses ``d``. Like Go, a bare number other than ``0`` is not a duration, and
nothing beyond Go's range (about 292 years) is one. ``Duration`` is the pydantic type of every
duration setting: it also takes a number of seconds (JSON, TOML, and the configKV strings ``"300"``
that the management API's users send), and prints as a Go string in JSON.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

#: Nanoseconds in each unit; ``d`` is accepted on input only.
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # micro sign
    "μs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
#: Go's ``time.Duration`` is an int64 of nanoseconds.
MAX_NS = 2**63 - 1
MAX_SECONDS = MAX_NS / 1e9


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``5m``, ``1h30m``, ``300ms``, ``7d``); ``ValueError`` otherwise."""
    raw = text.strip()
    if raw in ("0", "+0", "-0"):
        return 0.0
    sign = -1 if raw.startswith("-") else 1
    body = raw[1:] if raw[:1] in ("+", "-") else raw
    position, total = 0, Decimal(0)
    for match in _TERM.finditer(body):
        if match.start() != position:
            break
        total += Decimal(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m, 7d")
    if total > MAX_NS:
        raise ValueError(f"duration {text!r} is out of range (at most about 292 years)")
    return sign * float(total) / 1e9


def format_duration(seconds: float) -> str:
    """Go's ``Duration.String()``: ``1h0m0s``, ``5m0s``, ``30s``, ``1.5s``, ``300ms``, ``0s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _fraction(nanos, size) + unit
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _fraction(rest, 1_000_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _fraction(count: int, size: int) -> str:
    """``count / size`` in decimal without trailing zeros, exactly (integers, no float rounding)."""
    whole, part = divmod(count, size)
    if not part:
        return str(whole)
    digits = len(str(size)) - 1
    return f"{whole}.{part:0{digits}d}".rstrip("0")


def to_seconds(value: Any) -> float:
    """A duration as seconds: a number (seconds), a numeric string (seconds), or a Go duration."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s or 5m, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            try:
                seconds = float(Decimal(text))
            except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
                raise ValueError(f"invalid duration {value!r}") from None
        else:
            seconds = parse_duration(text)
    else:
        raise ValueError(f"expected a duration like 30s or 5m, not {value!r}")
    if not abs(seconds) <= MAX_SECONDS:  # also NaN
        raise ValueError(f"duration {value!r} is out of range (at most about 292 years)")
    return seconds


#: Seconds inside; a Go duration string in JSON. Bounds go on the field: ``Field(ge=1, le=3600)``.
Duration = Annotated[
    float,
    BeforeValidator(to_seconds),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
