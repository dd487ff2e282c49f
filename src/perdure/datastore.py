"""The data store: bytes of task outputs, behind a narrow interface an object store can implement.

Keys are relative paths like ``jobs/<jobid>/<taskid>/<rank>/<filename>``. A value becomes visible only
when it is complete (written to a temporary file and renamed into place), and is checked against the
SHA-256 the uploader declared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from perdure.errors import BadRequest, NotFound

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    size: int
    sha256: str


class PendingBlob(Protocol):
    """An upload in progress: bytes go in, then it is committed under its key or discarded."""

    def write(self, chunk: bytes) -> None: ...
    def commit(self, expected_sha256: str | None) -> BlobInfo: ...
    def discard(self) -> None: ...


class BlobStore(Protocol):
    def begin(self, key: str, max_bytes: int) -> PendingBlob: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise BadRequest(f"invalid data store key {key!r}")
    return key


class DirectoryBlobStore:
    """Blobs as files under one directory (the server's data directory by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".tmp").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def begin(self, key: str, max_bytes: int) -> _PendingFile:
        return _PendingFile(self.path(key), self.root / ".tmp", max_bytes)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"no data stored under {key}") from None

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no data stored under {key}") from None

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / _check_key(prefix.rstrip("/")), ignore_errors=True)


class CheckedUpload:
    """The rules of every upload, wherever its bytes go: at most ``max_bytes``, and kept only if its
    SHA-256 is the one declared; a broken rule discards it (``discard``, of the subclass)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def discard(self) -> None:
        raise NotImplementedError

    def count(self, chunk: bytes) -> None:
        """Count and digest ``chunk``; refuse the upload once it is over the limit."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise BadRequest(f"upload is larger than the limit of {self.max_bytes} bytes")
        self.digest.update(chunk)

    def verified_sha256(self, expected_sha256: str | None) -> str:
        """The upload's SHA-256, once it matches the declared one (when one was declared)."""
        actual = self.digest.hexdigest()
        if expected_sha256 and expected_sha256.lower() != actual:
            self.discard()
            raise BadRequest(f"checksum mismatch: upload has sha256 {actual}, expected {expected_sha256}")
        return actual


class _PendingFile(CheckedUpload):
    def __init__(self, target: Path, tmp_dir: Path, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.target = target
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{uuid.uuid4().hex}.")
        self.tmp = Path(name)
        self.handle = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.count(chunk)
        self.handle.write(chunk)

    def commit(self, expected_sha256: str | None) -> BlobInfo:
        self.handle.close()
        actual = self.verified_sha256(expected_sha256)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.target)
        return BlobInfo(self.size, actual)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


class ConcatReader:
    """Read several blobs as one stream (a split task's output is its parts in rank order)."""

    def __init__(self, store: BlobStore, keys: list[str]) -> None:
        self.store = store
        self.parts = [(key, store.size(key)) for key in keys]
        self.total = sum(size for _, size in self.parts)

    def iter_range(self, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        end = self.total if length is None else min(self.total, offset + length)
        position = 0
        for key, size in self.parts:
            part_start, part_end = position, position + size
            position = part_end
            if part_end <= offset or part_start >= end:
                continue
            with self.store.open(key) as handle:
                handle.seek(max(offset, part_start) - part_start)
                remaining = min(end, part_end) - max(offset, part_start)
                while remaining > 0:
                    chunk = handle.read(min(CHUNK, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk

    def read_at(self, offset: int, length: int) -> bytes:
        return b"".join(self.iter_range(offset, length))
