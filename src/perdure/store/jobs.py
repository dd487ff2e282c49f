"""Jobs: submission and every read (one job, pages, distinct values, position, report, perf, outputs).

Operations return AWE's plain-string replies and raise ``NotFound``/``Conflict``/``BadRequest`` with
AWE's messages; the HTTP layer only wraps them in the envelope. The operations after submission are
in ``store/jobops.py``, the page query's fields and filters in ``store/jobquery.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, and_, func, or_, select

from perdure.datastore import ConcatReader
from perdure.documents import job_document, job_minimal
from perdure.errors import BadRequest, Conflict, NotFound
from perdure.jobscript import JobSpec
from perdure.states import ACTIVE_JOB_STATES, REGISTERED_JOB_STATES, JobState, TaskState
from perdure.store import hooks, lifecycle, spot, stranded
from perdure.store import outputs as output_records
from perdure.store.bulkinsert import insert_rows
from perdure.store.database import retry_on_conflict
from perdure.store.jobops import JobOperations, forget_skips, soft_delete, suspend_job
from perdure.store.jobquery import (
    DISTINCT_FIELDS,
    FIELD_COLUMNS,
    INT_FIELDS,
    MAX_PAGE,
    TIME_FIELDS,
    JobQuery,
    field_expression,
    share_groups,
    where_clauses,
)
from perdure.store.schema import job_events, job_scripts, jobs, tasks, workunit_logs, workunits
from perdure.timeutil import format_us, now_us

#: A new task's columns that its insert leaves to their defaults (those its document shows).
_NEW_TASK_DEFAULTS = {"starteddate": 0, "completeddate": 0, "computetime": 0}


@dataclass(frozen=True)
class Submission:
    """One job to submit: its checked script (``spec``) and text, data token and owner."""

    spec: JobSpec
    script: str
    datatoken: str | None
    owner: str = "public"


#: PostgreSQL: submits of at most this many tasks and workunits go in one statement; bigger ones
#: (a job of 10,000 tasks) in one per table, which PostgreSQL took seconds less to run for them.
PG_ONE_STATEMENT_ROWS = 2000


def _rows_in(task_rows: Sequence[Any], openings: Sequence[lifecycle.Opening]) -> int:
    return len(task_rows) + sum(len(plan) for opening in openings for _, plan in opening.queued)


def _new_rows(submission: Submission, now: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new job's row (``init``) and its tasks' rows (``pending``)."""
    spec, datatoken = submission.spec, submission.datatoken
    job_id = str(uuid.uuid4())
    info = dict(spec.info)
    info.pop("clientgroups", None)
    if datatoken:
        info["auth"] = True
    job_values = {
        "id": job_id,
        "state": JobState.INIT.value,
        "name": info.pop("name"),
        "pipeline": info.pop("pipeline"),
        "project": info.pop("project"),
        "username": info.pop("user"),
        "owner": submission.owner,
        "clientgroups": spec.clientgroups,
        "priority": info.pop("priority"),
        "submittime": now,
        "updatetime": now,
        "start_at": spec.start_at_us,
        "remaintasks": len(spec.tasks),
        "info": info,
        "datatoken": datatoken,
    }
    task_rows = [
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
    ]
    return job_values, task_rows


class JobStore(JobOperations):
    # ---- submit and read -------------------------------------------------------------------------

    def submit(
        self, spec: JobSpec, script: str, datatoken: str | None, owner: str = "public"
    ) -> dict[str, Any]:
        return self.submit_warned(spec, script, datatoken, owner)[0]

    def submit_warned(
        self, spec: JobSpec, script: str, datatoken: str | None, owner: str = "public"
    ) -> tuple[dict[str, Any], list[str]]:
        """Store a job and queue what can run; returns its document and what no registered client
        would take (``stranded.unserved_in``, read in the same transaction to spare one)."""
        return self.submit_all([Submission(spec, script, datatoken, owner)])[0]

    @retry_on_conflict
    def submit_all(self, submissions: Sequence[Submission]) -> list[tuple[dict[str, Any], list[str]]]:
        """``submit_warned`` for several jobs in one transaction (the submits that arrive together:
        ``api/jobs.py``), each job's document and warnings in order. All are stored or none.

        A submit is about ten statements and a commit whatever its number of jobs, most of its cost:
        each is made once for all of them. The jobs' first steps (``lifecycle.open_new_job``) are
        planned from the rows in hand and written with them, and the replies are built from them and
        the queued jobs' rows: nothing just written is read back."""
        now = now_us()
        planned = [_new_rows(submission, now) for submission in submissions]
        with self.db.write() as conn:
            openings = [
                lifecycle.open_new_job(conn, job["id"], SimpleNamespace(**job), task_rows, now)
                for job, task_rows in planned
            ]
            job_rows = [job for job, _ in planned]
            task_rows = [row for _, rows in planned for row in rows]
            scripts = [
                {"job_id": job["id"], "script": submission.script}
                for job, submission in zip(job_rows, submissions, strict=True)
            ]
            groups = [submission.spec.clientgroups for submission in submissions]
            if conn.dialect.name == "postgresql" and _rows_in(task_rows, openings) <= PG_ONE_STATEMENT_ROWS:
                queued, registered = lifecycle.start_new_jobs_pg(
                    conn, openings, [(jobs, job_rows), (tasks, task_rows), (job_scripts, scripts)], groups
                )
            else:
                insert_rows(conn, jobs, job_rows)
                insert_rows(conn, tasks, task_rows)
                insert_rows(conn, job_scripts, scripts)
                hooks.jobs_submitted(conn, groups)
                queued = lifecycle.start_new_jobs(conn, openings)
                registered = stranded.registered_clients(conn)
        replies = []
        for (job, job_tasks), submission in zip(planned, submissions, strict=True):
            spec = submission.spec
            warnings = stranded.unserved_among(registered, spec.clientgroups, [t.app for t in spec.tasks])
            # As GET /job/<id> shows it; the columns not written start at their defaults.
            rows = [SimpleNamespace(**{**_NEW_TASK_DEFAULTS, **row}) for row in job_tasks]
            replies.append((job_document(queued[job["id"]], rows), warnings))
        return replies

    def owner_of(self, job_id: str) -> str | None:
        with self.db.read() as conn:
            owner = conn.execute(select(jobs.c.owner).where(jobs.c.id == job_id)).scalar_one_or_none()
        return str(owner) if owner is not None else None

    def get(self, job_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._document(conn, job_id)

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
        where = where_clauses(query)
        if query.order in FIELD_COLUMNS:
            # NOT NULL columns: a plain ORDER BY, which PostgreSQL walks its (column, id) index for (with
            # NULLS LAST it sorted every matching row, so a page cost grew with the table).
            ordering = (
                [order.desc(), jobs.c.id.desc()] if query.descending else [order.asc(), jobs.c.id.asc()]
            )
        else:
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
                conn.execute(select(expr).distinct().where(*where_clauses(query)).order_by(expr))
                .scalars()
                .all()
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
            count = sum(1 for groups in ahead if share_groups(mine, groups))
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


__all__ = [
    "DISTINCT_FIELDS",
    "FIELD_COLUMNS",
    "INT_FIELDS",
    "MAX_PAGE",
    "REGISTERED_JOB_STATES",
    "TIME_FIELDS",
    "JobQuery",
    "JobStore",
    "Submission",
    "field_expression",
    "forget_skips",
    "soft_delete",
    "suspend_job",
]
