"""Guards for the background sweep's steps: one step's failure is logged and counted, and the
next steps run anyway (``perdure_sweep_failures_total{step=...}`` on ``/metrics``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter

from perdure.metrics.prometheus import http_metrics

log = logging.getLogger("perdure.server")

T = TypeVar("T")

_failures: Counter | None = None
_lock = threading.Lock()


def failures() -> Counter:
    """The counter, in this process's HTTP metrics registry (or the multiprocess directory), so
    ``/metrics`` shows it beside the request metrics."""
    global _failures
    with _lock:
        if _failures is None:
            _failures = Counter(
                "perdure_sweep_failures",
                "Housekeeping steps of the background sweep that failed, by step",
                ["step"],
                registry=http_metrics().registry,
            )
        return _failures


def guarded(step: str, action: Callable[[], T]) -> T | None:
    """``action()``, or None when it raised: logged with its traceback and counted under ``step``."""
    try:
        return action()
    except Exception:
        log.exception("sweep step %s failed; the other steps go on, and it is tried again next sweep", step)
        failures().labels(step).inc()
        return None
