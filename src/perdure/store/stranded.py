"""Work that no client will take any more: failed out, so the job ends instead of waiting for ever.

A workunit that fails on a client goes on that client's ``client_skip_work`` list and back to the
queue, to be retried elsewhere. When every live client that could run it (its group, its app, not
suspended, heard from within the TTL) has it on that list, nothing will ever check it out again: with
one worker of 2 slots and ``maxWorkFailure`` 3, a failing task sat ``queued`` for ever. The sweep
calls ``suspend_stranded``: such a workunit counts as failed out, as if it had reached the failure
limit, and its job is suspended with an error that says why and what to do next.

Workers that are all offline strand nothing: the work waits for them, as it should. Work counts as
stranded only once it has sat queued for the TTL (at most 30 s) since it last failed, so a client
that merely looked offline for a moment does not end a job it would have taken. ``jobops.forget_skips``
is the other half: a resumed job's workunits may run on any client again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from perdure.states import JobState, WorkunitState
from perdure.store import failnotes, jobops, lifecycle
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import client_skip_work, clients, workunit_logs, workunits
from perdure.timeutil import now_us

#: How long failed work must have sat queued before it counts as stranded (or the TTL, if shorter).
SETTLE_US = 30_000_000
#: As much of the last stderr as a job error shows (AWE's ``apperror``).
APPERROR_CHARS = 5000


def serves(client: Any, clientgroups: str, app: str) -> bool:
    """Whether ``client`` (a row with ``group_name`` and ``apps``) may check out such a workunit."""
    groups = [g for g in clientgroups.split(",") if g]
    if groups and client.group_name not in groups:
        return False
    apps = list(client.apps or [])
    return "*" in apps or app in apps


def find_stranded(conn: Connection, ttl_us: int, now: int) -> list[tuple[Any, list[str]]]:
    """Queued workunits that some live eligible client failed, and every such client failed; each with
    the ids of the clients that failed it."""
    skipped = conn.execute(
        select(
            workunits.c.id,
            workunits.c.job_id,
            workunits.c.task_id,
            workunits.c.clientgroups,
            workunits.c.app,
            workunits.c.failed,
            workunits.c.updatetime,
            client_skip_work.c.client_id,
        )
        .join(client_skip_work, client_skip_work.c.workunit_id == workunits.c.id)
        .where(
            workunits.c.state == WorkunitState.QUEUED.value,
            # Queued a while since it last failed: a client whose heartbeat was merely late (and so
            # looked offline) has had its chance to take it.
            workunits.c.updatetime <= now - min(ttl_us, SETTLE_US),
        )
    ).all()
    if not skipped:
        return []
    live = conn.execute(
        select(clients.c.id, clients.c.group_name, clients.c.apps).where(
            clients.c.deleted_at == 0,
            clients.c.suspended.is_(False),
            clients.c.last_heartbeat >= now - ttl_us,
        )
    ).all()
    by_workunit: dict[str, tuple[Any, set[str]]] = {}
    for row in skipped:
        by_workunit.setdefault(row.id, (row, set()))[1].add(row.client_id)
    stranded = []
    for row, failed_on in by_workunit.values():
        eligible = {c.id for c in live if serves(c, row.clientgroups, row.app)}
        if eligible and eligible <= failed_on:
            stranded.append((row, sorted(failed_on)))
    return stranded


def suspend_stranded(db: Database, ttl_us: int) -> int:
    """Suspend the job of every stranded workunit (one transaction per job); the number of jobs."""
    now = now_us()
    with db.read() as conn:
        stranded = find_stranded(conn, ttl_us, now)
    first_per_job: dict[str, tuple[Any, list[str]]] = {}
    for row, failed_on in stranded:
        first_per_job.setdefault(row.job_id, (row, failed_on))
    return sum(_suspend(db, row, failed_on, now) for row, failed_on in first_per_job.values())


@retry_on_conflict
def _suspend(db: Database, wu: Any, failed_on: Sequence[str], now: int) -> int:
    with db.write() as conn:
        current = conn.execute(
            select(workunits.c.state, workunits.c.updatetime).where(workunits.c.id == wu.id).with_for_update()
        ).one_or_none()
        if current is None or current.state != WorkunitState.QUEUED or current.updatetime != wu.updatetime:
            return 0  # it moved while we looked: the next sweep looks again
        logs = dict(
            conn.execute(
                select(workunit_logs.c.kind, workunit_logs.c.content).where(
                    workunit_logs.c.workunit_id == wu.id, workunit_logs.c.kind.in_(["stderr", "worknotes"])
                )
            ).all()
        )
        clients_text = ", ".join(failed_on)
        notes = failnotes.failed_out_notes(
            wu.id,
            wu.job_id,
            wu.failed,
            logs.get("worknotes", ""),
            f", on every live client that can run it ({clients_text}); no client is left to retry it",
        )
        error = {
            "clientfailed": failed_on[-1] if failed_on else "",
            "workfailed": wu.id,
            "taskfailed": wu.task_id,
            "servernotes": notes,
            "worknotes": logs.get("worknotes", ""),  # the worker's: "... exited with 3", a missing output
            "apperror": logs.get("stderr", "")[-APPERROR_CHARS:],
            "status": JobState.SUSPEND.value,
        }
        lifecycle.record_event(conn, wu.job_id, lifecycle.EVENT_WORK_FAILED, notes, now)
        jobops.suspend_job(conn, wu.job_id, error, now)
        return 1


def unserved_warnings(db: Database, clientgroups: str, apps: Sequence[str]) -> list[str]:
    """At submit: what no registered client (live or not, but not deleted) would take, said plainly.

    A clientgroups typo ("gpux") or an app no worker runs leaves a job queued for ever; the job is
    still accepted (a worker may register later), but the submitter is told at once. With no client
    registered at all (a fresh server; submitting before starting workers is normal), nothing is said.
    """
    with db.read() as conn:
        return unserved_in(conn, clientgroups, apps)


#: The registered clients a submit compares its job with (built once: it runs in every submit).
_REGISTERED = select(clients.c.group_name, clients.c.apps).where(clients.c.deleted_at == 0)


def unserved_in(conn: Connection, clientgroups: str, apps: Sequence[str]) -> list[str]:
    """:func:`unserved_warnings` inside a transaction already open (a submit's, sparing one)."""
    return unserved_among(registered_clients(conn), clientgroups, apps)


def registered_clients(conn: Connection) -> list[Any]:
    """The registered clients (not deleted) a submit compares its jobs with: read once for the jobs
    submitted together."""
    return list(conn.execute(_REGISTERED).all())


def unserved_among(registered: Sequence[Any], clientgroups: str, apps: Sequence[str]) -> list[str]:
    """:func:`unserved_warnings` against ``registered_clients``."""
    groups = [g for g in clientgroups.split(",") if g]
    known_groups = sorted({c.group_name for c in registered})
    if not registered:
        return []  # a fresh server, workers yet to start: nothing to compare the job with
    in_groups = [c for c in registered if not groups or c.group_name in groups]
    if not in_groups:
        return [
            f"no registered client is in clientgroups {clientgroups!r} (registered groups: "
            f"{', '.join(known_groups)}); the job waits until one registers. Check info.clientgroups, "
            f"or start a worker with --group {groups[0]}"
        ]
    warnings = []
    for app in dict.fromkeys(apps):
        if not any(serves(c, clientgroups, app) for c in in_groups):
            where = f" in clientgroups {clientgroups!r}" if groups else ""
            warnings.append(
                f"no registered client{where} runs app {app!r} (their --apps do not include it);"
                " the job waits until one registers"
            )
    return warnings
