"""Pausing Python's cyclic garbage collector while one request builds a very large object graph.

Accepting a 10,000-task job allocates about a million dicts and lists that all stay alive until the
reply is sent; every few thousand allocations the collector walks them again, for nothing, which
doubled the CPU time of such a submit. Reference counting still frees everything as usual; only the
search for reference cycles waits until the last paused section ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_paused = 0  # sections inside gc_paused(True), across threads
_was_enabled = False


@contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Disable the cyclic GC for the block (process-wide, so nested and concurrent sections count)."""
    global _paused, _was_enabled
    if not pause:
        yield
        return
    with _lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


__all__ = ["gc_paused"]
