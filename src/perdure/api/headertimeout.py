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
    """uvicorn's httptools protocol with a clock on request headers.

    The clock is one timer per connection, not one per request: a request's first byte notes the time
    (and arms the timer if none is pending), its complete headers clear it, and a timer that finds
    headers still awaited re-arms itself for what is left of their time, or answers 408. A kept-alive
    connection then costs a timer every ``header_timeout_s`` rather than two timer operations per
    request (issue 22).
    """

    _header_timer: asyncio.TimerHandle | None = None
    #: When the headers now awaited started to be (loop time), or None while none are.
    _headers_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_since = self.loop.time()
        self._arm(header_timeout_s())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._headers_since is None:  # the next request on a kept-alive connection
            self._headers_since = self.loop.time()
            if self._header_timer is None:
                self._arm(header_timeout_s())

    def on_headers_complete(self) -> None:
        self._headers_since = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_since = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm(self, delay: float) -> None:
        self._header_timer = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._header_timer = None
        since = self._headers_since
        if since is None:
            return  # no headers awaited now: the next request's first byte arms the clock again
        left = since + header_timeout_s() - self.loop.time()
        if left > 0:
            self._arm(left)
        elif not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


__all__ = ["ENV", "HeaderTimeoutProtocol", "header_timeout_s"]
