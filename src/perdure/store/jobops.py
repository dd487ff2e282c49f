"""Operations on jobs after submission: suspend, resume, rerun, change fields, delete; the same on many
jobs; the background sweeps (start_at, finished tasks, expiry); removal of a job's rows and files.

Each public method is one transaction (or one per job, for operations on many). ``JobStore``
(``store/jobs.py``) adds submission and reads on top of this class.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, exists, select, update

from perdure.datastore import BlobStore
from perdure.errors import BadRequest, Conflict, NotFound
from perdure.jobscript import normalize_clientgroups
from perdure.states import (
    ACTIVE_JOB_STATES,
    LIVE_WORKUNIT_STATES,
    RERUNNABLE_JOB_STATES,
    JobState,
    TaskState,
)
from perdure.store import lifecycle, transitions
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import (
    client_skip_work,
    job_events,
    job_scripts,
    jobs,
    spot_events,
    tasks,
    workunit_logs,
    workunits,
)
from perdure.timeutil import format_us, now_us, parse_expiration


class JobOperations:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        expire_after_s: Callable[[], Mapping[str, int]] = dict,
        blobs: BlobStore | None = None,
    ) -> None:
        self.db = db
        self.data_dir = data_dir
        self._expire_after_s = expire_after_s
        self.blobs = blobs

    def _job_row(self, conn: Connection, job_id: str, *, lock: bool = False) -> Any:
        stmt = select(jobs).where(jobs.c.id == job_id)
        if lock:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one_or_none()
        if row is None:
            raise NotFound("Not Found")
        return row

    # ---- operations on one job -----------------------------------------------------------------

    @retry_on_conflict
    def suspend(self, job_id: str, notes: str = "manually suspended") -> str:
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            state = JobState(job.state)
            if state == JobState.SUSPEND:
                raise Conflict(f"job {job_id} is already suspended")
            if not state.can_become(JobState.SUSPEND):
                raise Conflict(f"job {job_id} cannot be suspended in state {state.value!r}")
            suspend_job(conn, job_id, {"servernotes": notes, "status": JobState.SUSPEND.value}, now)
        return f"job suspended: {job_id}"

    @retry_on_conflict
    def resume(self, job_id: str) -> str:
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            if job.state != JobState.SUSPEND:
                raise Conflict(f"job {job_id} is not in 'suspend' status")
            # Done workunits keep their results; everything the suspension held runs again. (A job with
            # failed-permanent work is failed-permanent, never suspended: only a reset reruns that.)
            transitions.release_job_work(conn, job_id, now)
            forget_skips(conn, job_id)  # after a fix, the clients it failed on may run it
            Database.work_queued(conn)
            for task in conn.execute(
                select(tasks.c.id, tasks.c.state, tasks.c.remainwork, tasks.c.totalwork).where(
                    tasks.c.job_id == job_id, tasks.c.state == TaskState.SUSPEND.value
                )
            ).all():
                has_work = conn.execute(select(exists().where(workunits.c.task_id == task.id))).scalar_one()
                if not has_work:
                    target = TaskState.PENDING
                elif task.remainwork < task.totalwork:
                    target = TaskState.IN_PROGRESS
                else:
                    target = TaskState.QUEUED
                transitions.resume_task(conn, task.id, target)
            transitions.requeue_job(conn, job_id, {"updatetime": now})
            lifecycle.record_event(conn, job_id, lifecycle.EVENT_RESUMED, "job resumed", now)
            lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)
        return f"job resumed: {job_id}"

    @retry_on_conflict
    def recompute(self, job_id: str, taskid: str) -> str:
        """Rerun one task and everything downstream of it (following every dependency)."""
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            self._check_rerunnable(job, "recompute")
            rows = conn.execute(
                select(tasks.c.id, tasks.c.taskid, tasks.c.state, tasks.c.depends_on).where(
                    tasks.c.job_id == job_id
                )
            ).all()
            short = taskid.removeprefix(f"{job_id}_")
            if short not in {r.taskid for r in rows}:
                raise BadRequest(f"task {taskid!r} not found in job {job_id}")
            reset = {short}
            changed = True
            while changed:  # descendants through every dependency, not only the first
                changed = False
                for r in rows:
                    if r.taskid not in reset and reset.intersection(r.depends_on):
                        reset.add(r.taskid)
                        changed = True
            reset |= {r.taskid for r in rows if r.state != TaskState.COMPLETED}
            ids = [r.id for r in rows if r.taskid in reset]
            self._rerun(conn, job_id, ids, now, f"recompute from task {short}: {len(ids)} task(s) reset")
        return f"job recompute started at task {short}: {job_id}"

    @retry_on_conflict
    def resubmit(self, job_id: str) -> str:
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            self._check_rerunnable(job, "resubmit")
            ids = list(conn.execute(select(tasks.c.id).where(tasks.c.job_id == job_id)).scalars())
            self._rerun(conn, job_id, ids, now, f"resubmitted: {len(ids)} task(s) reset")
        return f"job resubmitted: {job_id}"

    @staticmethod
    def _check_rerunnable(job: Any, op: str) -> None:
        if JobState(job.state) not in RERUNNABLE_JOB_STATES:
            raise Conflict(
                f"job {job.id} is {job.state}: {op} needs a completed, suspended or failed-permanent job"
            )

    def _rerun(self, conn: Connection, job_id: str, task_ids: list[str], now: int, note: str) -> None:
        lifecycle.reset_tasks(conn, job_id, task_ids, now)
        transitions.requeue_job(
            conn,
            job_id,
            {
                "remaintasks": lifecycle.remaining_task_count(conn, job_id),
                "completedtime": 0,
                "expiration": 0,
                "updatetime": now,
            },
        )
        lifecycle.record_event(conn, job_id, lifecycle.EVENT_RESET, note, now)
        lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)

    def set_clientgroup(self, job_id: str, value: str) -> str:
        groups = normalize_clientgroups(value)
        self._update_fields(
            job_id, {"clientgroups": groups}, {"clientgroups": groups}, f"clientgroups={groups}"
        )
        return f"job clientgroup updated: {job_id} ({groups or 'any'})"

    def set_priority(self, job_id: str, value: str) -> str:
        try:
            priority = int(value)
        except ValueError:
            raise BadRequest(f"priority must be an integer, not {value!r}") from None
        if priority < 1:
            raise BadRequest("priority must be at least 1")
        self._update_fields(job_id, {"priority": priority}, {"priority": priority}, f"priority={priority}")
        return f"job priority updated: {job_id} ({priority})"

    def set_pipeline(self, job_id: str, value: str) -> str:
        self._update_fields(job_id, {"pipeline": value}, {}, f"pipeline={value}")
        return f"job pipeline updated: {job_id} ({value})"

    @retry_on_conflict
    def _update_fields(
        self, job_id: str, job_values: dict[str, Any], queued_work_values: dict[str, Any], note: str
    ) -> None:
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            if job.state == JobState.DELETED:
                raise Conflict(f"job {job_id} is deleted")
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**job_values, updatetime=now))
            if queued_work_values:
                # Checkout reads these copies: change them too, so the new value counts at once.
                conn.execute(
                    update(workunits).where(workunits.c.job_id == job_id).values(**queued_work_values)
                )
                Database.work_queued(conn)  # the job may now suit clients it did not suit before
            lifecycle.record_event(conn, job_id, lifecycle.EVENT_UPDATED, note, now)

    @retry_on_conflict
    def set_expiration(self, job_id: str, value: str) -> str:
        try:
            seconds = parse_expiration(value)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            if job.state not in (JobState.COMPLETED, JobState.DELETED):
                raise Conflict(
                    f"job {job_id} is {job.state}: expiration applies to completed or deleted jobs"
                )
            expiration = now + seconds * 1_000_000
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(expiration=expiration, updatetime=now)
            )
            lifecycle.record_event(conn, job_id, lifecycle.EVENT_UPDATED, f"expiration={value}", now)
        return f"job expiration set: {job_id} ({format_us(expiration)})"

    @retry_on_conflict
    def set_token(self, job_id: str, token: str | None) -> str:
        if not token:
            raise BadRequest("missing Datatoken header")
        now = now_us()
        with self.db.write() as conn:
            job = self._job_row(conn, job_id, lock=True)
            info = {**job.info, "auth": True}
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(datatoken=token, info=info, updatetime=now)
            )
            lifecycle.record_event(conn, job_id, lifecycle.EVENT_UPDATED, "data token set", now)
        return f"data token set for job: {job_id}"

    @retry_on_conflict
    def delete(self, job_id: str, *, full: bool = False) -> str:
        now = now_us()
        with self.db.write() as conn:
            self._job_row(conn, job_id, lock=True)
            if full:
                self._remove(conn, [job_id])
            else:
                soft_delete(conn, job_id, now)
        if full:
            self._remove_files([job_id])
        return f"job deleted: {job_id}"

    # ---- operations on many jobs ---------------------------------------------------------------

    def resume_all(self) -> str:
        with self.db.read() as conn:
            ids = (
                conn.execute(select(jobs.c.id).where(jobs.c.state == JobState.SUSPEND.value)).scalars().all()
            )
        resumed = 0
        for job_id in ids:
            try:
                self.resume(job_id)
                resumed += 1
            except (Conflict, NotFound):
                pass  # changed under us; the other change wins
        return f"{resumed} suspended jobs resumed"

    def recover_all(self) -> str:
        """Re-queue whatever the database says is unfinished but has nothing queued to make progress.

        With all state in the database this finds nothing on a healthy server; it repairs jobs left
        inconsistent by hand edits or by a bug, and is safe to run at any time.
        """
        now = now_us()
        recovered = 0
        with self.db.read() as conn:
            candidates = self._stalled_active_jobs(conn)
        for job_id in candidates:
            with self.db.write() as conn:
                job = conn.execute(
                    select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
                ).scalar_one_or_none()
                if job is None or JobState(job) not in ACTIVE_JOB_STATES:
                    continue
                stuck = (
                    conn.execute(
                        select(tasks.c.id).where(
                            tasks.c.job_id == job_id,
                            tasks.c.state.in_([TaskState.QUEUED.value, TaskState.IN_PROGRESS.value]),
                            ~exists().where(
                                workunits.c.task_id == tasks.c.id,
                                workunits.c.state.in_([s.value for s in LIVE_WORKUNIT_STATES]),
                            ),
                        )
                    )
                    .scalars()
                    .all()
                )
                lifecycle.reset_tasks(conn, job_id, stuck, now)
                lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)
                lifecycle.record_event(conn, job_id, lifecycle.EVENT_RESUMED, "recovered", now)
                recovered += 1
        return f"{recovered} missing jobs recovered"

    def _stalled_active_jobs(self, conn: Connection) -> list[str]:
        """Active jobs with no queued or leased workunit: either waiting on start_at, or stuck."""
        live_work = exists().where(
            workunits.c.job_id == jobs.c.id,
            workunits.c.state.in_([s.value for s in LIVE_WORKUNIT_STATES]),
        )
        waiting = exists().where(
            tasks.c.job_id == jobs.c.id,
            tasks.c.state == TaskState.PENDING.value,
            jobs.c.start_at > now_us(),
        )
        return list(
            conn.execute(
                select(jobs.c.id).where(
                    jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES]), ~live_work, ~waiting
                )
            ).scalars()
        )

    def zombies(self) -> list[str]:
        """Active jobs that can make no progress: no pending, ready, queued or leased work at all."""
        live_tasks = exists().where(
            tasks.c.job_id == jobs.c.id,
            tasks.c.state == TaskState.PENDING.value,
        )
        live_work = exists().where(
            workunits.c.job_id == jobs.c.id,
            workunits.c.state.in_([s.value for s in LIVE_WORKUNIT_STATES]),
        )
        with self.db.read() as conn:
            return list(
                conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES]), ~live_tasks, ~live_work
                    )
                ).scalars()
            )

    def delete_suspended(self, *, full: bool = False) -> str:
        with self.db.read() as conn:
            ids = (
                conn.execute(select(jobs.c.id).where(jobs.c.state == JobState.SUSPEND.value)).scalars().all()
            )
        deleted = self._delete_many(ids, full, only_states={JobState.SUSPEND})
        return f"deleted {deleted} suspended jobs"

    def delete_zombies(self, *, full: bool = False) -> str:
        deleted = self._delete_many(self.zombies(), full, only_states=ACTIVE_JOB_STATES)
        return f"deleted {deleted} zombie jobs"

    def _delete_many(
        self, ids: Sequence[str], full: bool, only_states: frozenset[JobState] | set[JobState]
    ) -> int:
        deleted: list[str] = []
        now = now_us()
        for job_id in ids:
            with self.db.write() as conn:
                state = conn.execute(
                    select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
                ).scalar_one_or_none()
                if state is None or JobState(state) not in only_states:
                    continue  # changed since we looked
                if full:
                    self._remove(conn, [job_id])
                else:
                    soft_delete(conn, job_id, now)
                deleted.append(job_id)
        if full:
            self._remove_files(deleted)
        return len(deleted)

    # ---- background sweeps ---------------------------------------------------------------------

    def promote_due(self) -> int:
        """Enqueue tasks whose ``start_at`` has passed. Returns how many jobs were looked at."""
        now = now_us()
        with self.db.read() as conn:
            due = (
                conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES]),
                        jobs.c.start_at > 0,
                        jobs.c.start_at <= now,
                        exists().where(
                            tasks.c.job_id == jobs.c.id,
                            tasks.c.state == TaskState.PENDING.value,
                        ),
                    )
                )
                .scalars()
                .all()
            )
        self._advance_each(due, now)
        return len(due)

    def advance_finished(self) -> int:
        """Complete the tasks that have no workunit left to do but are not complete: a server
        stopped between a batch's reports and the transaction that completes their tasks leaves
        them so. Returns how many jobs were moved on."""
        with self.db.read() as conn:
            found = lifecycle.finished_task_jobs(conn)
        self._advance_each(found, now_us())
        return len(found)

    def _advance_each(self, job_ids: Sequence[str], now: int) -> None:
        """``advance_job`` for each job, each in a transaction of its own."""
        for job_id in job_ids:
            with self.db.write() as conn:
                lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)

    def reap_expired(self) -> int:
        """Remove completed or deleted jobs whose expiration has passed."""
        now = now_us()
        with self.db.read() as conn:
            ids = (
                conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.state.in_([JobState.COMPLETED.value, JobState.DELETED.value]),
                        jobs.c.expiration > 0,
                        jobs.c.expiration < now,
                    )
                )
                .scalars()
                .all()
            )
        return self._delete_many(ids, True, only_states={JobState.COMPLETED, JobState.DELETED})

    # ---- removal -------------------------------------------------------------------------------

    def _remove(self, conn: Connection, job_ids: Sequence[str]) -> None:
        for table in (workunit_logs, job_events, spot_events, job_scripts, workunits, tasks):
            conn.execute(delete(table).where(table.c.job_id.in_(job_ids)))
        conn.execute(delete(jobs).where(jobs.c.id.in_(job_ids)))

    def job_dir(self, job_id: str) -> Path:
        """Per-job files (outputs, kept logs), split like AWE's ``ab/cd/ef/<jobid>``."""
        return self.data_dir / "jobs" / job_id[0:2] / job_id[2:4] / job_id[4:6] / job_id

    def _remove_files(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            shutil.rmtree(self.data_dir / "checkpoints" / job_id, ignore_errors=True)
            if self.blobs is not None:
                self.blobs.delete_prefix(f"jobs/{job_id}")


def suspend_job(
    conn: Connection, job_id: str, error: dict[str, Any], now: int, *, state: JobState = JobState.SUSPEND
) -> None:
    """Hold a job and its live work (``state``: suspended, or failed permanently). Workers running its
    workunits are told to discard them."""
    transitions.hold_job(conn, job_id, state, error, now)
    lifecycle.record_event(conn, job_id, lifecycle.EVENT_SUSPENDED, str(error.get("servernotes", "")), now)


def soft_delete(conn: Connection, job_id: str, now: int) -> None:
    """Mark a job deleted; its live work is held so running workers are told to discard it. Deleting a
    deleted job changes nothing."""
    if transitions.delete_job(conn, job_id, now):
        lifecycle.record_event(conn, job_id, lifecycle.EVENT_DELETED, "job deleted", now)


def forget_skips(conn: Connection, job_id: str) -> None:
    """A resumed job's workunits may run again on the clients they failed on (after a fix)."""
    conn.execute(
        delete(client_skip_work).where(
            client_skip_work.c.workunit_id.in_(select(workunits.c.id).where(workunits.c.job_id == job_id))
        )
    )
