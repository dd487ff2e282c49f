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
from collections.abc import Iterable
from typing import Any

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


#: Writes smaller than this wait for the end of the event loop's step, to leave with that step's others.
COALESCE_BYTES = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """A connection's transport that sends the small writes of one event-loop step in one system call.

    uvicorn writes a response's head and its body separately, and on a loopback or LAN connection each
    ``send`` (which wakes the client) costs more CPU than building a small response did (issue 22). The
    writes of one step are joined and sent at its end (``call_soon``), or when the response is complete
    (``flush``, from the protocol); once they reach ``COALESCE_BYTES`` they go at once, and a large write
    is neither held nor copied, so the transport's own flow control (``pause_writing``) still sees every
    byte. Closing sends what is held first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if len(data) >= COALESCE_BYTES:  # a large body: after what is held, and never copied
            self._send_held()
            self._transport.write(data)
            return
        if held is None:
            self._held = [bytes(data)]
            self._held_bytes = len(data)
            self._loop.call_soon(self._send_held)
            return
        held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= COALESCE_BYTES:
            self._send_held()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now, not at the end of the loop's step."""
        self._send_held()

    def _send_held(self) -> None:
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def abort(self) -> None:
        self._held = None
        self._held_bytes = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


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
        super().connection_made(CoalescingTransport(transport, self.loop))
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

    def on_response_complete(self) -> None:
        # The whole answer is written: it leaves now. Held to the end of the step, it waited for what the
        # request's coroutines do after it (the access log, the HTTP metrics, the middleware unwinding),
        # which at one request at a time is all on the client's clock (issue 22).
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()
        super().on_response_complete()

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


__all__ = ["ENV", "CoalescingTransport", "HeaderTimeoutProtocol", "header_timeout_s"]
