"""Spot protection over HTTP: workers report checkpoints and restores, and keep checkpoints in the
server's store when they share no filesystem.

Every route acts for the client holding the workunit's lease (``?client=``), with its clientgroup
token when tokens are required, like a status report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from perdure.api import openapi as oa
from perdure.api import params
from perdure.api.context import ctx
from perdure.api.envelope import ok
from perdure.api.leasecaps import check_checkpoint_read, needs_capability, openapi_param
from perdure.api.workerauth import check_worker, check_worker_async
from perdure.errors import BadRequest, NotFound
from perdure.spot.manifest import CorruptCheckpoint, Manifest, valid_digest
from perdure.spot.records import CheckpointTaken, RestoreResult, parse
from perdure.spot.snapshot import CHUNK_SIZE
from perdure.spot.store import CheckpointMissing
from perdure.store.spot import collectable_jobs, lease_holder_job
from perdure.store.workrequests import decode_workunit_id

router = APIRouter()
T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

#: A manifest names every file of a tree: generous, but bounded.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 256 * 1024
MAX_COLLECT = 500


async def _client(request: Request) -> str:
    client_id = request.query_params.get("client", "")
    if not client_id:
        raise BadRequest("missing client parameter")
    await run_in_threadpool(check_worker, request, client_id=client_id)
    return client_id


async def _body(request: Request, limit: int) -> bytes:
    return await params.body_at_most(
        request, limit, BadRequest(f"body is larger than the limit of {limit} bytes")
    )


async def _in_store(call: Callable[..., T], *args: Any) -> T:
    """A checkpoint store call, its refusals in the API's shape: 404 for what is not there, 400 for a
    bad digest, name or manifest."""
    try:
        return await run_in_threadpool(call, *args)
    except CheckpointMissing as exc:
        raise NotFound(str(exc)) from None
    except (ValueError, CorruptCheckpoint) as exc:
        raise BadRequest(str(exc)) from None


async def _record(
    request: Request, work_id: str, model: type[R], what: str, store: Callable[[str, str, R], None]
) -> JSONResponse:
    """A record the lease holder sends about its workunit (a checkpoint, a restore), parsed and stored."""
    client_id = await _client(request)
    record = parse(model, await _body(request, MAX_RECORD_BYTES), what)
    await run_in_threadpool(store, decode_workunit_id(work_id), client_id, record)
    return ok("ok")


@router.post(
    "/work/{work_id}/checkpoints",
    openapi_extra=oa.query(oa.client_param(), body=oa.json_body("A checkpoint record")),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def checkpoint_taken(work_id: str, request: Request) -> JSONResponse:
    """A checkpoint of the running workunit was taken (or failed): the next restore starts from it."""
    return await _record(
        request, work_id, CheckpointTaken, "checkpoint record", ctx(request).spot.checkpoint_taken
    )


@router.post(
    "/work/{work_id}/restores",
    openapi_extra=oa.query(oa.client_param(), body=oa.json_body("A restore record")),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def restore_result(work_id: str, request: Request) -> JSONResponse:
    """The workunit was restored from its checkpoint (or the checkpoint was refused)."""
    return await _record(request, work_id, RestoreResult, "restore record", ctx(request).spot.restore_result)


# ---- the server's checkpoint store ----------------------------------------------------------------


async def _leased_job(request: Request, work_id: str) -> tuple[str, str]:
    client_id = await _client(request)
    wu_id = decode_workunit_id(work_id)
    job_id = await run_in_threadpool(lease_holder_job, ctx(request).db, wu_id, client_id)
    return job_id, wu_id


async def _readable_checkpoint(request: Request, work_id: str) -> tuple[str, str]:
    """A checkpoint read: the lease, and for a worker's token the lease's capability too (issue 17)."""
    job_id, wu_id = await _leased_job(request, work_id)
    if needs_capability(request):
        await run_in_threadpool(check_checkpoint_read, request, wu_id)
    return job_id, wu_id


@router.put(
    "/work/{work_id}/ckpt/chunks/{digest}",
    openapi_extra=oa.query(oa.client_param(), body=oa.binary_body("The chunk, whose SHA-256 is its digest")),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def put_chunk(work_id: str, digest: str, request: Request) -> JSONResponse:
    job_id, wu_id = await _leased_job(request, work_id)
    data = await _body(request, CHUNK_SIZE)
    if not valid_digest(digest):
        raise BadRequest(f"invalid chunk digest {digest!r}")
    if await run_in_threadpool(lambda: hashlib.sha256(data).hexdigest()) != digest:
        raise BadRequest(f"chunk {digest[:12]}… does not match its digest")
    written = await _in_store(ctx(request).checkpoints.put_chunk, job_id, wu_id, digest, data)
    return ok({"written": written})


@router.head(
    "/work/{work_id}/ckpt/chunks/{digest}",
    openapi_extra=oa.query(oa.client_param()),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def has_chunk(work_id: str, digest: str, request: Request) -> Response:
    job_id, wu_id = await _leased_job(request, work_id)
    present = await _in_store(ctx(request).checkpoints.has_chunk, job_id, wu_id, digest)
    return Response(status_code=200 if present else 404)


@router.get(
    "/work/{work_id}/ckpt/chunks/{digest}",
    openapi_extra=oa.query(oa.client_param(), openapi_param()),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def get_chunk(work_id: str, digest: str, request: Request) -> Response:
    job_id, wu_id = await _readable_checkpoint(request, work_id)
    data = await _in_store(ctx(request).checkpoints.get_chunk, job_id, wu_id, digest)
    return Response(data, media_type="application/octet-stream")


@router.put(
    "/work/{work_id}/ckpt/manifests/{name}",
    openapi_extra=oa.query(oa.client_param(), body=oa.json_body("A checkpoint manifest")),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def put_manifest(work_id: str, name: str, request: Request) -> JSONResponse:
    job_id, wu_id = await _leased_job(request, work_id)
    data = await _body(request, MAX_MANIFEST_BYTES)
    try:
        manifest = Manifest.from_bytes(data)
    except CorruptCheckpoint as exc:
        raise BadRequest(f"invalid checkpoint manifest: {exc}") from None
    if manifest.name != name or manifest.identity.job != job_id or manifest.identity.workunit != wu_id:
        raise BadRequest("the manifest's name or identity does not match the URL")
    await _in_store(ctx(request).checkpoints.put_manifest, job_id, wu_id, manifest)
    return ok({"name": name})


@router.get(
    "/work/{work_id}/ckpt/manifests/{name}",
    openapi_extra=oa.query(oa.client_param(), openapi_param()),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def get_manifest(work_id: str, name: str, request: Request) -> Response:
    job_id, wu_id = await _readable_checkpoint(request, work_id)
    manifest = await _in_store(ctx(request).checkpoints.get_manifest, job_id, wu_id, name)
    return Response(manifest.to_bytes(), media_type="application/json")


@router.post(
    "/work/{work_id}/ckpt",
    openapi_extra=oa.query(
        oa.client_param(), oa.text("prune", "The checkpoint to keep; older ones go", required=True)
    ),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def prune(work_id: str, request: Request) -> JSONResponse:
    """``?prune=<name>``: keep only that checkpoint (and its chunks)."""
    job_id, wu_id = await _leased_job(request, work_id)
    keep = request.query_params.get("prune", "")
    if not keep:
        raise BadRequest("missing prune parameter (the checkpoint to keep)")
    await _in_store(ctx(request).checkpoints.prune, job_id, wu_id, keep)
    return ok("ok")


@router.delete(
    "/work/{work_id}/ckpt",
    openapi_extra=oa.query(oa.client_param()),
    responses=oa.errors(400, 401, 403, 404, 409),
)
async def delete_checkpoints(work_id: str, request: Request) -> JSONResponse:
    """The workunit finished: its checkpoints in the server's store are deleted (the lease holder only)."""
    # A worker calls this once per finished workunit (``api/fastpath.py`` routes it here): the lease
    # check and the deletion share one trip to a thread.
    client_id = request.query_params.get("client", "")
    if not client_id:
        raise BadRequest("missing client parameter")
    await check_worker_async(request, client_id=client_id)
    wu_id = decode_workunit_id(work_id)
    context = ctx(request)

    def delete() -> None:
        job_id = lease_holder_job(context.db, wu_id, client_id)
        context.checkpoints.delete_workunit(job_id, wu_id)

    await _in_store(delete)
    return ok("ok")


@router.get(
    "/checkpoints/collectable",
    openapi_extra=oa.query(oa.text("jobs", "Job ids, comma-separated (at most 500)")),
    responses=oa.errors(400, 401, 403),
)
async def collectable(request: Request) -> JSONResponse:
    """``?jobs=<id>,<id>``: which of these jobs' checkpoints nobody needs any more (gone, deleted, or
    completed unless diagnosisMode) — for nodes that collect a shared checkpoint store."""
    await run_in_threadpool(check_worker, request)
    job_ids = [j for j in request.query_params.get("jobs", "").split(",") if j]
    if len(job_ids) > MAX_COLLECT:
        raise BadRequest(f"at most {MAX_COLLECT} jobs per request")
    context = ctx(request)

    def find() -> list[str]:
        return collectable_jobs(context.db, job_ids, context.config.checkpoint_settings())

    return ok(await run_in_threadpool(find))
