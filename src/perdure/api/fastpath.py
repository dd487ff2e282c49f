"""Worker calls straight to their handlers.

On a busy server nearly every request is a worker's checkout (``GET /work?client=``), report
(``PUT /work/<id>``) or deletion of a finished workunit's checkpoints (``DELETE /work/<id>/ckpt``),
and FastAPI's routing and dependency machinery cost those more CPU than their handlers. This
middleware, the innermost of the server's own (so the access log, the HTTP metrics, NUL refusal and
authentication all still apply), hands those requests to the very functions their routes call, and
answers errors as the app's exception handlers would. The routes stay, for the API documentation and
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


class WorkerFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = _handler(scope) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            response = response_for(request, exc)
        await response(scope, receive, send)


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
