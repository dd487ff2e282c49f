"""Checkout: the atomic claim of eligible workunits for a batch of clients, and their leases.

A client that already holds a lease gets the same workunit again, so a checkout retried after a lost
reply never hands out a second one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    exists,
    select,
    text,
    update,
)

from perdure.protocol import (
    ClientDeleted,
    ClientNotFound,
    ClientSuspended,
    NoWork,
)
from perdure.states import JobState, TaskState, WorkunitState
from perdure.store import hooks, pgdirect, sqlitedirect, transitions, workdocs
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import client_skip_work, clients, workunits
from perdure.store.workrequests import CheckoutRequest, Failure
from perdure.timeutil import now_us

log = logging.getLogger("perdure.work")

#: The checking-out clients of a batch (SQLite: ``_clients_sqlite``), the lease each may hold already,
#: and whether it has workunits to skip.
_CLIENT_COLUMNS = select(
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
)


_CLIENT_JSON = sqlitedirect.json_columns(_CLIENT_COLUMNS)


@functools.cache
def _clients_sqlite(k: int) -> str:
    """``_CLIENT_COLUMNS`` of ``k`` clients (``:client0`` …), for ``sqlitedirect``."""
    return f"{sqlitedirect.compiled(_CLIENT_COLUMNS)} WHERE clients.id IN {sqlitedirect.in_list('client', k)}"


def _clients_pg(settings: str = "") -> str:
    """The same on PostgreSQL (run on psycopg directly) for every client of a batch, its rows also
    setting ``settings`` (``set_config`` columns) for the rest of the transaction."""
    return f"""
SELECT c.id, c.group_name, c.apps, c.node_id, c.deleted_at, c.suspended, c.profile,{settings}
    (SELECT w.id FROM workunits w WHERE w.client_id = c.id AND w.state = '{WorkunitState.CHECKOUT.value}'
     LIMIT 1) AS held,
    EXISTS (SELECT 1 FROM client_skip_work s WHERE s.client_id = c.id) AS skips
FROM clients c WHERE c.id = ANY(%(clients)s)"""


#: PostgreSQL's claims run on the dispatch pool, whose sessions look rows up by key
#: (``database.DISPATCH_PLAN_SETTINGS``). The statement that reads the clients also sets, for the rest
#: of the transaction, the claim's own plans (each of its rows sets the same; with no row there is no
#: claim): walk the partial queue indexes in order and stop at the first free rows, where the planner
#: may otherwise sort every queued row for each claim; and plan the claim for its values, as PostgreSQL
#: chooses (the session keeps generic plans). (Only for the claim: a statement that looks a
#: few rows up by key and sorts them would, without sorts, walk a whole index in its order instead.)
_CLAIM_PLANS = (
    " set_config('enable_sort', 'off', true) AS sort, set_config('enable_bitmapscan', 'off', true) AS bitmap,"
    " set_config('plan_cache_mode', 'auto', true) AS plans,"
)
#: After reports (``&next``) the claim commits as a report must. (``store.report`` sends it with a
#: batch's ``done`` reports, one round trip fewer: ``pgdirect.keep_clients``.)
CLIENTS_AFTER_REPORTS_PG = _clients_pg(_CLAIM_PLANS)
#: A claim alone commits without waiting for its WAL to reach the disk. A claim that a crash of the
#: database loses is harmless: the workunit is queued again as before it, and the worker's report of
#: it is refused (the lease is not its own), so the work runs again but never completes twice, and no
#: report or job is lost. Reports, which a worker must be able to rely on once answered, still wait,
#: and so does a claim in the transaction of the reports before it.
_CLIENTS_ASYNC_COMMIT_PG = _clients_pg(
    _CLAIM_PLANS + " set_config('synchronous_commit', 'off', true) AS async_commit,"
)


def _group_params(group: str) -> dict[str, str]:
    """The bind values of the claim's client-group match (see ``comma_list_contains``)."""
    escaped = group.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return {"grp": group, "grp_head": f"{escaped},%", "grp_tail": f"%,{escaped}", "grp_mid": f"%,{escaped},%"}


_ELIGIBLE = """
    (w.clientgroups = '' OR w.clientgroups = :grp OR w.clientgroups LIKE :grp_head ESCAPE '\\'
     OR w.clientgroups LIKE :grp_tail ESCAPE '\\' OR w.clientgroups LIKE :grp_mid ESCAPE '\\')"""
#: SQLite: the same, each pattern an expression rather than a bare parameter. A parameter on the right
#: of ``LIKE`` makes SQLite compile the statement again at every run (it may pick a plan by the pattern's
#: value), which cost more than the claim itself; ``(:p || '')`` is the same pattern, compiled once.
_ELIGIBLE_SQLITE = """
    (w.clientgroups = '' OR w.clientgroups = :grp
     OR w.clientgroups LIKE (:grp_head || '') ESCAPE '\\' OR w.clientgroups LIKE (:grp_tail || '') ESCAPE '\\'
     OR w.clientgroups LIKE (:grp_mid || '') ESCAPE '\\')"""
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
    eligible = _ELIGIBLE if dialect == "postgresql" else _ELIGIBLE_SQLITE
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
            "SELECT w.id, w.updatetime, w.priority, w.submittime, w.task_id, w.job_id, {} AS src,"
            " (SELECT t.state FROM tasks t WHERE t.id = w.task_id) AS task_state,"
            " (SELECT j.state FROM jobs j WHERE j.id = w.job_id) AS job_state"
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
    job_fields = ", ".join(
        f"jobs.{name} AS job_{name}" for name in workdocs.JOB_FIELDS if name != "startedtime"
    )
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
    return pgdirect.psycopg_placeholders(sql)


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


