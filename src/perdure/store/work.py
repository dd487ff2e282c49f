"""Workunits: checkout (an atomic claim), status reports fenced by the lease, and the failure rules.

A checkout is a lease held by one client and kept alive by that client's heartbeats. A report is
accepted only from the client holding the lease for the current attempt, so work that was re-queued
and run elsewhere can never be completed twice; an exact repeat of an accepted report answers "ok"
again, so a worker retrying after a lost reply does no harm.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    case,
    delete,
    exists,
    func,
    insert,
    null,
    or_,
    select,
    text,
    update,
)

from perdure.datastore import BlobStore
from perdure.documents import job_info
from perdure.errors import BadRequest, NotFound, PerdureError
from perdure.metrics import recording as metrics
from perdure.spot.records import Preemption
from perdure.states import JobState, TaskState, WorkunitState
from perdure.store import lifecycle, outputs, spot
from perdure.store.commalist import comma_list_contains
from perdure.store.database import Database, retry_on_conflict
from perdure.store.jobs import suspend_job
from perdure.store.schema import client_skip_work, clients, jobs, tasks, workunit_logs, workunits
from perdure.timeutil import format_us, now_us

log = logging.getLogger("perdure.work")

#: AWE keeps the last 5,000 characters of stderr in the job's ``error.apperror``.
APPERROR_CHARS = 5000
LOG_KINDS = ("stdout", "stderr", "worknotes", "perf")
REPORT_STATUSES = frozenset({"done", "fail", "failed-permanent", "preempted"})


class LeaseLost(PerdureError):
    """The reporting client does not hold this workunit (any more)."""

    status = 409


class NoWork(PerdureError):
    """Nothing eligible for this client right now (AWE answers 400)."""

    status = 400


@dataclass(frozen=True)
class FailureLimits:
    max_work_failure: int = 3
    max_client_failure: int = 5


def decode_workunit_id(raw: str) -> str:
    """AWE workers address workunits as ``base64:<b64 id>`` too."""
    if raw.startswith("base64:"):
        try:
            return base64.b64decode(raw[7:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest("invalid base64 workunit id") from None
    return raw


#: Job columns a workunit document shows, prefixed so they do not collide with the workunit's own.
_JOB_FIELDS = (
    "name",
    "pipeline",
    "project",
    "username",
    "clientgroups",
    "priority",
    "submittime",
    "startedtime",
    "completedtime",
    "start_at",
    "info",
)


def _joined() -> Select[Any]:
    return (
        select(
            workunits,
            tasks.c.taskid,
            tasks.c.totalwork,
            tasks.c.spec,
            *(jobs.c[name].label(f"job_{name}") for name in _JOB_FIELDS),
        )
        .join(tasks, tasks.c.id == workunits.c.task_id)
        .join(jobs, jobs.c.id == workunits.c.job_id)
    )


def _queued() -> Any:
    # A literal, so the planner can match the partial queue index on both databases.
    return text("workunits.state = 'queued'")


def _preempted() -> Any:
    return text("workunits.state = 'preempted'")


def requeued_state() -> Any:
    """Where work taken from a lost or leaving client goes: ahead of new work if it has a checkpoint to
    be restored from (it was preempted without notice), else back in the queue."""
    return case(
        (workunits.c.checkpoint.is_not(None), WorkunitState.PREEMPTED.value),
        else_=WorkunitState.QUEUED.value,
    )


def _group_matches(group: str) -> Any:
    return or_(workunits.c.clientgroups == "", comma_list_contains(workunits.c.clientgroups, group))


class WorkStore:
    def __init__(
        self,
        db: Database,
        limits: FailureLimits | Callable[[], FailureLimits] | None = None,
        *,
        blobs: BlobStore | None = None,
        expire_after_s: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.db = db
        fixed = limits or FailureLimits()
        self._limits = fixed if callable(fixed) else (lambda: fixed)
        self.blobs = blobs
        self._expire_after_s = expire_after_s

    # ---- checkout -----------------------------------------------------------------------------

    @retry_on_conflict
    def checkout(self, client_id: str, available: int | None = None) -> dict[str, Any]:
        """Lease one eligible workunit to the client, or raise ``NoWork``.

        A client that already holds a lease gets the same workunit again: a checkout retried after a
        lost reply never hands out a second one.
        """
        with self.db.write() as conn:
            now = now_us()  # after BEGIN IMMEDIATE: times follow commit order
            client = conn.execute(select(clients).where(clients.c.id == client_id)).one_or_none()
            if client is None:
                raise BadRequest("Client not found")
            if client.deleted_at:
                raise BadRequest("Client deleted: the worker should stop")
            if client.suspended:
                raise BadRequest("Client suspended")
            held = conn.execute(
                select(workunits.c.id).where(
                    workunits.c.client_id == client_id, workunits.c.state == WorkunitState.CHECKOUT.value
                )
            ).first()
            if held is not None:
                return self._document(conn, held.id)
            claimed = self._claim(conn, client, available, now)
            if claimed is None:
                raise NoWork("No eligible workunit found")
            wu_id, task_id, job_id, queued_since = claimed
            log.debug("checkout: %s leased to client %s", wu_id, client_id)
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.state == TaskState.QUEUED.value)
                .values(state=TaskState.IN_PROGRESS.value)
            )
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value)
                .values(
                    state=JobState.IN_PROGRESS.value,
                    startedtime=func.coalesce(func.nullif(jobs.c.startedtime, 0), now),
                    updatetime=now,
                )
            )
            conn.execute(
                update(clients)
                .where(clients.c.id == client_id)
                .values(total_checkout=clients.c.total_checkout + 1, last_checkout=now, last_heartbeat=now)
            )
            document = self._document(conn, wu_id)
            metrics.workunit_checked_out(conn, document["info"]["clientgroups"], client, queued_since, now)
            return document

    def _claim(
        self, conn: Connection, client: Any, available: int | None, now: int
    ) -> tuple[str, str, str, int] | None:
        """Claim the first eligible workunit: (id, task id, job id, when it was queued)."""
        conditions = [
            _group_matches(client.group_name),
            ~exists().where(
                client_skip_work.c.client_id == client.id, client_skip_work.c.workunit_id == workunits.c.id
            ),
        ]
        apps = list(client.apps or [])
        if "*" not in apps:
            conditions.append(workunits.c.app.in_(apps))
        if available is not None and available >= 0:
            conditions.append(workunits.c.input_size <= available)
        if self.db.dialect == "postgresql":
            # Walk the partial queue index in order and stop at the first free row; without fresh
            # statistics the planner may instead sort every queued row for each claim.
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
        picked = None
        # Preempted work first: it has run already, and may be restored from its checkpoint.
        for state in (_preempted(), _queued()):
            candidate = (
                select(workunits.c.id, workunits.c.updatetime)
                .where(state, *conditions)
                .order_by(workunits.c.priority.desc(), workunits.c.submittime, workunits.c.id)
                .limit(1)
            )
            if self.db.dialect == "postgresql":
                candidate = candidate.with_for_update(skip_locked=True)
            picked = conn.execute(candidate).first()
            if picked is not None:
                break
        if picked is None:
            return None
        row = conn.execute(
            update(workunits)
            .where(workunits.c.id == picked.id)
            .values(
                state=WorkunitState.CHECKOUT.value,
                client_id=client.id,
                checkout_time=now,
                attempt=workunits.c.attempt + 1,
                updatetime=now,
            )
            .returning(workunits.c.id, workunits.c.task_id, workunits.c.job_id)
        ).one()
        return (row.id, row.task_id, row.job_id, picked.updatetime)

    # ---- reading ------------------------------------------------------------------------------

    def get(self, wu_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._document(conn, decode_workunit_id(wu_id))

    def _document(self, conn: Connection, wu_id: str) -> dict[str, Any]:
        row = conn.execute(_joined().where(workunits.c.id == wu_id)).one_or_none()
        if row is None:
            raise NotFound(f"no workunit found with id {wu_id}")
        return workunit_document(row)

    def find(
        self, states: Sequence[str] | None, limit: int, offset: int, client_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        where: list[ColumnElement[bool]] = []
        if states:
            where.append(workunits.c.state.in_(list(states)))
        if client_id:
            where.append(workunits.c.client_id == client_id)
        with self.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(workunits).where(*where)).scalar_one()
            rows = conn.execute(
                _joined()
                .where(*where)
                .order_by(workunits.c.priority.desc(), workunits.c.submittime, workunits.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [workunit_document(r) for r in rows], int(total)

    def log(self, wu_id: str, kind: str) -> str:
        if kind not in ("stdout", "stderr", "worknotes"):
            raise BadRequest(f"log type '{kind}' not found")
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            if conn.execute(select(workunits.c.id).where(workunits.c.id == wu_id)).first() is None:
                raise NotFound(f"no workunit found with id {wu_id}")
            content = conn.execute(
                select(workunit_logs.c.content).where(
                    workunit_logs.c.workunit_id == wu_id, workunit_logs.c.kind == kind
                )
            ).scalar_one_or_none()
        if content is None:
            raise BadRequest(f"log type '{kind}' not found")
        return str(content)

    def secret(self, wu_id: str, client_id: str, which: str) -> str:
        """The job's data token or the task's private environment, only for the lease holder."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            row = conn.execute(
                select(workunits.c.state, workunits.c.client_id, jobs.c.datatoken, tasks.c.private_env)
                .join(tasks, tasks.c.id == workunits.c.task_id)
                .join(jobs, jobs.c.id == workunits.c.job_id)
                .where(workunits.c.id == wu_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"no workunit found with id {wu_id}")
        if row.state != WorkunitState.CHECKOUT or row.client_id != client_id:
            raise LeaseLost(f"workunit {wu_id} is not checked out by client {client_id}")
        if which == "datatoken":
            if not row.datatoken:
                raise BadRequest("error in getting token")
            return str(row.datatoken)
        return json.dumps(row.private_env or {})

    # ---- reports ------------------------------------------------------------------------------

    @retry_on_conflict
    def report(
        self,
        wu_id: str,
        client_id: str,
        status: str,
        *,
        computetime: int = 0,
        logs: Mapping[str, str] | None = None,
        preemption: Preemption | None = None,
    ) -> str:
        if status not in REPORT_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(sorted(REPORT_STATUSES))}, not {status!r}")
        if not client_id:
            raise BadRequest("missing client parameter")
        wu_id = decode_workunit_id(wu_id)
        logs = {k: v for k, v in (logs or {}).items() if k in LOG_KINDS}
        with self.db.write() as conn:
            wu = conn.execute(
                select(workunits).where(workunits.c.id == wu_id).with_for_update()
            ).one_or_none()
            now = now_us()  # after the row lock: times follow commit order
            if wu is None:
                raise NotFound(f"no workunit found with id {wu_id}")
            if (wu.reported_by, wu.reported_status, wu.reported_attempt) == (client_id, status, wu.attempt):
                return "ok"  # the same report again: already applied
            if wu.state != WorkunitState.CHECKOUT or wu.client_id != client_id:
                raise LeaseLost(f"workunit {wu_id} is not checked out by client {client_id}")
            client = conn.execute(select(clients).where(clients.c.id == client_id)).one_or_none()
            if client is None:
                raise BadRequest("Client not found")
            self._store_logs(conn, wu, logs, now)
            log.debug("report: %s %s by client %s", wu_id, status, client_id)
            fenced = {"reported_by": client_id, "reported_status": status, "reported_attempt": wu.attempt}
            if status == "done":
                self._done(conn, wu, computetime, fenced, now)
            elif status == "fail":
                self._fail(conn, wu, client, logs, fenced, now)
            elif status == "preempted":
                given = preemption or Preemption(outcome="none", detail="the worker gave no details")
                spot.preempt(conn, wu, client_id, given, now)
                conn.execute(update(workunits).where(workunits.c.id == wu.id).values(**fenced))
            else:
                self._failed_permanent(conn, wu, client, logs, fenced, now)
        return "ok"

    def _store_logs(self, conn: Connection, wu: Any, logs: Mapping[str, str], now: int) -> None:
        if not logs:
            return
        conn.execute(
            delete(workunit_logs).where(
                workunit_logs.c.workunit_id == wu.id, workunit_logs.c.kind.in_(list(logs))
            )
        )
        conn.execute(
            insert(workunit_logs),
            [
                {
                    "workunit_id": wu.id,
                    "kind": kind,
                    "job_id": wu.job_id,
                    "content": content,
                    "updatetime": now,
                }
                for kind, content in logs.items()
            ],
        )

    def _done(self, conn: Connection, wu: Any, computetime: int, fenced: dict[str, Any], now: int) -> None:
        spec = conn.execute(select(tasks.c.spec).where(tasks.c.id == wu.task_id)).scalar_one()
        missing = sorted(
            {o["filename"] for o in spec.get("outputs", [])} - outputs.of_workunit(conn, wu.task_id, wu.rank)
        )
        if missing:
            # Downstream tasks would find nothing: refuse, so the worker reports a failure instead.
            raise BadRequest(
                f"workunit {wu.id} reported done without uploading outputs: {', '.join(missing)}"
            )
        conn.execute(
            update(workunits)
            .where(workunits.c.id == wu.id)
            .values(state=WorkunitState.DONE.value, computetime=computetime, updatetime=now, **fenced)
        )
        metrics.workunit_done(conn, wu)
        conn.execute(
            update(clients)
            .where(clients.c.id == wu.client_id)
            .values(
                total_completed=clients.c.total_completed + 1,
                last_failed=0,
                last_report=now,
                last_heartbeat=now,
            )
        )
        task = conn.execute(
            update(tasks)
            .where(tasks.c.id == wu.task_id)
            .values(remainwork=tasks.c.remainwork - 1, computetime=tasks.c.computetime + computetime)
            .returning(tasks.c.remainwork, tasks.c.taskid, tasks.c.state)
        ).one()
        if task.remainwork > 0:
            return
        conn.execute(
            update(tasks)
            .where(tasks.c.id == wu.task_id)
            .values(state=TaskState.COMPLETED.value, completeddate=now)
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.id == wu.job_id)
            .values(remaintasks=jobs.c.remaintasks - 1, updatetime=now)
        )
        lifecycle.record_event(
            conn, wu.job_id, lifecycle.EVENT_TASK_DONE, f"task {task.taskid} completed", now
        )
        lifecycle.advance_job(conn, wu.job_id, now, self._expire_after_s(), self.blobs)

    def _fail(
        self,
        conn: Connection,
        wu: Any,
        client: Any,
        logs: Mapping[str, str],
        fenced: dict[str, Any],
        now: int,
    ) -> None:
        failed = wu.failed + 1
        noretry = bool(
            conn.execute(select(jobs.c.info).where(jobs.c.id == wu.job_id)).scalar_one().get("noretry")
        )
        limit = 1 if noretry else self.limits.max_work_failure
        metrics.workunit_failed(conn, wu, job_failed=failed >= limit)
        conn.execute(insert(client_skip_work).values(client_id=client.id, workunit_id=wu.id))
        self._count_client_failure(conn, client, now)
        if failed < limit:
            conn.execute(
                update(workunits)
                .where(workunits.c.id == wu.id)
                .values(
                    state=WorkunitState.QUEUED.value,
                    failed=failed,
                    client_id=None,
                    updatetime=now,
                    # A retry after a failure starts clean: the checkpoint may hold what made it fail.
                    checkpoint=null(),
                    **fenced,
                )
            )
            Database.work_queued(conn)
            lifecycle.record_event(
                conn,
                wu.job_id,
                lifecycle.EVENT_WORK_REQUEUED,
                f"workunit {wu.id} failed on client {client.id} ({failed}/{limit}); re-queued",
                now,
            )
            return
        conn.execute(
            update(workunits)
            .where(workunits.c.id == wu.id)
            .values(state=WorkunitState.SUSPEND.value, failed=failed, updatetime=now, **fenced)
        )
        lifecycle.record_event(
            conn, wu.job_id, lifecycle.EVENT_WORK_FAILED, f"workunit {wu.id} failed {failed} time(s)", now
        )
        error = _job_error(wu, client.id, logs, f"workunit failed {failed} time(s)", JobState.SUSPEND.value)
        suspend_job(conn, wu.job_id, error, now)

    def _failed_permanent(
        self,
        conn: Connection,
        wu: Any,
        client: Any,
        logs: Mapping[str, str],
        fenced: dict[str, Any],
        now: int,
    ) -> None:
        conn.execute(
            update(workunits)
            .where(workunits.c.id == wu.id)
            .values(
                state=WorkunitState.FAILED_PERMANENT.value, failed=wu.failed + 1, updatetime=now, **fenced
            )
        )
        metrics.workunit_failed(conn, wu, job_failed=True)
        self._count_client_failure(conn, client, now)
        error = _job_error(wu, client.id, logs, "exit code 42 encountered", JobState.FAILED_PERMANENT.value)
        suspend_job(conn, wu.job_id, error, now)  # holds the rest of the job's work
        conn.execute(
            update(tasks).where(tasks.c.id == wu.task_id).values(state=TaskState.FAILED_PERMANENT.value)
        )
        conn.execute(update(jobs).where(jobs.c.id == wu.job_id).values(state=JobState.FAILED_PERMANENT.value))
        lifecycle.record_event(
            conn,
            wu.job_id,
            lifecycle.EVENT_WORK_PERMANENT,
            f"workunit {wu.id} failed permanently (exit 42)",
            now,
        )

    def _count_client_failure(self, conn: Connection, client: Any, now: int) -> None:
        consecutive = client.last_failed + 1
        values: dict[str, Any] = {
            "total_failed": clients.c.total_failed + 1,
            "last_failed": consecutive,
            "last_report": now,
            "last_heartbeat": now,
        }
        limit = self.limits.max_client_failure
        if limit > 0 and consecutive >= limit and not client.suspended:
            values.update(suspended=True, suspend_reason="MAX_CLIENT_FAILURE on client reached")
            # The failing workunit is handled by the caller; anything else it holds goes back.
            requeue_client_work(conn, client.id, now, reason="client suspended after repeated failures")
        conn.execute(update(clients).where(clients.c.id == client.id).values(**values))

    def output_target(self, wu_id: str, client_id: str, filename: str) -> tuple[str, str]:
        """Check an upload before its bytes arrive: the client holds the lease and the task declares the
        file. Returns (job id, blob key)."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            row = self._leased(conn, wu_id, client_id)
            declared = {o["filename"] for o in row.spec.get("outputs", [])}
        if filename not in declared:
            raise BadRequest(f"task {row.taskid} declares no output {filename!r}")
        return row.job_id, outputs.blob_key(row.job_id, row.taskid, row.rank, filename)

    def record_output(
        self, wu_id: str, client_id: str, filename: str, key: str, size: int, sha256: str
    ) -> None:
        """Remember an uploaded output, if the client still holds the lease."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.write() as conn:
            row = self._leased(conn, wu_id, client_id)
            outputs.record(
                conn,
                job_id=row.job_id,
                task_id=row.task_id,
                filename=filename,
                rank=row.rank,
                size=size,
                sha256=sha256,
                key=key,
                now=now_us(),
            )

    @staticmethod
    def _leased(conn: Connection, wu_id: str, client_id: str) -> Any:
        row = conn.execute(
            select(
                workunits.c.job_id,
                workunits.c.task_id,
                workunits.c.rank,
                workunits.c.state,
                workunits.c.client_id,
                tasks.c.taskid,
                tasks.c.spec,
            )
            .join(tasks, tasks.c.id == workunits.c.task_id)
            .where(workunits.c.id == wu_id)
        ).one_or_none()
        if row is None:
            raise NotFound(f"no workunit found with id {wu_id}")
        if row.state != WorkunitState.CHECKOUT or row.client_id != client_id:
            raise LeaseLost(f"workunit {wu_id} is not checked out by client {client_id}")
        return row

    @property
    def limits(self) -> FailureLimits:
        return self._limits()

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(select(workunits.c.state, func.count()).group_by(workunits.c.state)).all()
        return {state: int(n) for state, n in rows}


