"""Data the worker moves without the server (issue 21).

* When the server's data store is an S3 bucket, a checkout carries presigned URLs (``presigned``, see
  ``perdure.api.s3``): inputs are read from the bucket with ranged GETs, outputs written with PUTs and
  then recorded with the server, which checks the lease before it keeps them. URLs that expired while
  the work ran are renewed from the server first (only the lease holder gets them).
* ``s3://bucket/key`` inputs are fetched with the worker's own credentials (the standard AWS chain,
  e.g. an instance profile); ``PERDURE_WORKER_S3_ENDPOINT`` (or botocore's ``AWS_ENDPOINT_URL_S3``)
  points at an S3-compatible store, ``PERDURE_WORKER_S3_REGION`` names the region.
* An output with ``deliverto: s3://bucket/key`` is copied there the same way, after the server has
  recorded it (``deliver_s3``): the server never handles the user's bucket.

Without ``presigned`` (a directory data store) the runner uses the server's routes, as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from perdure.retry import Policy, TransientError, retry_after_seconds, retry_call
from perdure.s3config import MAX_SINGLE_PUT
from perdure.spot.store import CheckpointStore
from perdure.worker.api import ServerAPI

log = logging.getLogger("perdure.worker")

#: URLs with less validity left than this are renewed before use.
RENEW_MARGIN_S = 30.0
CHUNK = 1024 * 1024
#: One transfer to or from the object store: a few tries within a minute, then the workunit fails.
TRANSFER_POLICY = Policy(attempts=4, within_s=60.0, first_wait_s=1.0, max_wait_s=10.0)
#: The object store's answers that mean "not now" (S3 answers 503 SlowDown when throttling).
TRANSIENT_STATUSES = frozenset({502, 503, 504})


class DirectError(Exception):
    """A transfer to or from the object store failed (the workunit fails, and is retried)."""


class StoreAway(DirectError, TransientError):
    """The object store could not be reached, or answered "not now": the transfer is tried again."""


def _check(response: httpx.Response, what: str, ok: tuple[int, ...]) -> None:
    status = response.status_code
    if status in ok:
        return
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    error = f"{what}: the object store answered {status}"
    if status in TRANSIENT_STATUSES or (status == 429 and retry_after is not None):
        away = StoreAway(error)
        away.retry_after = retry_after
        raise away
    raise DirectError(error)


def _plain_http() -> httpx.Client:
    # No Authorization header: a presigned URL is its own credential, and S3 refuses a second one.
    return httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False, trust_env=False)


class DirectData:
    """One workunit's presigned URLs, renewed when they run out."""

    def __init__(self, api: ServerAPI, wu: dict[str, Any], client_id: str) -> None:
        self.api = api
        self.wu_id = str(wu["id"])
        self.client_id = client_id
        self.presigned: dict[str, Any] = dict(wu.get("presigned") or {})
        self.valid_until = time.monotonic() + float(self.presigned.get("expires_in") or 0)

    @property
    def active(self) -> bool:
        return bool(self.presigned)

    def has_input(self, filename: str) -> bool:
        return filename in (self.presigned.get("inputs") or {})

    def has_output(self, filename: str, size: int = 0) -> bool:
        """Whether this output goes to the bucket directly: a single PUT holds at most 5 GiB; a larger
        file goes through the server, which sends it on to the bucket in parts."""
        return filename in (self.presigned.get("outputs") or {}) and size <= MAX_SINGLE_PUT

    def _fresh(self) -> dict[str, Any]:
        if time.monotonic() + RENEW_MARGIN_S >= self.valid_until:
            reply = self.api.retrying(
                f"renew presigned URLs of {self.wu_id}",
                lambda: self.api.protocol.transport.awe(
                    "GET", f"/work/{quote(self.wu_id, safe='')}/presigned", params={"client": self.client_id}
                ),
            )
            self.presigned = dict(reply)
            self.valid_until = time.monotonic() + float(self.presigned.get("expires_in") or 0)
        return self.presigned

    def stage(self, filename: str, target: Path) -> int:
        """Fetch an input (or this workunit's byte range of it) from the bucket; returns its size.
        A whole stored object is checked against the SHA-256 recorded when it was written."""
        segments = self._fresh()["inputs"][filename]
        size = 0
        with _plain_http() as http, target.open("wb") as out:
            for segment in segments:
                start = out.tell()

                def once(segment: dict[str, Any] = segment, start: int = start) -> int:
                    out.seek(start)
                    out.truncate()
                    return _get_segment(http, segment, out, f"input {filename!r}")

                size += retry_call(once, TRANSFER_POLICY, what=f"input {filename}", stop=self.api.stop)
        return size

    def deliver(self, filename: str, path: Path, sha256: str) -> None:
        """PUT an output into the bucket, then have the server record it (it refuses, 409, once the
        lease is gone: the object is then never part of the job)."""
        target = self._fresh()["outputs"][filename]
        size = path.stat().st_size

        def once() -> None:
            with _plain_http() as http, path.open("rb") as handle:
                try:
                    response = http.put(
                        target["url"], content=_chunks(handle), headers={"Content-Length": str(size)}
                    )
                except httpx.TransportError as exc:
                    raise StoreAway(f"output {filename!r}: {exc or type(exc).__name__}") from None
            _check(response, f"output {filename!r}", (200,))

        retry_call(once, TRANSFER_POLICY, what=f"output {filename}", stop=self.api.stop)
        params = {"client": self.client_id, "key": target["key"], "size": str(size), "sha256": sha256}
        self.api.retrying(
            f"record {filename} of {self.wu_id}",
            lambda: self.api.protocol.transport.awe(
                "POST", f"/work/{quote(self.wu_id, safe='')}/output/{quote(filename)}", params=params
            ),
        )
        log.debug("%s: %s (%d bytes) written to the object store", self.wu_id, filename, size)


