"""What is measured: metric definitions, the objects they are kept for, and their API documents.

Objects are ``system-total``, one ``queue-<clientgroup>`` per client group (a job's queues are its
``info.clientgroups``; none means ``default``) and one ``node-<node id>`` per worker machine. A job in
several client groups counts in each of their queues, so queues may add up to more than the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from perdure.metrics.levels import Level


class Kind(StrEnum):
    #: Events counted: a point is how many happened in its bucket.
    COUNTER = "counter"
    #: A quantity added up (seconds of runtime saved...): a point is the bucket's total.
    TOTAL = "total"
    #: One measurement per event (a latency, a size): a point is the bucket's average.
    DISTRIBUTION = "distribution"
    #: Sampled by the sweep (a queue's length): a point is the bucket's average sample.
    GAUGE = "gauge"


SYSTEM = "system-total"
QUEUE = "queue"
NODE = "node"
DEFAULT_QUEUE = "default"
OBJECT_TYPES = (SYSTEM, QUEUE, NODE)
_SQ = frozenset({SYSTEM, QUEUE})
_SQN = frozenset({SYSTEM, QUEUE, NODE})
#: Object ids are stored in a 300-character column.
MAX_OBJECT_ID = 300


@dataclass(frozen=True)
class MetricDef:
    name: str
    description: str
    labels: tuple[str, ...]
    kind: Kind
    objects: frozenset[str]
    #: The Prometheus family name (without ``perdure_`` and the type's suffix).
    prom: str

    @property
    def id(self) -> str:
        return f"metricDef-{self.name}"

    @property
    def statistic(self) -> str:
        """What a time-series point shows: ``sum`` for counters and totals, ``avg`` otherwise."""
        return "sum" if self.kind in (Kind.COUNTER, Kind.TOTAL) else "avg"


def _d(name: str, description: str, label: str, kind: Kind, objects: frozenset[str], prom: str) -> MetricDef:
    return MetricDef(name, description, (label,), kind, objects, prom)


DEFINITIONS: tuple[MetricDef, ...] = (
    _d("jobSubmitted", "Number of jobs submitted", "count", Kind.COUNTER, _SQ, "jobs_submitted"),
    _d("jobCompleted", "Number of jobs completed", "count", Kind.COUNTER, _SQ, "jobs_completed"),
    _d(
        "jobFailed",
        "Number of jobs suspended by the failure rules or failed permanently",
        "count",
        Kind.COUNTER,
        _SQ,
        "jobs_failed",
    ),
    _d("runtime", "Total runtime of jobs", "duration", Kind.TOTAL, _SQ, "job_runtime_seconds"),
    _d(
        "workunitsCompleted",
        "Number of workunits completed",
        "count",
        Kind.COUNTER,
        _SQN,
        "workunits_completed",
    ),
    _d(
        "workunitsFailed",
        "Number of workunit failures reported",
        "count",
        Kind.COUNTER,
        _SQN,
        "workunits_failed",
    ),
    _d(
        "checkoutLatency",
        "Time a workunit waited in the queue before it was checked out",
        "duration",
        Kind.DISTRIBUTION,
        _SQN,
        "checkout_latency_seconds",
    ),
    _d("queueLength", "Workunits waiting in the queue", "count", Kind.GAUGE, _SQ, "queued_workunits"),
    _d("activeNodes", "Worker nodes with a live client", "count", Kind.GAUGE, _SQ, "active_nodes"),
    _d("activeClients", "Clients with a recent heartbeat", "count", Kind.GAUGE, _SQN, "active_clients"),
    _d(
        "spotProtection",
        "Total number of spot reclaim protections provided (a job restored from its checkpoint)",
        "count",
        Kind.COUNTER,
        _SQN,
        "spot_protections",
    ),
    _d(
        "timeSaved",
        "Run time saved by restoring jobs from checkpoints instead of starting them again",
        "duration",
        Kind.TOTAL,
        _SQN,
        "time_saved_seconds",
    ),
    _d(
        "checkpointDuration",
        "Time taken by a checkpoint",
        "duration",
        Kind.DISTRIBUTION,
        _SQN,
        "checkpoint_duration_seconds",
    ),
    _d("checkpointSize", "Size of a checkpoint", "bytes", Kind.DISTRIBUTION, _SQN, "checkpoint_size_bytes"),
    _d(
        "restoreDuration",
        "Time taken by a restore from a checkpoint",
        "duration",
        Kind.DISTRIBUTION,
        _SQN,
        "restore_duration_seconds",
    ),
    _d(
        "checkpointFailures",
        "Number of checkpoints that failed",
        "count",
        Kind.COUNTER,
        _SQN,
        "checkpoint_failures",
    ),
    _d("restoreFailures", "Number of restores that failed", "count", Kind.COUNTER, _SQN, "restore_failures"),
)
BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}
#: What the summary reports, per queue (management API, "Get Metrics Reporting Summary").
SUMMARY_METRICS = ("jobSubmitted", "runtime", "spotProtection", "timeSaved")


def definition(ref: str) -> MetricDef | None:
    """A definition by ``metricDef-<name>`` (as in the API's URLs) or by bare name."""
    return BY_NAME.get(ref.removeprefix("metricDef-"))


# ---- objects ------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class MetricObject:
    type: str
    name: str

    @property
    def id(self) -> str:
        return SYSTEM if self.type == SYSTEM else f"{self.type}-{self.name}"

    def document(self) -> dict[str, str]:
        return {"id": self.id, "type": self.type, "name": self.name}


SYSTEM_OBJECT = MetricObject(SYSTEM, SYSTEM)


def queue_object(name: str) -> MetricObject:
    return MetricObject(QUEUE, name)


def node_object(node_id: str) -> MetricObject:
    return MetricObject(NODE, node_id)


def parse_object(object_id: str) -> MetricObject | None:
    """``system-total``, ``queue-<name>`` or ``node-<id>``; None for anything else."""
    if object_id == SYSTEM:
        return SYSTEM_OBJECT
    kind, sep, name = object_id.partition("-")
    if not sep or not name or kind not in (QUEUE, NODE) or len(object_id) > MAX_OBJECT_ID:
        return None
    return MetricObject(kind, name)


def queues_of(clientgroups: str | None) -> list[str]:
    """The queues a job (or workunit) counts in: its client groups, or ``default`` when it has none."""
    names = [g.strip() for g in (clientgroups or "").split(",")]
    unique = list(dict.fromkeys(n for n in names if n))
    return unique or [DEFAULT_QUEUE]


def definition_document(metric: MetricDef, obj: MetricObject, levels: tuple[Level, ...]) -> dict[str, Any]:
    """One entry of ``GET /api/v1/metric``, in the management API's shape."""
    return {
        "name": metric.description,
        "id": f"{metric.id}.{obj.id}",
        "definition": {"id": metric.id, "description": metric.description, "labels": list(metric.labels)},
        "object": obj.document(),
        "levels": [level.document() for level in levels],
    }
