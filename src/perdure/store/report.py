"""Reports: ``done`` reports of a batch in a few statements, and the failure rules of the rest.

A report is accepted only from the client holding the lease for the current attempt, so work that
was re-queued and run elsewhere can never be completed twice; an exact repeat of an accepted report
answers "ok" again, so a worker retrying after a lost reply does no harm.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    insert,
    null,
    select,
    text,
    update,
)

from perdure.errors import BadRequest, DomainError
from perdure.protocol import (
    ClientNotFound,
    OutputsMissing,
    Refused,
)
from perdure.spot.records import Preemption
from perdure.states import JobState, ReportStatus, WorkunitState
from perdure.store import failnotes, hooks, lifecycle, outputs, pgdirect, spot, sqlitedirect, transitions
from perdure.store.checkout import CLIENTS_AFTER_REPORTS_PG
from perdure.store.database import Database, retry_on_conflict
from perdure.store.jobs import suspend_job
from perdure.store.requeue import requeue_client_work
from perdure.store.schema import client_skip_work, clients, jobs, tasks, workunits
from perdure.store.workrequests import (
    LOG_KINDS,
    REPORT_STATUSES,
    Failure,
    FailureLimits,
    ReportRequest,
    decode_workunit_id,
    held_lease,
)
from perdure.timeutil import now_us

log = logging.getLogger("perdure.work")

#: AWE keeps the last 5,000 characters of stderr in the job's ``error.apperror``.
APPERROR_CHARS = 5000

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


@functools.cache
def _reported_sqlite(k: int) -> str:
    """The same for ``k`` reports of a batch (SQLite, run by ``sqlitedirect``), in one statement
    instead of ``k``: ``:wu<n>`` and ``:client<n>``; ``reporter`` says which report a row answers."""
    pairs = ", ".join(f"(:wu{n}, :client{n})" for n in range(k))
    return f"""WITH r(wu, client) AS (VALUES {pairs})
