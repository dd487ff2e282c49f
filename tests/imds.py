"""A local stand-in for the AWS instance metadata service (IMDSv2), for nodes and workers under test.

IMDSv2: a ``PUT /latest/api/token`` (with ``X-aws-ec2-metadata-token-ttl-seconds``) gives a session
token; every ``GET`` must carry it in ``X-aws-ec2-metadata-token`` (401 without or with a wrong one).
The instance facts a node reports are served as on a spot instance. ``spot/instance-action`` and
``events/recommendations/rebalance`` answer 404 until the test calls ``interrupt()`` or
``recommend_rebalance()``, as EC2 does until it schedules the stop.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "AQAEAFake-imds-token=="
INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
METADATA = {
    "/latest/meta-data/instance-id": "i-044f3323bfd228fd6",
    "/latest/meta-data/instance-type": "m6i.large",
    "/latest/meta-data/placement/availability-zone": "us-west-1a",
    "/latest/meta-data/placement/region": "us-west-1",
    "/latest/meta-data/instance-life-cycle": "spot",
    "/latest/dynamic/instance-identity/document": json.dumps(
        {"instanceId": "i-044f3323bfd228fd6", "pendingTime": "2025-03-11T23:05:22Z", "region": "us-west-1"}
    ),
}


def iso_z(when: datetime) -> str:
    """EC2's time format: ``2026-11-24T08:22:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsStandIn:
    """An IMDSv2 server on a loopback port; ``url`` is what ``PERDURE_WORKER_IMDS_ENDPOINT`` takes."""

    def __init__(self, metadata: dict[str, str] | None = None, *, tokens: bool = True) -> None:
        """``tokens=False``: a service that hands out no session token (404), as some proxies do."""
        self.metadata = dict(METADATA if metadata is None else metadata)
        self.tokens = tokens
        #: (method, path, token header) of every request, in order.
        self.seen: list[tuple[str, str, str | None]] = []
        #: ``time.time()`` when the interruption notice was first served (None until then).
        self.notice_served_at: float | None = None
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                owner._saw("PUT", self.path, ttl)
                if not owner.tokens:
                    self._send(404, "")
                elif self.path != "/latest/api/token" or not ttl:
                    self._send(400, "")
                else:
                    self._send(200, TOKEN)

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token")
                owner._saw("GET", self.path, token)
                if token != TOKEN:
                    self._send(401, "Unauthorized")
                    return
                body = owner._answer(self.path)
                if body is None:
                    self._send(404, "Not Found")
                else:
                    self._send(200, body)

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="imds", daemon=True)
        self._thread.start()

    # ---- what the test controls ---------------------------------------------------------------

    def interrupt(self, in_s: float = 120.0, action: str = "terminate") -> str:
        """From now on, ``spot/instance-action`` announces the stop ``in_s`` seconds from now; the body."""
        body = json.dumps({"action": action, "time": iso_z(datetime.now(UTC) + timedelta(seconds=in_s))})
        with self._lock:
            self.metadata[INSTANCE_ACTION] = body
        return body

    def announce(self, body: str) -> None:
        """Serve exactly this ``spot/instance-action`` body (a malformed one, say)."""
        with self._lock:
            self.metadata[INSTANCE_ACTION] = body

    def recommend_rebalance(self) -> None:
        notice = json.dumps({"noticeTime": iso_z(datetime.now(UTC))})
        with self._lock:
            self.metadata[REBALANCE] = notice

    def polls(self, path: str = INSTANCE_ACTION) -> int:
        """How many authenticated GETs of ``path`` were made."""
        with self._lock:
            return sum(1 for method, p, token in self.seen if (method, p, token) == ("GET", path, TOKEN))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # ---- the handler's side -------------------------------------------------------------------

    def _saw(self, method: str, path: str, header: str | None) -> None:
        with self._lock:
            self.seen.append((method, path, header))

    def _answer(self, path: str) -> str | None:
        with self._lock:
            body = self.metadata.get(path)
            if path == INSTANCE_ACTION and body is not None and self.notice_served_at is None:
                self.notice_served_at = time.time()
            return body

    def __enter__(self) -> ImdsStandIn:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


__all__ = ["INSTANCE_ACTION", "METADATA", "REBALANCE", "TOKEN", "ImdsStandIn", "iso_z"]
