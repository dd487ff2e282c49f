"""``GET /queue``: counts of jobs, tasks, workunits and clients by state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api.context import ServerContext, ctx
from perdure.api.envelope import ok
from perdure.states import ACTIVE_JOB_STATES

router = APIRouter()


@router.get(
    "/queue",
    openapi_extra=oa.query(oa.flag("json", "The counts as JSON instead of text")),
    responses=oa.errors(401, 403),
)
def queue(request: Request) -> JSONResponse:
    context = ctx(request)
    summary = queue_summary(context)
    if "json" in request.query_params:
        return ok(summary)
    lines = [
        "total jobs ........... {total}".format(**summary["jobs"]),
        "  active ............. {active}".format(**summary["jobs"]),
        "  suspended .......... {suspended}".format(**summary["jobs"]),
        "total workunits ...... {total}".format(**summary["workunits"]),
        "  queued ............. {queued}".format(**summary["workunits"]),
        "  checkout ........... {checkout}".format(**summary["workunits"]),
        "  suspended .......... {suspend}".format(**summary["workunits"]),
        "total clients ........ {total}".format(**summary["clients"]),
        "  busy ............... {busy}".format(**summary["clients"]),
        "  idle ............... {idle}".format(**summary["clients"]),
        "  suspended .......... {suspended}".format(**summary["clients"]),
        "  offline ............ {offline}".format(**summary["clients"]),
    ]
    return ok("\n".join(lines) + "\n")


def queue_summary(context: ServerContext) -> dict[str, Any]:
    jobs_by_state = context.jobs.counts()
    tasks_by_state = context.jobs.task_counts()
    work_by_state = context.work.counts()
    return {
        "jobs": {
            "total": sum(jobs_by_state.values()),
            "active": sum(jobs_by_state.get(s.value, 0) for s in ACTIVE_JOB_STATES),
            "suspended": jobs_by_state.get("suspend", 0),
            "by_state": jobs_by_state,
        },
        "tasks": {"total": sum(tasks_by_state.values()), **tasks_by_state},
        "workunits": {
            "total": sum(work_by_state.values()),
            "queued": work_by_state.get("queued", 0),
            "checkout": work_by_state.get("checkout", 0),
            "suspend": work_by_state.get("suspend", 0),
            "done": work_by_state.get("done", 0),
            "by_state": work_by_state,
        },
        "clients": context.clients.counts(),
    }