SELECT w.*, t.spec AS task_spec, r.client AS reporter, c.id AS client_known, c.node_id AS client_node
FROM r JOIN workunits w ON w.id = r.wu JOIN tasks t ON t.id = w.task_id
    LEFT JOIN clients c ON c.id = r.client"""


#: The JSON columns of ``_reported_sqlite``'s rows.
_REPORTED_JSON = frozenset({"task_spec", "part", "checkpoint"})


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
#: PostgreSQL: a batch's ``done`` reports in one statement (one round trip, with its ``BEGIN`` and the
#: claim's clients read): each reported workunit locked in id order (so that batches never wait on each
#: other in a cycle) and read as the reporter sees it; those it accepts (the reporter holds the lease,
#: is a known client, and the workunit's task declares no output left to upload; not the same report
#: again) done, with their logs, their clients' counts and, last, their tasks (locked first in id order
#: when there are several, ``tl``; a single row lock cannot be taken out of order).
#: Each reported row comes back (``reporter``: the report it answers) with ``done`` (accepted here),
#: ``missing`` (declared outputs not uploaded) and ``task_left`` (its task's workunits left to do);
#: ``store.report`` tells the refused their reason from the same row. A workunit's ``updatetime``
#: never goes back (``now`` is taken before its row lock).
_DONE_PG = f"""
WITH r AS (
    SELECT w.id, w.task_id, w.job_id, w.state, w.client_id, w.attempt, w.clientgroups,
        w.reported_by, w.reported_status, w.reported_attempt,
        r.client AS reporter, r.ct, c.id AS client_known, c.node_id AS client_node,
        ARRAY(SELECT DISTINCT o->>'filename' FROM jsonb_array_elements(COALESCE(t.spec->'outputs', '[]'))
            AS o WHERE NOT EXISTS (SELECT 1 FROM outputs x WHERE x.task_id = w.task_id AND x.rank = w.rank
                AND x.filename = o->>'filename')) AS missing
    FROM unnest(%(wus)s::text[], %(clients)s::text[], %(cts)s::bigint[]) AS r(wu, client, ct)
        JOIN workunits w ON w.id = r.wu
        JOIN tasks t ON t.id = w.task_id
        LEFT JOIN clients c ON c.id = r.client
    ORDER BY w.id
    FOR UPDATE OF w
), ok AS (
    SELECT * FROM r
    WHERE r.state = '{WorkunitState.CHECKOUT.value}' AND r.client_id = r.reporter
        AND r.client_known IS NOT NULL AND cardinality(r.missing) = 0
        AND (r.reported_by, r.reported_status, r.reported_attempt)
            IS DISTINCT FROM (r.reporter, '{ReportStatus.DONE.value}', r.attempt)
), w AS (
    UPDATE workunits SET {transitions.FINISH_SET_SQL}, computetime = ok.ct,
        updatetime = GREATEST(%(now)s, workunits.updatetime), reported_by = ok.reporter,
        reported_status = '{ReportStatus.DONE.value}', reported_attempt = ok.attempt
    FROM ok WHERE workunits.id = ok.id AND {transitions.FINISH_GUARD_SQL}
    RETURNING workunits.id, workunits.job_id, ok.task_id, ok.reporter, ok.ct
), l AS (
    INSERT INTO workunit_logs (workunit_id, kind, job_id, content, updatetime)
    SELECT w.id, l.kind, w.job_id, l.content, %(now)s::bigint
    FROM unnest(%(log_wus)s::text[], %(log_clients)s::text[], %(log_kinds)s::text[], %(log_contents)s::text[])
        AS l(wu, client, kind, content)
        JOIN w ON w.id = l.wu AND w.reporter = l.client
    ON CONFLICT (workunit_id, kind) DO UPDATE SET job_id = excluded.job_id, content = excluded.content,
        updatetime = excluded.updatetime
), c AS (
    UPDATE clients SET total_completed = total_completed + 1, last_failed = 0, last_report = %(now)s,
        last_heartbeat = %(now)s
    FROM w WHERE clients.id = w.reporter
), a AS (
    SELECT w.task_id, count(*)::int AS n, sum(w.ct)::bigint AS ct FROM w GROUP BY w.task_id
), tl AS (
    SELECT tasks.id FROM tasks WHERE tasks.id IN (SELECT a.task_id FROM a) AND (SELECT count(*) FROM a) > 1
    ORDER BY tasks.id FOR UPDATE
), t AS (
    UPDATE tasks SET remainwork = tasks.remainwork - a.n, computetime = tasks.computetime + a.ct
    FROM a WHERE tasks.id = a.task_id AND (SELECT count(*) FROM tl) >= 0
    RETURNING tasks.id, tasks.remainwork
)
SELECT r.id, r.task_id, r.job_id, r.state, r.client_id, r.attempt, r.clientgroups, r.reported_by,
    r.reported_status, r.reported_attempt, r.reporter, r.client_known, r.client_node, r.missing,
    w.id IS NOT NULL AS done, t.remainwork AS task_left
