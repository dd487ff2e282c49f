"""The shared timers (``perdure.timers``): calls when due, in order; a cancelled one never runs and does
not stay in memory; a failing callback does not stop the others."""

from __future__ import annotations

import threading
import time

from perdure.timers import Timers


def test_calls_run_when_due_in_order_of_their_deadlines() -> None:
    timers = Timers("test")
    ran: list[str] = []
    done = threading.Event()
    started = time.monotonic()
    timers.call_later(0.10, lambda: (ran.append("late"), done.set()))
    timers.call_later(0.05, lambda: ran.append("early"))
    timers.call_later(0.0, lambda: ran.append("now"))
    assert done.wait(5)
    assert ran == ["now", "early", "late"]
    assert time.monotonic() - started >= 0.10


def test_a_cancelled_call_never_runs() -> None:
    timers = Timers("test")
    ran: list[str] = []
    done = threading.Event()
    cancelled = timers.call_later(0.02, lambda: ran.append("cancelled"))
    timers.call_later(0.05, done.set)  # due after it: once this ran, the cancelled one would have
    cancelled.cancel()
    assert done.wait(5)
    assert ran == []
    assert timers.pending() == 0


def test_cancelled_timers_do_not_pile_up_until_they_fall_due() -> None:
    timers = Timers("test")
    for _ in range(10_000):  # a day of short workunits' checkpoint timers, cancelled when each ended
        timers.call_later(3600, lambda: None).cancel()
    kept = timers.call_later(3600, lambda: None)
    assert timers.pending() == 1
    assert len(timers._heap) <= 130  # rebuilt once most of it was cancelled
    kept.cancel()
    assert timers.pending() == 0


def test_a_failing_callback_does_not_stop_the_others() -> None:
    timers = Timers("test")
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.0, fail)
    timers.call_later(0.01, done.set)
    assert done.wait(5)


def test_cancel_after_the_call_started_is_harmless() -> None:
    timers = Timers("test")
    done = threading.Event()
    timer = timers.call_later(0.0, done.set)
    assert done.wait(5)
    timer.cancel()
    assert timers.pending() == 0
