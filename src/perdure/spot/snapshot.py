"""Incremental snapshots of a directory tree into a checkpoint store, and restores from them.

Files are cut into fixed 4 MiB chunks named by their SHA-256, so a chunk already in the store is never
written again. A file whose size, mtime and inode are as at the previous snapshot is not even read: an
unchanged snapshot costs a walk of the tree and a manifest. Chunks are hashed and written by a small
thread pool (hashlib and file I/O release the GIL), reading with ``pread`` so one large file is cut up
in parallel too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perdure.spot.manifest import (
    CheckpointError,
    CorruptCheckpoint,
    Entry,
    Identity,
    Manifest,
    checkpoint_name,
)
from perdure.spot.store import CheckpointStore

log = logging.getLogger("perdure.spot")

CHUNK_SIZE = 4 * 1024 * 1024
#: A file that keeps changing while it is read is read again this many times, then the snapshot fails.
MAX_REREADS = 3


class Aborted(CheckpointError):
    """The snapshot was cancelled or ran past its deadline; nothing of it is visible."""


@dataclass(frozen=True)
class Taken:
    manifest: Manifest
    #: Bytes written to the store (chunks not already there, plus the manifest).
    written: int
    duration_s: float


@dataclass(frozen=True)
class _Signature:
    size: int
    mtime_ns: int
    inode: int


@dataclass
class _Reading:
    """A file whose chunks are being read, hashed and stored."""

    name: str
    full: Path
    st: os.stat_result
    signature: _Signature
    futures: list[Future[tuple[str, int]]]


class Snapshotter:
    """Snapshots of one workunit's tree; remembers what it stored, so the next snapshot reads only
    files that changed and writes only chunks the store lacks."""

    def __init__(
        self,
        store: CheckpointStore,
        identity: Identity,
        engine: str,
        *,
        threads: int = 4,
    ) -> None:
        self.store = store
        self.identity = identity
        self.engine = engine
        self.threads = threads
        self._seq = 0
        self._known: set[str] = set()
        self._signatures: dict[str, tuple[_Signature, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    # ---- taking -------------------------------------------------------------------------------

    def take(
        self,
        root: Path,
        *,
        kind: str,
        progress_s: float,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        engine_data: dict[str, Any] | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        extra_roots: dict[str, Path] | None = None,
    ) -> Taken:
        """Snapshot ``root`` (only paths matching ``include`` globs, when given; never ``exclude``d
        ones). ``extra_roots`` adds other trees under a prefix (CRIU images beside the work directory).
        The checkpoint is visible in the store only when this returns."""
        started = time.monotonic()

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Aborted("cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise Aborted("the deadline passed before the checkpoint was complete")

        patterns = list(include) if include is not None else None
        excluded = set(exclude)
        trees = [("", root), *((prefix, path) for prefix, path in (extra_roots or {}).items())]
        items: list[Entry | _Reading] = []
        written = 0
        # Chunks of every file go through one pool as the tree is walked (many small files are read
        # in parallel too); the semaphore bounds the bytes in flight.
        slots = threading.BoundedSemaphore(self.threads * 2)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="ckpt") as pool:
            try:
                for prefix, tree in trees:
                    for rel, full, st in _walk(tree, patterns if not prefix else None, excluded):
                        check()
                        name = f"{prefix}/{rel}" if prefix else rel
                        if stat.S_ISDIR(st.st_mode):
                            items.append(Entry(name, "dir", stat.S_IMODE(st.st_mode)))
                        elif stat.S_ISLNK(st.st_mode):
                            items.append(Entry(name, "symlink", 0o777, target=os.readlink(full)))
                        elif stat.S_ISREG(st.st_mode):
                            items.append(self._start_file(pool, slots, name, full, st, check))
                entries: list[Entry] = []
                for item in items:
                    if isinstance(item, Entry):
                        entries.append(item)
                    else:
                        entry, n = self._finish_file(pool, slots, item, check)
                        entries.append(entry)
                        written += n
            except BaseException:
                for item in items:
                    if isinstance(item, _Reading):
                        for future in item.futures:
                            future.cancel()
                raise
        check()
        self._seq += 1
        manifest = Manifest(
            identity=self.identity,
            name=checkpoint_name(self._seq, self.identity.attempt),
            engine=self.engine,
            kind=kind,
            created=time.time(),
            progress_s=progress_s,
            entries=tuple(entries),
            engine_data=engine_data or {},
        )
        written += self.store.put_manifest(self.identity.job, self.identity.workunit, manifest)
        self._known |= manifest.chunks
        return Taken(manifest, written, time.monotonic() - started)

    def _start_file(
        self,
        pool: ThreadPoolExecutor,
        slots: threading.BoundedSemaphore,
        name: str,
        full: Path,
        st: os.stat_result,
        check: Callable[[], None],
    ) -> Entry | _Reading:
        signature = _Signature(st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._signatures.get(name)
        if cached is not None and cached[0] == signature and set(cached[1]) <= self._known:
            return _file_entry(name, st, cached[1])
        return _Reading(name, full, st, signature, self._submit(pool, slots, full, st.st_size, check))

    def _finish_file(
        self,
        pool: ThreadPoolExecutor,
        slots: threading.BoundedSemaphore,
        reading: _Reading,
        check: Callable[[], None],
    ) -> tuple[Entry, int]:
        """The file's chunks once read; a file that changed meanwhile is read again."""
        for _ in range(MAX_REREADS):
            results = [future.result() for future in reading.futures]
            chunks = tuple(digest for digest, _ in results)
            written = sum(n for _, n in results)
            after = reading.full.lstat()
            now = _Signature(after.st_size, after.st_mtime_ns, after.st_ino)
            if now == reading.signature:
                self._signatures[reading.name] = (now, chunks)
                return _file_entry(reading.name, reading.st, chunks), written
            reading = _Reading(
                reading.name,
                reading.full,
                after,
                now,
                self._submit(pool, slots, reading.full, after.st_size, check),
            )
        raise CheckpointError(
            f"{reading.name} kept changing while it was read; will try at the next interval"
        )

    def _submit(
        self,
        pool: ThreadPoolExecutor,
        slots: threading.BoundedSemaphore,
        full: Path,
        size: int,
        check: Callable[[], None],
    ) -> list[Future[tuple[str, int]]]:
        futures = []
        for offset in range(0, size, CHUNK_SIZE):
            slots.acquire()
            try:
                futures.append(pool.submit(self._chunk, full, offset, check, slots))
            except BaseException:
                slots.release()
                raise
        return futures

    def _chunk(
        self, full: Path, offset: int, check: Callable[[], None], slots: threading.BoundedSemaphore
    ) -> tuple[str, int]:
        try:
            check()
            with full.open("rb", buffering=0) as handle:
                data = os.pread(handle.fileno(), CHUNK_SIZE, offset)
            digest = hashlib.sha256(data).hexdigest()
            with self._lock:
                known = digest in self._known
            written = 0
            if not known:
                written = self.store.put_chunk(self.identity.job, self.identity.workunit, digest, data)
                with self._lock:
                    self._known.add(digest)
            return digest, written
        finally:
            slots.release()

    def pruned_to(self, manifest: Manifest) -> None:
        """The store now holds only this checkpoint's chunks: a chunk of an older one must be written
        again if its content comes back."""
        with self._lock:
            self._known = set(manifest.chunks)

    # ---- restoring ----------------------------------------------------------------------------

    def load(self, name: str) -> Manifest:
        """The named checkpoint, checked: readable, intact, and this work's own."""
        manifest = self.store.get_manifest(self.identity.job, self.identity.workunit, name)
        if not manifest.identity.same_work(self.identity):
            raise CorruptCheckpoint(
                f"checkpoint {name} belongs to {manifest.identity.workunit}, not {self.identity.workunit}"
            )
        if manifest.engine != self.engine:
            raise CorruptCheckpoint(
                f"checkpoint {name} was taken by the {manifest.engine} engine, this node uses {self.engine}"
            )
        return manifest

    def restore(self, manifest: Manifest, root: Path, *, extra_roots: dict[str, Path] | None = None) -> int:
        """Write the checkpoint's tree under ``root``; every chunk is checked against its digest before
        use. Returns the bytes restored. Continues numbering after it, so the next snapshot of this work
        supersedes the restored one."""
        roots = {"": root, **(extra_roots or {})}
        restored = 0
        links: list[tuple[Path, str]] = []
        with ThreadPoolExecutor(self.threads, thread_name_prefix="restore") as pool:
            for entry in manifest.entries:
                target = _place(roots, entry.path)
                if entry.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    os.chmod(target, entry.mode | 0o700)
                elif entry.kind == "symlink":
                    links.append((target, entry.target))
                else:
                    restored += self._restore_file(pool, entry, target)
                    st = target.lstat()
                    self._signatures[entry.path] = (
                        _Signature(st.st_size, st.st_mtime_ns, st.st_ino),
                        entry.chunks,
                    )
        for target, link in links:  # last, so no file is ever written through a restored link
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(link, target)
        self._seq = max(self._seq, manifest.seq)
        self._known |= manifest.chunks
        return restored

    def _restore_file(self, pool: ThreadPoolExecutor, entry: Entry, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_dir():
            raise CorruptCheckpoint(f"{entry.path} would be written through a link or over a directory")
        tmp = target.with_name(f".{target.name}.restore")
        job, unit = self.identity.job, self.identity.workunit

        def fetch(digest: str) -> bytes:
            data = self.store.get_chunk(job, unit, digest)
            if hashlib.sha256(data).hexdigest() != digest:
                raise CorruptCheckpoint(f"chunk {digest[:12]}… of {entry.path} is corrupt")
            return data

        size = 0
        with tmp.open("wb") as out:
            for data in pool.map(fetch, entry.chunks):
                out.write(data)
                size += len(data)
        if size != entry.size:
            tmp.unlink(missing_ok=True)
            raise CorruptCheckpoint(f"{entry.path}: {size} bytes restored, the manifest says {entry.size}")
        os.chmod(tmp, entry.mode)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(tmp, target)
        return size


def _file_entry(name: str, st: os.stat_result, chunks: tuple[str, ...]) -> Entry:
    return Entry(name, "file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, chunks)


def _place(roots: dict[str, Path], path: str) -> Path:
    prefix, _, rest = path.partition("/")
    if prefix in roots and prefix and rest:
        return roots[prefix] / rest
    return roots[""] / path


def _walk(
    root: Path, patterns: list[str] | None, excluded: set[str]
) -> Iterable[tuple[str, Path, os.stat_result]]:
    """Every path under root (not following links), parents before children, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        kept_dirs = []
        for name in dirnames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if rel in excluded:
                continue
            kept_dirs.append(name)
            full = base / name
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):  # os.walk lists links to directories as directories
                if _selected(rel, patterns):
                    yield rel, full, st
                continue
            if patterns is None or _selected_dir(rel, patterns):
                yield rel, full, st
        dirnames[:] = [d for d in kept_dirs if not (base / d).is_symlink()]
        for name in sorted(filenames):
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if rel in excluded or not _selected(rel, patterns):
                continue
            full = base / name
            yield rel, full, full.lstat()


def _selected(rel: str, patterns: list[str] | None) -> bool:
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(rel, p) or rel.startswith(p.rstrip("/") + "/") for p in patterns)


def _selected_dir(rel: str, patterns: list[str]) -> bool:
    """A directory is recorded when something under it may be selected."""
    return any(
        p.startswith(rel + "/") or fnmatch.fnmatchcase(rel, p) or rel.startswith(p.rstrip("/") + "/")
        for p in patterns
    ) or any(fnmatch.fnmatchcase(rel, p.split("/")[0]) for p in patterns if "/" in p)