FROM r LEFT JOIN w ON w.id = r.id AND w.reporter = r.reporter LEFT JOIN t ON t.id = r.task_id"""


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
    if wu is not None and (wu.reported_by, wu.reported_status, wu.reported_attempt) == (
        request.client_id,
        request.status,
        wu.attempt,
    ):
        return True  # the same report again: already applied
    held_lease(wu, request.wu_id, request.client_id)
    if wu.client_known is None:
        raise ClientNotFound("Client not found")
    return False


@retry_on_conflict
def report_batch(
    db: Database, limits: FailureLimits, requests: Sequence[ReportRequest]
) -> tuple[list[str | Failure], dict[str, list[int]]]:
    """The reports in one transaction of their own: see ``apply_reports``."""
    with db.dispatch() as conn:
        samples = hooks.Samples()
        outcome = apply_reports(conn, db.dialect, limits, requests, samples)
        sqlitedirect.finish(conn, db.dialect, samples)
    return outcome


def apply_reports(
    conn: Connection,
    dialect: str,
    limits: FailureLimits,
    requests: Sequence[ReportRequest],
    samples: hooks.Samples,
) -> tuple[list[str | Failure], dict[str, list[int]]]:
    """Each report's result, and the jobs with a task these reports finished (no workunit left
    to do), each with the positions of the reports of that task; in the caller's transaction, which
    writes ``samples`` and commits."""
    results: list[str | Failure] = ["ok"] * len(requests)
    finished: dict[str, list[int]] = {}
    checked: list[tuple[int, ReportRequest]] = []
    for n, request in enumerate(requests):
        try:
            checked.append((n, _checked(request)))
        except (DomainError, Refused) as exc:
            results[n] = exc
    done = [(n, r) for n, r in checked if r.status == ReportStatus.DONE]
    if done:
        only_done = len(done) == len(checked)
        finished = _report_done(conn, dialect == "postgresql", done, results, samples, only_done)
    for n, request in checked:
        if request.status != ReportStatus.DONE:
            try:
                _report_other(conn, limits, request)
            except (DomainError, Refused) as exc:  # refused before anything was written
                results[n] = exc
    return results, finished


def _report_done(
    conn: Connection,
    postgres: bool,
    requests: Sequence[tuple[int, ReportRequest]],
    results: list[str | Failure],
    samples: hooks.Samples,
    only_done: bool = False,
) -> dict[str, list[int]]:
    """``done`` reports: the workunits, their clients and their tasks in a few statements for the
    whole batch. Returns the jobs with a task left with no workunit to do, each with the
    positions of that task's reports: the caller completes the task, in a transaction of its
    own, so that this one (every report of the batch waits for it) stays short."""
    if postgres:
        return _report_done_pg(conn, requests, results, samples, only_done)
    keys: dict[str, str] = {}
    for n, (_, r) in enumerate(requests):
        keys[f"wu{n}"], keys[f"client{n}"] = r.wu_id, r.client_id
    reported = sqlitedirect.rows(conn, _reported_sqlite(len(requests)), keys, _REPORTED_JSON)
    rows = {(row.id, row.reporter): row for row in reported}
    now = now_us()  # after the row locks: times follow commit order
    accepted: list[tuple[int, Any, ReportRequest]] = []
    for n, request in requests:
        wu: Any = rows.get((request.wu_id, request.client_id))
        try:
            if _repeat(wu, request):
                continue
            declared = {o["filename"] for o in wu.task_spec.get("outputs", [])}
            missing = sorted(declared - outputs.of_workunit(conn, wu.task_id, wu.rank)) if declared else []
            if missing:
                raise _outputs_missing(wu.id, missing)
        except (DomainError, Refused) as exc:
            results[n] = exc
            continue
        log.debug("report: %s done by client %s", wu.id, request.client_id)
        accepted.append((n, wu, request))
    if not accepted:
        return {}
    _store_logs(conn, _log_rows([(wu, r.logs) for _, wu, r in accepted]), now, direct=True)
    per_task: dict[str, list[int]] = {}
    for _, wu, request in accepted:
        counts = per_task.setdefault(wu.task_id, [0, 0])
        counts[0] += 1
        counts[1] += request.computetime
        samples.workunit_done(wu.clientgroups, wu.client_node)
    sqlitedirect.many(
        conn,
        sqlitedirect.compiled(_DONE_WORKUNIT),
        [
            {"wu": wu.id, "client": r.client_id, "ct": r.computetime, "att": wu.attempt, "now": now}
            for _, wu, r in accepted
        ],
    )
    sqlitedirect.many(
        conn,
        sqlitedirect.compiled(_DONE_CLIENT),
        [{"client": r.client_id, "now": now} for _, _, r in accepted],
    )
    done_task = sqlitedirect.compiled(_DONE_TASK)
    tasks_left = [
        sqlitedirect.rows(conn, done_task, {"task": t, "n": per_task[t][0], "ct": per_task[t][1]})[0]
        for t in sorted(per_task)
    ]
    finished = {task.id for task in tasks_left if task.remainwork <= 0}
    by_job: dict[str, list[int]] = {}
    for n, wu, _ in accepted:
        if wu.task_id in finished:
            by_job.setdefault(wu.job_id, []).append(n)
    return by_job


def _outputs_missing(wu_id: str, missing: Sequence[str]) -> OutputsMissing:
    """Downstream tasks would find nothing: the report is refused, so the worker reports a failure."""
    return OutputsMissing(f"workunit {wu_id} reported done without uploading outputs: {', '.join(missing)}")


def _report_done_pg(
    conn: Connection,
    requests: Sequence[tuple[int, ReportRequest]],
    results: list[str | Failure],
    samples: hooks.Samples,
    only_done: bool,
) -> dict[str, list[int]]:
    """``_report_done`` on PostgreSQL: one statement (``_DONE_PG``) checks and applies the batch's
    reports, and the refused are told why from the rows it returns: one round trip, where reading
    the workunits first and then writing took two.

    When the batch holds ``done`` reports only (``only_done``), what a claim of the next workunits
    (``&next``) reads of their clients goes in the same round trip, for the claim to find
    (``pgdirect.keep_clients``); it also sets the claim's plans, which no statement of these
    reports needs."""
    now = now_us()
    logs = {(r.wu_id, r.client_id, kind): content for _, r in requests for kind, content in r.logs.items()}
    params = {
        "now": now,
        "wus": [r.wu_id for _, r in requests],
        "clients": [r.client_id for _, r in requests],
        "cts": [r.computetime for _, r in requests],
        "log_wus": [wu_id for wu_id, _, _ in logs],
        "log_clients": [client_id for _, client_id, _ in logs],
        "log_kinds": [kind for _, _, kind in logs],
        "log_contents": list(logs.values()),
    }
    statements: list[tuple[str, Any] | None] = [(_DONE_PG, params)]
    if only_done:
        reporters = sorted({r.client_id for _, r in requests})
        statements.append((CLIENTS_AFTER_REPORTS_PG, {"clients": reporters}))
    found = pgdirect.pg_run(conn, statements)
    if only_done:
        pgdirect.keep_clients(conn, found.pop())
    rows = {(row.id, row.reporter): row for row in found[0]}
    by_job: dict[str, list[int]] = {}
    for n, request in requests:
        wu: Any = rows.get((request.wu_id, request.client_id))
        if wu is not None and wu.done:
            log.debug("report: %s done by client %s", wu.id, request.client_id)
            samples.workunit_done(wu.clientgroups, wu.client_node)
            if wu.task_left <= 0:
                by_job.setdefault(wu.job_id, []).append(n)
            continue
        try:
            if _repeat(wu, request):
                continue
            # The one refusal left that the statement makes (``_DONE_PG``'s ``ok``).
            raise _outputs_missing(wu.id, sorted(set(wu.missing)))
        except (DomainError, Refused) as exc:
            results[n] = exc
    return by_job


def _report_other(conn: Connection, limits: FailureLimits, request: ReportRequest) -> None:
    """A ``fail``, ``failed-permanent`` or ``preempted`` report (rare: one at a time)."""
    wu: Any = conn.execute(_REPORTED, {"wu": request.wu_id, "client": request.client_id}).one_or_none()
    now = now_us()  # after the row lock: times follow commit order
    if _repeat(wu, request):
        return
    client = conn.execute(select(clients).where(clients.c.id == request.client_id)).one()
    _store_logs(conn, _log_rows([(wu, request.logs)]), now)
    log.debug("report: %s %s by client %s", wu.id, request.status, client.id)
    fenced = {"reported_by": client.id, "reported_status": request.status, "reported_attempt": wu.attempt}
    if request.status == ReportStatus.FAIL:
        _fail(conn, limits, wu, client, request.logs, fenced, now)
    elif request.status == ReportStatus.PREEMPTED:
        given = request.preemption or Preemption(outcome="none", detail="the worker gave no details")
        spot.preempt(conn, wu, client.id, given, now, fenced)
    else:
        _failed_permanent(conn, limits, wu, client, request.logs, fenced, now)


#: A report's logs replace those of an earlier report of the workunit (an earlier attempt's), each
#: ``(workunit, kind)`` in one statement, one row per set of parameters (on PostgreSQL the ``done``
#: reports' logs are part of ``_DONE_PG``).
_STORE_LOG = text(
    "INSERT INTO workunit_logs (workunit_id, kind, job_id, content, updatetime)"
    " VALUES (:workunit_id, :kind, :job_id, :content, :updatetime)"
    " ON CONFLICT (workunit_id, kind) DO UPDATE SET job_id = excluded.job_id,"
    " content = excluded.content, updatetime = excluded.updatetime"
)


def _log_rows(reported: Sequence[tuple[Any, Mapping[str, str]]]) -> dict[tuple[str, str], tuple[str, str]]:
    """The reports' logs as ``(workunit, kind) -> (job, content)``: the last report's where a batch
    held two of one workunit."""
    return {(wu.id, kind): (wu.job_id, content) for wu, logs in reported for kind, content in logs.items()}


def _store_logs(
    conn: Connection, rows: Mapping[tuple[str, str], tuple[str, str]], now: int, *, direct: bool = False
) -> None:
    """The logs, in one executemany (``direct``: SQLite's, on the raw connection)."""
    if rows:
        params = [
            {"workunit_id": wu_id, "kind": kind, "job_id": job_id, "content": content, "updatetime": now}
            for (wu_id, kind), (job_id, content) in rows.items()
        ]
        if direct:
            sqlitedirect.many(conn, _STORE_LOG.text, params)
        else:
            conn.execute(_STORE_LOG, params)


def _fail(
    conn: Connection,
    limits: FailureLimits,
    wu: Any,
    client: Any,
    logs: Mapping[str, str],
    fenced: dict[str, Any],
    now: int,
) -> None:
    """A ``fail`` report: the workunit is queued again, or held with its job once it has failed as
    often as allowed."""
    failed = wu.failed + 1
    noretry = bool(
        conn.execute(select(jobs.c.info).where(jobs.c.id == wu.job_id)).scalar_one().get("noretry")
    )
    limit = 1 if noretry else limits.max_work_failure
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
        _count_client_failure(conn, limits, client, now)
        Database.work_queued(conn)
        lifecycle.record_event(
            conn,
            wu.job_id,
            lifecycle.EVENT_WORK_REQUEUED,
            f"workunit {wu.id} failed on client {client.id} ({failed}/{limit}); re-queued",
            now,
        )
        return
    notes = failnotes.failed_out_notes(wu.id, wu.job_id, failed, logs.get("worknotes", ""))
    _stop_job(conn, limits, wu, client, logs, fenced, now, state=JobState.SUSPEND, notes=notes)


def _failed_permanent(
    conn: Connection,
    limits: FailureLimits,
    wu: Any,
    client: Any,
    logs: Mapping[str, str],
    fenced: dict[str, Any],
    now: int,
) -> None:
    """A ``failed-permanent`` report (exit 42): the workunit, its task and its job fail for good."""
    hooks.workunit_failed(conn, wu, job_failed=True)
    notes = "exit code 42 encountered"
    _stop_job(conn, limits, wu, client, logs, fenced, now, state=JobState.FAILED_PERMANENT, notes=notes)


#: How a failure that stops its job moves the workunit, and the event it leaves, by the job's state.
_STOPPING: dict[JobState, tuple[Callable[[Connection, str, dict[str, Any]], object], str, str]] = {
    JobState.SUSPEND: (
        transitions.hold_failed,
        lifecycle.EVENT_WORK_FAILED,
        "workunit {id} failed {failed} time(s)",
    ),
    JobState.FAILED_PERMANENT: (
        transitions.fail_permanently,
        lifecycle.EVENT_WORK_PERMANENT,
        "workunit {id} failed permanently (exit 42)",
    ),
}


def _stop_job(
    conn: Connection,
    limits: FailureLimits,
    wu: Any,
    client: Any,
    logs: Mapping[str, str],
    fenced: dict[str, Any],
    now: int,
    *,
    state: JobState,
    notes: str,
) -> None:
    """A failure that stops the job (``state``: suspended, or failed permanently, with its task): the
    workunit is held, the client's failure counted, and the job held with its error (the last of the
    stderr, ``notes``) and the rest of its work."""
    move, event, message = _STOPPING[state]
    failed = wu.failed + 1
    move(conn, wu.id, {"failed": failed, "updatetime": now, **fenced})
    _count_client_failure(conn, limits, client, now)
    lifecycle.record_event(conn, wu.job_id, event, message.format(id=wu.id, failed=failed), now)
    if state == JobState.FAILED_PERMANENT:
        transitions.fail_task_permanently(conn, wu.task_id)
    suspend_job(conn, wu.job_id, _job_error(wu, client.id, logs, notes, state.value), now, state=state)


def _count_client_failure(conn: Connection, limits: FailureLimits, client: Any, now: int) -> None:
    consecutive = client.last_failed + 1
    values: dict[str, Any] = {
        "total_failed": clients.c.total_failed + 1,
        "last_failed": consecutive,
        "last_report": now,
        "last_heartbeat": now,
    }
    limit = limits.max_client_failure
    if limit > 0 and consecutive >= limit and not client.suspended:
        # The failing workunit is handled by the caller; anything else it holds goes back.
        requeue_client_work(conn, client.id, now, reason="client suspended after repeated failures")
        if transitions.suspend_client(conn, client.id, "MAX_CLIENT_FAILURE on client reached", values):
            return
    conn.execute(update(clients).where(clients.c.id == client.id).values(**values))


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
