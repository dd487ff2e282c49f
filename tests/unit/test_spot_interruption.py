"""Interruption notices: the IMDSv2 spot notice (with its token dance and deadline), the rebalance
recommendation, and drain requests left by `perdure worker drain`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from perdure.spot.interruption import (
    DRAIN_FILE,
    PID_FILE,
    ImdsWatcher,
    Notice,
    request_drain,
    take_drain_request,
)

TOKEN = "fake-imds-token"


class Imds:
    """IMDSv2: a PUT for a token; GETs without it are refused (401)."""

    def __init__(self) -> None:
        self.action: str | None = None
        self.rebalance: str | None = None
        self.token_requests = 0
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    imds.token_requests += 1
                    self._send(200, TOKEN)
                else:
                    self._send(400)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    self._send(401)
                elif self.path == "/latest/meta-data/spot/instance-action" and imds.action:
                    self._send(200, imds.action)
                elif self.path == "/latest/meta-data/events/recommendations/rebalance" and imds.rebalance:
                    self._send(200, imds.rebalance)
                else:
                    self._send(404)

        return Handler


@pytest.fixture
def imds() -> Iterator[Imds]:
    service = Imds()
    yield service
    service.server.shutdown()
    service.server.server_close()


def watch(imds: Imds, stop: threading.Event) -> tuple[list[Notice], list[str], ImdsWatcher]:
    notices: list[Notice] = []
    rebalances: list[str] = []
    watcher = ImdsWatcher(imds.url, notices.append, rebalances.append, stop, poll_s=0.05, deadline_s=120)
    watcher.start()
    return notices, rebalances, watcher


def test_spot_notice_with_a_deadline_before_the_stop_time(imds: Imds) -> None:
    stop = threading.Event()
    notices, rebalances, watcher = watch(imds, stop)
    time.sleep(0.3)
    assert notices == [] and watcher.is_alive()
    imds.rebalance = '{"noticeTime": "2026-11-24T08:00:00Z"}'
    time.sleep(0.3)
    assert rebalances == ['{"noticeTime": "2026-11-24T08:00:00Z"}']  # once, however often it is seen
    when = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    imds.action = json.dumps({"action": "terminate", "time": when})
    watcher.join(5)
    assert not watcher.is_alive()
    (notice,) = notices
    assert notice.source == "spot" and "terminate" in notice.detail and not notice.finish
    left = notice.deadline - time.monotonic()
    assert 40 < left < 55  # 60 s to the stop, less the safety margin: sooner than the 120 s default
    assert imds.token_requests == 1  # the session token is reused
    stop.set()


def test_an_unreadable_action_still_gives_a_notice_with_the_default_deadline(imds: Imds) -> None:
    imds.action = "not json"
    notices, _, watcher = watch(imds, threading.Event())
    watcher.join(5)
    (notice,) = notices
    assert 110 < notice.deadline - time.monotonic() <= 120


def test_no_metadata_service_means_no_polling() -> None:
    stop = threading.Event()
    watcher = ImdsWatcher("http://127.0.0.1:9", lambda n: None, lambda r: None, stop, poll_s=0.01)
    watcher.start()
    watcher.join(10)
    assert not watcher.is_alive()  # gave up after a few refused connections, as off AWS


def test_drain_request_reaches_the_worker_once(tmp_path: Path) -> None:
    (tmp_path / PID_FILE).write_text(f"{os.getpid()}\n")
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        assert request_drain(tmp_path, finish=True, deadline_s=30) == os.getpid()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [signal.SIGUSR1]
    notice = take_drain_request(tmp_path, 120)
    assert notice is not None and notice.finish and notice.source == "drain"
    assert 25 < notice.deadline - time.monotonic() <= 30
    assert take_drain_request(tmp_path, 120) is None
    assert not (tmp_path / DRAIN_FILE).exists()


def test_drain_without_a_worker_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProcessLookupError, match="no worker"):
        request_drain(tmp_path, finish=False, deadline_s=30)
    (tmp_path / PID_FILE).write_text("999999999\n")
    with pytest.raises(ProcessLookupError, match="gone"):
        request_drain(tmp_path, finish=False, deadline_s=30)
    assert not (tmp_path / DRAIN_FILE).exists()
