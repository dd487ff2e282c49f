"""Workunits: checkout (an atomic claim), status reports fenced by the lease, and the failure rules.

A checkout is a lease held by one client and kept alive by that client's heartbeats. A report is
accepted only from the client holding the lease for the current attempt, so work that was re-queued
and run elsewhere can never be completed twice; an exact repeat of an accepted report answers "ok"
again, so a worker retrying after a lost reply does no harm.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    delete,
    exists,
    func,
    insert,
    null,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from perdure.datastore import BlobStore
from perdure.documents import job_info
from perdure.errors import BadRequest, DomainError, NotFound
from perdure.protocol import (
    ClientDeleted,
    ClientNotFound,
    ClientSuspended,
    LeaseLost,
    NoWork,
    OutputsMissing,
    Refused,
)
from perdure.spot.records import Preemption
from perdure.states import JobState, ReportStatus, WorkunitState
from perdure.store import failnotes, hooks, lifecycle, outputs, spot, transitions
from perdure.store.database import Database, retry_on_conflict
from perdure.store.jobs import suspend_job
from perdure.store.schema import client_skip_work, clients, jobs, tasks, workunit_logs, workunits
from perdure.store.transitions import requeued_state
from perdure.timeutil import format_us, now_us

log = logging.getLogger("perdure.work")
T = TypeVar("T")

#: AWE keeps the last 5,000 characters of stderr in the job's ``error.apperror``.
APPERROR_CHARS = 5000
LOG_KINDS = ("stdout", "stderr", "worknotes", "perf")
REPORT_STATUSES = frozenset(s.value for s in ReportStatus)
#: Why a part of an operation was refused: a bad request, or a refusal of the worker protocol.
Failure = DomainError | Refused


@dataclass(frozen=True)
class FailureLimits:
    max_work_failure: int = 3
    max_client_failure: int = 5


@dataclass(frozen=True)
class CheckoutRequest:
    """``GET /work?client=<id>[&available=<bytes>]``."""

    client_id: str
    available: int | None = None


@dataclass(frozen=True)
class ReportRequest:
    """``PUT /work/<id>?status=<status>&client=<id>``, with its files."""

    wu_id: str
    client_id: str
    status: str
    computetime: int = 0
    logs: Mapping[str, str] = field(default_factory=dict)
    preemption: Preemption | None = None


@dataclass(frozen=True)
class Operation:
    """One worker request: a report, a checkout, or (``&next``) a report and then, if it was
    accepted, a checkout."""

    report: ReportRequest | None = None
    checkout: CheckoutRequest | None = None

    @property
    def client_id(self) -> str:
        request = self.report or self.checkout
        return request.client_id if request is not None else ""


@dataclass
class DispatchOutcome:
    """What each part of an operation came to: the report's "ok" or its refusal, the leased
    workunit's document or why there is none. A part not asked for, or a checkout after a refused
    report, stays None."""

    report: str | Failure | None = None
    checkout: dict[str, Any] | Failure | None = None


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


#: A workunit's document columns (``:wu``), and those of several (``:ids``, SQLite's claims).
_DOCUMENT = _joined().where(workunits.c.id == bindparam("wu"))
_DOCUMENTS = _joined().where(workunits.c.id.in_(bindparam("ids", expanding=True)))


def _psycopg_placeholders(sql: str) -> str:
    """``:name`` binds as psycopg's ``%(name)s`` (the statements here have no other colons or %)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


#: The checking-out clients of a batch (``:clients``, SQLite), the lease each may hold already, and
#: whether it has workunits to skip.
_CLIENTS = select(
    clients.c.id,
    clients.c.group_name,
    clients.c.apps,
    clients.c.node_id,
    clients.c.deleted_at,
    clients.c.suspended,
    clients.c.profile,
    select(workunits.c.id)
    .where(workunits.c.client_id == clients.c.id, workunits.c.state == WorkunitState.CHECKOUT.value)
    .limit(1)
    .scalar_subquery()
    .label("held"),
    exists().where(client_skip_work.c.client_id == clients.c.id).label("skips"),
).where(clients.c.id.in_(bindparam("clients", expanding=True)))
#: The same on PostgreSQL (run on psycopg directly) for every client of a batch.
_CLIENTS_PG = f"""
SELECT c.id, c.group_name, c.apps, c.node_id, c.deleted_at, c.suspended, c.profile,
    (SELECT w.id FROM workunits w WHERE w.client_id = c.id AND w.state = '{WorkunitState.CHECKOUT.value}'
     LIMIT 1) AS held,
    EXISTS (SELECT 1 FROM client_skip_work s WHERE s.client_id = c.id) AS skips
FROM clients c WHERE c.id = ANY(%(clients)s)"""
#: PostgreSQL, for the rest of a batch's transaction: plans that do not depend on statistics, which
#: lag behind a table that grows by thousands of workunits a minute. Every statement of a batch looks
#: rows up by key, so a nested loop over index lookups is always right, where a planner that thinks
#: the table small would scan all of it. (Autovacuum catches up eventually; these plans need not.)
_BY_KEY_PG = """
SELECT set_config('enable_seqscan', 'off', true) AS seqscan,
    set_config('enable_hashjoin', 'off', true) AS hash, set_config('enable_mergejoin', 'off', true) AS merge,
    set_config('jit', 'off', true) AS jit"""
