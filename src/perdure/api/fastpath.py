"""Worker calls straight to their handlers.

On a busy server nearly every request is a worker's checkout (``GET /work?client=``), report
(``PUT /work/<id>``) or deletion of a finished workunit's checkpoints (``DELETE /work/<id>/ckpt``),
and FastAPI's routing and dependency machinery cost those more CPU than their handlers. The server's
front (:mod:`perdure.api.front`), once the access log, the HTTP metrics, NUL refusal, authentication
and the body limits have had their say, hands those requests to the very functions their routes call,
and errors are answered as the app's exception handlers would. The routes stay, for the API documentation and
for any request this does not take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from perdure.api import spot, work
from perdure.api.errors import response_for

Handler = Callable[[Request], Awaitable[Response]]


def app_for(scope: Scope) -> ASGIApp | None:
    """The ASGI app answering the worker call of ``scope`` through its handler, or None (not one)."""
    handler = _handler(scope)
    if handler is None:
        return None

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            response = response_for(request, exc)
        await response(scope, receive, send)

    return answer


def _handler(scope: Scope) -> Handler | None:
    path: str = scope["path"]
    method: str = scope["method"]
    if method == "GET" and path == "/work" and b"client=" in scope["query_string"]:
        return work.checkout_or_list
    if method == "PUT" and path.startswith("/work/"):
        work_id = path[len("/work/") :]
        if work_id and "/" not in work_id:
            return lambda request: work.update_work(work_id, request)
    if method == "DELETE" and path.startswith("/work/") and path.endswith("/ckpt"):
        work_id = path[len("/work/") : -len("/ckpt")]
        if work_id and "/" not in work_id:
            return lambda request: spot.delete_checkpoints(work_id, request)
    return None
