"""Worker nodes: the management API's node list and node logs, and the calls nodes make to fill them.

``/api/v1/*`` errors take the management shape through the app's handler. ``/nodes/...`` is outside
``/api/`` but belongs to the management API too, so its errors are built here; and every failure
there is a plain 404, so a probe learns nothing about which nodes or files exist.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, Response

from perdure.api import openapi as oa
from perdure.api.context import ctx
from perdure.api.envelope import mgmt_error
from perdure.api.groupscope import check_node_scope
from perdure.api.workerauth import check_worker
from perdure.errors import BadRequest, DomainError
from perdure.store.clients import GROUP_PATTERN
from perdure.store.nodes import MAX_FILE_BYTES, NodeStore, check_node_id

router = APIRouter()
#: A node report is small; a file upload is a 1 MiB tail plus slack for a worker that rounds up.
MAX_REPORT_BYTES = 256 * 1024
MAX_UPLOAD_BYTES = MAX_FILE_BYTES + 64 * 1024


def node_store(request: Request) -> NodeStore:
    """One store per server context, made on first use (the TTL is read live from the settings)."""
    context = ctx(request)
    store: NodeStore | None = getattr(request.app.state, "perdure_node_store", None)
    if store is None or store.db is not context.db:
        settings = context.settings
        store = NodeStore(context.db, lambda: settings.node_ttl_s, settings.data_dir / "blobs")
        request.app.state.perdure_node_store = store
    return store


# ---- management API --------------------------------------------------------------------------


@router.get("/api/v1/node", responses=oa.errors(401, 403, management=True))
def list_nodes(request: Request) -> JSONResponse:
    return JSONResponse(node_store(request).running())


@router.get("/api/v1/nodes/{node_id}/files", responses=oa.errors(400, 401, 403, 404, management=True))
def list_files(node_id: str, request: Request) -> JSONResponse:
    return JSONResponse(node_store(request).files(node_id))


@router.get("/nodes/{rest:path}", responses=oa.errors(400, 401, 403, 404, management=True))
@router.head("/nodes/{rest:path}", include_in_schema=False)  # one operation id per method in the schema
def read_file(rest: str, request: Request) -> Response:
    """``/nodes/<nodeID>/<path on the node>``: an advertised, shipped file, else 404."""
    node_id, _, path = rest.partition("/")
    try:
        data = node_store(request).read_file(node_id, "/" + path)
    except DomainError:
        return mgmt_error(404, "Not Found")
    return PlainTextResponse(data.decode("utf-8", errors="replace"))


# ---- worker calls ----------------------------------------------------------------------------


@router.put(
    "/api/v1/nodes/{node_id}",
    openapi_extra=oa.query(
        body=oa.json_body(
            '{"info": {...}, "files": ["/abs/path"], "group": "<optional>"}', oa.NODE_REPORT_SCHEMA
        )
    ),
    responses=oa.errors(400, 401, 403, management=True),
)
async def report_node(node_id: str, request: Request) -> JSONResponse:
    """Body ``{"info": {...}, "files": ["/abs/path", ...], "group": "<optional>"}``."""
    check_node_id(node_id)
    body = _json_object(await _body(request, MAX_REPORT_BYTES))
    group = body.get("group")
    if group is not None and not (isinstance(group, str) and _is_group(group)):
        raise BadRequest("group must be a client group name")
    await run_in_threadpool(check_worker, request, group=group)
    await run_in_threadpool(check_node_scope, request, node_id)
    info = body.get("info", {})
    files = body.get("files", [])
    return JSONResponse(await run_in_threadpool(node_store(request).upsert, node_id, info, files))


@router.put(
    "/api/v1/nodes/{node_id}/files",
    openapi_extra=oa.query(
        oa.text("path", "The file's absolute path on the node", required=True),
        body=oa.binary_body("The file's tail (at most 1 MiB is kept)"),
    ),
    responses=oa.errors(400, 401, 403, management=True),
)
async def upload_file(node_id: str, request: Request) -> JSONResponse:
    """``?path=<absolute path>``; the raw body is the file's tail (at most 1 MiB is kept)."""
    check_node_id(node_id)
    path = request.query_params.get("path", "")
    if not path:
        raise BadRequest("path is required")
    await run_in_threadpool(check_worker, request, group=None)
    await run_in_threadpool(check_node_scope, request, node_id)
    data = await _body(request, MAX_UPLOAD_BYTES)
    return JSONResponse(await run_in_threadpool(node_store(request).save_file, node_id, path, data))


async def _body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes, refusing larger bodies without reading them whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> dict[str, Any]:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(raw, parse_constant=refuse)
    except (ValueError, RecursionError):
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def _is_group(name: str) -> bool:
    return bool(re.fullmatch(GROUP_PATTERN, name))


__all__ = ["node_store", "router"]