#: PostgreSQL, for a batch's claims, in the same statement: walk the partial queue indexes in order
#: and stop at the first free rows, where the planner may otherwise sort every queued row for each
#: claim. (The few claimed rows are still sorted, which ``enable_sort`` prices so high that PostgreSQL
#: would compile the statement with its JIT, for a second, every time: hence no JIT either.)
#:
#: And the claim's commit does not wait for its WAL to reach the disk. A claim that a crash of the
#: database loses is harmless: the workunit is queued again as before it, and the worker's report of
#: it is refused (the lease is not its own), so the work runs again but never completes twice, and no
#: report or job is lost. Reports, which a worker must be able to rely on once answered, still wait.
_CLAIM_SETTINGS_PG = (
    _BY_KEY_PG
    + """, set_config('enable_sort', 'off', true) AS sort,
    set_config('enable_bitmapscan', 'off', true) AS bitmap,
    set_config('synchronous_commit', 'off', true) AS async_commit"""
)


def _group_params(group: str) -> dict[str, str]:
    """The bind values of the claim's client-group match (see ``comma_list_contains``)."""
    escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"grp": group, "grp_head": f"{escaped},%", "grp_tail": f"%,{escaped}", "grp_mid": f"%,{escaped},%"}


_ELIGIBLE = """
    (w.clientgroups = '' OR w.clientgroups = :grp OR w.clientgroups LIKE :grp_head ESCAPE '\\'
     OR w.clientgroups LIKE :grp_tail ESCAPE '\\' OR w.clientgroups LIKE :grp_mid ESCAPE '\\')"""
_NOT_SKIPPED = """
    AND NOT EXISTS (SELECT 1 FROM client_skip_work s WHERE s.client_id = :client AND s.workunit_id = w.id)"""
#: For a client that cannot run task containers: no workunit of a task with an image.
_NO_CONTAINERS = {
    "sqlite": """
    AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = w.task_id
        AND (COALESCE(json_extract(t.spec, '$.cmd.Dockerimage'), '') <> ''
             OR COALESCE(json_extract(t.spec, '$.cmd.dockerPull'), '') <> ''))""",
    "postgresql": """
    AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = w.task_id
        AND (COALESCE(t.spec->'cmd'->>'Dockerimage', '') <> ''
             OR COALESCE(t.spec->'cmd'->>'dockerPull', '') <> ''))""",
}
_QUEUE_ORDER = "ORDER BY w.priority DESC, w.submittime, w.id"
#: The states a claim picks from, each with its own partial index: preempted work, then queued work.
_FROM_PREEMPTED, _FROM_QUEUED = transitions.CLAIM_FROM


