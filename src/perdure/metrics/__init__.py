"""Metrics: definitions, rollups recorded where events happen, queries, the sweep and Prometheus.

Modules: ``definitions`` (what is measured, for which objects), ``levels`` (interval and retention,
Go durations), ``clock`` (injectable time), ``storage`` (the rollup table), ``recording`` (the calls
the stores make), ``queries`` (series and summary), ``sweep`` (gauges and retention), ``prometheus``
(``/metrics`` and HTTP request metrics) and ``cli`` (``perdure metrics``).
"""

from __future__ import annotations

from perdure.metrics.sweep import SweepResult, sweep

__all__ = ["SweepResult", "sweep"]
