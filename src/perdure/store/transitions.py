"""Every state change of a job, task, workunit and client: the only code that writes a state column.

Each function is a named move of ``perdure.states``' machines and checks it against the table: a move
of one row updates it only ``WHERE state IN (<the states that may become the target>)`` and raises
``IllegalTransition`` if the row was not in one of them; a move of many rows at once (holding a job's
work, re-queueing a lost client's leases) is the same guarded statement, so set-based SQL stays
set-based and the database itself refuses a move the table does not allow. The dispatch hot path
(``store.checkout``, ``store.report``) writes through the statements and SQL fragments made here
(``LEASE``, ``START_TASKS`` …), built once, so the guard costs no round trip.

Rows are created in ``INITIAL_STATES`` (the inserts live with the code that builds the rows) and
removed only whole (a reset deletes a task's workunits, ``?full`` a job).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    not_,
    or_,
    text,
    update,
)

from perdure.states import (
    LIVE_TASK_STATES,
    LIVE_WORKUNIT_STATES,
    ClientState,
    IllegalTransition,
    JobState,
    ReportStatus,
    TaskState,
    WorkunitState,
    _Machine,
    may_become,
)
from perdure.store import pgdirect
from perdure.store.schema import clients, jobs, tasks, workunits

_W, _T, _J, _C = WorkunitState, TaskState, JobState, ClientState


def _values(states: Iterable[_Machine]) -> list[str]:
    return sorted(s.value for s in states)


def guard(column: Any, target: _Machine, among: Iterable[_Machine] | None = None) -> ColumnElement[bool]:
    """``column IN (<states that may become target>)``, or only those of ``among`` (each of which must
    be allowed: a bug otherwise, caught when the statement is built)."""
    allowed = may_become(target)
    if among is not None:
        chosen = frozenset(among)
        for source in chosen:
            source.check(target)
        allowed = chosen
    # The states are written into the statement (they are constants), so that the statements built
    # once here can run with many rows of parameters.
    return column.in_([literal_column(f"'{v}'") for v in _values(allowed)])  # type: ignore[no-any-return]


def guard_sql(column: str, target: _Machine, among: Iterable[_Machine] | None = None) -> str:
    """``guard`` for hand-written SQL (the PostgreSQL hot path): ``column IN ('a', 'b')``."""
    allowed = may_become(target) if among is None else frozenset(among)
    for source in allowed:
        source.check(target)
    return f"{column} IN ({', '.join(repr(v) for v in _values(allowed))})"


def literal(source: _Machine, target: _Machine) -> str:
    """A state's SQL literal, checked to be allowed to become ``target`` (a claim's pick)."""
    source.check(target)
    return f"'{source.value}'"


def _move_one(conn: Connection, table: Any, key: Any, target: _Machine, values: Mapping[str, Any]) -> None:
    """Move one row, refusing (``IllegalTransition``) if it is not in a state that may become ``target``."""
    result = conn.execute(
        update(table)
        .where(table.c.id == key, guard(table.c.state, target))
        .values(state=target.value, **values)
    )
    if result.rowcount == 0:
        current = conn.execute(
            table.select().with_only_columns(table.c.state).where(table.c.id == key)
        ).scalar()
        if current is None:
            raise IllegalTransition(f"no {table.name[:-1]} {key!r} to move to {target.value!r}")
        type(target)(current).check(target)  # raises: the row is in a state that may not move
        raise IllegalTransition(f"{table.name[:-1]} {key!r} changed while moving to {target.value!r}")


# ---- workunits ------------------------------------------------------------------------------------

#: Lease a picked workunit (``:wu``, one per row of parameters) to ``:client`` (SQLite's claims).
LEASE = (
    update(workunits)
    .where(workunits.c.id == bindparam("wu"), guard(workunits.c.state, _W.CHECKOUT))
    .values(
        state=_W.CHECKOUT.value,
        client_id=bindparam("client"),
        checkout_time=bindparam("now"),
        attempt=workunits.c.attempt + 1,
        updatetime=bindparam("now"),
    )
)
#: The same in PostgreSQL's claim: the SET list and the guard on the ``workunits`` rows it updates.
LEASE_SET_SQL = f"state = '{_W.CHECKOUT.value}'"
LEASE_GUARD_SQL = guard_sql("workunits.state", _W.CHECKOUT)
#: The two states a claim picks from (each with its own partial index): preempted work first.
CLAIM_FROM = (literal(_W.PREEMPTED, _W.CHECKOUT), literal(_W.QUEUED, _W.CHECKOUT))

#: A ``done`` report (one per row of parameters): the lease holder's workunit is done.
FINISH = (
    update(workunits)
    .where(workunits.c.id == bindparam("wu"), guard(workunits.c.state, _W.DONE))
    .values(
        state=_W.DONE.value,
        computetime=bindparam("ct"),
        updatetime=bindparam("now"),
        reported_by=bindparam("client"),
        reported_status=ReportStatus.DONE.value,
        reported_attempt=bindparam("att"),
    )
)
FINISH_SET_SQL = f"state = '{_W.DONE.value}'"
FINISH_GUARD_SQL = guard_sql("workunits.state", _W.DONE)


def requeue_failed(conn: Connection, wu_id: str, values: Mapping[str, Any]) -> None:
    """A ``fail`` under the failure limit: back in the queue."""
    _move_one(conn, workunits, wu_id, _W.QUEUED, values)


def hold_failed(conn: Connection, wu_id: str, values: Mapping[str, Any]) -> None:
    """A ``fail`` at the failure limit: held (its job is suspended with it)."""
    _move_one(conn, workunits, wu_id, _W.SUSPEND, values)


def fail_permanently(conn: Connection, wu_id: str, values: Mapping[str, Any]) -> None:
    """A ``failed-permanent`` report (exit 42)."""
    _move_one(conn, workunits, wu_id, _W.FAILED_PERMANENT, values)


def preempt(conn: Connection, wu_id: str, values: Mapping[str, Any]) -> None:
    """A ``preempted`` report: back, ahead of new work, to be restored elsewhere."""
    _move_one(conn, workunits, wu_id, _W.PREEMPTED, values)


def requeued_state() -> Any:
    """Where work taken from a lost or leaving client goes: ahead of new work if it has a checkpoint to
    be restored from (it was preempted without notice), else back in the queue."""
    _W.CHECKOUT.check(_W.PREEMPTED)
    _W.CHECKOUT.check(_W.QUEUED)
    return case(
        (workunits.c.checkpoint.is_not(None), _W.PREEMPTED.value),
        else_=_W.QUEUED.value,
    )


def requeue_leases(conn: Connection, where: Sequence[ColumnElement[bool]], now: int) -> list[Any]:
    """Take back the leases ``where`` selects (a client lost, suspended, deleted or restarted): each goes
    back to the queue (or ahead of it, with a checkpoint). Returns their (id, job_id)."""
    return list(
        conn.execute(
            update(workunits)
            .where(*where, workunits.c.state == _W.CHECKOUT.value)
            .values(state=requeued_state(), client_id=None, updatetime=now)
            .returning(workunits.c.id, workunits.c.job_id)
        ).all()
    )


def hold_job_work(conn: Connection, job_id: str, now: int) -> None:
    """Hold every workunit of a job that still wants or holds a worker (the job is suspended, failed or
    deleted): workers running one are told to discard it."""
    conn.execute(
        update(workunits)
        .where(workunits.c.job_id == job_id, guard(workunits.c.state, _W.SUSPEND, LIVE_WORKUNIT_STATES))
        .values(state=_W.SUSPEND.value, updatetime=now)
    )


def release_job_work(conn: Connection, job_id: str, now: int) -> None:
    """Resume: a job's held workunits go back in the queue, their failures forgiven. Done and
    failed-permanent ones stay as they are."""
    conn.execute(
        update(workunits)
        .where(workunits.c.job_id == job_id, guard(workunits.c.state, _W.QUEUED, {_W.SUSPEND}))
        .values(state=_W.QUEUED.value, failed=0, client_id=None, updatetime=now)
    )


# ---- tasks ----------------------------------------------------------------------------------------

#: Checkout: the tasks (``:tasks``) of leased workunits are in progress (SQLite).
START_TASKS = (
    update(tasks)
    .where(
        tasks.c.id.in_(bindparam("tasks", expanding=True)), guard(tasks.c.state, _T.IN_PROGRESS, {_T.QUEUED})
    )
    .values(state=_T.IN_PROGRESS.value)
)
START_TASKS_SET_SQL = f"state = '{_T.IN_PROGRESS.value}'"
START_TASKS_GUARD_SQL = guard_sql("tasks.state", _T.IN_PROGRESS, {_T.QUEUED})


def enqueue_task(conn: Connection, task_id: str, values: Mapping[str, Any]) -> None:
    """A pending task whose time has come is split into workunits: queued."""
    _move_one(conn, tasks, task_id, _T.QUEUED, values)


#: Submit: a new job's tasks that may start at once are queued (one row of parameters per task).
_ENQUEUE_NEW_TASK = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), guard(tasks.c.state, _T.QUEUED, {_T.PENDING}))
    .values(
        state=_T.QUEUED.value,
        starteddate=bindparam("now"),
        totalwork=bindparam("work"),
        remainwork=bindparam("work"),
    )
)


#: The same on PostgreSQL for any number of tasks: one statement of arrays (psycopg would run a
#: many-row ``executemany`` as a pipeline of statements).
_ENQUEUE_NEW_TASKS_PG = text(
    f"UPDATE tasks SET state = '{_T.QUEUED.value}', starteddate = :now, totalwork = u.w, remainwork = u.w"
    " FROM unnest(CAST(:ids AS text[]), CAST(:works AS integer[])) AS u(i, w)"
    f" WHERE tasks.id = u.i AND {guard_sql('tasks.state', _T.QUEUED, {_T.PENDING})}"
)


def enqueue_new_tasks(conn: Connection, work: Mapping[str, int], now: int) -> None:
    """``enqueue_task`` for the tasks of jobs being submitted (task id -> its number of workunits):
    one statement for all of them, as the jobs are written."""
    if not work:
        return
    if conn.dialect.name == "postgresql":
        params: Any = {"ids": list(work), "works": list(work.values()), "now": now}
        moved = conn.execute(_ENQUEUE_NEW_TASKS_PG, params).rowcount
    else:
        params = [{"task_id": task_id, "work": n, "now": now} for task_id, n in work.items()]
        moved = conn.execute(_ENQUEUE_NEW_TASK, params[0] if len(params) == 1 else params).rowcount
    if moved != len(work):
        raise IllegalTransition(f"only {moved} of {len(work)} new tasks were pending, to be queued")


def complete_task(conn: Connection, task_id: str, values: Mapping[str, Any]) -> None:
    """A task with no workunit left to do."""
    _move_one(conn, tasks, task_id, _T.COMPLETED, values)


def fail_task_permanently(conn: Connection, task_id: str) -> None:
    _move_one(conn, tasks, task_id, _T.FAILED_PERMANENT, {})


def resume_task(conn: Connection, task_id: str, target: TaskState) -> None:
    """A held task, resumed where it was (queued, in progress) or pending if it had no workunits."""
    _move_one(conn, tasks, task_id, target, {})


def hold_job_tasks(conn: Connection, job_id: str, *, with_pending: bool) -> None:
    """A job's unfinished tasks are held with it: those with work (and, when the job is deleted, the
    pending ones too: a suspended job keeps them pending, so resume finds them as they were)."""
    among = LIVE_TASK_STATES if with_pending else LIVE_TASK_STATES - {_T.PENDING}
    conn.execute(
        update(tasks)
        .where(tasks.c.job_id == job_id, guard(tasks.c.state, _T.SUSPEND, among))
        .values(state=_T.SUSPEND.value)
    )


def reset_tasks(conn: Connection, task_ids: Sequence[str]) -> None:
    """Recompute, resubmit, recover: tasks back to pending as if never run (their workunits are
    deleted by the caller). Every state may be reset (a pending task stays as it is), so this is one
    statement, checked when the module loads."""
    conn.execute(
        update(tasks)
        .where(tasks.c.id.in_(list(task_ids)))
        .values(
            state=_T.PENDING.value,
            remainwork=tasks.c.totalwork,
            computetime=0,
            starteddate=0,
            completeddate=0,
        )
    )


if may_become(_T.PENDING) | {_T.PENDING} != set(TaskState):
    raise IllegalTransition("reset_tasks needs every task state to be allowed to become pending")


# ---- jobs -----------------------------------------------------------------------------------------

#: Checkout: the jobs (``:jobs``) of leased workunits are in progress (SQLite).
START_JOBS = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("jobs", expanding=True)), guard(jobs.c.state, _J.IN_PROGRESS, {_J.QUEUED}))
    .values(
        state=_J.IN_PROGRESS.value,
        startedtime=func.coalesce(func.nullif(jobs.c.startedtime, 0), bindparam("now")),
        updatetime=bindparam("now"),
    )
)
START_JOBS_SET_SQL = f"state = '{_J.IN_PROGRESS.value}'"
START_JOBS_GUARD_SQL = guard_sql("jobs.state", _J.IN_PROGRESS, {_J.QUEUED})


def queue_job(conn: Connection, job_id: str, now: int) -> None:
    """A submitted job's tasks are enqueued (in the submitting transaction)."""
    _move_one(conn, jobs, job_id, _J.QUEUED, {"updatetime": now})


