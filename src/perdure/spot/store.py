"""Where checkpoints live, behind one narrow interface.

``DirectoryStore`` is a directory every node mounts (EFS, NFS, Lustre: ``ckpt.ckptImagePath``), and is
also what the server keeps in its data directory for workers that share no filesystem; those reach it
over HTTP through the worker's ``HttpStore``. Layout, per workunit::

    <root>/<job id>/<workunit>/chunks/<ab>/<sha256>     content-addressed, written once
    <root>/<job id>/<workunit>/manifests/<name>.json    the checkpoint, written last

A chunk or manifest appears under its final name only when complete (temporary file, then rename), and
the manifest is written only after every chunk it names is durable: a checkpoint is visible only when
whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from perdure.spot.manifest import CorruptCheckpoint, Manifest, valid_digest, valid_name


class CheckpointMissing(CorruptCheckpoint):
    """The checkpoint (or a chunk of it) is not in the store."""


class CheckpointStore(Protocol):
    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool: ...
    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        """Store a chunk unless present; the bytes actually written."""
        ...

    def get_chunk(self, job_id: str, workunit: str, digest: str) -> bytes: ...
    def put_manifest(self, job_id: str, workunit: str, manifest: Manifest) -> int: ...
    def get_manifest(self, job_id: str, workunit: str, name: str) -> Manifest: ...
    def prune(self, job_id: str, workunit: str, keep: str) -> None:
        """Drop every other manifest of the workunit, and chunks the kept one does not name."""
        ...

    def delete_workunit(self, job_id: str, workunit: str) -> None: ...
    def job_ids(self) -> list[str]: ...
    def delete_job(self, job_id: str) -> None: ...


def unit_dir_name(workunit: str) -> str:
    """A directory name for a workunit id: readable, and unique even where characters were replaced."""
    safe = re.sub(r"[^\w.-]", "_", workunit)
    if safe != workunit or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha256(workunit.encode()).hexdigest()[:8]}"
    return safe


_JOB_ID = re.compile(r"^[\w-]{1,64}$")


class DirectoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _unit(self, job_id: str, workunit: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id / unit_dir_name(workunit)

    def _chunk_path(self, job_id: str, workunit: str, digest: str) -> Path:
        if not valid_digest(digest):
            raise ValueError(f"invalid chunk digest {digest!r}")
        return self._unit(job_id, workunit) / "chunks" / digest[:2] / digest

    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool:
        return self._chunk_path(job_id, workunit, digest).exists()

    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        """The caller vouches for the digest (the snapshotter has just computed it; the server's HTTP
        route checks what arrives); hashing every byte twice would cost a quarter of a checkpoint."""
        path = self._chunk_path(job_id, workunit, digest)
        if path.exists():
            return 0
        _write_atomically(path, data, durable=False)
        return len(data)

    def get_chunk(self, job_id: str, workunit: str, digest: str) -> bytes:
        try:
            return self._chunk_path(job_id, workunit, digest).read_bytes()
        except FileNotFoundError:
            raise CheckpointMissing(f"chunk {digest[:12]}… is missing from the checkpoint store") from None

    def put_manifest(self, job_id: str, workunit: str, manifest: Manifest) -> int:
        unit = self._unit(job_id, workunit)
        # Chunks were written without a flush each; make them durable before the manifest names them.
        _sync_filesystem(unit)
        data = manifest.to_bytes()
        _write_atomically(unit / "manifests" / f"{manifest.name}.json", data, durable=True)
        return len(data)

    def get_manifest(self, job_id: str, workunit: str, name: str) -> Manifest:
        if not valid_name(name):
            raise CorruptCheckpoint(f"bad checkpoint name {name!r}")
        try:
            data = (self._unit(job_id, workunit) / "manifests" / f"{name}.json").read_bytes()
        except FileNotFoundError:
            raise CheckpointMissing(f"checkpoint {name} is not in the checkpoint store") from None
        return Manifest.from_bytes(data)

    def prune(self, job_id: str, workunit: str, keep: str) -> None:
        unit = self._unit(job_id, workunit)
        kept = self.get_manifest(job_id, workunit, keep)
        for path in (unit / "manifests").glob("*.json"):
            if path.stem != keep:
                path.unlink(missing_ok=True)
        wanted = kept.chunks
        chunks = unit / "chunks"
        if chunks.is_dir():
            for shard in chunks.iterdir():
                for path in shard.iterdir():
                    if path.name not in wanted:
                        path.unlink(missing_ok=True)

    def delete_workunit(self, job_id: str, workunit: str) -> None:
        shutil.rmtree(self._unit(job_id, workunit), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / job_id).rmdir()  # only if no other workunit of the job has checkpoints

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _JOB_ID.match(p.name))

    def delete_job(self, job_id: str) -> None:
        if _JOB_ID.match(job_id):
            shutil.rmtree(self.root / job_id, ignore_errors=True)


def _write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _sync_filesystem(directory: Path) -> None:
    """Flush the filesystem holding the checkpoint (syncfs: one call instead of one fsync per chunk)."""
    if not directory.exists():
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
