"""Workunits: checkout (an atomic claim), status reports fenced by the lease, and the failure rules.

A checkout is a lease held by one client and kept alive by that client's heartbeats. A report is
accepted only from the client holding the lease for the current attempt, so work that was re-queued
and run elsewhere can never be completed twice; an exact repeat of an accepted report answers "ok"
again, so a worker retrying after a lost reply does no harm.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from perdure.datastore import BlobStore
from perdure.documents import job_info
from perdure.errors import BadRequest, NotFound, PerdureError
from perdure.metrics import recording as metrics
from perdure.spot.records import Preemption
from perdure.states import JobState, TaskState, WorkunitState
from perdure.store import lifecycle, outputs, spot
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


def requeued_state() -> Any:
    """Where work taken from a lost or leaving client goes: ahead of new work if it has a checkpoint to
    be restored from (it was preempted without notice), else back in the queue."""
    return case(
        (workunits.c.checkpoint.is_not(None), WorkunitState.PREEMPTED.value),
        else_=WorkunitState.QUEUED.value,
    )


def _psycopg_placeholders(sql: str) -> str:
    """``:name`` binds as psycopg's ``%(name)s`` (the statements here have no other colons or %)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


def _pg_row(conn: Connection, sql: str, params: Mapping[str, Any]) -> Any:
    """The first row (attributes by column name), or None, of a statement run on psycopg directly, in
    the connection's transaction: for the hottest statements, without SQLAlchemy's per-statement work
    (psycopg still prepares them once it has seen them a few times)."""
    raw: Any = conn.connection.driver_connection
    try:
        with raw.cursor(row_factory=namedtuple_row) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    except psycopg.Error as exc:
        raise DBAPIError(sql, params, exc) from exc  # as SQLAlchemy would: ``retry_on_conflict`` sees it


#: The checking-out client, and the workunit it holds already (if any), by ``:client``.
_CLIENT = select(
    clients.c.id,
    clients.c.group_name,
    clients.c.apps,
    clients.c.node_id,
    clients.c.deleted_at,
    clients.c.suspended,
    select(workunits.c.id)
    .where(workunits.c.client_id == clients.c.id, workunits.c.state == WorkunitState.CHECKOUT.value)
    .limit(1)
    .scalar_subquery()
    .label("held"),
).where(clients.c.id == bindparam("client"))
#: The same on PostgreSQL (run on psycopg directly), also setting for this transaction what makes the
#: claim walk the partial queue index in order and stop at the first free row: without fresh
#: statistics the planner may instead sort every queued row for each claim.
_CLIENT_PG = f"""
SELECT c.id, c.group_name, c.apps, c.node_id, c.deleted_at, c.suspended,
    (SELECT w.id FROM workunits w WHERE w.client_id = c.id AND w.state = '{WorkunitState.CHECKOUT.value}'
     LIMIT 1) AS held,
    set_config('enable_sort', 'off', true) AS no_sort,
    set_config('enable_bitmapscan', 'off', true) AS no_bitmap
FROM clients c WHERE c.id = %(client)s"""


def _group_params(group: str) -> dict[str, str]:
    """The bind values of the claim's client-group match (see ``comma_list_contains``)."""
    escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"grp": group, "grp_head": f"{escaped},%", "grp_tail": f"%,{escaped}", "grp_mid": f"%,{escaped},%"}


_ELIGIBLE = """
    (w.clientgroups = '' OR w.clientgroups = :grp OR w.clientgroups LIKE :grp_head ESCAPE '\\'
     OR w.clientgroups LIKE :grp_tail ESCAPE '\\' OR w.clientgroups LIKE :grp_mid ESCAPE '\\')
    AND NOT EXISTS (SELECT 1 FROM client_skip_work s WHERE s.client_id = :client AND s.workunit_id = w.id)"""
_QUEUE_ORDER = "ORDER BY w.priority DESC, w.submittime, w.id LIMIT 1"


