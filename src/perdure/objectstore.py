"""The data store in an S3 bucket (or any S3-compatible store), behind ``datastore.BlobStore``.

Keys are the data store's own (``jobs/<job>/<task>/<rank>/<file>``) under ``store.s3.prefix``.
Credentials come from the standard AWS chain only; the configuration names the bucket, the prefix,
the region and, for S3-compatible stores, the endpoint.

Uploads that pass through the server (workers that cannot use presigned URLs) go to S3 in parts, and
are checked against the SHA-256 the uploader declared before they are completed: a mismatch aborts
the multipart upload and nothing becomes visible. Workers normally never send bytes to the server:
``presign_get``/``presign_put`` give them short-lived URLs to the bucket itself.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from perdure.datastore import BlobInfo, CheckedUpload, _check_key
from perdure.errors import NotFound, Unavailable
from perdure.s3config import S3StoreConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

MiB = 1024 * 1024


class StoreUnavailable(Unavailable):
    """The object store did not answer (or refused the server's own credentials): retry later."""


def make_client(
    *,
    region: str = "",
    endpoint: str = "",
    signature: bool = True,
    connect_timeout: float = 10.0,
    attempts: int = 5,
) -> S3Client:
    """A boto3 S3 client from the standard credential chain; ``endpoint`` for S3-compatible stores
    (path-style addressing there, since such stores seldom have per-bucket host names). ``attempts=1``
    leaves retrying to the caller (``perdure.retry``)."""
    import boto3
    from botocore.config import Config as BotoConfig

    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "connect_timeout": connect_timeout,
        "retries": {"max_attempts": attempts, "mode": "standard"},
    }
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
    client: S3Client = boto3.session.Session().client(
        "s3",
        region_name=region or None,
        endpoint_url=endpoint or None,
        config=BotoConfig(**options),
    )
    return client


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); ``ValueError`` if it is not one."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"{url!r}: an s3:// URL needs a bucket and a key (s3://bucket/key)")
    return bucket, key


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


class S3BlobStore:
    """Blobs as objects ``<prefix>/<key>`` in one bucket."""

    def __init__(self, config: S3StoreConfig, client: S3Client | None = None) -> None:
        if not config.bucket:
            raise ValueError("store.s3.bucket is empty")
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix.strip("/")
        self.client = client or make_client(region=config.region, endpoint=config.endpoint)
        self.part_size = config.partSizeMB * MiB
        #: Data bytes that passed through this process: uploads it received, object bytes it read.
        self.bytes_received = 0
        self.bytes_read = 0

    def object_key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # ---- BlobStore ---------------------------------------------------------------------------

    def begin(self, key: str, max_bytes: int) -> S3PendingBlob:
        return S3PendingBlob(self, self.object_key(key), max_bytes)

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, S3Reader(self, self.object_key(key)))

    def size(self, key: str) -> int:
        return self.head(key)[0]

    def head(self, key: str) -> tuple[int, str | None]:
        """The object's size and the SHA-256 (hex) S3 checked on upload, if it has one."""
        try:
            answer = self.client.head_object(
                Bucket=self.bucket, Key=self.object_key(key), ChecksumMode="ENABLED"
            )
        except Exception as exc:
            if _is_missing(exc):
                raise NotFound(f"no data stored under {key}") from None
            raise StoreUnavailable(f"the object store could not be asked about {key}: {exc}") from None
        checksum = answer.get("ChecksumSHA256")
        digest = None
        if checksum and "-" not in checksum:  # "<b64>-<parts>" is a checksum of checksums
            digest = base64.b64decode(checksum).hex()
        return int(answer["ContentLength"]), digest

    def delete_prefix(self, prefix: str) -> None:
        root = self.object_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root):
            keys: list[ObjectIdentifierTypeDef] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
                )

    # ---- presigned URLs ----------------------------------------------------------------------

    def presign_get(self, key: str, expires_s: int | None = None) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=expires_s or self.config.presignExpiry,
        )

    def presign_put(self, key: str, expires_s: int | None = None) -> str:
        return self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=expires_s or self.config.presignExpiry,
        )


class S3Reader(io.RawIOBase):
    """A seekable read-only view of one object: every read is a ranged GET (a split part, or the
    windows the splitter scans for record boundaries, never the whole object at once)."""

    def __init__(self, store: S3BlobStore, object_key: str) -> None:
        super().__init__()
        self.store = store
        self.key = object_key
        self.position = 0
        self._size: int | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            try:
                answer = self.store.client.head_object(Bucket=self.store.bucket, Key=self.key)
            except Exception as exc:
                if _is_missing(exc):
                    raise NotFound(f"no data stored under {self.key}") from None
                raise
            self._size = int(answer["ContentLength"])
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.position = offset
        elif whence == 1:
            self.position += offset
        else:
            self.position = self.size + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        if end <= self.position:
            return b""
        answer = self.store.client.get_object(
            Bucket=self.store.bucket, Key=self.key, Range=f"bytes={self.position}-{end - 1}"
        )
        data: bytes = answer["Body"].read()
        self.position += len(data)
        self.store.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class S3PendingBlob(CheckedUpload):
    """An upload through the server: parts of ``partSizeMB`` as a multipart upload (a small file is
    one PUT), completed only when the whole file matches the declared SHA-256."""

    def __init__(self, store: S3BlobStore, object_key: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.store = store
        self.key = object_key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[CompletedPartTypeDef] = []
        self.done = False

    def write(self, chunk: bytes) -> None:
        self.count(chunk)
        self.store.bytes_received += len(chunk)
        self.buffer += chunk
        while len(self.buffer) >= self.store.part_size:
            self._send_part(bytes(self.buffer[: self.store.part_size]))
            del self.buffer[: self.store.part_size]

    def _send_part(self, data: bytes) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        answer = client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self, expected_sha256: str | None) -> BlobInfo:
        actual = self.verified_sha256(expected_sha256)
        client, bucket = self.store.client, self.store.bucket
        try:
            if self.upload_id is None:
                client.put_object(
                    Bucket=bucket,
                    Key=self.key,
                    Body=bytes(self.buffer),
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(actual)).decode(),
                )
            else:
                if self.buffer:
                    self._send_part(bytes(self.buffer))
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        except BaseException:
            self.discard()
            raise
        self.done = True
        self.buffer.clear()
        return BlobInfo(self.size, actual)

    def discard(self) -> None:
        self.buffer.clear()
        if self.upload_id is not None and not self.done:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
                )
            except Exception as exc:  # a lifecycle rule on the bucket cleans up what is left
                if not _is_missing(exc):
                    raise


__all__ = ["S3BlobStore", "S3PendingBlob", "S3Reader", "StoreUnavailable", "make_client", "parse_s3_url"]
