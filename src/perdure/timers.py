"""One thread that runs short callbacks when they fall due (issue 22).

A workunit's timers (its first checkpoint, sampling its memory) used to be a thread each, started and
joined for every workunit: at hundreds of short workunits a second that was a good part of the worker's
CPU, for timers that almost never fired. Here a timer is a heap entry, cancelled for nothing when the
work ends first. Callbacks run in the timer thread, so they must be quick: anything long (a checkpoint)
starts a thread of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("perdure.timers")


class Timer:
    """A pending call; ``cancel`` it when it is no longer wanted."""

    __slots__ = ("_timers", "call", "cancelled", "due", "ran")

    def __init__(self, timers: Timers, due: float, call: Callable[[], object]) -> None:
        self._timers = timers
        self.due = due
        self.call = call
        self.cancelled = False
        #: Taken off the heap to be called (a cancel then comes too late).
        self.ran = False

    def cancel(self) -> None:
        """After this returns the call will not start (one already started finishes)."""
        self._timers._cancel(self)


class Timers:
    """Calls at ``time.monotonic()`` deadlines, in one daemon thread started on first use."""

    def __init__(self, name: str = "timers") -> None:
        self.name = name
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = 0

    def call_later(self, delay: float, call: Callable[[], object]) -> Timer:
        timer = Timer(self, time.monotonic() + max(0.0, delay), call)
        with self._wake:
            heapq.heappush(self._heap, (timer.due, next(self._order), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is timer:
                self._wake.notify()  # due before whatever the thread is waiting for
        return timer

    def pending(self) -> int:
        """Timers neither run nor cancelled."""
        with self._wake:
            return len(self._heap) - self._cancelled

    def _cancel(self, timer: Timer) -> None:
        """Once most of the heap is cancelled, rebuild it without them (a day's checkpoint timers of
        short workunits would otherwise pile up until they fall due)."""
        with self._wake:
            if timer.cancelled or timer.ran:
                return
            timer.cancelled = True
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _loop(self) -> None:
        while True:
            with self._wake:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, timer = heapq.heappop(self._heap)
                        if timer.cancelled:
                            self._cancelled -= 1
                            continue
                        timer.ran = True
                        break
                    self._wake.wait(self._heap[0][0] - now if self._heap else None)
            try:
                timer.call()
            except Exception:  # one bad callback must not stop everyone's timers
                log.exception("timer callback %r failed", timer.call)


#: The process's timers.
TIMERS = Timers()


__all__ = ["TIMERS", "Timer", "Timers"]
