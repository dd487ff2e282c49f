"""Time as AWE shows it: RFC 3339 UTC with ``Z``, stored as integer microseconds.

Storing microseconds since the epoch keeps ordering, indexing and range queries identical on SQLite
and PostgreSQL; only the edges (JSON in, JSON out) deal in text.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, timedelta

#: What AWE (Go's zero ``time.Time``) prints for a time that was never set.
ZERO_TIME = "0001-01-01T00:00:00Z"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^(\d+)([MHD])$")
_DURATION_UNITS = {"M": 60, "H": 3600, "D": 86400}


def now_us() -> int:
    return time.time_ns() // 1000


@functools.lru_cache(maxsize=1024)
def format_us(us: int | None) -> str:
    """Go's RFC3339Nano for UTC: fraction trimmed of trailing zeros, ``Z`` suffix. Cached: a job's
    document shows the same few times in every task (a submit's reply formatted each again)."""
    if not us:
        return ZERO_TIME
    dt = _EPOCH + timedelta(microseconds=us)  # exact: no float seconds
    base = f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S")
    micro = us % 1_000_000
    if micro:
        base += "." + f"{micro:06d}".rstrip("0")
    return base + "Z"


def parse_time(text: str) -> int:
    """Parse RFC 3339 (or a bare ``YYYY-MM-DD``) into microseconds; ``ValueError`` if malformed.

    A time without a zone is refused rather than guessed: RFC 3339 requires one.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty time")
    candidate = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", candidate):
        candidate += "T00:00:00Z"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", candidate):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    if candidate[-1] in "zZ":
        candidate = candidate[:-1] + "+00:00"
    # fromisoformat accepts at most 6 fractional digits; Go emits up to 9.
    candidate = re.sub(r"\.(\d{6})\d+", r".\1", candidate)
    dt = datetime.fromisoformat(candidate)
    if dt.year <= 1:
        return 0
    return (dt - _EPOCH) // timedelta(microseconds=1)


def parse_expiration(text: str) -> int:
    """AWE's ``expiration``/``pipeline_expire`` form ``<N>(M|H|D)`` into seconds; ``ValueError`` if not."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expiration must look like 30M, 12H or 7D, not {text!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
