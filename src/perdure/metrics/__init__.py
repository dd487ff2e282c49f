"""Metrics: definitions, rollups recorded where events happen, queries, the sweep and Prometheus.

Modules: ``definitions`` (what is measured, for which objects), ``levels`` (interval and retention,
Go durations), ``clock`` (injectable time), ``storage`` (rollup arithmetic over the store's
``metricstore``), ``recording`` (what the store's hooks count), ``queries`` (series and summary),
``sweep`` (gauges and retention), ``prometheus`` (``/metrics`` and HTTP request metrics) and ``cli``
(``perdure metrics``). The SQL is all in ``perdure.store``; nothing here imports a database library.

The package imports none of its modules: ``perdure metrics`` on a worker node reads ``definitions``
without pulling in the store (and SQLAlchemy), which a node installed from the server's worker
wheelhouse does not have. Import the sweep from ``perdure.metrics.sweep``.
"""

from __future__ import annotations
