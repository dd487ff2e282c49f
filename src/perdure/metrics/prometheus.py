"""``GET /metrics``: the same quantities in the Prometheus text format, plus HTTP request metrics.

Job, workunit and checkpoint counters are read from the database at scrape time (the all-time rollup
rows), and gauges are computed from the live tables, so every server sharing the database exposes the
same, complete numbers, whichever one Prometheus reaches. Only HTTP metrics are per process: they
carry a ``process`` label (host:pid) so the series of several processes add up with ``sum``. When
``PROMETHEUS_MULTIPROC_DIR`` is set before the server processes start (prometheus-client's
multiprocess mode), they are shared through that directory instead and carry no ``process`` label.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from perdure.metrics import storage
from perdure.metrics.definitions import DEFINITIONS, NODE, QUEUE, SYSTEM, Kind, MetricDef, parse_object
from perdure.metrics.pools import PoolCollector
from perdure.metrics.queries import known_objects
from perdure.metrics.storage import Agg
from perdure.metrics.sweep import current_gauges
from perdure.store.database import Database

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "perdure_"
#: Label per object type; the system total has none.
_LABEL = {QUEUE: "queue", NODE: "node"}
_SCOPE_PREFIX = {SYSTEM: "", QUEUE: "queue_", NODE: "node_"}
_SCOPE_DOC = {SYSTEM: "", QUEUE: " (per queue; a job in several groups counts in each)", NODE: " (per node)"}


class DatabaseCollector(Collector):
    """Counters, summaries and gauges for every metric definition, read from the shared database."""

    def __init__(self, db: Database, node_ttl_s: float = 300.0) -> None:
        self.db = db
        self.node_ttl_s = node_ttl_s

    def collect(self) -> Iterator[Metric]:
        recorded = [d.name for d in DEFINITIONS if d.kind != Kind.GAUGE]
        with storage.snapshot(self.db) as conn:
            totals = storage.all_time(conn, recorded)
            gauges = current_gauges(conn, self.node_ttl_s)
            objects = known_objects(conn)
        live = {
            "queueLength": gauges.queue_length,
            "activeClients": gauges.active_clients,
            "activeNodes": gauges.active_nodes,
        }
        for scope in (SYSTEM, QUEUE, NODE):
            scoped = [o for o in objects if o.type == scope]
            for metric in DEFINITIONS:
                if scope not in metric.objects:
                    continue
                if metric.kind == Kind.GAUGE:
                    values = {o.id: float(n) for o, n in live[metric.name].items() if o.type == scope}
                    yield _gauge(metric, scope, values)
                    continue
                aggs = {oid: agg for (name, oid), agg in totals.items() if name == metric.name}
                for obj in scoped:
                    aggs.setdefault(obj.id, Agg())
                yield _recorded(metric, scope, {oid: a for oid, a in aggs.items() if _type_of(oid) == scope})


def _type_of(object_id: str) -> str | None:
    obj = parse_object(object_id)
    return obj.type if obj else None


def _family_name(metric: MetricDef, scope: str) -> str:
    return f"{PREFIX}{_SCOPE_PREFIX[scope]}{metric.prom}"


def _labels(scope: str, object_id: str) -> list[str]:
    obj = parse_object(object_id)
    return [] if scope == SYSTEM or obj is None else [obj.name]


def _gauge(metric: MetricDef, scope: str, values: dict[str, float]) -> Metric:
    label = [_LABEL[scope]] if scope in _LABEL else []
    doc = metric.description + _SCOPE_DOC[scope]
    family = GaugeMetricFamily(_family_name(metric, scope), doc, labels=label)
    for object_id, value in sorted(values.items()):
        family.add_metric(_labels(scope, object_id), value)
    return family


def _recorded(metric: MetricDef, scope: str, aggs: dict[str, Agg]) -> Metric:
    label = [_LABEL[scope]] if scope in _LABEL else []
    name, doc = _family_name(metric, scope), metric.description + _SCOPE_DOC[scope]
    family: Any
    if metric.kind == Kind.DISTRIBUTION:
        family = SummaryMetricFamily(name, doc, labels=label)
        for object_id, agg in sorted(aggs.items()):
            family.add_metric(_labels(scope, object_id), count_value=agg.samples, sum_value=agg.total)
    else:
        family = CounterMetricFamily(name, doc, labels=label)
        for object_id, agg in sorted(aggs.items()):
            family.add_metric(_labels(scope, object_id), agg.total)
    return family  # type: ignore[no-any-return]


# ---- HTTP metrics (per process) -----------------------------------------------------------------

#: Request latency buckets, in seconds: from a cached read to a long-polled checkout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        extra = [] if self.multiprocess else ["process"]
        self.requests = Counter(
            "perdure_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status", *extra],
            registry=self.registry,
        )
        self.latency = Histogram(
            "perdure_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route", *extra],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        #: (method, route, status) -> the two series' children; routes are templates, so few.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            # ``labels`` validates and looks the series up under a lock: done once per series.
            extra = [] if self.multiprocess else [self.process]
            children = (
                self.requests.labels(method, route, str(status), *extra),
                self.latency.labels(method, route, *extra),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


_http: HttpMetrics | None = None
_http_lock = threading.Lock()


def http_metrics() -> HttpMetrics:
    """This process's HTTP metrics (created once, whatever number of apps the process builds)."""
    global _http
    with _http_lock:
        if _http is None:
            _http = HttpMetrics()
        return _http


def exposition(db: Database, node_ttl_s: float = 300.0) -> bytes:
    """The whole ``/metrics`` page: database-wide metrics, then this process's HTTP metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, node_ttl_s))
    registry.register(PoolCollector(db))
    return generate_latest(registry) + http_metrics().exposition()
