"""``/job``: submit, list, query and operate on jobs (workflow-api.txt, "AWE APIs")."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from perdure.api import bounds, params, reportparts
from perdure.api import openapi as oa
from perdure.api.auth import check_job_access, job_owner_filter, principal, require_admin
from perdure.api.context import ctx
from perdure.api.crossjob import check_submitted_references
from perdure.api.envelope import ok, page
from perdure.api.gcpause import gc_paused
from perdure.errors import BadRequest, NotImplementedOp
from perdure.jobscript import JobScriptError, parse_job_script
from perdure.states import ACTIVE_JOB_STATES, REGISTERED_JOB_STATES, JobState
from perdure.store.jobs import INT_FIELDS, JobQuery, JobStore, Submission
from perdure.store.stranded import suspend_stranded
from perdure.timeutil import parse_time

router = APIRouter()
log = logging.getLogger("perdure.api")

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
    boundary = reportparts.boundary_of(content_type)
    small = declared is not None and declared.isdigit() and int(declared) <= min(reportparts.MAX_BYTES, limit)
    if boundary is not None and small:
        # The common case (``perdure submit``, the SDK: one plain part), split in memory instead of
        # spooled into a file part by part. Anything else is left to Starlette's parser, which reads
        # the body again from memory and decides, as before; no part here can pass the limit.
        parts = reportparts.parse(await request.body(), boundary, max_files=4, max_fields=16)
        if parts is not None:
            return _upload_of(parts)
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=limit)
    except ClientDisconnect:
        raise  # the client went away: not a malformed body
    except Exception as exc:  # malformed multipart: python-multipart raises several types
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("upload")
        if upload is None:
            _upload_of(form)  # raises: what is missing
        data = await upload.read(limit + 1) if isinstance(upload, UploadFile) else str(upload).encode()
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    return data


def _upload_of(parts: Mapping[str, Any]) -> bytes:
    """The job script of a form's parts (a file's bytes, or a field's text), or why there is none."""
    upload = parts.get("upload")
    if upload is None:
        if any(k in parts for k in ("cwl", "import", "awf")):
            raise BadRequest("only job scripts (field 'upload') are supported")
        raise BadRequest("No job script or awf is submitted")
    return upload.encode() if isinstance(upload, str) else bytes(upload)


@router.post("/job", openapi_extra=oa.query(body=oa.JOB_SCRIPT_BODY), responses=oa.errors(400, 401))
async def submit_job(request: Request) -> Response:
    raw = await _read_script(request)
    token = request.headers.get("datatoken") or None
    owner = principal(request).user
    if len(raw) >= BIG_SCRIPT_BYTES:  # alone, with the cyclic GC paused
        document, warnings = await run_in_threadpool(_accept, request, raw, token, owner)
    else:
        document, warnings = await _batch_of(ctx(request).jobs).submit(_Pending(request, raw, token, owner))
    body: dict[str, Any] = {"status": 200, "data": document, "error": None}
    if warnings:
        # Beside the envelope's data (the job document stays what GET /job/<id> shows), once, never
        # stored: ``perdure submit`` and the SDK's ``Job.warnings`` show them.
        body["warnings"] = warnings
    try:
        # orjson writes the same compact UTF-8 JSON as JSONResponse, about ten times faster: a
        # 10,000-task job's document is a few megabytes.
        return Response(orjson.dumps(body), media_type="application/json")
    except TypeError:  # an integer beyond 64 bits in a userattr: the standard encoder writes it
        return JSONResponse(body)


#: A script this large (a few thousand tasks) is parsed and stored alone, with the cyclic GC paused.
BIG_SCRIPT_BYTES = 256 * 1024
#: Jobs stored in one transaction at most.
MAX_BATCH = 32

Reply = tuple[dict[str, Any], list[str]]


def _submission(request: Request, raw: bytes, token: str | None, owner: str) -> Submission:
    """A script parsed and checked: ``BadRequest`` (or the references' ``Forbidden``) if it is not
    acceptable. Off the event loop: a 10,000-task script takes a while."""
    try:
        spec = parse_job_script(raw)
    except JobScriptError as exc:
        raise BadRequest(str(exc)) from None
    check_submitted_references(request, spec)  # issue 17: no cross-job inputs
    return Submission(spec, raw.decode("utf-8"), token, owner)


def _accept(request: Request, raw: bytes, token: str | None, owner: str) -> Reply:
    """Parse, check and store one job script in one thread hop."""
    with gc_paused(len(raw) >= BIG_SCRIPT_BYTES):
        submission = _submission(request, raw, token, owner)
        return ctx(request).jobs.submit_all([submission])[0]


@dataclass(frozen=True)
class _Pending:
    request: Request
    raw: bytes
    token: str | None
    owner: str


