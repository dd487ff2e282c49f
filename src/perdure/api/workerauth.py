"""Clientgroup tokens on worker calls: ``Authorization: CG_TOKEN <token>``."""

from __future__ import annotations

from starlette.requests import Request

from perdure.api.context import ctx
from perdure.errors import Unauthorized


def cg_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.upper() != "CG_TOKEN" or not token.strip():
        raise Unauthorized("Invalid Auth Header")
    return token.strip()


def check_worker(request: Request, *, client_id: str | None = None, group: str | None = None) -> None:
    """Refuse a worker call whose token is missing (when required), wrong, or of another group."""
    context = ctx(request)
    if group is None and client_id is not None:
        group = context.clients.group_of(client_id)
    context.clients.check_token(cg_token(request), group, required=context.settings.client_auth_required)
