"""The data store over HTTP: workers upload task outputs, users and downstream workers download them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, StreamingResponse

from perdure.api import openapi as oa
from perdure.api import params
from perdure.api.auth import check_job_access
from perdure.api.context import ctx
from perdure.api.envelope import ok
from perdure.api.leasecaps import check_output_read, needs_capability, openapi_param
from perdure.api.workerauth import check_worker
from perdure.errors import BadRequest

router = APIRouter()


@router.put(
    "/work/{work_id}/output/{filename:path}",
    openapi_extra=oa.query(
        oa.client_param(),
        oa.text("sha256", "The file's SHA-256 (64 hex digits), checked on arrival"),
        body=oa.binary_body("The output file"),
    ),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def upload_output(work_id: str, filename: str, request: Request) -> JSONResponse:
    """Stream one output file of a leased workunit into the data store (``?client=&sha256=``)."""
    qp = request.query_params
    client_id = qp.get("client", "")
    if not client_id:
        raise BadRequest("missing client parameter")
    expected = qp.get("sha256") or request.headers.get("x-checksum-sha256")
    if expected is not None and (
        len(expected) != 64 or any(c not in "0123456789abcdefABCDEF" for c in expected)
    ):
        raise BadRequest("sha256 must be 64 hexadecimal digits")
    context = ctx(request)
    await run_in_threadpool(check_worker, request, client_id=client_id)
    _job_id, key = await run_in_threadpool(context.work.output_target, work_id, client_id, filename)
    pending = context.blobs.begin(key, context.settings.max_output_bytes)
    try:
        async for chunk in request.stream():
            pending.write(chunk)
        info = pending.commit(expected)
    except BaseException:
        pending.discard()
        raise
    await run_in_threadpool(
        context.work.record_output, work_id, client_id, filename, key, info.size, info.sha256
    )
    return ok({"filename": filename, "size": info.size, "sha256": info.sha256})


@router.get("/job/{job_id}/outputs", responses=oa.errors(401, 403, 404))
def list_outputs(job_id: str, request: Request) -> JSONResponse:
    check_job_access(request, job_id)
    return ok(ctx(request).jobs.outputs(job_id))


@router.get(
    "/job/{job_id}/output/{taskid}/{filename:path}",
    openapi_extra=oa.query(
        oa.integer("offset", "First byte to send", minimum=0),
        oa.integer("length", "Bytes to send", minimum=0),
        openapi_param(),
    ),
    responses=oa.errors(400, 401, 403, 404),
)
def download_output(job_id: str, taskid: str, filename: str, request: Request) -> StreamingResponse:
    """The file's bytes, streamed; ``offset``/``length`` select a byte range (a split part)."""
    qp = request.query_params
    if needs_capability(request):  # a worker reads only what its workunit's capability names
        check_output_read(request, job_id, taskid, filename)
    else:
        check_job_access(request, job_id)
    reader, sha256 = ctx(request).jobs.output_reader(job_id, taskid, filename)
    offset = params.integer(qp, "offset", 0, minimum=0)
    length = params.integer(qp, "length", reader.total - offset, minimum=0)
    if offset > reader.total:
        raise BadRequest(f"offset {offset} is past the end of the file ({reader.total} bytes)")
    length = min(length, reader.total - offset)
    headers = {"Content-Length": str(length), "X-Total-Size": str(reader.total)}
    if sha256 and offset == 0 and length == reader.total:
        headers["X-Checksum-Sha256"] = sha256
    return StreamingResponse(
        reader.iter_range(offset, length), media_type="application/octet-stream", headers=headers
    )