#: Submit: the new jobs are queued, and their rows returned for the replies (sparing a read).
_QUEUE_NEW_JOBS = (
    update(jobs)
    .where(jobs.c.id.in_(bindparam("job_ids", expanding=True)), guard(jobs.c.state, _J.QUEUED, {_J.INIT}))
    .values(state=_J.QUEUED.value, updatetime=bindparam("now"))
    .returning(*jobs.c)
)


def queue_new_job(conn: Connection, job_id: str, now: int) -> Any:
    """``queue_job`` for a job inserted in this transaction (``init``); returns its row as queued."""
    return queue_new_jobs(conn, [job_id], now)[job_id]


def queue_new_jobs(conn: Connection, job_ids: Sequence[str], now: int) -> dict[str, Any]:
    """``queue_new_job`` for several jobs in one statement; their rows as queued, by id."""
    rows = {row.id: row for row in conn.execute(_QUEUE_NEW_JOBS, {"job_ids": list(job_ids), "now": now})}
    if len(rows) != len(set(job_ids)):
        missing = sorted(set(job_ids) - set(rows))
        raise IllegalTransition(f"job(s) {missing!r} are not new jobs to queue")
    return rows


#: PostgreSQL, submit: both moves of ``enqueue_new_tasks`` and ``queue_new_jobs`` in one statement
#: (psycopg's placeholders), which returns the queued jobs' rows and how many tasks were queued.
#: The guards compare ``state || ''``, which no index serves, so that the rows are found by their
#: keys: between two ``ANALYZE`` runs the planner took the new ``pending`` tasks (or ``init`` jobs)
#: for a handful and read every one through the state index, a cost that grew with the store
#: (issue 22: 2.5 ms per batch of 32 jobs at 1,000 jobs, 10 ms at 9,000).
_TASK_STATE_UNINDEXED = "(tasks.state || '')"
_JOB_STATE_UNINDEXED = "(jobs.state || '')"
_QUEUE_NEW_PG = (
    f"WITH moved AS (UPDATE tasks SET state = '{_T.QUEUED.value}', starteddate = %(now)s,"
    " totalwork = u.w, remainwork = u.w"
    " FROM unnest(CAST(%(tasks)s AS text[]), CAST(%(works)s AS integer[])) AS u(i, w)"
    f" WHERE tasks.id = u.i AND {guard_sql(_TASK_STATE_UNINDEXED, _T.QUEUED, {_T.PENDING})} RETURNING 1)"
    f" UPDATE jobs SET state = '{_J.QUEUED.value}', updatetime = %(now)s"
    " WHERE jobs.id = ANY(CAST(%(jobs)s AS text[]))"
    f" AND {guard_sql(_JOB_STATE_UNINDEXED, _J.QUEUED, {_J.INIT})}"
    " RETURNING jobs.*, (SELECT count(*) FROM moved) AS moved_tasks"
)


