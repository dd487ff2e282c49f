"""The metrics sweep: fold recorded events into the levels, sample the gauges (queue length, active
clients and nodes) and apply retention.

Safe on every server sharing the database: a marker row in ``meta`` (compare-and-set on the last
sample time) lets one server sample per period, and the retention delete is idempotent. Averages stay
right even if two servers do sample in the same period: each sample counts once in the bucket's count.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass

from perdure.metrics import clock, storage
from perdure.metrics.definitions import (
    BY_NAME,
    SYSTEM_OBJECT,
    MetricObject,
    node_object,
    queue_object,
    queues_of,
)
from perdure.metrics.levels import levels
from perdure.store import metricstore
from perdure.store.database import Database
from perdure.store.metricstore import Connection
from perdure.timeutil import now_us

log = logging.getLogger("perdure.metrics")
_MARKER = "metrics.sampled"
#: Gauges are sampled at most this often (across all servers); the finest default level is 1 minute.
SAMPLE_EVERY_S = 15.0


@dataclass(frozen=True)
class SweepResult:
    sampled: bool
    folded: int
    expired: int


@dataclass(frozen=True)
class Gauges:
    """Current values of the gauge metrics, per object id."""

    queue_length: dict[MetricObject, int]
    active_clients: dict[MetricObject, int]
    active_nodes: dict[MetricObject, int]

    def samples(self) -> list[tuple[str, str, float]]:
        out = []
        for metric, values in (
            ("queueLength", self.queue_length),
            ("activeClients", self.active_clients),
            ("activeNodes", self.active_nodes),
        ):
            kept_for = BY_NAME[metric].objects
            out += [(metric, obj.id, float(n)) for obj, n in values.items() if obj.type in kept_for]
        return out


def current_gauges(conn: Connection, node_ttl_s: float) -> Gauges:
    """Queued workunits and live clients and nodes, now, for the system, each queue and each node.

    Every known client group appears (with 0 when idle), so a queue emptying shows as 0, not as a gap.
    """
    queue_length: Counter[MetricObject] = Counter({SYSTEM_OBJECT: 0})
    for name in metricstore.clientgroup_names(conn):
        queue_length[queue_object(name)] += 0
    for groups, n in metricstore.queued_by_clientgroups(conn):
        queue_length[SYSTEM_OBJECT] += n
        for q in queues_of(groups):
            queue_length[queue_object(q)] += n

    cutoff = now_us() - int(node_ttl_s * 1_000_000)
    live = metricstore.live_clients(conn, cutoff)
    active_clients: Counter[MetricObject] = Counter({SYSTEM_OBJECT: 0})
    nodes: defaultdict[MetricObject, set[str]] = defaultdict(set)
    nodes[SYSTEM_OBJECT] = set()
    for obj in queue_length:
        active_clients[obj] += 0
        nodes[obj] = set()
    for row in live:
        machine = row.node_id or row.hostname or row.id  # AWE clients may not say which node they are
        queue = queue_object(row.group_name or "default")
        for obj in (SYSTEM_OBJECT, queue):
            active_clients[obj] += 1
            nodes[obj].add(machine)
        queue_length[queue] += 0
        if row.node_id:
            active_clients[node_object(row.node_id)] += 1
    return Gauges(
        queue_length=dict(queue_length),
        active_clients=dict(active_clients),
        active_nodes={obj: len(machines) for obj, machines in nodes.items()},
    )


def sweep(
    db: Database,
    *,
    node_ttl_s: float = 300.0,
    sample_every_s: float = SAMPLE_EVERY_S,
    force: bool = False,
) -> SweepResult:
    """Fold pending events into the levels; once per ``sample_every_s`` cluster-wide, also sample the
    gauges and delete expired buckets. ``force`` samples now whatever the marker says.

    Called from the server's background sweep, on every server.
    """
    now = clock.now()
    all_levels = levels()
    period_us = int(sample_every_s * 1_000_000)
    sampled = False
    with metricstore.snapshot(db) as conn:
        due = force or _due(metricstore.read_marker(conn, _MARKER), now, period_us)
        gauges = current_gauges(conn, node_ttl_s) if due else None
    if gauges is not None:
        sampled = metricstore.sample_once(
            db, _MARKER, now, lambda last: force or _due(last, now, period_us), gauges.samples()
        )
    folded = storage.fold(db, all_levels)
    expired = storage.expire(db, list(BY_NAME), all_levels, now) if sampled else 0
    if expired:
        log.info("metrics: deleted %d bucket(s) past retention", expired)
    return SweepResult(sampled=sampled, folded=folded, expired=expired)


def _due(last: str | None, now: int, period_us: int) -> bool:
    try:
        previous = int(last) if last is not None else None
    except ValueError:
        previous = None
    # A clock that went backwards (another server's, or a test's) does not stop sampling.
    return previous is None or not 0 <= now - previous < period_us
