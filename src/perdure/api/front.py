"""The server's front: what every HTTP request goes through before and after its route (issue 22).

In order: the HTTP request metrics and the access log time the request and note its answer (they see
every request, refused ones too); a NUL in the path or query is refused; the caller is authenticated
(:mod:`perdure.api.auth`) and admin-only reads are refused to others (:mod:`perdure.api.readguard`); a
body is bounded in size and time (:mod:`perdure.api.limits`); then a worker call goes straight to its
handler (:mod:`perdure.api.fastpath`) and anything else to FastAPI's routing.

These were seven middleware layers, each a coroutine per request and three of them wrapping ``send``;
on a worker's report they cost as much CPU as the report's handler. Here they are one layer that calls
each module's function in turn, with one ``send`` wrapper, and ``receive`` wrapped only for a body.
"""

from __future__ import annotations

import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perdure.api import accesslog, auth, fastpath, limits, readguard
from perdure.api.context import ServerContext
from perdure.api.envelope import error_for
from perdure.metrics.prometheus import http_metrics


class FrontMiddleware:
    def __init__(self, app: ASGIApp, context: ServerContext) -> None:
        self.app = app
        self.context = context
        self.metrics = http_metrics()
        self.body_timeout_s = limits.body_timeout_s()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = _Answer(send)
        try:
            refusal = nul_refusal(scope)
            if refusal is None:
                effective = self.context.config.effective
                caller = auth.caller_without_credentials(scope, effective.security)
                if caller is None:
                    found = await auth.authenticate(scope, self.context)
                    if isinstance(found, Response):
                        await found(scope, receive, answer)
                        return
                    caller = found
                scope.setdefault("state", {})["principal"] = caller
                refusal = readguard.refusal(scope, caller, effective)
            if refusal is not None:
                await refusal(scope, receive, answer)
                return
            app = fastpath.app_for(scope) or self.app
            if limits.unbounded(scope):
                await app(scope, receive, answer)
            else:
                await limits.bounded(app, scope, receive, answer, self.context.settings, self.body_timeout_s)
        finally:
            seconds = time.perf_counter() - started
            # By route template, not raw path, which would make a series per job id.
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.metrics.observe(scope["method"], route, answer.status, seconds)
            accesslog.write(scope, answer.status, answer.sent, seconds)


def nul_refusal(scope: Scope) -> Response | None:
    """A NUL in a path or query value can never name anything, and PostgreSQL cannot take it: 400."""
    query: bytes = scope.get("query_string", b"")
    # A query value holds a NUL only as itself or as %00 (what decoding it would find).
    if "\x00" in scope["path"] or b"\x00" in query or b"%00" in query:
        return error_for(scope["path"].replace("\x00", ""), 400, "NUL characters are not allowed")
    return None


class _Answer:
    """``send``, noting the status and body bytes of the answer for the metrics and the access log."""

    __slots__ = ("send", "sent", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500  # what is counted if the app raises before answering
        self.sent = 0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
        elif kind == "http.response.body":
            self.sent += len(message.get("body", b""))
        await self.send(message)


__all__ = ["FrontMiddleware", "nul_refusal"]
