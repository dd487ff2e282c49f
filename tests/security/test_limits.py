"""Issue 17: limits before work, on a real server (both databases).

* A 300 MiB upload without a token is refused right after its headers: the client manages to push only
  what the sockets buffer before the answer comes (measured), declared or chunked.
* A body that stops arriving is answered 408 after ``PERDURE_BODY_TIMEOUT_S``; nothing is stored.
* A body over a route's limit is 413 (declared, or counted while it streams).
"""

from __future__ import annotations

import select
import socket
import time
from urllib.parse import urlsplit

from tests.integration.cluster import Cluster

MIB = 1024 * 1024
UPLOAD = 300 * MIB
#: What loopback sockets may buffer on both ends before the server reads anything (generous).
BUFFERED = 32 * MIB


def push(
    url: str, head: str, total: int, *, chunked: bool = False, prefix: bytes = b"", timeout: float = 30
) -> tuple[int, int]:
    """Send ``head``, the body's ``prefix``, then up to ``total`` body bytes until the server answers;
    (status, bytes sent)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    try:
        sock.sendall(head.encode())
        if prefix:
            sock.sendall(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n" if chunked else prefix)
        sock.setblocking(False)
        chunk = b"x" * 65536
        piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
        sent, deadline = 0, time.monotonic() + timeout
        answer = b""
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sent < total else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                answer += data
                if b"\r\n" in answer or not data:
                    break
            elif writable:
                try:
                    sent += sock.send(piece)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break  # the server closed: read what it said
        sock.setblocking(True)
        sock.settimeout(5)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        return status, sent
    finally:
        sock.close()


def test_an_unauthenticated_300_mib_report_is_refused_after_the_headers(cluster: Cluster) -> None:
    server = cluster.server({"PERDURE_CLIENT_AUTH_REQUIRED": "true"})
    host = urlsplit(server.url).netloc
    target = "/work/wu-1_0_0?status=done&client=c1"
    declared = (
        f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {UPLOAD}\r\n\r\n"
    )
    status, sent = push(server.url, declared, UPLOAD)
    assert status in (401, 413) and sent < BUFFERED, (status, sent)
    chunked = (
        f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    status, sent = push(server.url, chunked, UPLOAD, chunked=True)
    assert status == 401 and sent < BUFFERED, (status, sent)


def test_a_body_over_the_limit_is_413_declared_or_streamed(cluster: Cluster) -> None:
    server = cluster.server({"PERDURE_MAX_UPLOAD_BYTES": str(16 * MIB)})
    api = cluster.api(server)
    host = urlsplit(server.url).netloc
    head = "POST /job HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=b\r\n{}\r\n"
    status, sent = push(server.url, head.format(host, f"Content-Length: {UPLOAD}\r\n"), UPLOAD)
    assert status == 413 and sent < BUFFERED, (status, sent)
    # Chunked: a well-formed multipart part whose file never ends, counted while it streams.
    part = b'--b\r\nContent-Disposition: form-data; name="upload"; filename="job.json"\r\n\r\n'
    chunked = head.format(host, "Transfer-Encoding: chunked\r\n")
    status, sent = push(server.url, chunked, UPLOAD, chunked=True, prefix=part)
    assert status == 413 and sent < 16 * MIB + BUFFERED, (status, sent)
    assert api.data("GET", "/job") == []  # nothing stored


def test_a_stalled_body_times_out_with_408(cluster: Cluster) -> None:
    server = cluster.server({"PERDURE_BODY_TIMEOUT_S": "1"})
    api = cluster.api(server)
    host = urlsplit(server.url).netloc
    head = (
        f"POST /job HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="upload"\r\n\r\n'
    )
    started = time.monotonic()
    status, _ = push(server.url, head, 0, timeout=20)
    assert status == 408
    assert time.monotonic() - started < 10
    assert api.data("GET", "/job") == []
