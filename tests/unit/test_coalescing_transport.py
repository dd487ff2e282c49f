"""What the server writes on a connection reaches it whole and in order, the small writes of one
event-loop step in one send; closing sends what is held first, and a connection already gone is
written nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from perdure.api.headertimeout import COALESCE_BYTES, CoalescingTransport, HeaderTimeoutProtocol


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_head_and_its_body_leave_in_one_send() -> None:
    async def scenario() -> list[bytes]:
        inner = Recorder()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert inner.sent == []  # held until the end of this step
        assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        return inner.sent

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


def test_a_large_body_goes_at_once_after_what_is_held() -> None:
    async def scenario() -> list[bytes]:
        inner = Recorder()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        big = b"x" * COALESCE_BYTES
        transport.write(b"head")
        transport.write(big)
        assert inner.sent == [b"head", big]
        transport.write(b"tail")
        await asyncio.sleep(0)
        return inner.sent

    assert asyncio.run(scenario())[2:] == [b"tail"]


def test_closing_sends_what_is_held_and_a_closed_connection_gets_nothing() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        closed_by_us = Recorder()
        transport = CoalescingTransport(closed_by_us, loop)
        transport.write(b"408")
        transport.close()
        gone = Recorder()
        lost = CoalescingTransport(gone, loop)
        lost.write(b"late")
        gone.closed = True  # the client went away before the step ended
        await asyncio.sleep(0)
        return closed_by_us.sent, gone.sent

    assert asyncio.run(scenario()) == ([b"408"], [])


def test_a_complete_answer_leaves_before_the_request_finishes_its_own_work() -> None:
    """Once its last byte is written the answer is sent, not held for what the app still does (the
    access log, the metrics) before the loop's step ends."""
    sent_when_done: list[list[bytes]] = []
    inner = Recorder()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        sent_when_done.append(list(inner.sent))  # the app's work after its answer, in the same step

    async def scenario() -> None:
        config = Config(app=app, lifespan="off", log_config=None)
        config.load()
        protocol = HeaderTimeoutProtocol(config=config, server_state=ServerState(), app_state={})
        inner.get_extra_info = lambda name, default=None: default  # type: ignore[method-assign]
        protocol.connection_made(inner)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        protocol.connection_lost(None)

    asyncio.run(scenario())
    assert len(sent_when_done) == 1
    (answer,) = sent_when_done[0]  # head and body in one send
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
