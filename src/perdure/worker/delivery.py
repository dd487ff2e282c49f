"""Shipping a finished workunit's outputs (awe.md §5.3): every declared one checked, then uploaded to the
server (or straight to its object store), then copied to any ``deliverto`` location the job names.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from perdure.worker.api import ServerAPI
from perdure.worker.direct import DirectData, DirectError, deliver_s3
from perdure.worker.staging import StageError, direct_transfer


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def deliver_outputs(
    api: ServerAPI, client_id: str, wu: dict[str, Any], workdir: Path, direct: DirectData
) -> int:
    """Check every declared output, then upload them all; a missing or empty one fails the work.
    ``direct``: the workunit's presigned URLs, used for the outputs they cover. The bytes shipped."""
    files = []
    for io in wu.get("outputs", []):
        path = workdir / (io.get("directory") or "") / io["filename"]
        if not path.is_file():
            raise StageError(f"output {io['filename']!r} was not produced")
        if io.get("nonzero") and path.stat().st_size == 0:
            raise StageError(f"output {io['filename']!r} is empty but marked nonzero")
        files.append((io["filename"], path))
    total = 0
    for filename, path in files:
        if direct.has_output(filename, path.stat().st_size):
            direct_transfer(direct.deliver, filename, path, sha256_of(path))
            total += path.stat().st_size
            continue
        api.upload_output(wu["id"], client_id, filename, path, sha256_of(path))
        total += path.stat().st_size
    return total


def deliver_to_user(api: ServerAPI, wu: dict[str, Any], workdir: Path, perf: dict[str, Any]) -> list[str]:
    """Copy the outputs that name a ``deliverto`` location there, once Perdure has recorded them
    (a failed copy fails the workunit; the recorded output stays). Notes say where each went."""
    notes: list[str] = []
    delivered: dict[str, str] = {}
    started = time.time()
    for io in wu.get("outputs", []):
        url = io.get("deliverto") or ""
        if not url:
            continue
        path = workdir / (io.get("directory") or "") / io["filename"]
        try:
            size = deliver_s3(path, url, api.stop)
        except DirectError as exc:
            raise StageError(str(exc)) from None
        delivered[io["filename"]] = url
        notes.append(f"output {io['filename']!r} delivered to {url} ({size} bytes)")
    if delivered:
        perf["delivered_to"] = delivered
        perf["time_deliver"] = round(time.time() - started, 3)
    return notes
