"""Data and checkpoints in an S3 bucket (issue 21): the stores, and the presigned URLs that let a
worker read its inputs from and write its outputs to the bucket directly, so no data byte passes
through the server.

A checkout (and the ``next`` of a report) carries, when the data store is a bucket::

    "presigned": {
      "expires_in": 900,                       # seconds from the answer; store.s3.presignExpiry
      "inputs":  {"<file>": [{"url", "offset", "length", "size", "sha256"}, ...]},   # ranged GETs, in order
      "outputs": {"<file>": {"url", "key"}}    # one PUT each, to a key of this lease's own
    }

An input from an earlier task is the concatenation of its stored parts; a split part is the byte range
``[offset, offset + length)`` of each. After each PUT the worker records the output
(``POST /work/<id>/output/<file>?client=&key=&size=&sha256=``); the server checks the lease, that the
key is one it handed out for this workunit and file, and the object's size (and S3's own SHA-256 when
the store kept one), then records it exactly as an upload through the server would be. URLs that
expired while the work ran are renewed with ``GET /work/<id>/presigned?client=`` (lease holder only).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api import params
from perdure.api.auth import require_admin
from perdure.api.context import ServerContext, ctx
from perdure.api.envelope import ok
from perdure.api.workerauth import check_worker
from perdure.errors import BadRequest
from perdure.objectstore import S3BlobStore
from perdure.protocol import LeaseLost
from perdure.states import WorkunitState
from perdure.store.blobrefs import StoredPart, stored_parts
from perdure.store.outputs import blob_key
from perdure.store.workrequests import decode_workunit_id

router = APIRouter()

_TOKEN = re.compile(r"^@[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def s3_store(context: ServerContext) -> S3BlobStore | None:
    return context.blobs if isinstance(context.blobs, S3BlobStore) else None


def presigned(store: S3BlobStore, db: Any, workunit: dict[str, Any]) -> dict[str, Any]:
    """The URLs one workunit needs: ranged GETs of its inputs from earlier tasks, PUTs of its outputs."""
    job_id = str(workunit["jobid"])
    expires = store.config.presignExpiry
    origins = [
        (str(io["origin"]), str(io["filename"]))
        for io in workunit.get("inputs", [])
        if io.get("origin") and str(io.get("url", "")).startswith("/job/")
    ]
    stored = stored_parts(db, job_id, origins) if origins else {}
    part = workunit.get("part") or {}
    inputs: dict[str, list[dict[str, Any]]] = {}
    for (_origin, filename), parts in stored.items():
        if not parts:
            continue  # not stored (yet): the worker asks the server, which answers why
        if part.get("input") == filename:
            if "offset" not in part or "length" not in part:
                continue  # AWE's index/part form: the worker asks the server's node API for it
            window = (int(part["offset"]), int(part["length"]))
        else:
            window = (0, sum(p.size for p in parts))
        inputs[filename] = _segments(store, parts, window, expires)
    rank = int(workunit["rank"])
    outputs: dict[str, dict[str, str]] = {}
    for io in workunit.get("outputs", []):
        filename = str(io["filename"])
        base = blob_key(job_id, str(workunit["task_name"]), rank, filename)[: -len(filename)]
        key = f"{base}@{secrets.token_hex(16)}/{filename}"
        outputs[filename] = {"url": store.presign_put(key, expires), "key": key}
    return {"expires_in": expires, "inputs": inputs, "outputs": outputs}


def _segments(
    store: S3BlobStore, parts: list[StoredPart], window: tuple[int, int], expires: int
) -> list[dict[str, Any]]:
    """The byte range ``window`` of the parts' concatenation, as ranges of each part."""
    start, end = window[0], window[0] + window[1]
    segments = []
    position = 0
    for p in parts:
        part_start, part_end = position, position + p.size
        position = part_end
        low, high = max(start, part_start), min(end, part_end)
        if high <= low:
            continue
        segments.append(
            {
                "url": store.presign_get(p.key, expires),
                "offset": low - part_start,
                "length": high - low,
                "size": p.size,
                "sha256": p.sha256,
            }
        )
    return segments