@functools.cache
def _claim_statement(dialect: str, filter_apps: bool, sized: bool) -> Any:
    """The claim: the first eligible workunit, preempted work ahead of queued work (the state literals
    let the planner use each state's partial index). PostgreSQL: one statement that also leases it,
    moves its task and job to in-progress, counts the checkout on the client and returns the
    workunit's document columns. SQLite (one writer at a time): the pick alone."""
    eligible = _ELIGIBLE
    if filter_apps:
        eligible += " AND w.app = ANY(:apps)" if dialect == "postgresql" else " AND w.app IN :apps"
    if sized:
        eligible += " AND w.input_size <= :available"
    if dialect != "postgresql":
        pick = "SELECT w.id, w.updatetime FROM workunits w WHERE w.state = '{}' AND {} {}"
        preempted = pick.format(WorkunitState.PREEMPTED.value, eligible, _QUEUE_ORDER)
        queued = pick.format(WorkunitState.QUEUED.value, eligible, _QUEUE_ORDER)
        sql = f"SELECT id, updatetime FROM ({preempted}) UNION ALL SELECT * FROM ({queued}) LIMIT 1"
        statement = text(sql)
        return statement.bindparams(bindparam("apps", expanding=True)) if filter_apps else statement
    job_fields = ", ".join(f"jobs.{name} AS job_{name}" for name in _JOB_FIELDS if name != "startedtime")
    sql = f"""
WITH p AS (
    SELECT w.id, w.updatetime FROM workunits w WHERE w.state = 'preempted' AND {eligible}
    {_QUEUE_ORDER} FOR UPDATE SKIP LOCKED
), q AS (
    SELECT w.id, w.updatetime FROM workunits w
    WHERE w.state = 'queued' AND {eligible} AND NOT EXISTS (SELECT 1 FROM p)
    {_QUEUE_ORDER} FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, updatetime FROM p UNION ALL SELECT id, updatetime FROM q
), claimed AS (
    UPDATE workunits SET state = '{WorkunitState.CHECKOUT.value}', client_id = :client,
        checkout_time = :now, attempt = workunits.attempt + 1, updatetime = :now
    FROM picked WHERE workunits.id = picked.id
    RETURNING workunits.id, workunits.job_id, workunits.task_id, workunits.rank, workunits.state,
        workunits.failed, workunits.attempt, workunits.client_id, workunits.checkout_time,
        workunits.computetime, workunits.part, workunits.checkpoint, picked.updatetime AS queued_since
), t AS (
    UPDATE tasks SET state = '{TaskState.IN_PROGRESS.value}' FROM claimed
    WHERE tasks.id = claimed.task_id AND tasks.state = '{TaskState.QUEUED.value}'
    RETURNING tasks.id
), j AS (
    UPDATE jobs SET state = '{JobState.IN_PROGRESS.value}',
        startedtime = COALESCE(NULLIF(jobs.startedtime, 0), :now), updatetime = :now
    FROM claimed WHERE jobs.id = claimed.job_id AND jobs.state = '{JobState.QUEUED.value}'
    RETURNING jobs.startedtime
), c AS (
    UPDATE clients SET total_checkout = clients.total_checkout + 1, last_checkout = :now,
        last_heartbeat = :now
    FROM claimed WHERE clients.id = :client
    RETURNING clients.id
)
SELECT claimed.*, tasks.taskid, tasks.totalwork, tasks.spec, {job_fields},
    COALESCE((SELECT j.startedtime FROM j), jobs.startedtime) AS job_startedtime
FROM claimed JOIN tasks ON tasks.id = claimed.task_id JOIN jobs ON jobs.id = claimed.job_id"""
    return _psycopg_placeholders(sql)


