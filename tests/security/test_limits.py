"""Issue 17: limits before work, on a real server (both databases).

* A 300 MiB upload without a token is refused right after its headers: the client manages to push only
  what the sockets buffer before the answer comes (measured), declared or chunked.
* A body that stops arriving is answered 408 after ``PERDURE_BODY_TIMEOUT_S``; nothing is stored.
* A body over a route's limit is 413 (declared, or counted while it streams).
* Headers that dribble in (slowloris) are answered 408 and the connection closed after
  ``perdure.headerTimeout`` (0.5 s here), on a new connection and on a kept-alive one; a silent
  connection too.
"""

from __future__ import annotations

import re
import select
import socket
import time
from urllib.parse import urlsplit

import httpx

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


def dribble(sock: socket.socket, head: bytes, *, within: float = 10.0) -> tuple[bytes, float]:
    """Send ``head``, then a header line every 0.2 s (never the blank line that ends the headers)
    until the server answers and closes; (what it answered, seconds from ``head`` to the close)."""
    started = time.monotonic()
    sock.sendall(head)
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - started < within:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            continue
        if not data:
            break
        answer += data
    return answer, time.monotonic() - started


def test_slow_headers_are_cut_off_with_408(sqlite_cluster: Cluster) -> None:
    # The clock lives in the HTTP protocol, before any database: one database is enough.
    server = sqlite_cluster.server({"PERDURE_CFG_perdure__headerTimeout": "500ms"})
    parts = urlsplit(server.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = f"GET / HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()

    with socket.create_connection(address) as sock:
        answer, elapsed = dribble(sock, request)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.4 < elapsed < 2.5, elapsed

    # The second request of a kept-alive connection gets the same clock.
    with socket.create_connection(address) as sock:
        sock.sendall(request + b"\r\n")
        first = sock.recv(65536)
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), first
        length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            body += sock.recv(65536)
        answer, elapsed = dribble(sock, request)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 0.4 < elapsed < 2.5, elapsed

    # A connection that says nothing is closed too; requests that come in time are served.
    with socket.create_connection(address) as sock:
        sock.settimeout(5.0)
        started = time.monotonic()
        assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 2.5
    assert httpx.get(server.url + "/", timeout=5.0).status_code == 200