@functools.cache
def _claim_statement(
    dialect: str, filter_apps: bool, sized: bool, skips: bool, containers: bool = True
) -> Any:
    """The claim: the first eligible workunits, preempted work ahead of queued work (the state literals
    let the planner use each state's partial index).

    PostgreSQL: one statement claims up to ``:k`` workunits for the clients in ``:clients`` (who are
    alike: one group, the same apps and size limit; ``skips`` when the one client has workunits to
    skip; ``containers`` False when they cannot run task containers), in the clients' order, and
    also moves their tasks and jobs to in-progress, counts the checkouts on the clients and returns
    the workunits' document columns (and ``client_id``).
    SQLite (one writer at a time: no row is another claim's): the pick of up to ``:k`` workunits,
    in the order the clients get them; the caller leases them (``_lease_sqlite``).
    """
    eligible = _ELIGIBLE
    if skips:
        eligible += _NOT_SKIPPED
    if filter_apps:
        eligible += " AND w.app = ANY(:apps)" if dialect == "postgresql" else " AND w.app IN :apps"
    if sized:
        eligible += " AND w.input_size <= :available"
    if not containers:
        eligible += _NO_CONTAINERS["postgresql" if dialect == "postgresql" else "sqlite"]
    if dialect != "postgresql":
        pick = (
            "SELECT w.id, w.updatetime, w.priority, w.submittime, w.task_id, w.job_id, {} AS src"
            " FROM workunits w WHERE w.state = {} AND {} {} LIMIT :k"
        )
        preempted = pick.format(0, _FROM_PREEMPTED, eligible, _QUEUE_ORDER)
        queued = pick.format(1, _FROM_QUEUED, eligible, _QUEUE_ORDER)
        sql = (
            f"SELECT * FROM ({preempted}) UNION ALL SELECT * FROM ({queued})"
            " ORDER BY src, priority DESC, submittime, id LIMIT :k"
        )
        statement = text(sql)
        return statement.bindparams(bindparam("apps", expanding=True)) if filter_apps else statement
    job_fields = ", ".join(f"jobs.{name} AS job_{name}" for name in _JOB_FIELDS if name != "startedtime")
    columns = "w.id, w.updatetime, w.priority, w.submittime"
    sql = f"""
WITH p AS (
    SELECT {columns} FROM workunits w WHERE w.state = {_FROM_PREEMPTED} AND {eligible}
    {_QUEUE_ORDER} LIMIT :k FOR UPDATE SKIP LOCKED
), q AS (
    SELECT {columns} FROM workunits w WHERE w.state = {_FROM_QUEUED} AND {eligible}
    {_QUEUE_ORDER} LIMIT (SELECT :k - count(*) FROM p) FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT id, updatetime, row_number() OVER (ORDER BY src, priority DESC, submittime, id) AS n
    FROM (SELECT p.*, 0 AS src FROM p UNION ALL SELECT q.*, 1 AS src FROM q) AS picked
), pairs AS (
    SELECT numbered.id, numbered.updatetime, v.client
    FROM numbered JOIN unnest(CAST(:clients AS text[])) WITH ORDINALITY AS v(client, n) ON v.n = numbered.n
), claimed AS (
    UPDATE workunits SET {transitions.LEASE_SET_SQL}, client_id = pairs.client,
        checkout_time = :now, attempt = workunits.attempt + 1, updatetime = :now
    FROM pairs WHERE workunits.id = pairs.id AND {transitions.LEASE_GUARD_SQL}
    RETURNING workunits.id, workunits.job_id, workunits.task_id, workunits.rank, workunits.state,
        workunits.failed, workunits.attempt, workunits.client_id, workunits.checkout_time,
        workunits.computetime, workunits.part, workunits.checkpoint, pairs.updatetime AS queued_since
), t AS (
    UPDATE tasks SET {transitions.START_TASKS_SET_SQL}
    WHERE tasks.id IN (SELECT task_id FROM claimed) AND {transitions.START_TASKS_GUARD_SQL}
), j AS (
    UPDATE jobs SET {transitions.START_JOBS_SET_SQL},
        startedtime = COALESCE(NULLIF(jobs.startedtime, 0), :now), updatetime = :now
    WHERE jobs.id IN (SELECT job_id FROM claimed) AND {transitions.START_JOBS_GUARD_SQL}
    RETURNING jobs.id, jobs.startedtime
), c AS (
    UPDATE clients SET total_checkout = clients.total_checkout + 1, last_checkout = :now,
        last_heartbeat = :now
    FROM claimed WHERE clients.id = claimed.client_id
)
SELECT claimed.*, tasks.taskid, tasks.totalwork, tasks.spec, {job_fields},
    COALESCE(j.startedtime, jobs.startedtime) AS job_startedtime
FROM claimed JOIN tasks ON tasks.id = claimed.task_id JOIN jobs ON jobs.id = claimed.job_id
    LEFT JOIN j ON j.id = claimed.job_id"""
    return _psycopg_placeholders(sql)


#: SQLite: lease a picked workunit, then move its task and job to in-progress (``store.transitions``).
_LEASE = transitions.LEASE
_TASKS_IN_PROGRESS = transitions.START_TASKS
_JOBS_IN_PROGRESS = transitions.START_JOBS
_CLIENT_CHECKED_OUT = (
    update(clients)
    .where(clients.c.id == bindparam("client"))
    .values(
        total_checkout=clients.c.total_checkout + 1,
        last_checkout=bindparam("now"),
        last_heartbeat=bindparam("now"),
    )
)


