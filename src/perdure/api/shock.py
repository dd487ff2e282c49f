"""A Shock-compatible subset of the node API, for AWE's worker (issue 19).

``GET /node/<id>`` (the node JSON), ``GET /node/<id>?download[&index=<type>&part=<a-b>]`` (its bytes,
or units a..b of an index), ``PUT /node/<id>`` (multipart, chunked or not: field ``upload`` for a
basic node, ``<rank>`` for a part of a parts node, ``attributes``/``attributes_str`` for its
attributes) and ``PUT /node/<id>/index/<type>``. Replies are in Shock's envelope
``{"status", "data", "error"}``. Nodes are created by the server when a task is queued
(``store/shock.py``); there is no ``POST /node``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, StreamingResponse

from perdure.api import openapi as oa
from perdure.api.auth import check_job_access
from perdure.api.context import ServerContext, ctx
from perdure.api.envelope import ok
from perdure.api.leasecaps import check_node_read, needs_capability, openapi_param
from perdure.datastore import CHUNK, ConcatReader
from perdure.errors import BadRequest
from perdure.store import shock
from perdure.timeutil import now_us

router = APIRouter()

#: Node attributes are small JSON documents.
MAX_ATTRIBUTES_BYTES = 1024 * 1024
_NO_FILE = "Node has no file"  # Shock's words; AWE's worker retries a download on them


def _node(context: ServerContext, node_id: str) -> tuple[shock.ShockNode, list[Any]]:
    with context.db.read() as conn:
        node = shock.get(conn, node_id)
        return node, shock.stored_parts(conn, node)


def _readable(request: Request, node_id: str) -> tuple[shock.ShockNode, list[Any]]:
    node, parts = _node(ctx(request), node_id)
    if needs_capability(request):  # a worker reads only what its workunit's capability names
        check_node_read(request, node_id)
    else:
        check_job_access(request, node.job_id)
    return node, parts


@router.get(
    "/node/{node_id}",
    openapi_extra=oa.query(
        oa.flag("download", "The file's bytes instead of the node document"),
        oa.text("index", "With ?download: an index type (e.g. line)"),
        oa.text("part", "With ?download and index: the parts, e.g. 1-10"),
        openapi_param(),
    ),
    responses=oa.errors(400, 401, 403, 404),
)
async def get_node(node_id: str, request: Request) -> Any:
    qp = request.query_params
    node, parts = await run_in_threadpool(_readable, request, node_id)
    if "download" not in qp:
        if "index" in qp or "part" in qp:
            raise BadRequest("index and part select a part of a download: add ?download")
        return ok(shock.document(node, parts))
    if not shock.is_complete(node, parts):
        raise BadRequest(_NO_FILE)
    context = ctx(request)
    reader = ConcatReader(context.blobs, [p.blob_key for p in parts])
    index, part = qp.get("index"), qp.get("part")
    offset, length = 0, reader.total
    if index is not None or part is not None:
        if not index or not part:
            raise BadRequest("a part of a download needs both index and part (e.g. index=line&part=1-10)")
        units = await run_in_threadpool(shock.index_units, node, index, reader)
        offset, length = shock.part_range(units, part, index)
    headers = {
        "Content-Length": str(length),
        "Content-Disposition": f'attachment; filename="{_header_safe(node.filename)}"',
    }
    return StreamingResponse(
        reader.iter_range(offset, length), media_type="application/octet-stream", headers=headers
    )


def _header_safe(name: str) -> str:
    return "".join(c if c.isprintable() and c not in '"\\' else "_" for c in name.rsplit("/", 1)[-1])


def _credential(request: Request) -> str | None:
    """The data token AWE's worker sends: ``Authorization: OAuth <token>`` (or ``<type> <token>``)."""
    return request.headers.get("authorization", "").strip() or None


@router.put(
    "/node/{node_id}",
    openapi_extra=oa.query(oa.text("client", "The uploading worker's client id"), body=oa.NODE_UPLOAD_BODY),
    responses=oa.errors(400, 401, 403, 404),
)
async def put_node(node_id: str, request: Request) -> JSONResponse:
    """An AWE worker's upload: ``upload`` (rank 0, basic node) or ``<rank>`` (a part), multipart."""
    context = ctx(request)
    node, _ = await run_in_threadpool(_node, context, node_id)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("a node upload must be multipart/form-data")
    client_id = request.query_params.get("client") or None
    credential = _credential(request)
    # Refuse before the bytes arrive: the lease itself when the rank is known already (a basic
    # node), else that some workunit of the task is leased at all; the rank's lease is checked after.
    if node.parts == 0:
        await run_in_threadpool(_check_lease, context, node, 0, client_id, credential)
    else:
        await run_in_threadpool(_check_any_lease, context, node)
    try:
        form = await request.form(max_files=8, max_fields=16, max_part_size=MAX_ATTRIBUTES_BYTES)
    except Exception as exc:  # python-multipart raises several types for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        upload, rank, attributes = _upload_fields(form, node)
        if upload is None and attributes is None:
            raise BadRequest("nothing to upload: send a file in the field 'upload' or '<part number>'")
        target = await run_in_threadpool(_check_lease, context, node, rank, client_id, credential)
        size = sha256 = None
        if upload is not None:
            size, sha256 = await run_in_threadpool(_store_bytes, context, upload, target.blob_key)
        await run_in_threadpool(_record, context, target, size, sha256, attributes, client_id, credential)
    finally:
        await form.close()
    node, parts = await run_in_threadpool(_node, context, node_id)
    return ok(shock.document(node, parts))


