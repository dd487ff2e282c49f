"""``/client``: registration, heartbeat, listing, suspension and deletion of workers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api import params
from perdure.api.auth import principal, require_admin
from perdure.api.context import ctx
from perdure.api.envelope import ok
from perdure.api.workerauth import cg_token_given, check_worker
from perdure.duration import format_duration
from perdure.errors import BadRequest, NotImplementedOp
from perdure.store.clients import parse_profile

router = APIRouter()
#: A profile is a few hundred bytes; refuse anything absurd.
MAX_PROFILE_BYTES = 1024 * 1024


@router.post("/client", openapi_extra=oa.query(body=oa.PROFILE_BODY), responses=oa.errors(400, 401, 403))
async def register(request: Request) -> JSONResponse:
    raw = await _profile_bytes(request)
    profile = parse_profile(raw)
    await run_in_threadpool(check_worker, request, group=profile.group)
    return ok(await run_in_threadpool(ctx(request).clients.register, profile))


async def _profile_bytes(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await request.body()
    elif content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=2, max_fields=8, max_part_size=MAX_PROFILE_BYTES)
        except ClientDisconnect:
            raise  # the client went away: not a malformed body
        except Exception as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        try:
            item = form.get("profile")
            if item is None:
                raise BadRequest("no client profile (multipart field 'profile') is submitted")
            body = await item.read(MAX_PROFILE_BYTES + 1) if isinstance(item, UploadFile) else item.encode()
        finally:
            await form.close()
    else:
        raise BadRequest("no client profile (multipart field 'profile') is submitted")
    if len(body) > MAX_PROFILE_BYTES:
        raise BadRequest("client profile is too large")
    return body


@router.get(
    "/client",
    openapi_extra=oa.query(
        oa.flag("busy", "Only clients running work"),
        oa.text("group", "Only this client group"),
        oa.text("status", "Only clients of this status"),
        oa.text("app", "Only clients that run this app"),
    ),
    responses=oa.errors(400, 401),
)
def list_clients(request: Request) -> JSONResponse:
    qp = request.query_params
    documents = ctx(request).clients.find(
        busy=params.flag(qp, "busy"),
        group=qp.get("group") or None,
        status=qp.get("status") or None,
        app=qp.get("app") or None,
    )
    return ok(documents)


@router.get("/client/{client_id}")
def get_client(client_id: str, request: Request) -> JSONResponse:
    context = ctx(request)
    if params.flag(request.query_params, "heartbeat"):
        check_worker(request, client_id=client_id)
        return ok({**context.clients.heartbeat(client_id, None), **_settings_for_workers(request)})
    if cg_token_given(request):
        check_worker(request, client_id=client_id)  # issue 17: a group's token reads its own clients only
    return ok(context.clients.get(client_id))


@router.put(
    "/client/{client_id}",
    openapi_extra=oa.query(
        oa.flag("heartbeat", "A worker's heartbeat"),
        oa.flag("suspend", "Suspend the client"),
        oa.flag("resume", "Resume the client"),
    ),
    responses=oa.errors(400, 401, 403, 404, 501),
)
async def update_client(client_id: str, request: Request) -> JSONResponse:
    qp = request.query_params
    context = ctx(request)
    if params.flag(qp, "heartbeat"):
        current = _current_work(await request.body())
        await run_in_threadpool(check_worker, request, client_id=client_id)
        instructions = await run_in_threadpool(context.clients.heartbeat, client_id, current)
        return ok({**instructions, **_settings_for_workers(request)})
    if params.flag(qp, "suspend"):
        require_admin(request, "suspend clients")
        return ok(await run_in_threadpool(context.clients.suspend, client_id))
    if params.flag(qp, "resume"):
        require_admin(request, "resume clients")
        return ok(await run_in_threadpool(context.clients.resume, client_id))
    raise NotImplementedOp("Not Implemented")


def _settings_for_workers(request: Request) -> dict[str, str]:
    """What workers follow from the configuration, handed over at every heartbeat (string values,
    as AWE's instruction map has): the checkpoint settings and the heartbeat interval and TTL."""
    store = ctx(request).config
    node = store.effective.node
    return {
        "ckpt": json.dumps(store.checkpoint_settings(), separators=(",", ":")),
        "heartbeat": format_duration(node.heartbeat),
        "ttl": format_duration(node.ttl),
    }


def _current_work(body: bytes) -> list[str] | None:
    """``{"busy": bool, "current_work": {"data": [ids]}}``; an empty body reports nothing."""
    if not body.strip():
        return None
    try:
        document: Any = json.loads(body)
    except ValueError:
        raise BadRequest("heartbeat body must be JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("heartbeat body must be a JSON object")
    current = document.get("current_work", {})
    data = current.get("data", []) if isinstance(current, dict) else current
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(w, str) and "\x00" not in w for w in data):
        raise BadRequest("current_work.data must be a list of workunit ids")
    return data


@router.put(
    "/client",
    openapi_extra=oa.query(
        oa.flag("suspendall", "Suspend every client"), oa.flag("resumeall", "Resume every client")
    ),
    responses=oa.errors(400, 401, 403, 501),
)
def update_clients(request: Request) -> JSONResponse:
    require_admin(request, "suspend or resume clients")
    qp = request.query_params
    context = ctx(request)
    if params.flag(qp, "suspendall"):
        return ok(context.clients.suspend_all())
    if params.flag(qp, "resumeall"):
        return ok(context.clients.resume_all())
    raise NotImplementedOp("Not Implemented")


@router.delete("/client/{client_id}")
def delete_client(client_id: str, request: Request) -> JSONResponse:
    """An admin removes a client, or a worker leaves (its own group's token)."""
    if principal(request).kind == "worker" or cg_token_given(request):
        check_worker(request, client_id=client_id)
    else:
        require_admin(request, "delete clients")
    return ok(ctx(request).clients.delete(client_id))