def _get_segment(http: httpx.Client, segment: dict[str, Any], out: Any, what: str) -> int:
    """One GET of an input's segment into ``out``; its size. A whole stored object is checked against
    the SHA-256 recorded when it was written."""
    offset, length, whole = int(segment["offset"]), int(segment["length"]), int(segment["size"])
    headers = {} if offset == 0 and length == whole else {"Range": f"bytes={offset}-{offset + length - 1}"}
    digest = hashlib.sha256() if not headers and segment.get("sha256") else None
    got = 0
    try:
        with http.stream("GET", segment["url"], headers=headers) as response:
            _check(response, what, (200, 206))
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                got += len(chunk)
                if digest is not None:
                    digest.update(chunk)
    except httpx.TransportError as exc:  # not reached, or cut off midway
        raise StoreAway(f"{what}: {exc or type(exc).__name__}") from None
    if got != length:
        raise DirectError(f"{what}: got {got} bytes from the object store, expected {length}")
    if digest is not None and digest.hexdigest() != str(segment["sha256"]).lower():
        raise DirectError(f"{what}: checksum mismatch (the stored object is corrupt)")
    return got


def _chunks(handle: Any) -> Any:
    while chunk := handle.read(CHUNK):
        yield chunk


def stage_s3(url: str, target: Path) -> int:
    """Fetch ``s3://bucket/key`` with this worker's own credentials; returns its size."""
    from perdure.objectstore import make_client, parse_s3_url

    try:
        bucket, key = parse_s3_url(url)
    except ValueError as exc:
        raise DirectError(str(exc)) from None
    endpoint = os.environ.get("PERDURE_WORKER_S3_ENDPOINT", "")
    region = os.environ.get("PERDURE_WORKER_S3_REGION", "")
    try:
        client = make_client(region=region, endpoint=endpoint)
        client.download_file(bucket, key, str(target))
    except Exception as exc:  # botocore's errors: no credentials, access denied, no such key, ...
        raise DirectError(f"cannot fetch {url}: {exc}") from None
    return target.stat().st_size


#: S3's error codes that mean "not now" (besides 5xx answers and connections that fail).
TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)


def _s3_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    for error in (exc, exc.__cause__, exc.__context__):  # boto3 wraps upload errors in S3UploadFailedError
        if isinstance(error, ConnectionError | HTTPClientError):
            return True
        if isinstance(error, ClientError):
            response: Any = error.response
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(response.get("Error", {}).get("Code", ""))
            return status >= 500 or code in TRANSIENT_S3_CODES
    return False


def deliver_s3(path: Path, url: str, stop: threading.Event | None = None) -> int:
    """Copy an output to ``s3://bucket/key`` with this worker's own credentials (multipart when large);
    its size. Unreachable or throttled: tried again under ``TRANSFER_POLICY``; refused (no such bucket,
    access denied, ...): ``DirectError`` with S3's message at once."""
    from perdure.objectstore import make_client, parse_s3_url

    try:
        bucket, key = parse_s3_url(url)
    except ValueError as exc:
        raise DirectError(str(exc)) from None
    try:
        client = make_client(
            region=os.environ.get("PERDURE_WORKER_S3_REGION", ""),
            endpoint=os.environ.get("PERDURE_WORKER_S3_ENDPOINT", ""),
            attempts=1,  # the one retry policy below decides
        )
    except Exception as exc:  # botocore: no region, a bad endpoint, ...
        raise DirectError(f"cannot deliver to {url}: {exc}") from None

    def once() -> None:
        try:
            client.upload_file(str(path), bucket, key)
        except Exception as exc:
            if _s3_transient(exc):
                raise StoreAway(f"cannot deliver to {url}: {exc}") from None
            raise DirectError(f"cannot deliver to {url}: {exc}") from None

    retry_call(once, TRANSFER_POLICY, what=f"delivery to {url}", stop=stop)
    return path.stat().st_size


def checkpoint_bucket(url: str) -> CheckpointStore:
    """``ckpt.ckptImagePath = s3://bucket/prefix``: checkpoints go to the bucket with this worker's own
    credentials (same layout as the server's store under that prefix, so the server's sweep collects them)."""
    from perdure.spot.s3store import S3CheckpointStore

    return S3CheckpointStore.from_url(
        url,
        region=os.environ.get("PERDURE_WORKER_S3_REGION", ""),
        endpoint=os.environ.get("PERDURE_WORKER_S3_ENDPOINT", ""),
    )


__all__ = ["DirectData", "DirectError", "checkpoint_bucket", "deliver_s3", "stage_s3"]
