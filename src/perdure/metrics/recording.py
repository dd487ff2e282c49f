"""Recording: the calls the stores make where things happen, inside their own transaction.

Each call appends its samples to the event log (``storage.add``, an insert: no row locks, nothing for
other transactions to wait on), so a metric is exactly as durable as the change it counts: a
rolled-back report counts nothing, and every server sharing the database sees the same numbers. The
sweep folds events into the levels. Bucket times come from the metrics clock; durations come from the
stored times.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from perdure.metrics import clock, storage
from perdure.metrics.definitions import (
    BY_NAME,
    MAX_OBJECT_ID,
    SYSTEM_OBJECT,
    MetricObject,
    node_object,
    queue_object,
    queues_of,
)
from perdure.store.schema import clients, jobs

US = 1_000_000


def record(
    conn: Connection,
    events: Iterable[tuple[str, float]],
    objects: Sequence[MetricObject],
    at_us: int | None = None,
) -> None:
    """Add each (metric, value) to each object the metric is kept for, at ``at_us`` (default: now)."""
    storage.add(conn, _samples(events, objects), clock.now() if at_us is None else at_us)


def _samples(
    events: Iterable[tuple[str, float]], objects: Sequence[MetricObject]
) -> list[tuple[str, str, float]]:
    samples = []
    for metric, value in events:
        definition = BY_NAME[metric]
        samples += [(metric, o.id, float(value)) for o in objects if o.type in definition.objects]
    return samples


#: An event-log insert for the caller to run (psycopg's placeholders): ``(sql, params)``, or None.
Insert = tuple[str, tuple[Any, ...]] | None


class Samples:
    """The samples of several events in one transaction, written at its end with one insert (a batch
    of worker reports and checkouts records one row per sample, in one statement)."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, str, float]] = []

    def add(self, events: Iterable[tuple[str, float]], objects: Sequence[MetricObject]) -> None:
        self._rows += _samples(events, objects)

    def workunit_done(self, clientgroups: str, node_id: str | None) -> None:
        self.add([("workunitsCompleted", 1)], objects_for(clientgroups, node_id))

    def workunit_checked_out(
        self, clientgroups: str, node_id: str | None, queued_since_us: int, now_us: int
    ) -> None:
        """Checkout latency: from the workunit's (re-)queueing to this checkout, in seconds."""
        if queued_since_us > 0:
            latency = max(0, now_us - queued_since_us) / US
            self.add([("checkoutLatency", latency)], objects_for(clientgroups, node_id))

    def write(self, conn: Connection) -> None:
        if self._rows:
            storage.add(conn, self._rows, clock.now())

    def insert(self) -> Insert:
        """What ``write`` would run on PostgreSQL, for a caller that runs it on psycopg directly. The
        samples go as arrays, so the statement's text is the same for any number of them: PostgreSQL
        and psycopg prepare it once."""
        if not self._rows:
            return None
        metrics, object_ids, values = zip(*self._rows, strict=True)
        return _INSERT_PG, (clock.now(), list(metrics), list(object_ids), list(values))


_INSERT_PG = (
    "INSERT INTO metric_events (metric, object_id, at, value)"
    " SELECT m, o, %s, v FROM unnest(%s::text[], %s::text[], %s::float8[]) AS s(m, o, v)"
)


def objects_for(clientgroups: str | None, node_id: str | None = None) -> list[MetricObject]:
    """system-total, the queues of these client groups and, when known, the node.

    A job may name any client group; one too long for an object id counts in the total only, rather
    than failing the transaction that records it.
    """
    found = [SYSTEM_OBJECT, *(queue_object(q) for q in queues_of(clientgroups))]
    if node_id:
        found.append(node_object(node_id))
    return [o for o in found if len(o.id) <= MAX_OBJECT_ID]


# ---- the hooks the stores call ------------------------------------------------------------------


def job_submitted(conn: Connection, clientgroups: str) -> None:
    record(conn, [("jobSubmitted", 1)], objects_for(clientgroups))


def job_completed(conn: Connection, job_id: str) -> None:
    """A job completed: count it, and add its run time (first checkout to completion) to ``runtime``."""
    job = conn.execute(
        select(jobs.c.clientgroups, jobs.c.startedtime, jobs.c.completedtime).where(jobs.c.id == job_id)
    ).one()
    seconds = max(0, job.completedtime - job.startedtime) / US if job.startedtime else 0.0
    record(conn, [("jobCompleted", 1), ("runtime", seconds)], objects_for(job.clientgroups))


def workunit_failed(conn: Connection, wu: Any, *, job_failed: bool) -> None:
    """A failure report; ``job_failed`` when it suspends the job or fails it permanently."""
    events: list[tuple[str, float]] = [("workunitsFailed", 1)]
    if job_failed:
        events.append(("jobFailed", 1))
    record(conn, events, objects_for(wu.clientgroups, node_of(conn, wu.client_id)))


#: client id -> (node id, when to look again). A report needs its client's node; a client keeps its
#: node for life in practice, so a short cache saves a query per report.
_NODE_CACHE_S = 60.0
_node_cache: dict[tuple[Any, str], tuple[str | None, float]] = {}


def node_of(conn: Connection, client_id: str | None) -> str | None:
    """The node a client runs on (None if unknown), from a short cache."""
    if not client_id:
        return None
    key = (conn.engine.url, client_id)
    now = time.monotonic()
    hit = _node_cache.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    node = conn.execute(select(clients.c.node_id).where(clients.c.id == client_id)).scalar() or None
    if len(_node_cache) > 10_000:
        _node_cache.clear()
    _node_cache[key] = (node, now + _NODE_CACHE_S)
    return node


# ---- checkpoints (the spot-protection work records through these) ------------------------------


def checkpoint_taken(
    conn: Connection,
    clientgroups: str | None,
    node_id: str | None,
    *,
    ok: bool,
    duration_s: float = 0.0,
    size_bytes: float = 0.0,
) -> None:
    """A checkpoint finished: its duration and size, or a failure."""
    events = [("checkpointDuration", duration_s), ("checkpointSize", size_bytes)] if ok else []
    record(conn, events or [("checkpointFailures", 1)], objects_for(clientgroups, node_id))


def restored(
    conn: Connection,
    clientgroups: str | None,
    node_id: str | None,
    *,
    ok: bool,
    duration_s: float = 0.0,
    saved_s: float = 0.0,
) -> None:
    """A restore finished: on success one spot protection, the run time it saved and its duration."""
    events: list[tuple[str, float]] = (
        [("spotProtection", 1), ("timeSaved", saved_s), ("restoreDuration", duration_s)]
        if ok
        else [("restoreFailures", 1)]
    )
    record(conn, events, objects_for(clientgroups, node_id))
