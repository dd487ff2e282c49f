"""Spot protection on the server: checkpoints, restores and preemptions as workers report them.

Each report is one transaction that updates the workunit, appends a ``spot_events`` row (the per-job
accounting), records the metrics (per queue and node) and, for what a user should see, a job event.
Every report is fenced by the lease like a status report: only the client holding the workunit may
say anything about it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, insert, null, select, update

from perdure.spot import policy
from perdure.spot.records import CheckpointTaken, FinalCheckpoint, Preemption, RestoreResult
from perdure.states import JobState
from perdure.store import hooks, lifecycle, transitions
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import jobs, spot_events, tasks, workunits
from perdure.store.workrequests import held_lease
from perdure.timeutil import now_us

log = logging.getLogger("perdure.spot")

EVENT_CHECKPOINT_FAILED = "CF"
EVENT_PREEMPTED = "SP"
EVENT_RESTORED = "SR"
EVENT_RESTORE_REFUSED = "SF"


class SpotStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_on_conflict
    def checkpoint_taken(self, wu_id: str, client_id: str, record: CheckpointTaken) -> None:
        with self.db.write() as conn:
            wu = _leased(conn, wu_id, client_id)
            now = now_us()
            node_id = hooks.node_of(conn, client_id) or ""
            reference = record.reference()
            _checkpoint_outcome(conn, wu, now, client_id, node_id, record, {"name": record.name})
            if reference is not None:
                conn.execute(update(workunits).where(workunits.c.id == wu.id).values(checkpoint=reference))
            if not record.ok:
                lifecycle.record_event(
                    conn,
                    wu.job_id,
                    EVENT_CHECKPOINT_FAILED,
                    f"checkpoint of workunit {wu.id} failed on client {client_id}: {record.error}",
                    now,
                )

    @retry_on_conflict
    def restore_result(self, wu_id: str, client_id: str, record: RestoreResult) -> None:
        with self.db.write() as conn:
            wu = _leased(conn, wu_id, client_id)
            now = now_us()
            node_id = hooks.node_of(conn, client_id) or ""
            _add(
                conn,
                wu,
                "restored" if record.ok else "restore-failed",
                now,
                client_id,
                node_id,
                duration_s=record.duration_s,
                saved_s=record.saved_s if record.ok else 0.0,
                size=record.size,
                detail={"name": record.name, "reason": record.reason, "stats": record.stats},
            )
            hooks.restored(
                conn,
                wu.clientgroups,
                node_id,
                ok=record.ok,
                duration_s=record.duration_s,
                saved_s=record.saved_s,
            )
            if record.ok:
                message = (
                    f"workunit {wu.id} restored from checkpoint {record.name} on client {client_id}: "
                    f"{record.saved_s:.0f}s of run time saved"
                )
                lifecycle.record_event(conn, wu.job_id, EVENT_RESTORED, message, now)
                return
            # Never again: whoever runs it next starts from zero rather than from bad state.
            conn.execute(update(workunits).where(workunits.c.id == wu.id).values(checkpoint=null()))
            lifecycle.record_event(
                conn,
                wu.job_id,
                EVENT_RESTORE_REFUSED,
                f"checkpoint {record.name} of workunit {wu.id} refused on client {client_id}: "
                f"{record.reason}; starting from zero",
                now,
            )


def preempt(
    conn: Connection,
    wu: Any,
    client_id: str,
    preemption: Preemption,
    now: int,
    fenced: Mapping[str, Any] | None = None,
) -> None:
    """The lease holder's node is being reclaimed: the workunit goes back, ahead of new work, to be
    restored from the checkpoint the report names (or from zero). Not a failure. ``fenced``: the
    report's columns, written with it."""
    reference = preemption.checkpoint.model_dump() if preemption.checkpoint else None
    transitions.preempt(
        conn,
        wu.id,
        {
            "client_id": None,
            "updatetime": now,
            "checkpoint": reference if reference is not None else null(),
            **(fenced or {}),
        },
    )
    node_id = hooks.node_of(conn, client_id) or ""
    final = preemption.final
    if final is not None:
        _checkpoint_outcome(conn, wu, now, client_id, node_id, final, {"kind": "final"})
    _add(
        conn,
        wu,
        "preempted",
        now,
        client_id,
        node_id,
        detail={"outcome": preemption.outcome, "detail": preemption.detail, "checkpoint": reference},
    )
    where = f" on node {node_id}" if node_id else ""
    if reference is not None:
        kept = f"{reference['progress_s']:.0f}s of run time"
        plan = f"will restore from checkpoint {reference['name']} ({kept})"
    else:
        plan = "will start again from zero"
    lifecycle.record_event(
        conn,
        wu.job_id,
        EVENT_PREEMPTED,
        f"workunit {wu.id} preempted on client {client_id}{where} ({preemption.outcome}): "
        f"{preemption.detail}; {plan}",
        now,
    )
    Database.work_queued(conn)