def _upload_fields(form: Any, node: shock.ShockNode) -> tuple[UploadFile | None, int, Any]:
    upload: UploadFile | None = None
    rank = 0
    attributes: Any = None
    for name, value in form.multi_items():
        if name == "attributes" and isinstance(value, UploadFile):
            attributes = _attributes(value.file.read(MAX_ATTRIBUTES_BYTES + 1))
        elif name == "attributes_str" and isinstance(value, str):
            attributes = _attributes(value.encode())
        elif name == "upload" or name.isdigit():
            if not isinstance(value, UploadFile):
                raise BadRequest(f"field {name!r} must be a file")
            if upload is not None:
                raise BadRequest("one file per upload")
            upload, rank = value, 0 if name == "upload" else int(name)
            if name == "upload" and node.parts:
                raise BadRequest(
                    f"node {node.id} is a parts node: upload each part in a field named by its rank"
                )
        elif name in ("parts", "file_name", "upload_type"):
            continue  # Shock's node creation fields: the server made this node already
        else:
            raise BadRequest(f"unsupported field {name!r} in a node upload")
    return upload, rank, attributes


def _attributes(raw: bytes) -> Any:
    if len(raw) > MAX_ATTRIBUTES_BYTES:
        raise BadRequest(f"node attributes are larger than {MAX_ATTRIBUTES_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"node attributes are not JSON: {exc}") from None


def _check_lease(
    context: ServerContext, node: shock.ShockNode, rank: int, client_id: str | None, credential: str | None
) -> shock.UploadTarget:
    with context.db.read() as conn:
        return shock.check_upload_lease(conn, node, rank, client_id=client_id, credential=credential)


def _check_any_lease(context: ServerContext, node: shock.ShockNode) -> None:
    with context.db.read() as conn:
        shock.check_any_lease(conn, node)


def _store_bytes(context: ServerContext, upload: UploadFile, key: str) -> tuple[int, str]:
    pending = context.blobs.begin(key, context.settings.max_output_bytes)
    try:
        upload.file.seek(0)
        while chunk := upload.file.read(CHUNK):
            pending.write(chunk)
        info = pending.commit(None)
    except BaseException:
        pending.discard()
        raise
    return info.size, info.sha256


def _record(
    context: ServerContext,
    target: shock.UploadTarget,
    size: int | None,
    sha256: str | None,
    attributes: Any,
    client_id: str | None,
    credential: str | None,
) -> None:
    with context.db.write() as conn:
        # The lease again, now that the bytes are in: it may have been lost while they arrived.
        target = shock.check_upload_lease(
            conn, target.node, target.rank, client_id=client_id, credential=credential
        )
        if size is None or sha256 is None:
            shock.record_attributes(conn, target.node, attributes)
            return
        shock.record_upload(conn, target, size=size, sha256=sha256, attributes=attributes, now=now_us())


@router.put("/node/{node_id}/index/{index_type}", responses=oa.errors(400, 401, 403, 404))
async def put_index(node_id: str, index_type: str, request: Request) -> JSONResponse:
    """Build an index (``line``, ``record``, ``size``, ``chunkrecord``), as AWE's worker asks for an
    output's ``shockindex``."""
    context = ctx(request)
    if index_type not in shock.INDEX_TYPES:
        raise BadRequest(f"unsupported index type {index_type!r} (types: {', '.join(shock.INDEX_TYPES)})")
    node, parts = await run_in_threadpool(_readable, request, node_id)
    if not shock.is_complete(node, parts):
        raise BadRequest(_NO_FILE)
    reader = ConcatReader(context.blobs, [p.blob_key for p in parts])
    units = await run_in_threadpool(shock.index_units, node, index_type, reader)

    def save() -> None:
        with context.db.write() as conn:
            shock.set_index(conn, shock.get(conn, node_id), index_type, units, now_us())

    await run_in_threadpool(save)
    node, parts = await run_in_threadpool(_node, context, node_id)
    return ok(shock.document(node, parts))
