"""The metrics clock: which bucket an event falls in, and what retention counts as old.

Everything in ``perdure.metrics`` asks ``now()`` rather than the wall clock, so a test can put events
on either side of a bucket boundary and age data past its retention without waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from perdure.timeutil import now_us

Clock = Callable[[], int]

_clock: Clock = now_us


def now() -> int:
    """Microseconds since the epoch, from the current clock."""
    return _clock()


def set_clock(clock: Clock | None) -> None:
    """Use ``clock`` from now on (``None`` restores the wall clock)."""
    global _clock
    _clock = clock or now_us


@contextmanager
def use_clock(clock: Clock) -> Iterator[None]:
    previous = _clock
    set_clock(clock)
    try:
        yield
    finally:
        set_clock(previous)


class ManualClock:
    """A clock that moves only when told to: ``clock.set(t)``, ``clock.advance(seconds)``."""

    def __init__(self, start_us: int) -> None:
        self.t = start_us

    def __call__(self) -> int:
        return self.t

    def set(self, t_us: int) -> None:
        self.t = t_us

    def advance(self, seconds: float) -> int:
        self.t += int(seconds * 1_000_000)
        return self.t