#: A report's workunit (locked against concurrent reports and sweeps), its task's spec, and whether
#: the reporting client (``:client``) exists and on which node.
_REPORTED = (
    select(
        workunits,
        tasks.c.spec.label("task_spec"),
        clients.c.id.label("client_known"),
        clients.c.node_id.label("client_node"),
    )
    .join(tasks, tasks.c.id == workunits.c.task_id)
    .outerjoin(clients, clients.c.id == bindparam("client"))
    .where(workunits.c.id == bindparam("wu"))
    .with_for_update(of=workunits)
)
#: The same for every report of a batch (PostgreSQL), locked in id order so that batches never wait
#: on each other in a cycle; ``reporter`` says which report a row answers.
_REPORTED_PG = """
SELECT w.*, t.spec AS task_spec, r.client AS reporter, c.id AS client_known, c.node_id AS client_node
FROM unnest(%(wus)s::text[], %(clients)s::text[]) AS r(wu, client)
    JOIN workunits w ON w.id = r.wu
    JOIN tasks t ON t.id = w.task_id
    LEFT JOIN clients c ON c.id = r.client
ORDER BY w.id
FOR UPDATE OF w"""
#: ``done`` reports (SQLite, one per row of parameters): the workunit is done, the client counts it.
_DONE_WORKUNIT = transitions.FINISH
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
#: Each task has ``:n`` workunits less to do.
_DONE_TASK = (
    update(tasks)
    .where(tasks.c.id == bindparam("task"))
    .values(remainwork=tasks.c.remainwork - bindparam("n"), computetime=tasks.c.computetime + bindparam("ct"))
    .returning(tasks.c.id, tasks.c.remainwork, tasks.c.taskid)
)
#: PostgreSQL: the tasks of a batch's ``done`` reports, locked in id order (see ``_REPORTED_PG``).
_LOCK_TASKS_PG = "SELECT 1 FROM tasks WHERE id = ANY(%(tasks)s) ORDER BY id FOR UPDATE"
#: PostgreSQL: a batch's ``done`` reports in one statement: workunits, clients, and then the tasks.
_DONE_PG = f"""
WITH v AS (
    SELECT * FROM unnest(%(wus)s::text[], %(clients)s::text[], %(cts)s::bigint[], %(atts)s::int[])
        AS v(wu, client, ct, att)
), w AS (
    UPDATE workunits SET {transitions.FINISH_SET_SQL}, computetime = v.ct, updatetime = %(now)s,
        reported_by = v.client, reported_status = '{ReportStatus.DONE.value}', reported_attempt = v.att
    FROM v WHERE workunits.id = v.wu AND {transitions.FINISH_GUARD_SQL}
), c AS (
    UPDATE clients SET total_completed = total_completed + 1, last_failed = 0, last_report = %(now)s,
        last_heartbeat = %(now)s
    FROM v WHERE clients.id = v.client
)
UPDATE tasks SET remainwork = tasks.remainwork - a.n, computetime = tasks.computetime + a.ct
FROM unnest(%(tasks)s::text[], %(ns)s::int[], %(tcts)s::bigint[]) AS a(task, n, ct)
WHERE tasks.id = a.task
RETURNING tasks.id, tasks.remainwork, tasks.taskid"""


def _pg_run(
    conn: Connection, statements: Sequence[tuple[str, Any] | None], *, commit: bool = False
) -> list[list[Any]]:
    """Run statements (psycopg's placeholders) on psycopg directly, in the connection's transaction,
    without SQLAlchemy's per-statement work (psycopg prepares them once it has seen them a few times),
    and return each one's rows (attributes by column name; empty for a statement that returns none).
    With ``commit`` the transaction ends here; nothing may run on ``conn`` afterwards (SQLAlchemy's own
    commit finds nothing to do). On loopback, psycopg's pipeline mode saved no time and cost more CPU.
    """
    raw: Any = conn.connection.driver_connection
    sql = ""
    results: list[list[Any]] = []
    try:
        for statement in statements:
            if statement is not None:
                sql, params = statement
                with raw.cursor(row_factory=namedtuple_row) as cursor:
                    cursor.execute(sql, params)
                    results.append(cursor.fetchall() if cursor.description is not None else [])
        if commit:
            sql = "COMMIT"
            raw.commit()
        return results
    except psycopg.Error as exc:
        raise DBAPIError(sql, None, exc) from exc  # as SQLAlchemy would: ``retry_on_conflict`` sees it


def _pg_rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[Any]:
    return _pg_run(conn, [(sql, params)])[0]


def _rounds(operations: Sequence[Operation]) -> list[list[int]]:
    """The operations' indexes in rounds where each client appears at most once, each client's
    operations in the order given."""
    rounds: list[list[int]] = []
    last: dict[str, int] = {}
    for index, operation in enumerate(operations):
        n = last.get(operation.client_id, -1) + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(index)
        last[operation.client_id] = n
    return rounds


def _checks_out(operation: Operation, outcome: DispatchOutcome) -> bool:
    """Whether the operation asks for a checkout that its report, if any, allows."""
    return operation.checkout is not None and outcome.report in (None, "ok")


def _checked(request: ReportRequest) -> ReportRequest:
    """A report as the store takes it (decoded id, known logs only), or ``BadRequest``."""
    if request.status not in REPORT_STATUSES:
        raise BadRequest(
            f"status must be one of {', '.join(sorted(REPORT_STATUSES))}, not {request.status!r}"
        )
    if not request.client_id:
        raise BadRequest("missing client parameter")
    return dataclasses.replace(
        request,
        wu_id=decode_workunit_id(request.wu_id),
        logs={k: v for k, v in request.logs.items() if k in LOG_KINDS},
    )


