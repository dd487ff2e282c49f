"""Limits before work (issue 17): a body is bounded in size and in time before any route reads it.

* **Size.** Each route has a maximum body size: a job's outputs up to ``perdure.maxOutputBytes``,
  checkpoint manifests up to 64 MiB, everything else up to ``perdure.maxUploadBytes`` (at least
  16 MiB, what a report with its logs needs). A declared ``Content-Length`` above it is answered 413
  at once, before a byte of the body is read; a chunked body is counted as it streams and cut off
  with 413 when it passes the limit.
* **Time.** A body must keep coming: a gap of more than ``PERDURE_BODY_TIMEOUT_S`` (30 s) between two
  chunks, or an average below 1 KiB/s once that long has passed, is answered 408.

Checked after authentication (:mod:`perdure.api.auth` decides from the headers alone), so an unauthenticated
upload is refused with 401 before its body is read. When a limit is hit while a route reads the body,
whatever the route answers is replaced by the 413 or 408, and the route never gets the rest of the
body, so it stores nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from perdure.api.envelope import error_for
from perdure.settings import Settings

MIB = 1024 * 1024
#: Every route takes at least this much (a report carries two 4 MiB log tails).
MIN_LIMIT = 16 * MIB
MANIFEST_LIMIT = 64 * MIB
MIN_RATE_BYTES_S = 1024
_OUTPUT = re.compile(r"^/work/[^/]+/output/.+$")
_MANIFEST = re.compile(r"^/work/[^/]+/ckpt/manifests/[^/]+$")


def body_timeout_s() -> float:
    try:
        return max(0.1, float(os.environ.get("PERDURE_BODY_TIMEOUT_S", "30")))
    except ValueError:
        return 30.0


def body_limit(scope: Scope, settings: Settings) -> int:
    """The largest body the route of ``scope`` takes."""
    path: str = scope["path"]
    if scope["method"] == "PUT" and _OUTPUT.match(path):
        return int(settings.max_output_bytes)
    if scope["method"] == "PUT" and _MANIFEST.match(path):
        return MANIFEST_LIMIT
    return max(int(settings.max_upload_bytes), MIN_LIMIT)


def unbounded(scope: Scope) -> bool:
    """Whether the request of ``scope`` has no body to bound: a GET, HEAD or OPTIONS, or a declared
    empty body (a worker's report without logs)."""
    if scope["method"] in ("GET", "HEAD", "OPTIONS"):
        return True
    declared = b""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            declared = value
    return declared == b"0"


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def bounded(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, settings: Settings, timeout: float
) -> None:
    """Run ``app`` on a request whose body is bounded in size (:func:`body_limit`) and in time
    (``timeout`` seconds between chunks): past a bound, the 413 or 408 is the answer."""
    path: str = scope["path"]
    limit = body_limit(scope, settings)
    declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1").strip()
    if declared.isdigit() and int(declared) > limit:
        await error_for(path, 413, f"request body is larger than {limit} bytes")(scope, receive, send)
        return
    refused: _Refused | None = None
    received = 0
    started = time.monotonic()
    started_response = False

    async def limited_receive() -> Message:
        nonlocal refused, received
        if refused is not None:
            raise refused
        try:
            # One timer, and no task of its own (as ``wait_for`` makes): most bodies are in already.
            async with asyncio.timeout(timeout):
                message = await receive()
        except TimeoutError:
            refused = _Refused(408, f"request body not received in time (nothing for {timeout:g} s)")
            raise refused from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                refused = _Refused(413, f"request body is larger than {limit} bytes")
                raise refused
            if message.get("more_body"):
                elapsed = time.monotonic() - started
                if elapsed > timeout and received / elapsed < MIN_RATE_BYTES_S:
                    refused = _Refused(408, "request body arrives too slowly")
                    raise refused
        return message

    async def guarded_send(message: Message) -> None:
        nonlocal started_response
        if refused is not None:
            return  # the refusal is answered below instead
        if message["type"] == "http.response.start":
            started_response = True
        await send(message)

    try:
        await app(scope, limited_receive, guarded_send)
    except _Refused:
        pass
    except Exception:
        if refused is None:
            raise
    if refused is not None and not started_response:
        response = error_for(path, refused.status, refused.message)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


__all__ = ["body_limit", "body_timeout_s", "bounded", "unbounded"]
