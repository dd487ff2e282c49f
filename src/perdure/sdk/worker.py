"""The calls a worker makes, with the worker's semantics: raw documents in and out, so
``perdure.worker`` can sit on top of this without a translation layer.

Retries: idempotent calls (heartbeat, report, uploads, node inventory) follow the transport's policy;
``register`` is a POST and is tried once. A caller that must keep trying until the server is back (the
worker, ``perdure.worker.api``) wraps calls in ``perdure.retry`` with stop conditions of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from perdure.sdk.errors import BadRequestError, NotFoundError
from perdure.sdk.lean import multipart
from perdure.sdk.transport import Transport

#: The server's answer when a long-poll checkout found nothing.
NO_WORK = "No eligible workunit"


def _seg(value: str) -> str:
    return quote(value, safe="")


class WorkerProtocol:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.spot = SpotProtocol(transport)

    def register(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /client`` with the profile as a multipart file; the new client's document."""
        files = {"profile": ("profile.json", json.dumps(dict(profile)), "application/json")}
        document: dict[str, Any] = self.transport.awe("POST", "/client", files=files)
        return document

    def heartbeat(self, client_id: str, current_work: list[str], *, timeout: float = 15.0) -> dict[str, str]:
        """Say what this client holds; the answer is AWE's instruction map plus ``ckpt``, ``heartbeat``
        and ``ttl`` from the configuration."""
        body = {"busy": bool(current_work), "current_work": {"data": current_work}}
        reply = self.transport.awe(
            "PUT", f"/client/{_seg(client_id)}", params={"heartbeat": ""}, json=body, timeout=timeout
        )
        return dict(reply or {})

    def checkout(self, client_id: str, wait_s: float = 0.0, available: int = -1) -> dict[str, Any] | None:
        """One workunit document, or None when there was nothing for this client within ``wait_s``
        seconds (the server long-polls). Not retried: the caller's loop asks again anyway."""
        params = {"client": client_id, "wait": str(wait_s), "available": str(available)}
        try:
            workunit: dict[str, Any] | None = self.transport.lean(
                "GET", "/work", params=params, timeout=wait_s + 30.0
            ).get("data")
        except BadRequestError as exc:
            if NO_WORK in exc.message:
                return None
            raise
        return workunit

    def secret(self, workunit_id: str, client_id: str, which: str) -> str:
        """The job's data token (``which="datatoken"``) or the task's private environment as JSON
        (``"privateenv"``), for the client holding the workunit only."""
        if which not in ("datatoken", "privateenv"):
            raise ValueError(f"which must be datatoken or privateenv, not {which!r}")
        response = self.transport.send(
            "GET", f"/work/{_seg(workunit_id)}", params={which: "", "client": client_id}
        )
        return str(response.headers.get("Datatoken" if which == "datatoken" else "Privateenv", ""))

    def report(
        self,
        workunit_id: str,
        client_id: str,
        status: str,
        computetime: int = 0,
        files: Mapping[str, Path | bytes] | None = None,
        *,
        retry: bool | None = None,
        extra_params: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        whole: bool = False,
    ) -> Any:
        """``PUT /work/<id>?status=done|fail|failed-permanent|preempted``, with ``stdout``, ``stderr``,
        ``worknotes``, ``perf``, ``preemption`` (or any other part the server reads) as multipart files.
        The answer's ``data`` (the whole envelope with ``whole``)."""

        def parts() -> tuple[dict[str, Any], list[IO[bytes]]]:
            opened: list[IO[bytes]] = []
            built: dict[str, Any] = {}
            for name, content in (files or {}).items():
                if isinstance(content, Path):
                    handle = content.open("rb")
                    opened.append(handle)
                    built[name] = (content.name, handle, "text/plain")
                else:
                    built[name] = (name, content, "application/octet-stream")
            return built, opened

        params = {"status": status, "client": client_id, "computetime": str(computetime), "report": ""}
        params.update(extra_params or {})

        in_memory = {name: content for name, content in (files or {}).items() if isinstance(content, bytes)}

        def send() -> Any:
            if self.transport.lean_ready and len(in_memory) == len(files or {}):  # the worker's usual report
                body, content_type = multipart(in_memory) if in_memory else (None, None)
                return self.transport.lean(
                    "PUT",
                    f"/work/{_seg(workunit_id)}",
                    params=params,
                    body=body,
                    content_type=content_type,
                    timeout=timeout,
                )
            built, opened = parts()  # files are reopened for each attempt
            try:
                return self.transport.awe_page(
                    "PUT",
                    f"/work/{_seg(workunit_id)}",
                    params=params,
                    files=built or None,
                    retry=False,
                    timeout=timeout,
                )
            finally:
                for handle in opened:
                    handle.close()

        envelope = self.transport.call_retrying("PUT", retry, send)
        return envelope if whole else envelope.get("data")

    def report_and_next(
        self,
        workunit_id: str,
        client_id: str,
        status: str,
        computetime: int = 0,
        files: Mapping[str, Path | bytes] | None = None,
        *,
        wait_s: float = 0.0,
        available: int = -1,
        retry: bool | None = None,
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Report, then check out the next workunit in the same request (Perdure's ``&next``): the next
        workunit (or None) and, when there is none, what a checkout would have answered instead."""
        envelope = self.report(
            workunit_id,
            client_id,
            status,
            computetime,
            files,
            retry=retry,
            extra_params={"next": "", "wait": str(wait_s), "available": str(available)},
            timeout=wait_s + 60.0,
            whole=True,
        )
        failure = envelope.get("next_error") or {}
        error = failure.get("error") if isinstance(failure, dict) else None
        message = "; ".join(map(str, error)) if isinstance(error, list) else (str(error) if error else None)
        workunit = envelope.get("next")
        return (workunit if isinstance(workunit, dict) else None), message

    def upload_output(
        self, workunit_id: str, client_id: str, filename: str, path: Path, sha256: str | None = None
    ) -> dict[str, Any]:
        """Stream one output file into the server's data store; the server checks ``sha256``."""
        params = {"client": client_id, **({"sha256": sha256} if sha256 else {})}

        def send() -> dict[str, Any]:
            with path.open("rb") as handle:
                reply: dict[str, Any] = self.transport.awe(
                    "PUT",
                    f"/work/{_seg(workunit_id)}/output/{quote(filename)}",
                    params=params,
                    content=_chunks(handle),
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=None,
                    retry=False,
                )
            return reply

        return self.transport.call_retrying("PUT", None, send)  # type: ignore[no-any-return]

    def deregister(self, client_id: str, *, timeout: float = 10.0) -> None:
        """Leave: the server re-queues what this client held at once, not after the TTL."""
        self.transport.awe("DELETE", f"/client/{_seg(client_id)}", timeout=timeout)

    def put_node(
        self, node_id: str, info: Mapping[str, Any], files: list[str], group: str | None = None
    ) -> dict[str, Any]:
        """Report the machine (``PUT /api/v1/nodes/<id>``) and the log files it ships."""
        body: dict[str, Any] = {"info": dict(info), "files": files, **({"group": group} if group else {})}
        document: dict[str, Any] = self.transport.mgmt("PUT", f"/api/v1/nodes/{_seg(node_id)}", json=body)
        return document

    def put_node_file(self, node_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Ship the tail of one advertised file (the server keeps the last 1 MiB)."""
        document: dict[str, Any] = self.transport.mgmt(
            "PUT",
            f"/api/v1/nodes/{_seg(node_id)}/files",
            params={"path": path},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return document


class SpotProtocol:
    """Spot protection calls of the client holding a workunit: checkpoint and restore reports, and the
    server's checkpoint store (``/work/<id>/ckpt/...``) for workers that share no filesystem. None is
    retried here: checkpoints have deadlines, and the caller decides how long to keep trying."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def checkpoint_taken(self, workunit_id: str, client_id: str, record: Mapping[str, Any]) -> None:
        self.transport.awe(
            "POST",
            f"/work/{_seg(workunit_id)}/checkpoints",
            params={"client": client_id},
            json=dict(record),
        )

    def restore_result(self, workunit_id: str, client_id: str, record: Mapping[str, Any]) -> None:
        self.transport.awe(
            "POST", f"/work/{_seg(workunit_id)}/restores", params={"client": client_id}, json=dict(record)
        )

    def collectable(self, job_ids: list[str]) -> list[str]:
        """Of these jobs, those whose checkpoints nobody needs any more (gone, deleted, or completed
        unless diagnosisMode)."""
        found: list[str] = self.transport.awe(
            "GET", "/checkpoints/collectable", params={"jobs": ",".join(job_ids)}
        )
        return found

    def _store(self, method: str, workunit_id: str, client_id: str, path: str, **kwargs: Any) -> Any:
        params = {"client": client_id, **kwargs.pop("params", {})}
        return self.transport.send(
            method, f"/work/{_seg(workunit_id)}/ckpt{path}", params=params, retry=False, **kwargs
        )

    def has_chunk(self, workunit_id: str, client_id: str, digest: str) -> bool:
        try:
            self._store("HEAD", workunit_id, client_id, f"/chunks/{_seg(digest)}")
        except NotFoundError:
            return False
        return True

    def put_chunk(self, workunit_id: str, client_id: str, digest: str, data: bytes) -> int:
        """Store one chunk (the server checks it against its digest); the bytes written, 0 if present."""
        response = self._store(
            "PUT",
            workunit_id,
            client_id,
            f"/chunks/{_seg(digest)}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return int(response.json()["data"]["written"])

    def get_chunk(self, workunit_id: str, client_id: str, digest: str, capability: str = "") -> bytes:
        """One chunk; ``capability`` is the lease's ``captoken``, which a clientgroup token needs."""
        content: bytes = self._store(
            "GET", workunit_id, client_id, f"/chunks/{_seg(digest)}", params=_captoken(capability)
        ).content
        return content

    def put_manifest(self, workunit_id: str, client_id: str, name: str, data: bytes) -> None:
        self._store(
            "PUT",
            workunit_id,
            client_id,
            f"/manifests/{_seg(name)}",
            content=data,
            headers={"Content-Type": "application/json"},
        )

    def get_manifest(self, workunit_id: str, client_id: str, name: str, capability: str = "") -> bytes:
        content: bytes = self._store(
            "GET", workunit_id, client_id, f"/manifests/{_seg(name)}", params=_captoken(capability)
        ).content
        return content

    def prune(self, workunit_id: str, client_id: str, keep: str) -> None:
        """Keep only the named checkpoint of the workunit (and its chunks)."""
        self._store("POST", workunit_id, client_id, "", params={"prune": keep})

    def delete(self, workunit_id: str, client_id: str) -> None:
        self._store("DELETE", workunit_id, client_id, "")


def _captoken(capability: str) -> dict[str, str]:
    return {"captoken": capability} if capability else {}


def _chunks(handle: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


__all__ = ["NO_WORK", "SpotProtocol", "WorkerProtocol"]
