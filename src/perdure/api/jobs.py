"""``/job``: submit, list, query and operate on jobs (workflow-api.txt, "AWE APIs")."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

from perdure.api import params
from perdure.api.auth import check_job_access, job_owner_filter, principal, require_admin
from perdure.api.context import ctx
from perdure.api.crossjob import check_submitted_references
from perdure.api.envelope import ok, page
from perdure.errors import BadRequest, NotImplementedOp
from perdure.jobscript import JobScriptError, parse_job_script
from perdure.states import ACTIVE_JOB_STATES, REGISTERED_JOB_STATES, JobState
from perdure.store.jobs import JobQuery
from perdure.timeutil import parse_time

router = APIRouter()

#: Parameters of ``GET /job`` that are not field filters (AWE's list, plus date bounds).
RESERVED = frozenset(
    {
        "limit",
        "offset",
        "query",
        "recent",
        "order",
        "direction",
        "active",
        "suspend",
        "registered",
        "verbosity",
        "userattr",
        "distinct",
        "date_start",
        "date_end",
    }
)
#: Room for the multipart envelope around a job script of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024


async def _read_script(request: Request) -> bytes:
    limit = ctx(request).settings.max_upload_bytes
    too_large = BadRequest(f"job script is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return await params.body_at_most(request, limit, too_large)
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("No job file is submitted")
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=limit)
    except Exception as exc:  # malformed multipart: python-multipart raises several types
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("upload")
        if upload is None:
            if any(k in form for k in ("cwl", "import", "awf")):
                raise BadRequest("only job scripts (field 'upload') are supported")
            raise BadRequest("No job script or awf is submitted")
        data = await upload.read(limit + 1) if isinstance(upload, UploadFile) else upload.encode()
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    return data


@router.post("/job")
async def submit_job(request: Request) -> JSONResponse:
    raw = await _read_script(request)
    try:
        spec = parse_job_script(raw)
    except JobScriptError as exc:
        raise BadRequest(str(exc)) from None
    await run_in_threadpool(check_submitted_references, request, spec)  # issue 17: no cross-job inputs
    token = request.headers.get("datatoken") or None
    owner = principal(request).user
    document = await run_in_threadpool(ctx(request).jobs.submit, spec, raw.decode("utf-8"), token, owner)
    return ok(document)


def _query_from(request: Request) -> JobQuery:
    qp = request.query_params
    direction = qp.get("direction", "desc").lower()
    if direction not in ("asc", "desc"):
        raise BadRequest("direction must be asc or desc")
    query = JobQuery(
        limit=params.integer(qp, "limit", 25, minimum=1),
        offset=params.integer(qp, "offset", 0, minimum=0),
        order=qp.get("order") or "updatetime",
        descending=direction == "desc",
        owner=job_owner_filter(request),
    )
    if params.flag(qp, "active"):
        query.states = frozenset(s.value for s in ACTIVE_JOB_STATES)
    elif params.flag(qp, "suspend"):
        query.states = frozenset({JobState.SUSPEND.value})
    elif params.flag(qp, "registered"):
        query.states = frozenset(s.value for s in REGISTERED_JOB_STATES)
    if params.flag(qp, "query"):
        for name in dict.fromkeys(k for k, _ in qp.multi_items() if k not in RESERVED):
            values = params.comma_values(qp, name)
            if values:
                query.fields[name] = values
        for bound in ("date_start", "date_end"):
            raw = qp.get(bound)
            if raw:
                try:
                    setattr(query, bound, parse_time(raw))
                except ValueError as exc:
                    raise BadRequest(f"{bound}: {exc}") from None
    return query


@router.get("/job")
def list_jobs(request: Request) -> JSONResponse:
    qp = request.query_params
    query = _query_from(request)
    store = ctx(request).jobs
    if params.flag(qp, "distinct"):
        return ok(store.distinct(qp.get("distinct", ""), query))
    minimal = qp.get("verbosity") == "minimal"
    documents, total = store.find(query, minimal=minimal, userattr_keys=qp.getlist("userattr"))
    return page(documents, limit=query.limit, offset=query.offset, total=total)


@router.get("/job/{job_id}")
def get_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    qp = request.query_params
    store = ctx(request).jobs
    if params.flag(qp, "report"):
        return ok(store.report(job_id))
    if params.flag(qp, "position"):
        return ok(store.position(job_id))
    if params.flag(qp, "perf"):
        return ok(store.perf(job_id))
    return ok(store.get(job_id))


@router.put("/job/{job_id}")
def update_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    qp = request.query_params
    store = ctx(request).jobs
    if params.flag(qp, "suspend"):
        return ok(store.suspend(job_id))
    if params.flag(qp, "resume"):
        return ok(store.resume(job_id))
    if params.flag(qp, "resubmit"):
        return ok(store.resubmit(job_id))
    if params.flag(qp, "recompute"):
        taskid = qp.get("recompute", "")
        if not taskid:
            raise BadRequest("recompute needs a task id: ?recompute=<taskid>")
        return ok(store.recompute(job_id, taskid))
    if params.flag(qp, "clientgroup"):
        return ok(store.set_clientgroup(job_id, qp.get("clientgroup", "")))
    if params.flag(qp, "priority"):
        return ok(store.set_priority(job_id, qp.get("priority", "")))
    if params.flag(qp, "pipeline"):
        return ok(store.set_pipeline(job_id, qp.get("pipeline", "")))
    if params.flag(qp, "expiration"):
        return ok(store.set_expiration(job_id, qp.get("expiration", "")))
    if params.flag(qp, "settoken"):
        return ok(store.set_token(job_id, request.headers.get("datatoken")))
    raise NotImplementedOp("requested job operation not supported")


@router.put("/job")
def update_jobs(request: Request) -> JSONResponse:
    require_admin(request, "operate on every job")
    qp = request.query_params
    store = ctx(request).jobs
    if params.flag(qp, "resumeall"):
        return ok(store.resume_all())
    if params.flag(qp, "recoverall"):
        return ok(store.recover_all())
    raise NotImplementedOp("Not Implemented")


@router.delete("/job/{job_id}")
def delete_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    return ok(ctx(request).jobs.delete(job_id, full=params.flag(request.query_params, "full")))


@router.delete("/job")
def delete_jobs(request: Request) -> JSONResponse:
    require_admin(request, "delete every suspended or zombie job")
    qp = request.query_params
    store = ctx(request).jobs
    full = params.flag(qp, "full")
    if params.flag(qp, "suspend"):
        return ok(store.delete_suspended(full=full))
    if params.flag(qp, "zombie"):
        return ok(store.delete_zombies(full=full))
    raise NotImplementedOp("Not Implemented")
