"""Clientgroup tokens on worker calls: ``Authorization: CG_TOKEN <token>``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from perdure.api.context import ServerContext, ctx
from perdure.errors import Forbidden, Unauthorized


def cg_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.upper() != "CG_TOKEN" or not token.strip():
        raise Unauthorized("Invalid Auth Header")
    return token.strip()


def cg_token_given(request: Request) -> bool:
    return request.headers.get("authorization", "").upper().startswith("CG_TOKEN ")


def check_worker(request: Request, *, client_id: str | None = None, group: str | None = None) -> None:
    """Refuse a worker call whose token is missing (when required), wrong, or of another group."""
    context = ctx(request)
    caller = getattr(request.state, "principal", None)
    if caller is not None and caller.kind == "user":
        if caller.admin:
            return  # with security on, an admin's verified token may act as a worker
        # Anyone else would see other users' commands, inputs and data tokens.
        raise Forbidden("worker calls need a clientgroup token (Authorization: CG_TOKEN …) or an admin")
    required = _tokens_required(context)
    token = cg_token(request)
    if token is None and not required:
        return  # the common open setup: no token to check, so no lookup either
    if group is None and client_id is not None:
        group = context.clients.group_of(client_id)
    context.clients.check_token(token, group, required=required)


async def check_worker_async(request: Request, *, client_id: str) -> None:
    """``check_worker`` from the event loop: in a thread only when there is a token to look up."""
    if _tokens_required(ctx(request)) or request.headers.get("authorization"):
        await run_in_threadpool(check_worker, request, client_id=client_id)
    else:
        check_worker(request, client_id=client_id)


def _tokens_required(context: ServerContext) -> bool:
    return context.settings.client_auth_required or context.config.effective.security.cognito.enabled
