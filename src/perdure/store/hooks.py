"""Hooks: what the store tells the metrics where things happen, without importing them.

The store calls these at the points that count (a job submitted or completed, a checkout, a report, a
checkpoint or restore); a ``Recorder`` installed at startup (``perdure.metrics.recording.RECORDER``,
installed by the server's ``create_app``) turns each into metric samples, and the store writes them
into ``metric_events`` inside the same transaction: a metric is as durable as the change it counts,
and a rolled-back report counts nothing. Until a recorder is installed nothing is recorded (and no
query is made for it).

The dispatch hot path gathers a batch's samples in a ``Samples`` and writes them with one statement
at the end of its transaction, as before the hooks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, select

from perdure.store import metricstore
from perdure.store.metricstore import Sample
from perdure.store.schema import clients, jobs

US = 1_000_000


class Recorder(Protocol):
    """The metrics' side of the hooks: each call returns the samples to write, none of them SQL."""

    def now_us(self) -> int:
        """The time the samples are recorded at (the metrics' clock, which tests control)."""
        ...

    def job_submitted(self, clientgroups: str) -> Sequence[Sample]: ...

    def job_completed(self, clientgroups: str, runtime_s: float) -> Sequence[Sample]: ...

    def workunit_checked_out(
        self, clientgroups: str, node_id: str | None, queued_since_us: int, now_us: int
    ) -> Sequence[Sample]: ...

    def workunit_done(self, clientgroups: str, node_id: str | None) -> Sequence[Sample]: ...

    def workunit_failed(
        self, clientgroups: str, node_id: str | None, *, job_failed: bool
    ) -> Sequence[Sample]: ...

    def checkpoint_taken(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, size_bytes: float
    ) -> Sequence[Sample]: ...

    def restored(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, saved_s: float
    ) -> Sequence[Sample]: ...


class _Installed:
    recorder: Recorder | None = None


_installed = _Installed()


def install(recorder: Recorder | None) -> None:
    """Record metrics through ``recorder`` from now on, in this process (None: stop recording)."""
    _installed.recorder = recorder


def recorder() -> Recorder | None:
    return _installed.recorder


class Samples:
    """The samples of several events in one transaction, written at its end with one insert (a batch
    of worker reports and checkouts records one row per sample, in one statement)."""

    __slots__ = ("_recorder", "_rows")

    def __init__(self) -> None:
        self._recorder = _installed.recorder
        self._rows: list[Sample] = []

    def workunit_done(self, clientgroups: str, node_id: str | None) -> None:
        if self._recorder is not None:
            self._rows += self._recorder.workunit_done(clientgroups, node_id)

    def workunit_checked_out(
        self, clientgroups: str, node_id: str | None, queued_since_us: int, now_us: int
    ) -> None:
        if self._recorder is not None:
            self._rows += self._recorder.workunit_checked_out(clientgroups, node_id, queued_since_us, now_us)

    def write(self, conn: Connection) -> None:
        if self._rows and self._recorder is not None:
            metricstore.insert_events(conn, self._rows, self._recorder.now_us())

    def insert(self, *, sqlite: bool = False) -> tuple[str, tuple[Any, ...]] | None:
        """What ``write`` would run on PostgreSQL (or ``sqlite``), for a caller that runs it on the
        driver directly (``(sql, params)`` with the driver's placeholders), or None when there is
        nothing to write."""
        if not self._rows or self._recorder is None:
            return None
        if sqlite:
            return metricstore.insert_events_sql(self._rows, self._recorder.now_us())
        return metricstore.insert_events_pg(self._rows, self._recorder.now_us())


# ---- the hooks the stores call, each inside its own transaction -----------------------------------


def job_submitted(conn: Connection, clientgroups: str) -> None:
    if (found := _installed.recorder) is not None:
        _write(conn, found, found.job_submitted(clientgroups))


def jobs_submitted(conn: Connection, clientgroups: Sequence[str]) -> None:
    """``job_submitted`` for several jobs submitted together: their samples in one insert."""
    if (found := _installed.recorder) is not None:
        _write(conn, found, [sample for groups in clientgroups for sample in found.job_submitted(groups)])


def submitted_samples(clientgroups: Sequence[str]) -> tuple[int, list[Sample]] | None:
    """What ``jobs_submitted`` would write, for a caller that writes it in a statement of its own:
    (the time, the samples), or None when nothing is recorded."""
    if (found := _installed.recorder) is None:
        return None
    return found.now_us(), [sample for groups in clientgroups for sample in found.job_submitted(groups)]


def job_completed(conn: Connection, job_id: str) -> None:
    """A job completed: count it, with its run time (first checkout to completion)."""
    if (found := _installed.recorder) is None:
        return
    job = conn.execute(
        select(jobs.c.clientgroups, jobs.c.startedtime, jobs.c.completedtime).where(jobs.c.id == job_id)
    ).one()
    seconds = max(0, job.completedtime - job.startedtime) / US if job.startedtime else 0.0
    _write(conn, found, found.job_completed(job.clientgroups, seconds))


def workunit_failed(conn: Connection, wu: Any, *, job_failed: bool) -> None:
    """A failure report; ``job_failed`` when it suspends the job or fails it permanently."""
    if (found := _installed.recorder) is not None:
        node = node_of(conn, wu.client_id)
        _write(conn, found, found.workunit_failed(wu.clientgroups, node, job_failed=job_failed))


def checkpoint_taken(
    conn: Connection,
    clientgroups: str | None,
    node_id: str | None,
    *,
    ok: bool,
    duration_s: float = 0.0,
    size_bytes: float = 0.0,
) -> None:
    if (found := _installed.recorder) is not None:
        samples = found.checkpoint_taken(
            clientgroups, node_id, ok=ok, duration_s=duration_s, size_bytes=size_bytes
        )
        _write(conn, found, samples)


def restored(
    conn: Connection,
    clientgroups: str | None,
    node_id: str | None,
    *,
    ok: bool,
    duration_s: float = 0.0,
    saved_s: float = 0.0,
) -> None:
    if (found := _installed.recorder) is not None:
        samples = found.restored(clientgroups, node_id, ok=ok, duration_s=duration_s, saved_s=saved_s)
        _write(conn, found, samples)


def _write(conn: Connection, found: Recorder, samples: Sequence[Sample]) -> None:
    metricstore.insert_events(conn, samples, found.now_us())


# ---- a client's node ---------------------------------------------------------------------------

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


__all__ = [
    "Recorder",
    "Samples",
    "checkpoint_taken",
    "install",
    "job_completed",
    "job_submitted",
    "jobs_submitted",
    "node_of",
    "recorder",
    "restored",
    "submitted_samples",
    "workunit_failed",
]