#: SQLite: lease the picked workunit (``:wu``).
_CLAIM_ONE = (
    update(workunits)
    .where(workunits.c.id == bindparam("wu"))
    .values(
        state=WorkunitState.CHECKOUT.value,
        client_id=bindparam("client"),
        checkout_time=bindparam("now"),
        attempt=workunits.c.attempt + 1,
        updatetime=bindparam("now"),
    )
    .returning(workunits.c.task_id, workunits.c.job_id)
)
#: SQLite: after a claim, its task and job are in progress and the client counts the checkout.
_AFTER_CLAIM = (
    update(tasks)
    .where(tasks.c.id == bindparam("task"), tasks.c.state == TaskState.QUEUED.value)
    .values(state=TaskState.IN_PROGRESS.value),
    update(jobs)
    .where(jobs.c.id == bindparam("job"), jobs.c.state == JobState.QUEUED.value)
    .values(
        state=JobState.IN_PROGRESS.value,
        startedtime=func.coalesce(func.nullif(jobs.c.startedtime, 0), bindparam("now")),
        updatetime=bindparam("now"),
    ),
    update(clients)
    .where(clients.c.id == bindparam("client"))
    .values(
        total_checkout=clients.c.total_checkout + 1,
        last_checkout=bindparam("now"),
        last_heartbeat=bindparam("now"),
    ),
)


#: A report's workunit (locked against concurrent reports and sweeps), its task's spec, and whether
#: the reporting client (``:client``) exists.
_REPORTED = (
    select(
        workunits,
        tasks.c.spec.label("task_spec"),
        select(clients.c.id)
        .where(clients.c.id == bindparam("client"))
        .scalar_subquery()
        .label("client_known"),
    )
    .join(tasks, tasks.c.id == workunits.c.task_id)
    .where(workunits.c.id == bindparam("wu"))
    .with_for_update(of=workunits)
)
_REPORTED_PG = """
SELECT w.*, t.spec AS task_spec, (SELECT c.id FROM clients c WHERE c.id = %(client)s) AS client_known
FROM workunits w JOIN tasks t ON t.id = w.task_id
WHERE w.id = %(wu)s
FOR UPDATE OF w"""
#: A ``done`` report: the workunit is done, the client counts it, the task has one workunit less.
_DONE_WORKUNIT = (
    update(workunits)
    .where(workunits.c.id == bindparam("wu"))
    .values(
        state=WorkunitState.DONE.value,
        computetime=bindparam("ct"),
        updatetime=bindparam("now"),
        reported_by=bindparam("by"),
        reported_status=bindparam("status"),
        reported_attempt=bindparam("att"),
    )
)
_DONE_CLIENT = (
    update(clients)
    .where(clients.c.id == bindparam("client"))
    .values(
        total_completed=clients.c.total_completed + 1,
        last_failed=0,
        last_report=bindparam("now"),
        last_heartbeat=bindparam("now"),
    )
)
_DONE_SQLITE = (_DONE_WORKUNIT, _DONE_CLIENT)
_DONE_TASK = (
    update(tasks)
    .where(tasks.c.id == bindparam("task"))
    .values(remainwork=tasks.c.remainwork - 1, computetime=tasks.c.computetime + bindparam("ct"))
    .returning(tasks.c.remainwork, tasks.c.taskid, tasks.c.state)
)
#: The workunit and client parts of a ``done`` report (PostgreSQL), ahead of the task's update.
_DONE_PG_HEAD = f"""
WITH w AS (
    UPDATE workunits SET state = '{WorkunitState.DONE.value}', computetime = :ct,
        updatetime = :now, reported_by = :by, reported_status = :status, reported_attempt = :att
    WHERE id = :wu
    RETURNING id
), c AS (
    UPDATE clients SET total_completed = total_completed + 1, last_failed = 0, last_report = :now,
        last_heartbeat = :now
    WHERE id = :client
    RETURNING id
)"""
_DONE_PG = text(
    _DONE_PG_HEAD
    + """
UPDATE tasks SET remainwork = remainwork - 1, computetime = computetime + :ct WHERE id = :task
RETURNING remainwork, taskid, state"""
)