def job_summary(conn: Connection, job_id: str) -> dict[str, Any]:
    """Spot protection of one job: preemptions, protections (restores), time saved, checkpoints."""
    rows = conn.execute(
        select(
            spot_events.c.kind,
            func.count(),
            func.coalesce(func.sum(spot_events.c.saved_s), 0.0),
            func.coalesce(func.sum(spot_events.c.written), 0),
            func.coalesce(func.sum(spot_events.c.duration_s), 0.0),
        )
        .where(spot_events.c.job_id == job_id)
        .group_by(spot_events.c.kind)
    ).all()
    by_kind = {r[0]: r for r in rows}

    def count(kind: str) -> int:
        return int(by_kind[kind][1]) if kind in by_kind else 0

    restored = by_kind.get("restored")
    checkpoints = by_kind.get("checkpoint")
    return {
        "preemptions": count("preempted"),
        "spotProtection": count("restored"),
        "timeSaved": round(float(restored[2]), 3) if restored else 0.0,
        "checkpoints": count("checkpoint"),
        "checkpointFailures": count("checkpoint-failed"),
        "checkpointBytesWritten": int(checkpoints[3]) if checkpoints else 0,
        "checkpointSeconds": round(float(checkpoints[4]), 3) if checkpoints else 0.0,
        "restoreFailures": count("restore-failed"),
    }


def _leased(conn: Connection, wu_id: str, client_id: str, *, lock: bool = True) -> Any:
    """The workunit, if this client holds its lease (locked for the transaction's update)."""
    query = select(
        workunits.c.id,
        workunits.c.job_id,
        workunits.c.state,
        workunits.c.client_id,
        workunits.c.clientgroups,
    ).where(workunits.c.id == wu_id)
    return held_lease(
        conn.execute(query.with_for_update() if lock else query).one_or_none(), wu_id, client_id
    )


def _checkpoint_outcome(
    conn: Connection,
    wu: Any,
    now: int,
    client_id: str,
    node_id: str,
    record: CheckpointTaken | FinalCheckpoint,
    label: dict[str, str | None],
) -> None:
    """A checkpoint taken or failed (a periodic one, or the final one of a preemption): in the job's
    accounting, its detail ``label`` plus the record's error and stats, and in the metrics."""
    kind = "checkpoint" if record.ok else "checkpoint-failed"
    _add(
        conn,
        wu,
        kind,
        now,
        client_id,
        node_id,
        duration_s=record.duration_s,
        size=record.size,
        written=record.written,
        detail={**label, "error": record.error, "stats": record.stats},
    )
    hooks.checkpoint_taken(
        conn, wu.clientgroups, node_id, ok=record.ok, duration_s=record.duration_s, size_bytes=record.size
    )


def _add(
    conn: Connection,
    wu: Any,
    kind: str,
    now: int,
    client_id: str,
    node_id: str,
    *,
    duration_s: float = 0.0,
    saved_s: float = 0.0,
    size: int = 0,
    written: int = 0,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        insert(spot_events).values(
            job_id=wu.job_id,
            workunit_id=wu.id,
            time=now,
            kind=kind,
            client_id=client_id,
            node_id=node_id[:64],
            duration_s=duration_s,
            saved_s=saved_s,
            size=size,
            written=written,
            detail=detail,
        )
    )


def jobs_to_collect(conn: Connection, job_ids: list[str], system: Mapping[str, Any]) -> list[str]:
    """Of jobs with checkpoints in a store, those whose checkpoints are of no more use: deleted or
    gone, or completed unless diagnosisMode (system-wide, or the job's own) keeps them."""
    if not job_ids:
        return []
    rows = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.info).where(jobs.c.id.in_(job_ids))).all()
    found = {r.id: r for r in rows}
    collect = []
    for job_id in job_ids:
        row = found.get(job_id)
        useless = row is None or row.state == JobState.DELETED
        if not useless and row is not None and row.state == JobState.COMPLETED:
            useless = not _diagnosis(conn, row, system)
        if useless:
            collect.append(job_id)
    return collect


def collectable_jobs(db: Database, job_ids: list[str], system: Mapping[str, Any]) -> list[str]:
    """``jobs_to_collect`` in a read transaction of its own."""
    with db.read() as conn:
        return jobs_to_collect(conn, job_ids, system)


def _diagnosis(conn: Connection, job: Any, system: Mapping[str, Any]) -> bool:
    userattr = (job.info or {}).get("userattr") or {}
    specs = conn.execute(select(tasks.c.spec).where(tasks.c.job_id == job.id)).scalars()
    for spec in specs:
        environ = ((spec.get("cmd") or {}).get("environ") or {}).get("public") or {}
        try:
            if policy.resolve(system, userattr, environ).diagnosis:
                return True
        except ValueError:
            continue
    return False


def lease_holder_job(db: Database, wu_id: str, client_id: str) -> str:
    """The job of a workunit the client holds (what its checkpoint store requests may touch)."""
    with db.read() as conn:
        return str(_leased(conn, wu_id, client_id, lock=False).job_id)
