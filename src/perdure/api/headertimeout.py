"""Slow request headers are cut off (issue 17): headers that have not all arrived within
``perdure.headerTimeout`` are answered 408 and the connection is closed.

uvicorn bounds the idle time between two requests (``timeout_keep_alive``) but not the time a
request's headers take, nor how long a new connection may stay silent: a client sending a header
byte now and then (slowloris) would hold its connection for ever, and enough such clients every
connection the server can take. The clock starts when the connection is made or a request's first
byte arrives, and stops when its headers are complete; bodies are bounded by ``api/limits.py``.

``perdure server`` uses this protocol (uvicorn's httptools one plus the clock); another uvicorn in
front of ``perdure.api.app:app_from_env`` gets it with ``--http
perdure.api.headertimeout:HeaderTimeoutProtocol``. The timeout reaches each server process in
``PERDURE_HEADER_TIMEOUT_S``, set by ``perdure server`` from the configuration.
"""

from __future__ import annotations

import asyncio
import functools
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ENV = "PERDURE_HEADER_TIMEOUT_S"
DEFAULT_S = 10.0
_ANSWER = b"request headers not received in time\n"
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_ANSWER)
    + _ANSWER
)


@functools.cache
def header_timeout_s() -> float:
    try:
        return max(0.1, float(os.environ.get(ENV, DEFAULT_S)))
    except ValueError:
        return DEFAULT_S


class HeaderTimeoutProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(header_timeout_s(), self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


__all__ = ["ENV", "HeaderTimeoutProtocol", "header_timeout_s"]