class _SubmitBatch:
    """The submits that arrive while earlier ones are in the database are stored together, in one
    transaction (``JobStore.submit_all``) and one thread hop: a submit's statements and commit cost
    about the same for one job as for thirty. Alone, a submit goes at once: no waiting for company.
    Each job still gets its own reply, after the commit that stored it, and its own refusal."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self._pending: list[tuple[_Pending, asyncio.Future[Reply]]] = []
        #: The event loop whose task is storing batches now (None: none is).
        self._draining: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, pending: _Pending) -> Reply:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((pending, future))
        if self._draining is not loop:
            self._draining = loop
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [item for item in self._pending[:MAX_BATCH] if not item[1].done()]
                del self._pending[:MAX_BATCH]
                if not batch:
                    continue
                try:
                    results = await run_in_threadpool(self._store, [pending for pending, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                except BaseException:  # cancelled: the server is stopping
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue  # its request is gone; the job, if stored, stays
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = None

    def _store(self, batch: list[_Pending]) -> list[Reply | Exception]:
        """In a thread: each script parsed and checked, the acceptable ones stored together; after a
        database error each alone, so that one job that cannot be stored does not fail the others."""
        results: list[Reply | Exception] = []
        ready: list[tuple[int, Submission]] = []
        for index, pending in enumerate(batch):
            try:
                ready.append((index, _submission(pending.request, pending.raw, pending.token, pending.owner)))
                results.append(_NOT_YET)
            except Exception as exc:
                results.append(exc)
        if not ready:
            return results
        try:
            for (index, _), reply in zip(ready, self.jobs.submit_all([s for _, s in ready]), strict=True):
                results[index] = reply
            return results
        except Exception as exc:
            if len(ready) == 1:
                results[ready[0][0]] = exc
                return results
            log.warning("a batch of %d submits failed (%s); storing each alone", len(ready), exc)
        for index, submission in ready:
            try:
                results[index] = self.jobs.submit_all([submission])[0]
            except Exception as exc:
                results[index] = exc
        return results


#: A batch's place holder for a job not yet stored.
_NOT_YET = RuntimeError("not stored")
_batches: weakref.WeakKeyDictionary[JobStore, _SubmitBatch] = weakref.WeakKeyDictionary()


def _batch_of(jobs: JobStore) -> _SubmitBatch:
    batch = _batches.get(jobs)
    if batch is None:
        batch = _batches[jobs] = _SubmitBatch(jobs)
    return batch


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
                if name in INT_FIELDS:
                    bounds.int32_values(name, values)
        bounds.query_fields(query.fields)
        for bound in ("date_start", "date_end"):
            raw = qp.get(bound)
            if raw:
                try:
                    setattr(query, bound, parse_time(raw))
                except ValueError as exc:
                    raise BadRequest(f"{bound}: {exc}") from None
    return query


@router.get(
    "/job",
    openapi_extra=oa.query(
        oa.integer("limit", "Page size", minimum=1, maximum=1000),
        oa.integer("offset", "Jobs to skip", minimum=0),
        oa.flag(
            "query", "Filter by any job field: ?query&info.project=p&state=queued (values comma-separated)"
        ),
        oa.text("order", "A job field path to sort by (default updatetime)"),
        oa.text("direction", "asc or desc"),
        oa.flag("active", "Only active jobs"),
        oa.flag("suspend", "Only suspended jobs"),
        oa.flag("registered", "Only registered jobs"),
        oa.text("verbosity", "minimal: per-task state and remaining work only"),
        oa.text("userattr", "Also show these info.userattr keys"),
        oa.text("distinct", "The distinct values of one field"),
        oa.text("date_start", "With ?query: submitted or completed at or after (RFC 3339)"),
        oa.text("date_end", "With ?query: submitted or completed before (RFC 3339)"),
        oa.text("state", "With ?query: job states"),
        oa.text("info.name", "With ?query: job names"),
        oa.text("info.project", "With ?query: projects"),
        oa.text("info.clientgroups", "With ?query: client groups"),
        oa.integer("info.priority", "With ?query: priorities", minimum=-oa.INT32 - 1, maximum=oa.INT32),
    ),
    responses=oa.errors(400, 401),
)
def list_jobs(request: Request) -> JSONResponse:
    qp = request.query_params
    query = _query_from(request)
    store = ctx(request).jobs
    if params.flag(qp, "distinct"):
        return ok(store.distinct(qp.get("distinct", ""), query))
    minimal = qp.get("verbosity") == "minimal"
    documents, total = store.find(query, minimal=minimal, userattr_keys=qp.getlist("userattr"))
    return page(documents, limit=query.limit, offset=query.offset, total=total)


def _first_flagged(
    request: Request, operations: dict[str, Callable[[str], Any]]
) -> Callable[[str], Any] | None:
    """The operation of the first of these flags (in AWE's order, the table's) the query sets."""
    return next((op for flag, op in operations.items() if params.flag(request.query_params, flag)), None)


@router.get(
    "/job/{job_id}",
    openapi_extra=oa.query(
        oa.flag("report", "The job's report"),
        oa.flag("position", "The job's position in the queue"),
        oa.flag("perf", "The job's performance figures"),
    ),
    responses=oa.errors(400, 401, 403, 404),
)
def get_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    store = ctx(request).jobs
    view = _first_flagged(request, {"report": store.report, "position": store.position, "perf": store.perf})
    return ok((view or store.get)(job_id))


@router.put(
    "/job/{job_id}",
    openapi_extra=oa.query(
        oa.flag("suspend", "Suspend the job"),
        oa.flag("resume", "Resume a suspended job"),
        oa.flag("resubmit", "Run the job again from the start"),
        oa.text("recompute", "Rerun this task and everything after it"),
        oa.text("clientgroup", "New client groups (comma-separated)", max_length=1024),
        oa.integer("priority", "New priority", minimum=1, maximum=oa.INT32),
        oa.text("pipeline", "New pipeline name", max_length=255),
        oa.text("expiration", "Expire the (completed) job after <N>M, <N>H or <N>D"),
        oa.flag("settoken", "Store the Datatoken header's token"),
    ),
    responses=oa.errors(400, 401, 403, 404, 501),
)
def update_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    qp = request.query_params
    store = ctx(request).jobs
    operation = _first_flagged(
        request, {"suspend": store.suspend, "resume": store.resume, "resubmit": store.resubmit}
    )
    if operation is not None:
        return ok(operation(job_id))
    if params.flag(qp, "recompute"):
        taskid = qp.get("recompute", "")
        if not taskid:
            raise BadRequest("recompute needs a task id: ?recompute=<taskid>")
        return ok(store.recompute(job_id, taskid))
    if params.flag(qp, "clientgroup"):
        groups = bounds.clientgroups("clientgroup", qp.get("clientgroup", ""))
        return ok(store.set_clientgroup(job_id, groups))
    if params.flag(qp, "priority"):
        bounds.int32("priority", qp.get("priority", ""), minimum=1)
        return ok(store.set_priority(job_id, qp.get("priority", "")))
    if params.flag(qp, "pipeline"):
        return ok(store.set_pipeline(job_id, bounds.name("pipeline", qp.get("pipeline", ""))))
    if params.flag(qp, "expiration"):
        return ok(store.set_expiration(job_id, bounds.expiration(qp.get("expiration", ""))))
    if params.flag(qp, "settoken"):
        return ok(store.set_token(job_id, request.headers.get("datatoken")))
    raise NotImplementedOp("requested job operation not supported")


@router.put(
    "/job",
    openapi_extra=oa.query(
        oa.flag("resumeall", "Resume every suspended job"), oa.flag("recoverall", "Recover every job")
    ),
    responses=oa.errors(400, 401, 403, 501),
)
def update_jobs(request: Request) -> JSONResponse:
    require_admin(request, "operate on every job")
    qp = request.query_params
    store = ctx(request).jobs
    if params.flag(qp, "resumeall"):
        return ok(store.resume_all())
    if params.flag(qp, "recoverall"):
        return ok(store.recover_all())
    raise NotImplementedOp("Not Implemented")


@router.delete(
    "/job/{job_id}",
    openapi_extra=oa.query(oa.flag("full", "Remove the job's rows and files, not only mark it deleted")),
    responses=oa.errors(400, 401, 403, 404),
)
def delete_job(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    return ok(ctx(request).jobs.delete(job_id, full=params.flag(request.query_params, "full")))


@router.delete(
    "/job",
    openapi_extra=oa.query(
        oa.flag("suspend", "Delete every suspended job"),
        oa.flag("zombie", "Delete active jobs that can make no progress"),
        oa.flag("full", "Remove rows and files too"),
    ),
    responses=oa.errors(400, 401, 403, 501),
)
def delete_jobs(request: Request) -> JSONResponse:
    require_admin(request, "delete every suspended or zombie job")
    qp = request.query_params
    store = ctx(request).jobs
    full = params.flag(qp, "full")
    if params.flag(qp, "suspend"):
        return ok(store.delete_suspended(full=full))
    if params.flag(qp, "zombie"):
        # What the sweep has not caught yet: failed work no live client will retry ends now too.
        stranded = suspend_stranded(ctx(request).db, ctx(request).clients.ttl_us)
        reply = store.delete_zombies(full=full)
        if stranded:
            reply += f"; suspended {stranded} job(s) whose failed work no live client can retry"
        return ok(reply)
    raise NotImplementedOp("Not Implemented")