async def with_presigned(context: ServerContext, workunit: dict[str, Any]) -> dict[str, Any]:
    """Add ``presigned`` to a checked-out workunit when the data store is a bucket."""
    store = s3_store(context)
    if store is not None:
        workunit["presigned"] = await run_in_threadpool(presigned, store, context.db, workunit)
    return workunit


@router.get(
    "/work/{work_id}/presigned",
    openapi_extra=oa.query(oa.client_param()),
    responses=oa.errors(400, 401, 403, 404, 409),
)
def renew(work_id: str, request: Request) -> JSONResponse:
    """Fresh URLs for the lease holder (the ones from the checkout expire while long work runs)."""
    client_id = request.query_params.get("client", "")
    if not client_id:
        raise BadRequest("missing client parameter")
    context = ctx(request)
    check_worker(request, client_id=client_id)
    store = s3_store(context)
    if store is None:
        raise BadRequest("the data store is not an object store: use the server's data routes")
    document = context.work.get(work_id)
    if document.get("client") != client_id or document.get("state") != WorkunitState.CHECKOUT.value:
        raise LeaseLost(f"workunit {decode_workunit_id(work_id)} is not checked out by client {client_id}")
    return ok(presigned(store, context.db, document))


@router.post(
    "/work/{work_id}/output/{filename:path}",
    openapi_extra=oa.query(
        oa.client_param(),
        oa.text("key", "The object key handed out for this output", required=True),
        oa.text("sha256", "The file's SHA-256 (64 hex digits)"),
        oa.integer("size", "The file's size in bytes", minimum=0),
    ),
    responses=oa.errors(400, 401, 403, 404, 409),
)
def record_direct_output(work_id: str, filename: str, request: Request) -> JSONResponse:
    """Record an output the lease holder put into the bucket with a presigned URL
    (``?client=&key=&size=&sha256=``)."""
    qp = request.query_params
    client_id = qp.get("client", "")
    if not client_id:
        raise BadRequest("missing client parameter")
    key = qp.get("key", "")
    sha256 = qp.get("sha256", "")
    if not _SHA256.match(sha256):
        raise BadRequest("sha256 must be 64 hexadecimal digits")
    size = params.integer(qp, "size", -1, minimum=0)
    context = ctx(request)
    check_worker(request, client_id=client_id)
    store = s3_store(context)
    if store is None:
        raise BadRequest("the data store is not an object store: upload with PUT to this path")
    _job_id, target = context.work.output_target(work_id, client_id, filename)
    base = target[: -len(filename)]
    token = key[len(base) : -len(filename) - 1] if key.startswith(base) else ""
    if not key.endswith("/" + filename) or not _TOKEN.match(token):
        raise BadRequest(f"key {key!r} is not one handed out for output {filename!r} of this workunit")
    stored_size, stored_sha = store.head(key)  # NotFound (404) if the PUT never arrived
    if stored_size != size:
        raise BadRequest(f"size mismatch: the store holds {stored_size} bytes, expected {size}")
    if stored_size > context.settings.max_output_bytes:
        raise BadRequest(f"output is larger than the limit of {context.settings.max_output_bytes} bytes")
    if stored_sha is not None and stored_sha != sha256.lower():
        raise BadRequest(f"checksum mismatch: the store holds sha256 {stored_sha}, expected {sha256}")
    # Fenced: refused (409) unless this client still holds the lease, in the same transaction.
    context.work.record_output(work_id, client_id, filename, key, stored_size, sha256.lower())
    return ok({"filename": filename, "size": stored_size, "sha256": sha256.lower()})


@router.get("/api/v1/store", responses=oa.errors(401, 403, management=True))
def store_status(request: Request) -> JSONResponse:
    """Where data lives, and how many data bytes passed through this server process."""
    require_admin(request, "see the data store")
    context = ctx(request)
    store = s3_store(context)
    if store is None:
        return JSONResponse({"kind": "directory"})
    return JSONResponse(
        {
            "kind": "s3",
            "bucket": store.bucket,
            "prefix": store.prefix,
            "endpoint": store.config.endpoint,
            "presignExpiry": store.config.presignExpiry,
            "bytesReceived": store.bytes_received,
            "bytesRead": store.bytes_read,
        }
    )


__all__ = ["presigned", "router", "s3_store", "with_presigned"]
