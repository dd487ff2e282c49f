"""A workunit's document: the columns it is built from (the workunit, its task, its job) and AWE's
workunit JSON a worker runs from and a user reads."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    Connection,
    Select,
    bindparam,
    select,
)

from perdure.documents import job_info
from perdure.errors import NotFound
from perdure.store.schema import jobs, tasks, workunits
from perdure.timeutil import format_us

#: Job columns a workunit document shows, prefixed so they do not collide with the workunit's own.
JOB_FIELDS = (
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


def joined() -> Select[Any]:
    return (
        select(
            workunits,
            tasks.c.taskid,
            tasks.c.totalwork,
            tasks.c.spec,
            *(jobs.c[name].label(f"job_{name}") for name in JOB_FIELDS),
        )
        .join(tasks, tasks.c.id == workunits.c.task_id)
        .join(jobs, jobs.c.id == workunits.c.job_id)
    )


#: A workunit's document columns (``:wu``), and those of several (``:ids``, SQLite's claims).
DOCUMENT = joined().where(workunits.c.id == bindparam("wu"))
DOCUMENTS = joined().where(workunits.c.id.in_(bindparam("ids", expanding=True)))


def workunit_document(row: Any) -> dict[str, Any]:
    """AWE's workunit JSON: what a worker needs to run it, and what a user sees of it."""
    spec = row.spec
    info = job_info(SimpleNamespace(**{name: getattr(row, f"job_{name}") for name in JOB_FIELDS}))
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


def document(conn: Connection, wu_id: str) -> dict[str, Any]:
    """One workunit's document, or ``NotFound``."""
    row = conn.execute(DOCUMENT, {"wu": wu_id}).one_or_none()
    if row is None:
        raise NotFound(f"no workunit found with id {wu_id}")
    return workunit_document(row)
