"""The server's checkpoint store, reached over HTTP by a worker that shares no filesystem with others.

Only the client holding a workunit's lease may read or write its checkpoints, so a store is bound to
one slot's client id. The server checks every chunk against its digest and every manifest against its
checksum before keeping them.
"""

from __future__ import annotations

import time

import httpx

from perdure.spot.manifest import CheckpointError, CorruptCheckpoint, Manifest
from perdure.spot.store import CheckpointMissing
from perdure.worker.api import ServerAPI, Stopped, _message

#: How long one store request is retried while the server is unreachable.
RETRY_FOR_S = 30.0


class HttpStore:
    def __init__(self, api: ServerAPI, client_id: str) -> None:
        self.api = api
        self.client_id = client_id

    def _call(self, method: str, workunit: str, path: str, **kwargs: object) -> httpx.Response:
        def send() -> httpx.Response:
            response = self.api.ckpt(method, workunit, self.client_id, path, **kwargs)
            if response.status_code >= 500:
                self.api._json(response)  # raises the retryable error
            return response

        # A checkpoint has its own deadline; a server away for long makes this one fail, not hang.
        try:
            return self.api.retrying(
                f"checkpoint store {method} {path}",
                send,
                max_delay=5.0,
                deadline=time.monotonic() + RETRY_FOR_S,
            )
        except Stopped as exc:
            raise CheckpointError(f"the server's checkpoint store could not be reached: {exc}") from None

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code == 404:
            raise CheckpointMissing(f"{what} is not in the server's checkpoint store")
        if response.status_code >= 400:
            raise CheckpointError(f"the server's checkpoint store refused {what}: {_message(response)}")
        return response

    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool:
        return self._call("HEAD", workunit, f"/chunks/{digest}").status_code == 200

    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        response = self._check(
            self._call(
                "PUT",
                workunit,
                f"/chunks/{digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            ),
            f"chunk {digest[:12]}",
        )
        return int(response.json()["data"]["written"])

    def get_chunk(self, job_id: str, workunit: str, digest: str) -> bytes:
        return self._check(self._call("GET", workunit, f"/chunks/{digest}"), f"chunk {digest[:12]}…").content

    def put_manifest(self, job_id: str, workunit: str, manifest: Manifest) -> int:
        data = manifest.to_bytes()
        self._check(
            self._call(
                "PUT",
                workunit,
                f"/manifests/{manifest.name}",
                content=data,
                headers={"Content-Type": "application/json"},
            ),
            f"checkpoint {manifest.name}",
        )
        return len(data)

    def get_manifest(self, job_id: str, workunit: str, name: str) -> Manifest:
        response = self._call("GET", workunit, f"/manifests/{name}")
        if response.status_code == 400:
            raise CorruptCheckpoint(_message(response))
        return Manifest.from_bytes(self._check(response, f"checkpoint {name}").content)

    def prune(self, job_id: str, workunit: str, keep: str) -> None:
        self._check(self._call("POST", workunit, "", params={"prune": keep}), f"checkpoint {keep}")

    def delete_workunit(self, job_id: str, workunit: str) -> None:
        self._check(self._call("DELETE", workunit, ""), "the workunit's checkpoints")

    def job_ids(self) -> list[str]:
        return []  # the server collects its own store

    def delete_job(self, job_id: str) -> None:
        """The server collects its own store."""