class _LastOfTask(Exception):
    """The fast ``done`` path found the task at its last workunit, and rolled the report back."""


#: The fast path of a ``done`` report that does not finish its task: ``_DONE_PG`` in psycopg's
#: placeholders, failing with a division by zero when the task has no other workunit left.
_DONE_PG_FAST = _psycopg_placeholders(
    _DONE_PG_HEAD
    + """, t AS (
    UPDATE tasks SET remainwork = remainwork - 1, computetime = computetime + :ct
    WHERE id = :task AND remainwork > 1
    RETURNING remainwork
)
SELECT 1 / (SELECT count(*) FROM t)""",
)


def _commit_with(conn: Connection, statements: Sequence[tuple[str, Any] | None]) -> None:
    """Run the transaction's last statements (psycopg's placeholders) and COMMIT in one round trip
    (psycopg's pipeline mode), so the rows they lock stay locked that long, not also while this thread
    waits for the interpreter between statements. Nothing may run on ``conn`` afterwards: the
    transaction is over (SQLAlchemy's own commit then finds nothing to do).

    A report that is ``done`` updates its task's row, which every report of the task's workunits
    updates too: that row is the one this keeps short. When the task has no other workunit left
    (``_DONE_PG_FAST`` fails with a division by zero) the whole transaction rolls back and
    ``_LastOfTask`` tells the caller to take the full path.
    """
    raw: Any = conn.connection.driver_connection
    sql = ""
    try:
        with raw.pipeline():
            cursor = raw.cursor()
            for statement in statements:
                if statement is not None:
                    sql, params = statement
                    cursor.execute(sql, params)
            sql = "COMMIT"
            raw.commit()
    except psycopg.Error as exc:
        fast_done = any(statement is not None and statement[0] is _DONE_PG_FAST for statement in statements)
        if exc.sqlstate == "22012" and fast_done:  # division_by_zero (raised at the sync): the task's last
            raise _LastOfTask() from None
        raise DBAPIError(sql, None, exc) from exc  # as SQLAlchemy would: ``retry_on_conflict`` sees it


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
            postgres = self.db.dialect == "postgresql"
            # The client, the lease it may hold already and (PostgreSQL) the planner settings for the
            # claim, in one round trip.
            if postgres:
                client = _pg_row(conn, _CLIENT_PG, {"client": client_id})
            else:
                client = conn.execute(_CLIENT, {"client": client_id}).one_or_none()
            if client is None:
                raise BadRequest("Client not found")
            if client.deleted_at:
                raise BadRequest("Client deleted: the worker should stop")
            if client.suspended:
                raise BadRequest("Client suspended")
            if client.held is not None:
                return self._document(conn, client.held)
            apps = list(client.apps or [])
            sized = available is not None and available >= 0
            params = {
                "client": client_id,
                "now": now,
                **_group_params(client.group_name),
                "apps": apps,
                "available": available if sized else 0,
            }
            claim = _claim_statement(self.db.dialect, "*" not in apps, sized)
            if postgres:
                # One statement: claim (preempted work first, then queued), move task and job to
                # in-progress, count the checkout on the client, and read the workunit's document.
                row = _pg_row(conn, claim, params)
                if row is None:
                    raise NoWork("No eligible workunit found")
                document = workunit_document(row)
                queued_since = row.queued_since
            else:
                picked = conn.execute(claim, params).first()
                if picked is None:
                    raise NoWork("No eligible workunit found")
                claimed = conn.execute(_CLAIM_ONE, {**params, "wu": picked.id}).one()
                for statement in _AFTER_CLAIM:
                    conn.execute(statement, {**params, "task": claimed.task_id, "job": claimed.job_id})
                document = self._document(conn, picked.id)
                queued_since = picked.updatetime
            log.debug("checkout: %s leased to client %s", document["id"], client_id)
            clientgroups = document["info"]["clientgroups"]
            if postgres:
                _commit_with(
                    conn, [metrics.workunit_checked_out_insert(clientgroups, client, queued_since, now)]
                )
            else:
                metrics.workunit_checked_out(conn, clientgroups, client, queued_since, now)
            return document

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
        try:
            return self._report(wu_id, client_id, status, computetime, logs, preemption, fast=True)
        except _LastOfTask:
            # Rolled back whole: the task may be complete now, which the full path handles.
            return self._report(wu_id, client_id, status, computetime, logs, preemption, fast=False)

    @retry_on_conflict
    def _report(
        self,
        wu_id: str,
        client_id: str,
        status: str,
        computetime: int,
        logs: Mapping[str, str] | None,
        preemption: Preemption | None,
        *,
        fast: bool,
    ) -> str:
        if status not in REPORT_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(sorted(REPORT_STATUSES))}, not {status!r}")
        if not client_id:
            raise BadRequest("missing client parameter")
        wu_id = decode_workunit_id(wu_id)
        logs = {k: v for k, v in (logs or {}).items() if k in LOG_KINDS}
        with self.db.write() as conn:
            # The workunit (locked), its task's spec and whether the client exists, in one round trip.
            if self.db.dialect == "postgresql":
                wu = _pg_row(conn, _REPORTED_PG, {"wu": wu_id, "client": client_id})
            else:
                wu = conn.execute(_REPORTED, {"wu": wu_id, "client": client_id}).one_or_none()
            now = now_us()  # after the row lock: times follow commit order
            if wu is None:
                raise NotFound(f"no workunit found with id {wu_id}")
            if (wu.reported_by, wu.reported_status, wu.reported_attempt) == (client_id, status, wu.attempt):
                return "ok"  # the same report again: already applied
            if wu.state != WorkunitState.CHECKOUT or wu.client_id != client_id:
                raise LeaseLost(f"workunit {wu_id} is not checked out by client {client_id}")
            if wu.client_known is None:
                raise BadRequest("Client not found")
            self._store_logs(conn, wu, logs, now)
            log.debug("report: %s %s by client %s", wu_id, status, client_id)
            fenced = {"reported_by": client_id, "reported_status": status, "reported_attempt": wu.attempt}
            if status == "done":
                self._done(conn, wu, computetime, fenced, now, fast=fast)
                return "ok"
            client = conn.execute(select(clients).where(clients.c.id == client_id)).one_or_none()
            if client is None:
                raise BadRequest("Client not found")
            if status == "fail":
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

    def _done(
        self, conn: Connection, wu: Any, computetime: int, fenced: dict[str, Any], now: int, *, fast: bool
    ) -> None:
        declared = {o["filename"] for o in wu.task_spec.get("outputs", [])}
        missing = sorted(declared - outputs.of_workunit(conn, wu.task_id, wu.rank)) if declared else []
        if missing:
            # Downstream tasks would find nothing: refuse, so the worker reports a failure instead.
            raise BadRequest(
                f"workunit {wu.id} reported done without uploading outputs: {', '.join(missing)}"
            )
        params = {
            "wu": wu.id,
            "client": wu.client_id,
            "task": wu.task_id,
            "ct": computetime,
            "now": now,
            "by": fenced["reported_by"],
            "status": fenced["reported_status"],
            "att": fenced["reported_attempt"],
        }
        if self.db.dialect == "postgresql" and fast:
            _commit_with(conn, [metrics.workunit_done_insert(conn, wu), (_DONE_PG_FAST, params)])
            return
        metrics.workunit_done(conn, wu)
        if self.db.dialect == "postgresql":
            # Workunit, client and task in one round trip; the task's row, which every report of its
            # workunits updates, is locked last, so it is held the shortest time.
            task = conn.execute(_DONE_PG, params).one()
        else:
            for statement in _DONE_SQLITE:
                conn.execute(statement, params)
            task = conn.execute(_DONE_TASK, params).one()
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
