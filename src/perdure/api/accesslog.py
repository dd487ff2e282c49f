"""One access-log line per request: time, client, user, method, path, status, bytes, duration."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perdure.logescape import escape_quoted
from perdure.logs import ACCESS_LOGGER, redact_query

log = logging.getLogger(ACCESS_LOGGER)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            client = scope.get("client")
            principal = scope.get("state", {}).get("principal")
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + (f"?{redact_query(query)}" if query else "")
            log.info(
                '%s %s %s "%s %s" %d %d %.1fms',
                time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                client[0] if client else "-",
                escape_quoted(str(getattr(principal, "user", "-"))),
                escape_quoted(scope["method"]),
                escape_quoted(path),
                status,
                sent,
                (time.perf_counter() - started) * 1000,
            )
