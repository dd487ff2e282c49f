"""The server's checkpoint store, reached over HTTP by a worker that shares no filesystem with others.

Only the client holding a workunit's lease may read or write its checkpoints, so a store is bound to
one slot's client id, and its reads carry the lease's data capability (``captoken``, issue 17). The
server checks every chunk against its digest and every manifest against its checksum before keeping
them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from perdure.spot.manifest import CheckpointError, CorruptCheckpoint, Manifest
from perdure.spot.store import CheckpointMissing
from perdure.worker.api import ServerAPI, ServerRefused, Stopped

#: How long one store request is retried while the server is unreachable.
RETRY_FOR_S = 30.0
T = TypeVar("T")


class HttpStore:
    def __init__(self, api: ServerAPI, client_id: str, capability: str = "") -> None:
        self.api = api
        self.spot = api.spot
        self.client_id = client_id
        self.capability = capability

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """A checkpoint has its own deadline: a server away for long makes this one fail, not hang;
        a refusal is a failed checkpoint, and a missing piece a checkpoint that cannot be restored."""
        try:
            return self.api.retrying(what, call, max_delay=5.0, deadline=time.monotonic() + RETRY_FOR_S)
        except Stopped as exc:
            raise CheckpointError(f"the server's checkpoint store could not be reached: {exc}") from None
        except ServerRefused as exc:
            if exc.status == 404:
                raise CheckpointMissing(f"{what} is not in the server's checkpoint store") from None
            if exc.status == 400 and what.startswith("checkpoint "):
                raise CorruptCheckpoint(exc.message) from None
            raise CheckpointError(f"the server's checkpoint store refused {what}: {exc.message}") from None

    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool:
        return self._call(
            f"chunk {digest[:12]}", lambda: self.spot.has_chunk(workunit, self.client_id, digest)
        )

    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        return self._call(
            f"chunk {digest[:12]}", lambda: self.spot.put_chunk(workunit, self.client_id, digest, data)
        )

    def get_chunk(self, job_id: str, workunit: str, digest: str) -> bytes:
        return self._call(
            f"chunk {digest[:12]}",
            lambda: self.spot.get_chunk(workunit, self.client_id, digest, self.capability),
        )

    def put_manifest(self, job_id: str, workunit: str, manifest: Manifest) -> int:
        data = manifest.to_bytes()
        self._call(
            f"manifest {manifest.name}",
            lambda: self.spot.put_manifest(workunit, self.client_id, manifest.name, data),
        )
        return len(data)

    def get_manifest(self, job_id: str, workunit: str, name: str) -> Manifest:
        data = self._call(
            f"checkpoint {name}",
            lambda: self.spot.get_manifest(workunit, self.client_id, name, self.capability),
        )
        return Manifest.from_bytes(data)

    def prune(self, job_id: str, workunit: str, keep: str) -> None:
        self._call(f"checkpoint {keep}", lambda: self.spot.prune(workunit, self.client_id, keep))

    def delete_workunit(self, job_id: str, workunit: str) -> None:
        self._call("the workunit's checkpoints", lambda: self.spot.delete(workunit, self.client_id))

    def job_ids(self) -> list[str]:
        return []  # the server collects its own store

    def delete_job(self, job_id: str) -> None:
        """The server collects its own store."""


__all__ = ["HttpStore"]