def queue_new_pg(
    conn: Connection, work: Mapping[str, int], job_ids: Sequence[str], now: int
) -> dict[str, Any]:
    """PostgreSQL: ``enqueue_new_tasks`` and ``queue_new_jobs`` in one round trip."""
    params = {"now": now, "tasks": list(work), "works": list(work.values()), "jobs": list(job_ids)}
    # Not prepared: a plan kept from the first submits (a scan of a table then tiny) would be used
    # however large the table grew, until the next ANALYZE; planning each time costs ~0.2 ms a batch.
    rows = pgdirect.pg_rows(conn, _QUEUE_NEW_PG, params, prepare=False)
    if len(rows) != len(set(job_ids)):
        missing = sorted(set(job_ids) - {row.id for row in rows})
        raise IllegalTransition(f"job(s) {missing!r} are not new jobs to queue")
    if rows[0].moved_tasks != len(work):
        raise IllegalTransition(
            f"only {rows[0].moved_tasks} of {len(work)} new tasks were pending, to be queued"
        )
    return {row.id: row for row in rows}


def complete_job(conn: Connection, job_id: str, values: Mapping[str, Any]) -> None:
    _move_one(conn, jobs, job_id, _J.COMPLETED, {"error": None, **values})


def hold_job(conn: Connection, job_id: str, target: JobState, error: Mapping[str, Any], now: int) -> None:
    """Suspend a job (by hand, or a workunit failed too often) or fail it permanently (exit 42), with
    its live tasks and workunits held."""
    hold_job_tasks(conn, job_id, with_pending=False)
    hold_job_work(conn, job_id, now)
    _move_one(conn, jobs, job_id, target, {"error": dict(error), "updatetime": now})


