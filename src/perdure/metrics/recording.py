"""Recording: what each event the store reports counts, for which objects.

The store calls its hooks (``perdure.store.hooks``) where things happen, inside its own transaction;
``RECORDER``, installed by the server at startup (``install``), answers each with the samples to add,
and the store appends them to the event log in that transaction, so a metric is exactly as durable as
the change it counts: a rolled-back report counts nothing, and every server sharing the database sees
the same numbers. The sweep folds events into the levels. Bucket times come from the metrics clock;
durations come from the stored times.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from perdure.metrics import clock
from perdure.metrics.definitions import (
    BY_NAME,
    MAX_OBJECT_ID,
    SYSTEM_OBJECT,
    MetricObject,
    node_object,
    queue_object,
    queues_of,
)
from perdure.store import hooks, metricstore
from perdure.store.metricstore import Connection, Sample

US = 1_000_000


def record(
    conn: Connection,
    events: Iterable[tuple[str, float]],
    objects: Sequence[MetricObject],
    at_us: int | None = None,
) -> None:
    """Add each (metric, value) to each object the metric is kept for, at ``at_us`` (default: now)."""
    metricstore.insert_events(conn, samples(events, objects), clock.now() if at_us is None else at_us)


def samples(events: Iterable[tuple[str, float]], objects: Sequence[MetricObject]) -> list[Sample]:
    """Each (metric, value) for each object the metric is kept for."""
    found = []
    for metric, value in events:
        definition = BY_NAME[metric]
        found += [(metric, o.id, float(value)) for o in objects if o.type in definition.objects]
    return found


def objects_for(clientgroups: str | None, node_id: str | None = None) -> list[MetricObject]:
    """system-total, the queues of these client groups and, when known, the node.

    A job may name any client group; one too long for an object id counts in the total only, rather
    than failing the transaction that records it.
    """
    found = [SYSTEM_OBJECT, *(queue_object(q) for q in queues_of(clientgroups))]
    if node_id:
        found.append(node_object(node_id))
    return [o for o in found if len(o.id) <= MAX_OBJECT_ID]


class MetricsRecorder:
    """The metrics' answer to the store's hooks (``perdure.store.hooks.Recorder``)."""

    def now_us(self) -> int:
        return clock.now()

    def job_submitted(self, clientgroups: str) -> list[Sample]:
        return samples([("jobSubmitted", 1)], objects_for(clientgroups))

    def job_completed(self, clientgroups: str, runtime_s: float) -> list[Sample]:
        """A job completed: count it, and add its run time (first checkout to completion)."""
        return samples([("jobCompleted", 1), ("runtime", runtime_s)], objects_for(clientgroups))

    def workunit_checked_out(
        self, clientgroups: str, node_id: str | None, queued_since_us: int, now_us: int
    ) -> list[Sample]:
        """Checkout latency: from the workunit's (re-)queueing to this checkout, in seconds."""
        if queued_since_us <= 0:
            return []
        latency = max(0, now_us - queued_since_us) / US
        return samples([("checkoutLatency", latency)], objects_for(clientgroups, node_id))

    def workunit_done(self, clientgroups: str, node_id: str | None) -> list[Sample]:
        return samples([("workunitsCompleted", 1)], objects_for(clientgroups, node_id))

    def workunit_failed(self, clientgroups: str, node_id: str | None, *, job_failed: bool) -> list[Sample]:
        """A failure report; ``job_failed`` when it suspends the job or fails it permanently."""
        events: list[tuple[str, float]] = [("workunitsFailed", 1)]
        if job_failed:
            events.append(("jobFailed", 1))
        return samples(events, objects_for(clientgroups, node_id))

    def checkpoint_taken(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, size_bytes: float
    ) -> list[Sample]:
        """A checkpoint finished: its duration and size, or a failure."""
        events = [("checkpointDuration", duration_s), ("checkpointSize", size_bytes)] if ok else []
        return samples(events or [("checkpointFailures", 1)], objects_for(clientgroups, node_id))

    def restored(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, saved_s: float
    ) -> list[Sample]:
        """A restore finished: on success one spot protection, the run time it saved and its duration."""
        events: list[tuple[str, float]] = (
            [("spotProtection", 1), ("timeSaved", saved_s), ("restoreDuration", duration_s)]
            if ok
            else [("restoreFailures", 1)]
        )
        return samples(events, objects_for(clientgroups, node_id))


RECORDER = MetricsRecorder()


def install() -> None:
    """Have the store record metrics from now on (the server does this at startup)."""
    hooks.install(RECORDER)