def _repeat(wu: Any, request: ReportRequest) -> bool:
    """Whether ``request`` was applied already (True), may be applied (False), or is refused."""
    if wu is None:
        raise NotFound(f"no workunit found with id {request.wu_id}")
    if (wu.reported_by, wu.reported_status, wu.reported_attempt) == (
        request.client_id,
        request.status,
        wu.attempt,
    ):
        return True  # the same report again: already applied
    if wu.state != WorkunitState.CHECKOUT or wu.client_id != request.client_id:
        raise LeaseLost(f"workunit {request.wu_id} is not checked out by client {request.client_id}")
    if wu.client_known is None:
        raise ClientNotFound("Client not found")
    return False


def _value(result: T | Failure | None) -> T:
    if isinstance(result, DomainError | Refused):
        raise result
    assert result is not None
    return result


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

    # ---- checkout and reports, one worker request or a batch of them ----------------------------

    def checkout(self, client_id: str, available: int | None = None) -> dict[str, Any]:
        """Lease one eligible workunit to the client, or raise ``NoWork``.

        A client that already holds a lease gets the same workunit again: a checkout retried after a
        lost reply never hands out a second one.
        """
        operation = Operation(checkout=CheckoutRequest(client_id, available))
        return _value(self.dispatch([operation])[0].checkout)

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
        """Apply a client's report on the workunit it holds (``LeaseLost`` if it does not)."""
        request = ReportRequest(wu_id, client_id, status, computetime, dict(logs or {}), preemption)
        return _value(self.dispatch([Operation(report=request)])[0].report)

    def dispatch(
        self, operations: Sequence[Operation], answer: Callable[[int, DispatchOutcome], None] | None = None
    ) -> list[DispatchOutcome]:
        """Several workers' requests at once (a server takes together those that arrive while it is
        busy): every report in one transaction, then the checkouts, of operations without a report or
        whose report was accepted, in another. Each operation's refusal is its own; a database error
        fails them all, and nothing of the transaction it hit is kept. A client's operations are taken
        in turn, each in a round of its own.

        ``answer(index, outcome)`` is called as soon as an operation's outcome is final, before the
        batch is over: a report with nothing to check out once the reports are committed, a checkout
        once the claims are. When the reports leave a task with no workunit to do, the task is
        completed and its job moved on (dependents queued, the job completed) in a transaction of its
        own, after those answers: only the operations whose reports finished the task wait for it, and
        check out afterwards, so that a worker which reported a task's last workunit finds the work of
        the tasks that waited for it.
        """
        outcomes = [DispatchOutcome() for _ in operations]
        for indexes in _rounds(operations):
            reports = [(i, r) for i in indexes if (r := operations[i].report) is not None]
            finishing: dict[str, list[int]] = {}
            if reports:
                results, finished = self._report_batch([r for _, r in reports])
                for (i, _), report_result in zip(reports, results, strict=True):
                    outcomes[i].report = report_result
                finishing = {job: [reports[n][0] for n in ns] for job, ns in finished.items()}
            waiting = {i for ns in finishing.values() for i in ns}
            at_once = [i for i in indexes if i not in waiting]
            try:
                if answer is not None:  # those with nothing to check out, before the others' claims
                    for i in at_once:
                        if not _checks_out(operations[i], outcomes[i]):
                            answer(i, outcomes[i])
                self._checkouts(operations, outcomes, at_once)
                if answer is not None:
                    for i in at_once:
                        if _checks_out(operations[i], outcomes[i]):
                            answer(i, outcomes[i])
            finally:
                if finishing:  # even if those claims failed: the reports that finished the tasks are in
                    self._advance_jobs(sorted(finishing))
            if finishing:
                later = [i for i in indexes if i in waiting]
                self._checkouts(operations, outcomes, later)
                if answer is not None:
                    for i in later:
                        answer(i, outcomes[i])
        return outcomes

    def _checkouts(
        self, operations: Sequence[Operation], outcomes: list[DispatchOutcome], indexes: list[int]
    ) -> None:
        """The checkouts of these operations, unless their report was refused."""
        checkouts = [
            (i, c)
            for i in indexes
            if (c := operations[i].checkout) is not None and _checks_out(operations[i], outcomes[i])
        ]
        if checkouts:
            claims = self._checkout_batch([c for _, c in checkouts])
            for (i, _), claim in zip(checkouts, claims, strict=True):
                outcomes[i].checkout = claim

    def _advance_jobs(self, job_ids: Sequence[str]) -> None:
        """Jobs whose tasks the batch's reports finished. The reports are committed already: if this
        fails, the server's sweep (``JobStore.advance_finished``) completes the tasks later."""
        try:
            self._advance_jobs_now(job_ids)
        except SQLAlchemyError:
            log.exception("completing the tasks of job(s) %s failed; the sweep will", ", ".join(job_ids))

    @retry_on_conflict
    def _advance_jobs_now(self, job_ids: Sequence[str]) -> None:
        with self.db.write() as conn:
            now = now_us()
            for job_id in job_ids:
                lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)

    @retry_on_conflict
    def _checkout_batch(self, requests: Sequence[CheckoutRequest]) -> list[dict[str, Any] | Failure]:
        # Unless a claim below leases one, or the client is refused: one exception per request, as each
        # is raised in its own request.
        results: list[dict[str, Any] | Failure] = [NoWork("No eligible workunit found") for _ in requests]
        postgres = self.db.dialect == "postgresql"
        with self.db.write() as conn:
            now = now_us()  # after BEGIN IMMEDIATE: times follow commit order
            # The clients and the leases they may hold already, after (PostgreSQL) the settings for
            # the rest of the transaction.
            if postgres:
                ids = {"clients": [r.client_id for r in requests]}
                found = {
                    row.id: row for row in _pg_run(conn, [(_CLAIM_SETTINGS_PG, None), (_CLIENTS_PG, ids)])[-1]
                }
            else:
                ids = {"clients": sorted({r.client_id for r in requests})}
                found = {row.id: row for row in conn.execute(_CLIENTS, ids)}
            # Claimants alike (group, apps, size limit; a client with workunits to skip is alone)
            # are served by one claim.
            alike: dict[tuple[Any, ...], list[tuple[int, Any]]] = {}
            for n, request in enumerate(requests):
                client = found.get(request.client_id)
                if client is None:
                    results[n] = ClientNotFound("Client not found")
                elif client.deleted_at:
                    results[n] = ClientDeleted("Client deleted: the worker should stop")
                elif client.suspended:
                    results[n] = ClientSuspended("Client suspended")
                elif client.held is not None:
                    results[n] = self._document(conn, client.held)
                else:
                    apps = tuple(sorted(client.apps or []))
                    sized = request.available is not None and request.available >= 0
                    alone = client.id if client.skips else None
                    key = (
                        client.group_name,
                        None if "*" in apps else apps,
                        request.available if sized else None,
                        alone,
                        (client.profile or {}).get("containers") is True,
                    )
                    alike.setdefault(key, []).append((n, client))
            samples = hooks.Samples()
            for (group, apps, available, alone, containers), members in alike.items():
                clients_ids = [client.id for _, client in members]
                params = {
                    "now": now,
                    **_group_params(group),
                    "apps": list(apps or ()),
                    "available": available or 0,
                    "k": len(members),
                    "client": alone,
                }
                claim = _claim_statement(
                    self.db.dialect, apps is not None, available is not None, alone is not None, containers
                )
                if postgres:
                    leased = {
                        row.client_id: row
                        for row in _pg_rows(conn, claim, {**params, "clients": clients_ids})
                    }
                    claimed = {
                        client_id: (workunit_document(row), row.queued_since)
                        for client_id, row in leased.items()
                    }
                else:
                    claimed = _lease_sqlite(conn, conn.execute(claim, params).all(), clients_ids, now)
                for n, client in members:
                    if client.id in claimed:
                        document, queued_since = claimed[client.id]
                        log.debug("checkout: %s leased to client %s", document["id"], client.id)
                        samples.workunit_checked_out(
                            document["info"]["clientgroups"], client.node_id, queued_since, now
                        )
                        results[n] = document
            self._finish(conn, samples)
        return results

    def _finish(self, conn: Connection, samples: hooks.Samples) -> None:
        """The transaction's metric samples, written with one statement, and (PostgreSQL) the COMMIT."""
        if self.db.dialect == "postgresql":
            _pg_run(conn, [samples.insert()], commit=True)
        else:
            samples.write(conn)

    # ---- reading ------------------------------------------------------------------------------

    def get(self, wu_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._document(conn, decode_workunit_id(wu_id))

    def _document(self, conn: Connection, wu_id: str) -> dict[str, Any]:
        row = conn.execute(_DOCUMENT, {"wu": wu_id}).one_or_none()
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
    def _report_batch(
        self, requests: Sequence[ReportRequest]
    ) -> tuple[list[str | Failure], dict[str, list[int]]]:
        """Each report's result, and the jobs with a task these reports finished (no workunit left
        to do), each with the positions of the reports of that task."""
        results: list[str | Failure] = ["ok"] * len(requests)
        finished: dict[str, list[int]] = {}
        checked: list[tuple[int, ReportRequest]] = []
        for n, request in enumerate(requests):
            try:
                checked.append((n, _checked(request)))
            except (DomainError, Refused) as exc:
                results[n] = exc
        with self.db.write() as conn:
            samples = hooks.Samples()
            done = [(n, r) for n, r in checked if r.status == ReportStatus.DONE]
            if done:
                finished = self._report_done(conn, done, results, samples)
            for n, request in checked:
                if request.status != ReportStatus.DONE:
                    try:
                        self._report_other(conn, request)
                    except (DomainError, Refused) as exc:  # refused before anything was written
                        results[n] = exc
            self._finish(conn, samples)
        return results, finished

    def _report_done(
        self,
        conn: Connection,
        requests: Sequence[tuple[int, ReportRequest]],
        results: list[str | Failure],
        samples: hooks.Samples,
    ) -> dict[str, list[int]]:
        """``done`` reports: the workunits, their clients and their tasks in a few statements for the
        whole batch. Returns the jobs with a task left with no workunit to do, each with the
        positions of that task's reports: the caller completes the task, in a transaction of its
        own, so that this one (every report of the batch waits for it) stays short."""
        postgres = self.db.dialect == "postgresql"
        if postgres:
            params = {"wus": [r.wu_id for _, r in requests], "clients": [r.client_id for _, r in requests]}
            reported = _pg_run(conn, [(_BY_KEY_PG, None), (_REPORTED_PG, params)])[-1]
            rows = {(row.id, row.reporter): row for row in reported}
        else:
            rows = {}
            for _, r in requests:
                row = conn.execute(_REPORTED, {"wu": r.wu_id, "client": r.client_id}).one_or_none()
                if row is not None:
                    rows[(r.wu_id, r.client_id)] = row
        now = now_us()  # after the row locks: times follow commit order
        accepted: list[tuple[int, Any, ReportRequest]] = []
        for n, request in requests:
            wu: Any = rows.get((request.wu_id, request.client_id))
            try:
                if _repeat(wu, request):
                    continue
                declared = {o["filename"] for o in wu.task_spec.get("outputs", [])}
                missing = (
                    sorted(declared - outputs.of_workunit(conn, wu.task_id, wu.rank)) if declared else []
                )
                if missing:
                    # Downstream tasks would find nothing: refuse, so the worker reports a failure instead.
                    raise OutputsMissing(
                        f"workunit {wu.id} reported done without uploading outputs: {', '.join(missing)}"
                    )
            except (DomainError, Refused) as exc:
                results[n] = exc
                continue
            log.debug("report: %s done by client %s", wu.id, request.client_id)
            accepted.append((n, wu, request))
        if not accepted:
            return {}
        self._store_logs(conn, [(wu, r.logs) for _, wu, r in accepted], now)
        per_task: dict[str, list[int]] = {}
        for _, wu, request in accepted:
            counts = per_task.setdefault(wu.task_id, [0, 0])
            counts[0] += 1
            counts[1] += request.computetime
            samples.workunit_done(wu.clientgroups, wu.client_node)
        task_ids = sorted(per_task)
        if postgres:
            done = {
                "now": now,
                "wus": [wu.id for _, wu, _ in accepted],
                "clients": [r.client_id for _, _, r in accepted],
                "cts": [r.computetime for _, _, r in accepted],
                "atts": [wu.attempt for _, wu, _ in accepted],
                "tasks": task_ids,
                "ns": [per_task[t][0] for t in task_ids],
                "tcts": [per_task[t][1] for t in task_ids],
            }
            # The tasks' rows, which every report of their workunits updates, are locked last (in id
            # order), so they are held the shortest time.
            tasks_left = _pg_run(conn, [(_LOCK_TASKS_PG, done), (_DONE_PG, done)])[1]
        else:
            conn.execute(
                _DONE_WORKUNIT,
                [
                    {"wu": wu.id, "client": r.client_id, "ct": r.computetime, "att": wu.attempt, "now": now}
                    for _, wu, r in accepted
                ],
            )
            conn.execute(_DONE_CLIENT, [{"client": r.client_id, "now": now} for _, _, r in accepted])
            tasks_left = [
                conn.execute(_DONE_TASK, {"task": t, "n": per_task[t][0], "ct": per_task[t][1]}).one()
                for t in task_ids
            ]
        finished = {task.id for task in tasks_left if task.remainwork <= 0}
        by_job: dict[str, list[int]] = {}
        for n, wu, _ in accepted:
            if wu.task_id in finished:
                by_job.setdefault(wu.job_id, []).append(n)
        return by_job

    def _report_other(self, conn: Connection, request: ReportRequest) -> None:
        """A ``fail``, ``failed-permanent`` or ``preempted`` report (rare: one at a time)."""
        wu: Any = conn.execute(_REPORTED, {"wu": request.wu_id, "client": request.client_id}).one_or_none()
        now = now_us()  # after the row lock: times follow commit order
        if _repeat(wu, request):
            return
        client = conn.execute(select(clients).where(clients.c.id == request.client_id)).one()
        self._store_logs(conn, [(wu, request.logs)], now)
        log.debug("report: %s %s by client %s", wu.id, request.status, client.id)
        fenced = {"reported_by": client.id, "reported_status": request.status, "reported_attempt": wu.attempt}
        if request.status == ReportStatus.FAIL:
            self._fail(conn, wu, client, request.logs, fenced, now)
        elif request.status == ReportStatus.PREEMPTED:
            given = request.preemption or Preemption(outcome="none", detail="the worker gave no details")
            spot.preempt(conn, wu, client.id, given, now, fenced)
        else:
            self._failed_permanent(conn, wu, client, request.logs, fenced, now)

    def _store_logs(
        self, conn: Connection, reported: Sequence[tuple[Any, Mapping[str, str]]], now: int
    ) -> None:
        rows = [
            {"workunit_id": wu.id, "kind": kind, "job_id": wu.job_id, "content": content, "updatetime": now}
            for wu, logs in reported
            for kind, content in logs.items()
        ]
        if not rows:
            return
        conn.execute(
            delete(workunit_logs).where(
                tuple_(workunit_logs.c.workunit_id, workunit_logs.c.kind).in_(
                    [(row["workunit_id"], row["kind"]) for row in rows]
                )
            )
        )
        conn.execute(insert(workunit_logs), rows)

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
        hooks.workunit_failed(conn, wu, job_failed=failed >= limit)
        conn.execute(insert(client_skip_work).values(client_id=client.id, workunit_id=wu.id))
        # The failing workunit moves first: a client suspended for this failure gives back only the
        # rest of what it holds.
        if failed < limit:
            transitions.requeue_failed(
                conn,
                wu.id,
                {
                    "failed": failed,
                    "client_id": None,
                    "updatetime": now,
                    # A retry after a failure starts clean: the checkpoint may hold what made it fail.
                    "checkpoint": null(),
                    **fenced,
                },
            )
            self._count_client_failure(conn, client, now)
            Database.work_queued(conn)
            lifecycle.record_event(
                conn,
                wu.job_id,
                lifecycle.EVENT_WORK_REQUEUED,
                f"workunit {wu.id} failed on client {client.id} ({failed}/{limit}); re-queued",
                now,
            )
            return
        transitions.hold_failed(conn, wu.id, {"failed": failed, "updatetime": now, **fenced})
        self._count_client_failure(conn, client, now)
        lifecycle.record_event(
            conn, wu.job_id, lifecycle.EVENT_WORK_FAILED, f"workunit {wu.id} failed {failed} time(s)", now
        )
        notes = failnotes.failed_out_notes(wu.id, wu.job_id, failed, logs.get("worknotes", ""))
        error = _job_error(wu, client.id, logs, notes, JobState.SUSPEND.value)
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
        transitions.fail_permanently(conn, wu.id, {"failed": wu.failed + 1, "updatetime": now, **fenced})
        hooks.workunit_failed(conn, wu, job_failed=True)
        self._count_client_failure(conn, client, now)
        error = _job_error(wu, client.id, logs, "exit code 42 encountered", JobState.FAILED_PERMANENT.value)
        transitions.fail_task_permanently(conn, wu.task_id)
        # The job fails with it, and the rest of its work is held.
        suspend_job(conn, wu.job_id, error, now, state=JobState.FAILED_PERMANENT)
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
            # The failing workunit is handled by the caller; anything else it holds goes back.
            requeue_client_work(conn, client.id, now, reason="client suspended after repeated failures")
            if transitions.suspend_client(conn, client.id, "MAX_CLIENT_FAILURE on client reached", values):
                return
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
    held = transitions.requeue_leases(conn, [workunits.c.client_id == client_id], now)
    for row in held:
        lifecycle.record_event(
            conn, row.job_id, lifecycle.EVENT_WORK_REQUEUED, f"workunit {row.id} re-queued: {reason}", now
        )
    if held:
        Database.work_queued(conn)
    return len(held)


def _lease_sqlite(
    conn: Connection, picked: Sequence[Any], client_ids: Sequence[str], now: int
) -> dict[str, tuple[dict[str, Any], int]]:
    """SQLite: lease the picked workunits to the clients, in order (there may be fewer workunits),
    move their tasks and jobs to in-progress and count the checkouts. Returns each served client's
    workunit document and since when that workunit had waited."""
    pairs = list(zip(picked, client_ids, strict=False))
    if not pairs:
        return {}
    conn.execute(_LEASE, [{"wu": row.id, "client": client_id, "now": now} for row, client_id in pairs])
    conn.execute(_TASKS_IN_PROGRESS, {"tasks": sorted({row.task_id for row, _ in pairs})})
    conn.execute(_JOBS_IN_PROGRESS, {"jobs": sorted({row.job_id for row, _ in pairs}), "now": now})
    conn.execute(_CLIENT_CHECKED_OUT, [{"client": client_id, "now": now} for _, client_id in pairs])
    documents = {row.id: row for row in conn.execute(_DOCUMENTS, {"ids": [row.id for row, _ in pairs]})}
    return {client_id: (workunit_document(documents[row.id]), row.updatetime) for row, client_id in pairs}


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


__all__ = [
    "CheckoutRequest",
    "DispatchOutcome",
    "FailureLimits",
    "LeaseLost",
    "NoWork",
    "Operation",
    "ReportRequest",
    "WorkStore",
    "requeue_client_work",
    "requeued_state",
]