def requeue_job(conn: Connection, job_id: str, values: Mapping[str, Any]) -> None:
    """Resume, resubmit or recompute: the job is queued again, its error cleared."""
    _move_one(conn, jobs, job_id, _J.QUEUED, {"error": None, "resumed": jobs.c.resumed + 1, **values})


def delete_job(conn: Connection, job_id: str, now: int) -> bool:
    """Soft-delete a job, holding its live work. False if it was deleted already (nothing changes)."""
    state = conn.execute(jobs.select().with_only_columns(jobs.c.state).where(jobs.c.id == job_id)).scalar()
    if state == _J.DELETED.value:
        return False
    hold_job_work(conn, job_id, now)
    hold_job_tasks(conn, job_id, with_pending=True)
    _move_one(conn, jobs, job_id, _J.DELETED, {"updatetime": now})
    return True


# ---- clients --------------------------------------------------------------------------------------


def client_state_is(states: Iterable[ClientState]) -> ColumnElement[bool]:
    """Clients in these states, from the columns that hold them (``deleted_at``, ``suspended``)."""
    conditions = {
        _C.DELETED: clients.c.deleted_at != 0,
        _C.SUSPENDED: and_(clients.c.deleted_at == 0, clients.c.suspended.is_(True)),
        _C.ACTIVE: and_(clients.c.deleted_at == 0, not_(clients.c.suspended)),
    }
    return or_(*(conditions[s] for s in sorted(set(states))))


