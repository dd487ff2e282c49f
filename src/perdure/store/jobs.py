"""Jobs: submit, list, query and every job operation, each one transaction.

Operations return AWE's plain-string replies and raise ``NotFound``/``Conflict``/``BadRequest`` with
AWE's messages; the HTTP layer only wraps them in the envelope.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import KeyedColumnElement

from perdure.datastore import BlobStore, ConcatReader
from perdure.documents import job_document, job_minimal
from perdure.errors import BadRequest, Conflict, NotFound
from perdure.jobscript import JobSpec, normalize_clientgroups
from perdure.states import (
    ACTIVE_JOB_STATES,
    LIVE_WORKUNIT_STATES,
    REGISTERED_JOB_STATES,
    RERUNNABLE_JOB_STATES,
    JobState,
    TaskState,
)
from perdure.store import hooks, lifecycle, spot, transitions
from perdure.store import outputs as output_records
from perdure.store.commalist import comma_list_contains
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import (
    job_events,
    job_scripts,
    jobs,
    spot_events,
    tasks,
    workunit_logs,
    workunits,
)
from perdure.timeutil import format_us, now_us, parse_expiration, parse_time

#: ``order=`` and ``?query`` field paths that are real columns.
FIELD_COLUMNS: dict[str, KeyedColumnElement[Any]] = {
    "id": jobs.c.id,
    "state": jobs.c.state,
    "updatetime": jobs.c.updatetime,
    "expiration": jobs.c.expiration,
    "remaintasks": jobs.c.remaintasks,
    "resumed": jobs.c.resumed,
    "info.name": jobs.c.name,
    "info.pipeline": jobs.c.pipeline,
    "info.project": jobs.c.project,
    "info.user": jobs.c.username,
    "info.clientgroups": jobs.c.clientgroups,
    "info.priority": jobs.c.priority,
    "info.submittime": jobs.c.submittime,
    "info.startedtime": jobs.c.startedtime,
    "info.completedtime": jobs.c.completedtime,
    "info.start_at": jobs.c.start_at,
    "owner": jobs.c.owner,  # issue 17: the verified submitter (``?query&owner=``), not ``info.user``
}
TIME_FIELDS = frozenset(
    {"updatetime", "expiration", "info.submittime", "info.startedtime", "info.completedtime", "info.start_at"}
)
INT_FIELDS = frozenset({"remaintasks", "resumed", "info.priority"})
#: AWE's list for ``?distinct=``.
DISTINCT_FIELDS = frozenset(
    {
        "name",
        "submittime",
        "completedtime",
        "pipeline",
        "clientgroups",
        "project",
        "service",
        "user",
        "priority",
        "userattr.submission",
    }
)
MAX_PAGE = 1000


@dataclass
class JobQuery:
    limit: int = 25
    offset: int = 0
    order: str = "updatetime"
    descending: bool = True
    states: frozenset[str] | None = None
    #: field path -> accepted values (any of)
    fields: dict[str, list[str]] = field(default_factory=dict)
    date_start: int | None = None
    date_end: int | None = None
    #: Only jobs submitted by this user (non-admins, with security on).
    owner: str | None = None


def field_expression(path: str) -> ColumnElement[Any]:
    """The SQL expression for a job field path: a column, or a JSON path inside ``info``."""
    if path in FIELD_COLUMNS:
        return FIELD_COLUMNS[path]
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "info" and all(p and p.replace("_", "").isalnum() for p in parts[1:]):
        expr: ColumnElement[Any] = jobs.c.info[tuple(parts[1:])].as_string()
        return expr
    raise BadRequest(f"unknown job field {path!r}")


def _field_filter(path: str, values: Sequence[str]) -> ColumnElement[bool]:
    expr = field_expression(path)
    if path in TIME_FIELDS:
        try:
            return expr.in_([parse_time(v) for v in values])
        except ValueError as exc:
            raise BadRequest(f"{path}: {exc}") from None
    if path in INT_FIELDS:
        try:
            return expr.in_([int(v) for v in values])
        except ValueError:
            raise BadRequest(f"{path} must be an integer") from None
    if path == "info.clientgroups":
        # clientgroups is a comma list: match jobs that name any of the given groups.
        return or_(*(comma_list_contains(expr, group) for group in values))
    return expr.in_(list(values))


def _where(query: JobQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if query.owner is not None:
        clauses.append(jobs.c.owner == query.owner)
    if query.states is not None:
        clauses.append(jobs.c.state.in_(sorted(query.states)))
    for path, values in query.fields.items():
        clauses.append(_field_filter(path, values))
    if query.date_start is not None or query.date_end is not None:
        ranges = []
        for column in (jobs.c.submittime, jobs.c.completedtime):
            bounds = [column > 0]  # an unset time (0) is in no range
            if query.date_start is not None:
                bounds.append(column >= query.date_start)
            if query.date_end is not None:
                bounds.append(column < query.date_end)
            ranges.append(and_(*bounds))
        clauses.append(or_(*ranges))
    return clauses


class JobStore:
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

    # ---- submit and read -------------------------------------------------------------------------

    @retry_on_conflict
    def submit(
        self, spec: JobSpec, script: str, datatoken: str | None, owner: str = "public"
    ) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        now = now_us()
        info = dict(spec.info)
        info.pop("clientgroups", None)
        if datatoken:
            info["auth"] = True
        with self.db.write() as conn:
            conn.execute(
                insert(jobs).values(
                    id=job_id,
                    state=JobState.INIT.value,
                    name=info.pop("name"),
                    pipeline=info.pop("pipeline"),
                    project=info.pop("project"),
                    username=info.pop("user"),
                    owner=owner,
                    clientgroups=spec.clientgroups,
                    priority=info.pop("priority"),
                    submittime=now,
                    updatetime=now,
                    start_at=spec.start_at_us,
                    remaintasks=len(spec.tasks),
                    info=info,
                    datatoken=datatoken,
                )
            )
            conn.execute(
                insert(tasks),
                [
                    {
                        "id": f"{job_id}_{t.taskid}",
                        "job_id": job_id,
                        "taskid": t.taskid,
                        "ordinal": t.ordinal,
                        "state": TaskState.PENDING.value,
                        "app": t.app,
                        "totalwork": t.totalwork,
                        "remainwork": t.totalwork,
                        "maxworksize": t.maxworksize,
                        "createddate": now,
                        "depends_on": t.depends_on,
                        "spec": t.spec_document(),
                        "private_env": t.private_env or None,
                    }
                    for t in spec.tasks
                ],
            )
            conn.execute(insert(job_scripts).values(job_id=job_id, script=script))
            lifecycle.record_event(conn, job_id, lifecycle.EVENT_SUBMITTED, "job submitted", now)
            hooks.job_submitted(conn, spec.clientgroups)
            lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)
            return self._document(conn, job_id)

    def owner_of(self, job_id: str) -> str | None:
        with self.db.read() as conn:
            owner = conn.execute(select(jobs.c.owner).where(jobs.c.id == job_id)).scalar_one_or_none()
        return str(owner) if owner is not None else None

    def get(self, job_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._document(conn, job_id)

    def _job_row(self, conn: Connection, job_id: str, *, lock: bool = False) -> Any:
        stmt = select(jobs).where(jobs.c.id == job_id)
        if lock:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one_or_none()
        if row is None:
            raise NotFound("Not Found")
        return row

    def _document(self, conn: Connection, job_id: str) -> dict[str, Any]:
        job = self._job_row(conn, job_id)
        rows = conn.execute(select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.ordinal)).all()
        return job_document(job, rows)

    def find(
        self, query: JobQuery, *, minimal: bool = False, userattr_keys: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], int]:
        if not 1 <= query.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
        if query.offset < 0:
            raise BadRequest("offset must not be negative")
        order = field_expression(query.order)
        where = _where(query)
        # A missing JSON field sorts lowest on both databases (PostgreSQL would put NULL highest).
        ordering = (
            [order.desc().nulls_last(), jobs.c.id.desc()]
            if query.descending
            else [order.asc().nulls_first(), jobs.c.id.asc()]
        )
        with self.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
            # Page through the ids first (an index walk), then fetch only those rows: a deep offset then
            # skips index entries, not whole rows with their JSON documents.
            page_ids = (
                select(jobs.c.id)
                .where(*where)
                .order_by(*ordering)
                .limit(query.limit)
                .offset(query.offset)
                .subquery()
            )
            page = conn.execute(
                select(jobs).join(page_ids, page_ids.c.id == jobs.c.id).order_by(*ordering)
            ).all()
            by_job: dict[str, list[Any]] = {j.id: [] for j in page}
            if page:
                for t in conn.execute(
                    select(tasks)
                    .where(tasks.c.job_id.in_(list(by_job)))
                    .order_by(tasks.c.job_id, tasks.c.ordinal)
                ):
                    by_job[t.job_id].append(t)
        if minimal:
            return [job_minimal(j, by_job[j.id], userattr_keys) for j in page], int(total)
        return [job_document(j, by_job[j.id]) for j in page], int(total)

    def distinct(self, name: str, query: JobQuery) -> list[Any]:
        if name not in DISTINCT_FIELDS:
            raise BadRequest(f"distinct field must be one of {', '.join(sorted(DISTINCT_FIELDS))}")
        expr = field_expression(f"info.{name}")
        with self.db.read() as conn:
            values = (
                conn.execute(select(expr).distinct().where(*_where(query)).order_by(expr)).scalars().all()
            )
        if f"info.{name}" in TIME_FIELDS:
            return [format_us(v) for v in values]
        return [v for v in values if v is not None]

    def position(self, job_id: str) -> dict[str, int]:
        """1 + the active jobs ahead of this one that compete for the same client groups."""
        with self.db.read() as conn:
            job = self._job_row(conn, job_id)
            if JobState(job.state) not in ACTIVE_JOB_STATES:
                raise Conflict(f"job {job_id} is not in the queue (state {job.state})")
            ahead = conn.execute(
                select(jobs.c.clientgroups).where(
                    jobs.c.state.in_([s.value for s in ACTIVE_JOB_STATES]),
                    jobs.c.id != job_id,
                    or_(
                        jobs.c.priority > job.priority,
                        and_(jobs.c.priority == job.priority, jobs.c.submittime < job.submittime),
                    ),
                )
            ).scalars()
            mine = set(filter(None, job.clientgroups.split(",")))
            count = sum(1 for groups in ahead if _share_groups(mine, groups))
        return {"position": count + 1}

    def report(self, job_id: str) -> dict[str, Any]:
        """AWE's JobLog: per-task workunits with their logs, plus the job's event history."""
        with self.db.read() as conn:
            job = self._job_row(conn, job_id)
            task_rows = conn.execute(
                select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.ordinal)
            ).all()
            wu_rows = conn.execute(
                select(
                    workunits.c.id,
                    workunits.c.task_id,
                    workunits.c.rank,
                    workunits.c.state,
                    workunits.c.failed,
                )
                .where(workunits.c.job_id == job_id)
                .order_by(workunits.c.task_id, workunits.c.rank)
            ).all()
            logs: dict[str, dict[str, str]] = {}
            for log in conn.execute(
                select(workunit_logs.c.workunit_id, workunit_logs.c.kind, workunit_logs.c.content).where(
                    workunit_logs.c.job_id == job_id, workunit_logs.c.kind != "perf"
                )
            ):
                logs.setdefault(log.workunit_id, {})[log.kind] = log.content
            events = conn.execute(
                select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
            ).all()
            spot_summary = spot.job_summary(conn, job_id)
        by_task: dict[str, list[dict[str, Any]]] = {}
        for wu in wu_rows:
            by_task.setdefault(wu.task_id, []).append(
                {
                    "wuid": wu.id,
                    "rank": wu.rank,
                    "state": wu.state,
                    "failed": wu.failed,
                    "logs": logs.get(wu.id, {}),
                }
            )
        return {
            "id": job.id,
            "state": job.state,
            "updatetime": format_us(job.updatetime),
            "error": job.error,
            "resumed": job.resumed,
            "tasks": [
                {
                    "taskid": t.id,
                    "state": t.state,
                    "totalwork": t.totalwork,
                    "completeddate": format_us(t.completeddate),
                    "workunits": by_task.get(t.id, []),
                }
                for t in task_rows
            ],
            "events": [{"time": format_us(e.time), "code": e.code, "message": e.message} for e in events],
            "spot": spot_summary,
        }

    def perf(self, job_id: str) -> dict[str, Any]:
        """AWE's JobPerf: job and task timings, and each workunit's perf report as the worker sent it."""
        with self.db.read() as conn:
            job = self._job_row(conn, job_id)
            task_rows = conn.execute(select(tasks).where(tasks.c.job_id == job_id)).all()
            perf_rows = conn.execute(
                select(workunit_logs.c.workunit_id, workunit_logs.c.content).where(
                    workunit_logs.c.job_id == job_id, workunit_logs.c.kind == "perf"
                )
            ).all()
        work_stats: dict[str, Any] = {}
        for row in perf_rows:
            try:
                work_stats[row.workunit_id] = json.loads(row.content)
            except ValueError:
                work_stats[row.workunit_id] = row.content
        return {
            "id": job.id,
            "queued": job.submittime // 1_000_000,
            "start": job.startedtime // 1_000_000,
            "end": job.completedtime // 1_000_000,
            "resp": max(0, job.completedtime - job.submittime) // 1_000_000 if job.completedtime else 0,
            "task_stats": {
                t.id: {
                    "queued": t.createddate // 1_000_000,
                    "start": t.starteddate // 1_000_000,
                    "end": t.completeddate // 1_000_000,
                    "resp": max(0, t.completeddate - t.createddate) // 1_000_000 if t.completeddate else 0,
                    "computetime": t.computetime,
                }
                for t in task_rows
            },
            "work_stats": work_stats,
        }

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

    def outputs(self, job_id: str) -> list[dict[str, Any]]:
        """A job's outputs in the data store: one entry per task and file, with its parts."""
        with self.db.read() as conn:
            self._job_row(conn, job_id)
            rows = output_records.of_job(conn, job_id)
        files: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            taskid = row.task_id.removeprefix(f"{job_id}_")
            entry = files.setdefault(
                (taskid, row.filename),
                {
                    "task": taskid,
                    "filename": row.filename,
                    "size": 0,
                    "parts": [],
                    "url": f"/job/{job_id}/output/{taskid}/{quote(row.filename)}",
                },
            )
            entry["size"] += row.size
            entry["parts"].append({"rank": row.rank, "size": row.size, "sha256": row.sha256})
        for entry in files.values():
            if len(entry["parts"]) == 1:
                entry["sha256"] = entry["parts"][0]["sha256"]
        return list(files.values())

    def output_reader(self, job_id: str, taskid: str, filename: str) -> tuple[ConcatReader, str | None]:
        """A reader over one output file (its parts in rank order) and its SHA-256 when it has one part."""
        if self.blobs is None:
            raise NotFound("this server has no data store")
        with self.db.read() as conn:
            parts = output_records.parts(conn, f"{job_id}_{taskid}", filename)
        if not parts:
            raise NotFound(f"job {job_id} has no output {filename!r} of task {taskid!r}")
        reader = ConcatReader(self.blobs, [p.blob_key for p in parts])
        return reader, parts[0].sha256 if len(parts) == 1 else None

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        return {state: int(n) for state, n in rows}

    def task_counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state)).all()
        return {state: int(n) for state, n in rows}


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


def _share_groups(mine: set[str], other: str) -> bool:
    theirs = set(filter(None, other.split(",")))
    return not mine or not theirs or bool(mine & theirs)


__all__ = ["REGISTERED_JOB_STATES", "JobQuery", "JobStore", "field_expression", "soft_delete", "suspend_job"]
