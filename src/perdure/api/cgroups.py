"""``/cgroup``: client groups and the tokens their workers present (AWE's clientgroup API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api.auth import require_admin
from perdure.api.context import ctx
from perdure.api.envelope import ok
from perdure.errors import BadRequest

router = APIRouter()


@router.post("/cgroup/{name}", responses=oa.errors(400, 401, 403))
def create_group(name: str, request: Request) -> JSONResponse:
    """Create a group; the reply carries its token, shown this once (only a hash is kept)."""
    require_admin(request, "manage client groups")
    if ".." in name:
        # A group name ends up in paths (worker install scripts, node directories): no "..".
        raise BadRequest("client group names must not contain '..'")
    return ok(ctx(request).clients.group_create(name))


@router.get("/cgroup", responses=oa.errors(401, 403))
def list_groups(request: Request) -> JSONResponse:
    return ok(ctx(request).clients.group_list())


@router.get("/cgroup/{ref}", responses=oa.errors(401, 403, 404))
def get_group(ref: str, request: Request) -> JSONResponse:
    return ok(ctx(request).clients.group_get(ref))


@router.delete("/cgroup/{ref}", responses=oa.errors(401, 403, 404))
def delete_group(ref: str, request: Request) -> JSONResponse:
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_delete(ref))


@router.put("/cgroup/{ref}/token", responses=oa.errors(401, 403, 404))
def new_token(ref: str, request: Request) -> JSONResponse:
    """Issue a new token (the old one stops working)."""
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_new_token(ref))


@router.delete("/cgroup/{ref}/token", responses=oa.errors(401, 403, 404))
def revoke_token(ref: str, request: Request) -> JSONResponse:
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_revoke_token(ref))
