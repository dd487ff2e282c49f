"""The one retry policy of the SDK, the worker and downloads (``tenacity`` underneath).

What is retried: only a ``TransientError`` -- the server or host could not be reached, or answered
502/503/504, or 429 with a Retry-After. Anything else (a 4xx refusal, a 500) is raised at once: the
same request would be answered the same way. One exception, in the worker: a report answered 500 is
tried a few more times (``worker.api.REPORT_TRIES_ON_500``), since dropping it throws away a run.

How long: every retry has a stop condition -- a number of attempts, a total time, an event (the
worker's stop) or a ``give_up`` predicate (a draining node); a retry without one is an endless loop,
and ``retry_call`` refuses it. When one ends the retrying, the last transient error is raised.

Waits: exponential with jitter (half to all of ``first_wait_s * 2**n``, at most ``max_wait_s``), or as
long as the server's Retry-After asked (at most ``RETRY_AFTER_CAP_S``); cut short by the event or
``give_up``. ``tenacity`` rather than ``stamina``: its sleep can be interrupted, and a worker must
stop at once on SIGTERM, not after a 30 s back-off.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity

log = logging.getLogger("perdure.retry")
T = TypeVar("T")

#: The longest a Retry-After is honoured for: a server asking for an hour is waited on for this long.
RETRY_AFTER_CAP_S = 300.0
#: How often a wait looks at ``give_up`` (an event is noticed at once).
GIVE_UP_POLL_S = 0.2


class TransientError(Exception):
    """A failure that may pass: the same request may succeed later."""

    #: Seconds the server asked to wait before the next try (its Retry-After), None when it did not say.
    retry_after: float | None = None


@dataclass(frozen=True)
class Policy:
    """How often and how long to retry. ``attempts`` counts every try, the first included;
    ``within_s`` is the total time after which no new try starts (a wait that would end later is not
    begun). None means no such bound: then the caller must give another stop condition."""

    attempts: int | None = None
    within_s: float | None = None
    first_wait_s: float = 0.5
    max_wait_s: float = 30.0

    def wait(self, try_number: int, error: BaseException | None) -> float:
        """The wait after failed try ``try_number`` (1-based)."""
        asked = getattr(error, "retry_after", None)
        if asked is not None:
            return float(min(max(asked, 0.0), RETRY_AFTER_CAP_S))
        ceiling = min(self.max_wait_s, self.first_wait_s * 2 ** (try_number - 1))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _Interrupted(Exception):
    """A wait cut short by the stop event or ``give_up``."""


def _sleeper(stop: threading.Event | None, give_up: Callable[[], bool] | None) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            step = left if give_up is None else min(left, GIVE_UP_POLL_S)
            if stop is not None:
                if stop.wait(step):
                    raise _Interrupted
            else:
                time.sleep(step)
            if give_up is not None and give_up():
                raise _Interrupted

    return sleep


def retry_call(
    call: Callable[[], T],
    policy: Policy,
    *,
    what: str = "request",
    stop: threading.Event | None = None,
    give_up: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """``call()``, tried again after each ``TransientError`` until it succeeds or a stop condition
    (``policy.attempts``, ``policy.within_s``, ``stop`` set, ``give_up()`` true) ends it; then the last
    transient error is raised. ``sleep`` replaces the wait (tests)."""
    if policy.attempts is None and policy.within_s is None and stop is None and give_up is None:
        raise ValueError(f"retrying {what} needs a stop condition (attempts, time, an event or give_up)")
    # The first try outside tenacity: most calls succeed at once, and building its machinery for each
    # was a fifth of a busy worker's CPU (issue 22). A transient failure is replayed as tenacity's
    # first try, so the tries counted, the waits and the log lines stay the same.
    started = time.monotonic()
    try:
        return call()
    except TransientError as exc:
        replay = [exc]
    if policy.within_s is not None:  # the total time counts from the first try
        policy = dataclasses.replace(policy, within_s=policy.within_s - (time.monotonic() - started))

    def again() -> T:
        if replay:
            raise replay.pop()
        return call()

    stops: list[tenacity.stop.stop_base] = []
    if policy.attempts is not None:
        stops.append(tenacity.stop_after_attempt(max(1, policy.attempts)))
    if policy.within_s is not None:
        stops.append(tenacity.stop_before_delay(max(0.0, policy.within_s)))
    if stop is not None:
        stops.append(tenacity.stop_when_event_set(stop))
    if give_up is not None:
        stops.append(_GiveUp(give_up))
    last: list[BaseException] = []

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is not None:
            last[:] = [error]
        of = "" if policy.attempts is None else f" of {policy.attempts}"
        # INFO: the worker's and server's logs show it; a CLI command (no logging set up, so Python's
        # last-resort handler prints warnings) stays one clear error line when the server is down.
        log.info(
            "%s failed (%s); try %d%s, retrying in %.1fs",
            what,
            error,
            state.attempt_number,
            of,
            state.upcoming_sleep,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_any(*stops),
        wait=lambda state: policy.wait(
            state.attempt_number, state.outcome.exception() if state.outcome is not None else None
        ),
        retry=tenacity.retry_if_exception_type(TransientError),
        sleep=sleep or _sleeper(stop, give_up),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(again)
    except _Interrupted:
        raise last[0] from None


class _GiveUp(tenacity.stop.stop_base):
    def __init__(self, give_up: Callable[[], bool]) -> None:
        self.give_up = give_up

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.give_up()


__all__ = ["Policy", "TransientError", "retry_after_seconds", "retry_call"]
