"""Plain HTTP/1.1 over a kept-alive socket, one per thread, for the worker's hot calls (issue 22).

A worker slot makes one request per workunit (report, with the next checkout in its answer). Through
``httpx`` that request cost about 1.2 ms of the worker's CPU on the benchmark machine, through
``http.client`` about 0.4 ms (much of it parsing the answer's headers with the ``email`` package), and
here less still: at hundreds of workunits a second that was most of the worker's CPU. Only small
requests whose body is already in memory go this way; everything else (and any server reached through a
proxy, which httpx honours and this does not) stays with ``httpx``.

Like httpx's pool, a kept-alive connection that the server has closed meanwhile is noticed before it is
reused (its socket reads as ready) and replaced; a request is never sent twice here.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
import urllib.request
from typing import BinaryIO
from urllib.parse import quote, urlencode, urlsplit

#: Exceptions that mean "no usable answer from the server" (the caller may try again).
TRANSPORT_ERRORS = (OSError, ValueError, http.client.HTTPException)
#: Bounds on what is read of an answer's head, as http.client has them.
MAX_LINE = 65536
MAX_HEADERS = 100


class _Connection:
    """One kept-alive socket and its buffered reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.timeout = sock.gettimeout()

    def set_timeout(self, timeout: float) -> None:
        """Only when it changes: setting it is a system call, and a slot asks with the same one."""
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class LeanHTTP:
    """Requests to one server (``url``, with any path prefix) with fixed ``headers`` (authorisation)."""

    def __init__(self, url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == (443 if self.https else 80)
        fixed = {"Host": host if default else f"{host}:{self.port}", "Accept": "*/*", **headers}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self.context = context if context is not None else (default_context() if self.https else None)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()

    @staticmethod
    def usable(url: str) -> bool:
        """Whether this server is reached directly: no proxy in the environment applies to it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        proxies = urllib.request.getproxies()
        if parts.scheme not in proxies and "all" not in proxies:
            return True
        return bool(urllib.request.proxy_bypass(parts.hostname))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float,
    ) -> tuple[int, str, bytes, str | None]:
        """One request: (status, reason, body, its Retry-After header). Raises one of ``TRANSPORT_ERRORS``
        when there is no answer."""
        target = quote(self.prefix + path, safe="/%:@!$&'()*+,;=~-._") + (
            "?" + urlencode(params) if params else ""
        )
        body = body or b""
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed}"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        conn = self._connection(timeout)
        try:
            conn.sock.sendall(head.encode("latin-1") + body)
            status, reason, data, keep, retry_after = _response(conn.reader, method)
        except BaseException:
            self._drop(conn)
            raise
        if not keep:
            self._drop(conn)
        return status, reason, data, retry_after

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()

    def _connection(self, timeout: float) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and _readable(conn.sock):
            self._drop(conn)  # closed by the server while idle (or it sent something unasked)
            conn = None
        if conn is None:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            conn = self._local.conn = _Connection(sock)
            with self._lock:
                self._open.add(conn)
        else:
            conn.set_timeout(timeout)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._open.discard(conn)


def _response(reader: BinaryIO, method: str) -> tuple[int, str, bytes, bool, str | None]:
    """Read one answer: status, reason, body, whether the connection may be used again, and its
    Retry-After header (for a 429 or 503)."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection without an answer")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit() or len(line) > MAX_LINE:
            raise http.client.BadStatusLine(line.decode("latin-1", errors="replace")[:100])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            field = reader.readline(MAX_LINE + 1)
            if field in (b"\r\n", b"\n", b""):
                break
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise http.client.HTTPException("too many headers in the answer")
        status = int(code)
        if status >= 200:
            break  # (1xx answers, which nothing here asks for, are skipped)
    retry_after = headers.get("retry-after")
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304):
        return status, reason, b"", keep, retry_after
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, reason, _chunked(reader), keep, retry_after
    if "content-length" in headers:
        length = int(headers["content-length"])
        data = reader.read(length)
        if len(data) != length:
            raise http.client.IncompleteRead(data, length - len(data))
        return status, reason, data, keep, retry_after
    return status, reason, reader.read(), False, retry_after  # delimited by the server closing the connection


def _chunked(reader: BinaryIO) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = reader.readline(MAX_LINE + 1)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise http.client.HTTPException(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while reader.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunk = reader.read(size)
        if len(chunk) != size:
            raise http.client.IncompleteRead(chunk, size - len(chunk))
        chunks.append(chunk)
        reader.readline(MAX_LINE + 1)


def default_context() -> ssl.SSLContext:
    """The trust httpx gives by default: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set, else certifi's CAs."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE") or None, capath=os.environ.get("SSL_CERT_DIR") or None
        )
    import certifi  # httpx's own dependency; only needed for https

    return ssl.create_default_context(cafile=certifi.where())


def _readable(sock: socket.socket) -> bool:
    """An idle keep-alive socket that reads as ready has been closed by the peer."""
    try:
        poller = select.poll()  # not select(): it refuses descriptors above 1023
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of file parts (name = file name), and its content type."""
    boundary = os.urandom(16).hex()
    chunks: list[bytes] = []
    for name, content in parts.items():
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{_quoted(name)}"; filename="{_quoted(name)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks += [head.encode(), content, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


__all__ = ["TRANSPORT_ERRORS", "LeanHTTP", "multipart"]
