"""The worker's narrow view of the server: every call it makes, with retries where they are safe."""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

log = logging.getLogger("perdure.worker")
T = TypeVar("T")


class ApiError(Exception):
    """The server answered, and refused: retrying the same request cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Stopped(Exception):
    """The worker is shutting down while waiting for the server."""


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error") or body.get("message")
        if isinstance(error, list) and error:
            return str(error[0])
        if error:
            return str(error)
    return response.text[:500]


class ServerAPI:
    def __init__(self, base_url: str, *, token: str = "", ca_file: str = "", stop: threading.Event) -> None:
        headers = {"Authorization": f"CG_TOKEN {token}"} if token else {}
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, verify=verify, timeout=60.0)
        self.stop = stop

    def close(self) -> None:
        self.http.close()

    # ---- retry policy -------------------------------------------------------------------------

    def retrying(
        self, what: str, call: Callable[[], T], *, max_delay: float = 30.0, deadline: float | None = None
    ) -> T:
        """Retry on network errors and 5xx with exponential backoff and jitter, until stopped (or, given
        a ``time.monotonic()`` deadline, until then: a node being reclaimed cannot wait forever)."""
        delay = 0.5
        while True:
            if self.stop.is_set() and deadline is None:
                raise Stopped(what)
            try:
                return call()
            except (httpx.TransportError, _ServerBusy) as exc:
                wait = random.uniform(delay / 2, delay)
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise Stopped(f"{what}: out of time") from exc
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, wait)
                if deadline is None and self.stop.wait(wait):
                    raise Stopped(what) from None
                if deadline is not None:
                    time.sleep(wait)
                delay = min(max_delay, delay * 2)

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 500:
            raise _ServerBusy(f"{response.status_code}: {_message(response)}")
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response))
        return response.json().get("data")

    # ---- the protocol -------------------------------------------------------------------------

    def register(self, profile: dict[str, Any]) -> dict[str, Any]:
        files = {"profile": ("profile.json", json.dumps(profile), "application/json")}
        document: dict[str, Any] = self.retrying(
            "register", lambda: self._json(self.http.post("/client", files=files))
        )
        return document

    def heartbeat(self, client_id: str, current_work: list[str]) -> dict[str, str]:
        body = {"busy": bool(current_work), "current_work": {"data": current_work}}
        response = self.http.put(f"/client/{client_id}", params={"heartbeat": ""}, json=body, timeout=15.0)
        instructions: dict[str, str] = self._json(response) or {}
        return instructions

    def checkout(self, client_id: str, wait_s: float, available: int) -> dict[str, Any] | None:
        """One workunit, or None when the server has nothing for us after waiting."""
        params = {"client": client_id, "wait": str(wait_s), "available": str(available)}
        response = self.http.get("/work", params=params, timeout=wait_s + 30.0)
        if response.status_code == 400 and "No eligible workunit" in _message(response):
            return None
        workunit: dict[str, Any] | None = self._json(response)
        return workunit

    def secret(self, wu_id: str, client_id: str, which: str) -> str:
        response = self.retrying(
            which, lambda: self.http.get(f"/work/{wu_id}", params={which: "", "client": client_id})
        )
        self._json(response)
        return str(response.headers.get("Datatoken" if which == "datatoken" else "Privateenv", ""))

    def report(
        self,
        wu_id: str,
        client_id: str,
        status: str,
        computetime: int,
        files: dict[str, Path | bytes],
        *,
        deadline: float | None = None,
    ) -> None:
        """Deliver a result until the server accepts it (or refuses it for good)."""

        def send() -> None:
            parts: dict[str, Any] = {}
            handles = []
            try:
                for name, content in files.items():
                    if isinstance(content, Path):
                        handle = content.open("rb")
                        handles.append(handle)
                        parts[name] = (content.name, handle, "text/plain")
                    else:
                        parts[name] = (name, content, "application/octet-stream")
                params = {
                    "status": status,
                    "client": client_id,
                    "computetime": str(computetime),
                    "report": "",
                }
                self._json(self.http.put(f"/work/{wu_id}", params=params, files=parts or None))
            finally:
                for handle in handles:
                    handle.close()

        self.retrying(f"report {status} for {wu_id}", send, max_delay=60.0, deadline=deadline)

    def upload_output(self, wu_id: str, client_id: str, filename: str, path: Path, sha256: str) -> None:
        def send() -> None:
            with path.open("rb") as handle:
                response = self.http.put(
                    f"/work/{wu_id}/output/{filename}",
                    params={"client": client_id, "sha256": sha256},
                    content=_chunks(handle),
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=None,
                )
            self._json(response)

        self.retrying(f"upload {filename} of {wu_id}", send)

    def download(
        self,
        url: str,
        dest: Path,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Stream a URL (server-relative or absolute http(s)) to a file; returns its size."""

        def fetch() -> int:
            client = self.http if url.startswith("/") else httpx.Client(timeout=60.0, follow_redirects=True)
            try:
                with client.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code >= 500:
                        raise _ServerBusy(f"{response.status_code} from {url}")
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(response.status_code, f"{url}: {_message(response)}")
                    size = 0
                    with dest.open("wb") as out:
                        for chunk in response.iter_bytes(1024 * 1024):
                            out.write(chunk)
                            size += len(chunk)
                    return size
            finally:
                if client is not self.http:
                    client.close()

        return self.retrying(f"download {url}", fetch)

    # ---- spot protection ----------------------------------------------------------------------

    def checkpoint_taken(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        self._json(self.http.post(f"/work/{wu_id}/checkpoints", params={"client": client_id}, json=record))

    def restore_result(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        self._json(self.http.post(f"/work/{wu_id}/restores", params={"client": client_id}, json=record))

    def collectable(self, job_ids: list[str]) -> list[str]:
        """Of these jobs, those whose checkpoints nobody needs any more."""
        found: list[str] = self._json(
            self.http.get("/checkpoints/collectable", params={"jobs": ",".join(job_ids)})
        )
        return found

    def ckpt(self, method: str, wu_id: str, client_id: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the server's checkpoint store (``/work/<id>/ckpt/...``)."""
        params = {"client": client_id, **kwargs.pop("params", {})}
        return self.http.request(method, f"/work/{wu_id}/ckpt{path}", params=params, **kwargs)

    def deregister(self, client_id: str) -> None:
        """Leave: the server re-queues whatever this client held at once, instead of after the TTL."""
        self._json(self.http.delete(f"/client/{client_id}", timeout=10.0))

    def put_node(self, node_id: str, info: dict[str, Any], files: list[str]) -> None:
        self._json(self.http.put(f"/api/v1/nodes/{node_id}", json={"info": info, "files": files}))

    def put_node_file(self, node_id: str, path: str, data: bytes) -> None:
        self._json(
            self.http.put(
                f"/api/v1/nodes/{node_id}/files",
                params={"path": path},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        )


class _ServerBusy(Exception):
    """A 5xx: the server is there but could not answer now."""


def _chunks(handle: Any, size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


__all__ = ["ApiError", "ServerAPI", "Stopped"]
