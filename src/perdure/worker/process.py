"""The work's process group once started: stopping it, its peak memory, its exit status, its logs' tails.

The runner starts and reaps the process (it alone may wait for it); these are what it needs around
that. Work that ends within half a second costs no memory sample, and no thread unless it is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from perdure.spot.protection import Protection
from perdure.timers import TIMERS

log = logging.getLogger("perdure.worker")

#: Of each log, the last this many bytes are sent with the report.
LOG_TAIL = 4 * 1024 * 1024


class PeakMemory:
    """Samples the RSS of the whole process tree every half second (rusage only sees the largest single
    process), on the shared timers: work that ends sooner costs no thread and no psutil call."""

    EVERY_S = 0.5

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = 0
        self._root: psutil.Process | None = None
        self._stopped = False
        self._lock = threading.Lock()  # a sample under way finishes before ``stop`` returns
        self._timer = TIMERS.call_later(self.EVERY_S, self._sample)

    def _sample(self) -> None:
        with self._lock:
            if self._stopped:
                return
            try:
                if self._root is None:
                    self._root = psutil.Process(self.pid)
                procs = [self._root, *self._root.children(recursive=True)]
                self.value = max(self.value, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._timer = TIMERS.call_later(self.EVERY_S, self._sample)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._timer.cancel()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the work's process group, SIGKILL five seconds later if any of it is still there."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def escalate() -> None:
        time.sleep(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=escalate, daemon=True).start()


def exit_status(exit_file: Path, launcher_code: int) -> int:
    """The work's own exit status, which its launcher wrote to ``exit_file``; without one the work did
    not end by itself (killed, or never restored), and the launcher's failure stands."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return launcher_code if launcher_code != 0 else 1


def started_from_pidfile(protection: Protection, pidfile: Path, timeout_s: float = 60.0) -> None:
    """Tell the protection the work's process id once the program that restored it has written it."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up and not protection.run.exited.is_set():
        with contextlib.suppress(OSError, ValueError):
            protection.started(int(pidfile.read_text().strip()))
            return
        time.sleep(0.1)
    log.warning("%s: no process id in %s; it will not be checkpointed", protection.wu_id, pidfile)


def tail_bytes(path: Path | None, limit: int = LOG_TAIL) -> bytes:
    """The last ``limit`` bytes of a file; an empty or missing one is not opened."""
    if path is None:
        return b""
    try:
        if os.stat(path).st_size == 0:
            return b""
    except OSError:
        return b""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read()
