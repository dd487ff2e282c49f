"""The worker's hot calls over plain http.client (``perdure.sdk.lean``, issue 22), against a scripted
HTTP server on loopback: the report's parts arrive intact, one kept-alive connection serves a slot, a
connection the server closed while idle is replaced without an error, and the server's refusals and
absence become the SDK's usual exceptions."""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from perdure.sdk import BadRequestError, Client, ServerUnavailable


@dataclass
class Seen:
    method: str
    path: str
    parts: dict[str, bytes]
    connection: int
    authorization: str


@dataclass
class Scripted:
    url: str
    seen: list[Seen] = field(default_factory=list)
    #: (status, JSON body) answered in order; then {"status": 200, "data": "ok"}.
    answers: list[tuple[int, Any]] = field(default_factory=list)
    #: Close each connection after answering, without saying so (as a server's idle timeout does).
    close_after: bool = False
    #: Headers sent with every answer.
    extra_headers: dict[str, str] = field(default_factory=dict)
    #: Released each time the server has closed a connection.
    closed: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))


@pytest.fixture
def server() -> Iterator[Scripted]:
    script = Scripted("")
    connections = iter(range(1, 1_000_000))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.number = next(connections)

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts: dict[str, bytes] = {}
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
                for part in message.iter_parts():
                    parts[str(part.get_param("name", header="content-disposition"))] = part.get_payload(
                        decode=True
                    )
            script.seen.append(
                Seen(self.command, self.path, parts, self.number, self.headers.get("Authorization", ""))
            )
            status, answer = script.answers.pop(0) if script.answers else (200, {"status": 200, "data": "ok"})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in script.extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            if script.close_after:
                self.close_connection = True

        do_GET = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            script.closed.release()

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield script
    httpd.shutdown()
    httpd.server_close()


def test_a_report_arrives_whole_and_brings_the_next_workunit(server: Scripted) -> None:
    server.answers = [(200, {"status": 200, "data": "ok", "next": {"id": "wu-2"}, "next_error": None})]
    log = b"line one\r\n--not-a-boundary\r\n\x00\xff binary"
    with Client(server.url, token="cg", scheme="CG_TOKEN", retries=0) as client:
        assert client.transport.lean_ready
        following, why = client.worker.report_and_next(
            "wu 1", "client-1", "done", 3, {"perf": b'{"runtime": 0.001}', "stdout": log}, wait_s=5
        )
    assert (following, why) == ({"id": "wu-2"}, None)
    [seen] = server.seen
    assert seen.method == "PUT" and seen.path.startswith("/work/wu%201?")
    assert "status=done" in seen.path and "next=" in seen.path and "client=client-1" in seen.path
    assert seen.parts == {"perf": b'{"runtime": 0.001}', "stdout": log}
    assert seen.authorization == "CG_TOKEN cg"


def test_one_kept_alive_connection_serves_a_slot(server: Scripted) -> None:
    with Client(server.url, retries=0) as client:
        for n in range(5):
            client.worker.report(f"wu-{n}", "client-1", "done", 0, {"perf": b"{}"})
        assert client.worker.checkout("client-1") == "ok"
    assert len(server.seen) == 6
    assert {s.connection for s in server.seen} == {1}


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(server: Scripted) -> None:
    server.close_after = True  # as a server's keep-alive timeout does between two workunits
    with Client(server.url, retries=0) as client:
        for n in range(3):
            client.worker.report(f"wu-{n}", "client-1", "done", 0, {"perf": b"{}"})
            assert server.closed.acquire(timeout=10)  # idle, and closed by the server, before the next
    assert len({s.connection for s in server.seen}) == 3


def test_refusals_and_absence_are_the_sdks_usual_exceptions(server: Scripted) -> None:
    server.answers = [
        (400, {"status": 400, "data": None, "error": ["No eligible workunit"]}),
        (400, {"status": 400, "data": None, "error": ["bad status"], "code": None}),
        (503, {"status": 503, "data": None, "error": ["restarting"]}),
    ]
    with Client(server.url, retries=0) as client:
        assert client.worker.checkout("client-1", 0.5) is None  # nothing to do: not an error
        with pytest.raises(BadRequestError, match="bad status"):
            client.worker.report("wu-1", "client-1", "nonsense", 0, {"perf": b"{}"})
        with pytest.raises(ServerUnavailable, match="503"):
            client.worker.report("wu-1", "client-1", "done", 0, {"perf": b"{}"}, retry=False)
    with Client("http://127.0.0.1:9", retries=0) as client, pytest.raises(ServerUnavailable):
        client.worker.checkout("client-1")


def test_a_429_that_says_when_to_come_back_is_transient_with_its_wait(server: Scripted) -> None:
    server.answers = [(429, {"status": 429, "data": None, "error": ["slow down"]})]
    server.extra_headers = {"Retry-After": "7"}
    with Client(server.url, retries=0) as client:
        assert client.transport.lean_ready
        with pytest.raises(ServerUnavailable, match="429") as caught:
            client.worker.report("wu-1", "client-1", "done", 0, {"perf": b"{}"}, retry=False)
    assert caught.value.retry_after == 7.0


def test_a_proxy_in_the_environment_leaves_the_calls_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with Client("http://perdure.example:8001", retries=0) as client:
        assert not client.transport.lean_ready
    monkeypatch.setenv("NO_PROXY", "perdure.example")
    with Client("http://perdure.example:8001", retries=0) as client:
        assert client.transport.lean_ready