def client_state(row: Any) -> ClientState:
    if row.deleted_at:
        return _C.DELETED
    return _C.SUSPENDED if row.suspended else _C.ACTIVE


def _move_client(
    conn: Connection,
    client_id: str,
    target: ClientState,
    values: Mapping[str, Any],
    among: Iterable[ClientState] | None = None,
) -> bool:
    """Move a client to ``target`` if it is in a state that may (of ``among``); False if it was not."""
    sources = may_become(target)
    if among is not None:
        for source in among:
            source.check(target)
        sources = frozenset(among)
    result = conn.execute(
        update(clients).where(clients.c.id == client_id, client_state_is(sources)).values(**values)
    )
    return bool(result.rowcount)


def suspend_client(
    conn: Connection, client_id: str, reason: str, values: Mapping[str, Any] | None = None
) -> bool:
    """By hand or after ``max_client_failure`` failures in a row. False if it was not active."""
    return _move_client(
        conn, client_id, _C.SUSPENDED, {"suspended": True, "suspend_reason": reason, **(values or {})}
    )


def resume_client(conn: Connection, client_id: str) -> bool:
    """False if it was not suspended."""
    return _move_client(
        conn,
        client_id,
        _C.ACTIVE,
        {"suspended": False, "suspend_reason": "", "last_failed": 0},
        {_C.SUSPENDED},
    )


def delete_client(conn: Connection, client_id: str, now: int) -> bool:
    return _move_client(conn, client_id, _C.DELETED, {"deleted_at": now})


def revive_client(conn: Connection, client_id: str) -> bool:
    """A deleted client registers again: it starts afresh (active, not suspended)."""
    return _move_client(
        conn, client_id, _C.ACTIVE, {"deleted_at": 0, "suspended": False, "suspend_reason": ""}, {_C.DELETED}
    )


__all__ = [
    "CLAIM_FROM",
    "FINISH",
    "LEASE",
    "START_JOBS",
    "START_TASKS",
    "client_state",
    "client_state_is",
    "complete_job",
    "complete_task",
    "delete_client",
    "delete_job",
    "enqueue_new_tasks",
    "enqueue_task",
    "fail_permanently",
    "fail_task_permanently",
    "guard",
    "guard_sql",
    "hold_failed",
    "hold_job",
    "hold_job_tasks",
    "hold_job_work",
    "preempt",
    "queue_job",
    "queue_new_job",
    "queue_new_jobs",
    "queue_new_pg",
    "release_job_work",
    "requeue_failed",
    "requeue_job",
    "requeue_leases",
    "requeued_state",
    "reset_tasks",
    "resume_client",
    "resume_task",
    "revive_client",
    "suspend_client",
]