def requeue_client_work(conn: Connection, client_id: str, now: int, *, reason: str) -> int:
    """Put every workunit leased to a client back in the queue: a lost or suspended worker is not a
    workunit failure, so ``failed`` is left alone."""
    held = conn.execute(
        update(workunits)
        .where(workunits.c.client_id == client_id, workunits.c.state == WorkunitState.CHECKOUT.value)
        .values(state=requeued_state(), client_id=None, updatetime=now)
        .returning(workunits.c.id, workunits.c.job_id)
    ).all()
    for row in held:
        lifecycle.record_event(
            conn, row.job_id, lifecycle.EVENT_WORK_REQUEUED, f"workunit {row.id} re-queued: {reason}", now
        )
    if held:
        Database.work_queued(conn)
    return len(held)


def _job_error(wu: Any, client_id: str, logs: Mapping[str, str], notes: str, status: str) -> dict[str, Any]:
    return {
        "clientfailed": client_id,
        "workfailed": wu.id,
        "taskfailed": wu.task_id,
        "servernotes": notes,
        "worknotes": logs.get("worknotes", ""),
        "apperror": logs.get("stderr", "")[-APPERROR_CHARS:],
        "status": status,
    }


def workunit_document(row: Any) -> dict[str, Any]:
    """AWE's workunit JSON: what a worker needs to run it, and what a user sees of it."""
    spec = row.spec
    info = job_info(SimpleNamespace(**{name: getattr(row, f"job_{name}") for name in _JOB_FIELDS}))
    userattr = {**(info.get("userattr") or {}), **(spec.get("userattr") or {})}
    partinfo = spec.get("partinfo")
    inputs = []
    for io in spec.get("inputs", []):
        if io.get("origin") and not io.get("url"):
            # Outputs of earlier tasks are served by this server's data store (path relative to it).
            io = {**io, "url": f"/job/{row.job_id}/output/{io['origin']}/{quote(io['filename'])}"}
        inputs.append(io)
    return {
        "id": row.id,
        "wuid": row.id,
        "jobid": row.job_id,
        "task_name": row.taskid,
        "parent": "",
        "rank": row.rank,
        "totalwork": row.totalwork,
        "info": info,
        "cmd": spec["cmd"],
        "inputs": inputs,
        "outputs": spec.get("outputs", []),
        "predata": spec.get("predata", []),
        "partinfo": partinfo,
        "part": row.part,
        "userattr": userattr,
        "state": row.state,
        "failed": row.failed,
        "attempt": row.attempt,
        "client": row.client_id or "",
        "checkout_time": format_us(row.checkout_time),
        "computetime": row.computetime,
        "checkpoint": row.checkpoint,
    }


__all__ = ["FailureLimits", "LeaseLost", "NoWork", "WorkStore", "requeue_client_work", "requeued_state"]
