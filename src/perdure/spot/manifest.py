"""What a checkpoint is: a manifest naming every file of a tree by its content-addressed chunks.

The manifest carries the identity of the work it belongs to (job, task, rank, workunit, attempt) and
a SHA-256 over its own canonical body; every chunk is named by the SHA-256 of its bytes. So a restore
can prove it has exactly what was saved, for exactly this work, or refuse: never a silent resume from
bad state.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = "perdure-checkpoint/1"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[0-9]{6}-a[0-9]{1,9}$")


class CheckpointError(Exception):
    """A checkpoint could not be taken or used."""


class CorruptCheckpoint(CheckpointError):
    """Missing, partial, tampered with, or not this work's: must not be restored."""


@dataclass(frozen=True)
class Identity:
    job: str
    task: str
    rank: int
    workunit: str
    attempt: int

    def same_work(self, other: Identity) -> bool:
        """The attempt differs from one node to the next; the work must not."""
        return (self.job, self.task, self.rank, self.workunit) == (
            other.job,
            other.task,
            other.rank,
            other.workunit,
        )


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str  # file | dir | symlink
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    chunks: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Manifest:
    identity: Identity
    name: str
    engine: str
    #: iterative (taken while the work ran) or final (taken on the notice, the work stopped)
    kind: str
    created: float
    #: Run time this checkpoint preserves: what a restore from it saves.
    progress_s: float
    entries: tuple[Entry, ...]
    #: What the engine needs at restore (CRIU: the image directory, the original paths).
    engine_data: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def chunks(self) -> set[str]:
        return {c for e in self.entries for c in e.chunks}

    @property
    def seq(self) -> int:
        return int(self.name.split("-", 1)[0])

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "identity": asdict(self.identity),
            "name": self.name,
            "engine": self.engine,
            "kind": self.kind,
            "created": self.created,
            "progress_s": self.progress_s,
            "engine_data": self.engine_data,
            "entries": [_entry_doc(e) for e in self.entries],
        }

    def to_bytes(self) -> bytes:
        body = self.body()
        return json.dumps({**body, "checksum": _checksum(body)}, separators=(",", ":")).encode()

    def checksum(self) -> str:
        return _checksum(self.body())

    def reference(self) -> dict[str, Any]:
        """What the server keeps on the workunit: enough to find and check the checkpoint."""
        return {
            "name": self.name,
            "engine": self.engine,
            "kind": self.kind,
            "created": self.created,
            "progress_s": round(self.progress_s, 3),
            "size": self.size,
            "checksum": self.checksum(),
            "attempt": self.identity.attempt,
        }

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
            claimed = document.pop("checksum")
            if document.get("format") != FORMAT:
                raise CorruptCheckpoint(f"unknown checkpoint format {document.get('format')!r}")
            if claimed != _checksum(document):
                raise CorruptCheckpoint("the manifest's checksum does not match its content")
            manifest = cls(
                identity=Identity(**document["identity"]),
                name=str(document["name"]),
                engine=str(document["engine"]),
                kind=str(document["kind"]),
                created=float(document["created"]),
                progress_s=float(document["progress_s"]),
                entries=tuple(_entry(e) for e in document["entries"]),
                engine_data=dict(document.get("engine_data") or {}),
            )
        except CorruptCheckpoint:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpoint(f"unreadable manifest: {exc}") from None
        if not _NAME.match(manifest.name):
            raise CorruptCheckpoint(f"bad checkpoint name {manifest.name!r}")
        return manifest


def checkpoint_name(seq: int, attempt: int) -> str:
    """Ordered by sequence; the attempt keeps two nodes that both think they hold the work apart."""
    return f"{seq:06d}-a{attempt}"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def valid_digest(digest: str) -> bool:
    return bool(_DIGEST.match(digest))


def safe_relative(path: str) -> bool:
    """A path a restore may write: relative, normalised, inside the tree."""
    return (
        bool(path)
        and not path.startswith("/")
        and "\x00" not in path
        and posixpath.normpath(path) == path
        and not path.startswith("..")
        and path != "."
    )


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _entry_doc(entry: Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {"path": entry.path, "kind": entry.kind, "mode": entry.mode}
    if entry.kind == "file":
        doc.update(mtime_ns=entry.mtime_ns, size=entry.size, chunks=list(entry.chunks))
    elif entry.kind == "symlink":
        doc["target"] = entry.target
    return doc


def _entry(doc: dict[str, Any]) -> Entry:
    entry = Entry(
        path=str(doc["path"]),
        kind=str(doc["kind"]),
        mode=int(doc.get("mode", 0o644)) & 0o7777,
        mtime_ns=int(doc.get("mtime_ns", 0)),
        size=int(doc.get("size", 0)),
        chunks=tuple(str(c) for c in doc.get("chunks", ())),
        target=str(doc.get("target", "")),
    )
    if entry.kind not in ("file", "dir", "symlink"):
        raise CorruptCheckpoint(f"unknown entry kind {entry.kind!r}")
    if not safe_relative(entry.path):
        raise CorruptCheckpoint(f"entry path {entry.path!r} escapes the work directory")
    if not all(valid_digest(c) for c in entry.chunks) or entry.size < 0:
        raise CorruptCheckpoint(f"bad chunk list for {entry.path!r}")
    return entry