#: SQLite: the workunit document columns (``workdocs.joined``) of the ones just leased.
_DOCUMENT_COLUMNS = workdocs.joined()
_DOCUMENT_JSON = sqlitedirect.json_columns(_DOCUMENT_COLUMNS)


@functools.cache
def _documents_sqlite(k: int) -> str:
    return f"{sqlitedirect.compiled(_DOCUMENT_COLUMNS)} WHERE workunits.id IN {sqlitedirect.in_list('wu', k)}"


def _lease_sqlite(
    conn: Connection, picked: Sequence[Any], client_ids: Sequence[str], now: int
) -> dict[str, tuple[dict[str, Any], int]]:
    """SQLite: lease the picked workunits to the clients, in order (there may be fewer workunits),
    move their tasks and jobs to in-progress and count the checkouts. Returns each served client's
    workunit document and since when that workunit had waited."""
    pairs = list(zip(picked, client_ids, strict=False))
    if not pairs:
        return {}
    sqlitedirect.many(
        conn,
        sqlitedirect.compiled(_LEASE),
        [{"wu": row.id, "client": client_id, "now": now} for row, client_id in pairs],
    )
    # Only a task or job still queued moves (the guards' only source state): most claims skip both.
    starting_tasks = sorted({row.task_id for row, _ in pairs if row.task_state == TaskState.QUEUED})
    if starting_tasks:
        conn.execute(_TASKS_IN_PROGRESS, {"tasks": starting_tasks})
    starting_jobs = sorted({row.job_id for row, _ in pairs if row.job_state == JobState.QUEUED})
    if starting_jobs:
        conn.execute(_JOBS_IN_PROGRESS, {"jobs": starting_jobs, "now": now})
    sqlitedirect.many(
        conn,
        sqlitedirect.compiled(_CLIENT_CHECKED_OUT),
        [{"client": client_id, "now": now} for _, client_id in pairs],
    )
    ids = [row.id for row, _ in pairs]
    found = sqlitedirect.rows(
        conn, _documents_sqlite(len(ids)), sqlitedirect.in_params("wu", ids), _DOCUMENT_JSON
    )
    documents = {row.id: row for row in found}
    return {
        client_id: (workdocs.workunit_document(documents[row.id]), row.updatetime) for row, client_id in pairs
    }


@retry_on_conflict
def checkout_batch(db: Database, requests: Sequence[CheckoutRequest]) -> list[dict[str, Any] | Failure]:
    """Each request's leased workunit document, or why it gets none, in one transaction of its own."""
    with db.dispatch() as conn:
        samples = hooks.Samples()
        results = claim(conn, db.dialect, requests, samples)
        sqlitedirect.finish(conn, db.dialect, samples)
    return results


def claim(
    conn: Connection,
    dialect: str,
    requests: Sequence[CheckoutRequest],
    samples: hooks.Samples,
    *,
    after_reports: bool = False,
) -> list[dict[str, Any] | Failure]:
    """Each request's leased workunit document, or why it gets none, in the caller's transaction
    (which writes ``samples`` and commits). ``after_reports`` when the transaction holds reports too:
    on PostgreSQL its commit then waits for the WAL, as a report's must."""
    # Unless a claim below leases one, or the client is refused: one exception per request, as each
    # is raised in its own request.
    if not requests:
        return []
    results: list[dict[str, Any] | Failure] = [NoWork("No eligible workunit found") for _ in requests]
    postgres = dialect == "postgresql"
    now = now_us()  # after BEGIN IMMEDIATE (and the reports' row locks): times follow commit order
    # The clients and the leases they may hold already.
    if postgres:
        ids = {"clients": [r.client_id for r in requests]}
        found = pgdirect.kept_clients(conn) if after_reports else {}
        if not all(r.client_id in found for r in requests):
            sql = CLIENTS_AFTER_REPORTS_PG if after_reports else _CLIENTS_ASYNC_COMMIT_PG
            found = {row.id: row for row in pgdirect.pg_rows(conn, sql, ids)}
    else:
        client_ids = sorted({r.client_id for r in requests})
        found = {
            row.id: row
            for row in sqlitedirect.rows(
                conn,
                _clients_sqlite(len(client_ids)),
                sqlitedirect.in_params("client", client_ids),
                _CLIENT_JSON,
            )
        }
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
            results[n] = workdocs.document(conn, client.held)
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
            dialect, apps is not None, available is not None, alone is not None, containers
        )
        if postgres:
            leased = {
                row.client_id: row
                for row in pgdirect.pg_rows(conn, claim, {**params, "clients": clients_ids})
            }
            claimed = {
                client_id: (workdocs.workunit_document(row), row.queued_since)
                for client_id, row in leased.items()
            }
        elif apps is None:
            claimed = _lease_sqlite(conn, sqlitedirect.rows(conn, claim.text, params), clients_ids, now)
        else:  # the apps' list (``IN :apps``) expanded by SQLAlchemy
            claimed = _lease_sqlite(conn, conn.execute(claim, params).all(), clients_ids, now)
        for n, client in members:
            if client.id in claimed:
                document, queued_since = claimed[client.id]
                log.debug("checkout: %s leased to client %s", document["id"], client.id)
                samples.workunit_checked_out(
                    document["info"]["clientgroups"], client.node_id, queued_since, now
                )
                results[n] = document

    return results
