"""Resolution levels (interval, retention) and durations written the Go way.

The management API prints a level as ``{"interval": "1m0s", "retention": "168h0m0s"}``: Go's
``time.Duration.String``. Levels are kept in whole seconds; each coarser interval must be a multiple of
every finer one, so a range can be split on bucket boundaries of several levels without counting an
event twice.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from perdure.duration import format_duration
from perdure.duration import parse_duration as parse_duration

#: Microseconds per second: stored times are microseconds (schema.py), levels are seconds.
US = 1_000_000


@dataclass(frozen=True, order=True)
class Level:
    interval_s: int
    retention_s: int

    @property
    def interval_us(self) -> int:
        return self.interval_s * US

    @property
    def retention_us(self) -> int:
        return self.retention_s * US

    def document(self) -> dict[str, str]:
        return {"interval": go_duration(self.interval_s), "retention": go_duration(self.retention_s)}

    def floor(self, t_us: int) -> int:
        """Start of the bucket holding ``t_us`` (buckets are aligned to the epoch, i.e. UTC)."""
        return t_us - t_us % self.interval_us

    def ceil(self, t_us: int) -> int:
        return -((-t_us) // self.interval_us) * self.interval_us

    def oldest_kept(self, now_us: int) -> int:
        """Bucket starts before this are past retention (deleted, or about to be)."""
        return now_us - self.retention_us


#: The API document's levels: 1 minute for a week, 30 minutes for 90 days, a day for about two years.
DEFAULT_LEVELS: tuple[Level, ...] = (
    Level(60, 168 * 3600),
    Level(30 * 60, 2160 * 3600),
    Level(24 * 3600, 18000 * 3600),
)


#: Durations are parsed and printed by ``perdure.duration``, the one parser (``7d`` is accepted on
#: input, never printed); these names stay for the modules that import them from here.
go_duration = format_duration


def parse_levels(text: str) -> tuple[Level, ...]:
    """``1m:168h,30m:2160h,24h:18000h`` (interval:retention pairs) into levels, validated."""
    levels = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        interval, sep, retention = pair.partition(":")
        if not sep:
            raise ValueError(f"metrics level {pair!r} must be interval:retention, e.g. 1m:168h")
        levels.append(Level(_whole_seconds(interval), _whole_seconds(retention)))
    return validate(levels)


def _whole_seconds(text: str) -> int:
    seconds = parse_duration(text)
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"metrics level durations are whole positive seconds, not {text!r}")
    return int(seconds)


def validate(levels: list[Level] | tuple[Level, ...]) -> tuple[Level, ...]:
    ordered = tuple(sorted(set(levels)))
    if not ordered:
        raise ValueError("at least one metrics level is needed")
    intervals = [lv.interval_s for lv in ordered]
    if len(set(intervals)) != len(intervals):
        raise ValueError("two metrics levels have the same interval")
    for finer, coarser in itertools.pairwise(ordered):
        if coarser.interval_s % finer.interval_s:
            raise ValueError(
                f"metrics level {go_duration(coarser.interval_s)} is not a multiple of "
                f"{go_duration(finer.interval_s)}"
            )
    for level in ordered:
        if level.retention_s < level.interval_s:
            raise ValueError(f"metrics level {go_duration(level.interval_s)} keeps less than one interval")
    return ordered


_configured: tuple[Level, ...] | None = None
_from_env: tuple[str, tuple[Level, ...]] = ("", DEFAULT_LEVELS)


def levels() -> tuple[Level, ...]:
    """The levels in use, finest first: ``configure_levels``, else ``PERDURE_METRICS_LEVELS``, else the
    document's. Every server sharing a database must use the same levels."""
    global _from_env
    if _configured is not None:
        return _configured
    raw = os.environ.get("PERDURE_METRICS_LEVELS", "").strip()
    if _from_env[0] != raw:  # parsed once per value: this is read on every recorded event
        _from_env = (raw, parse_levels(raw) if raw else DEFAULT_LEVELS)
    return _from_env[1]


def configure_levels(new: list[Level] | tuple[Level, ...] | str | None) -> tuple[Level, ...]:
    """Set the levels for this process (``None`` goes back to the environment or the defaults)."""
    global _configured
    _configured = None if new is None else parse_levels(new) if isinstance(new, str) else validate(new)
    return levels()


def level_for_interval(seconds: float) -> Level | None:
    return next((lv for lv in levels() if lv.interval_s == seconds), None)
