"""``/cgroup``: client groups and the tokens their workers present (AWE's clientgroup API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from perdure.api.auth import require_admin
from perdure.api.context import ctx
from perdure.api.envelope import ok
from perdure.errors import BadRequest

router = APIRouter()


@router.post("/cgroup/{name}")
def create_group(name: str, request: Request) -> JSONResponse:
    """Create a group; the reply carries its token, shown this once (only a hash is kept)."""
    require_admin(request, "manage client groups")
    if ".." in name:
        # A group name ends up in paths (worker install scripts, node directories): no "..".
        raise BadRequest("client group names must not contain '..'")
    return ok(ctx(request).clients.group_create(name))


@router.get("/cgroup")
def list_groups(request: Request) -> JSONResponse:
    return ok(ctx(request).clients.group_list())


@router.get("/cgroup/{ref}")
def get_group(ref: str, request: Request) -> JSONResponse:
    return ok(ctx(request).clients.group_get(ref))


@router.delete("/cgroup/{ref}")
def delete_group(ref: str, request: Request) -> JSONResponse:
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_delete(ref))


@router.put("/cgroup/{ref}/token")
def new_token(ref: str, request: Request) -> JSONResponse:
    """Issue a new token (the old one stops working)."""
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_new_token(ref))


@router.delete("/cgroup/{ref}/token")
def revoke_token(ref: str, request: Request) -> JSONResponse:
    require_admin(request, "manage client groups")
    return ok(ctx(request).clients.group_revoke_token(ref))
