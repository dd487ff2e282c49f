"""Putting a workunit's inputs in its work directory (awe.md §5.3): from this server, another host, the
object store or an allowed local root; its part of a split input; reference data (predata) once per node.

One ``Stager`` serves a slot for its whole life, built with its runner: not one per workunit.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from perdure.retry import Policy, retry_call
from perdure.sdk import errors as sdk_errors
from perdure.split import awe_part
from perdure.worker.api import ServerAPI, ServerRefused
from perdure.worker.direct import DirectData, DirectError, stage_s3
from perdure.worker.localfiles import LocalFileRefused, local_path

#: The lease's data capability in a URL the server handed out (issue 17): not part of what it names.
_CAPTOKEN = re.compile(r"[?&]captoken=[^&#]*")


class StageError(Exception):
    """An input could not be fetched or an output is missing: the workunit fails."""


class Stager:
    """Fetches inputs for one slot. ``discarded`` and ``discard_wake`` are the runner's own: a fetch
    stops trying once its workunit is in the set, and the event wakes one waiting to try again."""

    def __init__(
        self,
        api: ServerAPI,
        client_id: str,
        predata: Path,
        *,
        file_roots: Sequence[str | Path],
        transfer_tries: int,
        transfer_timeout_s: float,
        discarded: set[str],
        discard_wake: threading.Event,
    ) -> None:
        self.api = api
        self.client_id = client_id
        self.predata = predata
        self.file_roots = tuple(file_roots)
        self.transfer_tries = transfer_tries
        self.transfer_timeout_s = transfer_timeout_s
        self._discarded = discarded
        self._discard_wake = discard_wake

    def stage(self, wu: dict[str, Any], workdir: Path, direct: DirectData) -> tuple[dict[str, Path], int]:
        """Every input and predata file in place: their absolute paths by name, and the inputs' bytes."""
        inputs: dict[str, Path] = {}
        total = 0
        token_headers: dict[str, str] | None = None
        part = wu.get("part") or {}
        for io in wu.get("inputs", []):
            target = workdir / io["filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            url = io.get("url") or ""
            if not url and io.get("host") and io.get("node") not in ("", "-", None):
                url = f"{io['host'].rstrip('/')}/node/{io['node']}?download"
            if not url:
                raise StageError(f"input {io['filename']!r} has no source (no url, origin or node)")
            own = self.api.client.url + "/"
            if url.startswith(own):  # this server (host + node): with the worker's own credentials
                url = url[len(own) - 1 :]
            params = _part_params(wu, part) if part.get("input") == io["filename"] else None
            if params:  # appended as AWE's worker does: the URL's own query (``?download``) stays
                url += ("&" if "?" in url else "?") + urlencode(params)
                params = None
            if direct.has_input(io["filename"]):
                direct_transfer(direct.stage, io["filename"], target)
            elif url.startswith("s3://"):
                direct_transfer(stage_s3, url, target)
            elif url.startswith("file://"):
                shutil.copyfile(self._local_file(url), target)
            elif url.startswith("/"):
                self.api.download(url, target, params=params)
            elif url.startswith(("http://", "https://")):
                if token_headers is None:
                    token_headers = self._datatoken_headers(wu)
                self._fetch(wu["id"], f"input {io['filename']!r}", url, target, token_headers)
            else:
                raise StageError(f"input {io['filename']!r}: unsupported URL {url!r}")
            if io.get("uncompress") == "gzip":
                _gunzip_in_place(target)
            inputs[io["filename"]] = target.resolve()
            total += target.stat().st_size
        for io in wu.get("predata", []):
            inputs[io["filename"]] = self._predata(wu["id"], io, workdir)
        return inputs, total

    def _local_file(self, url: str) -> Path:
        try:
            return local_path(url, self.file_roots)
        except LocalFileRefused as exc:
            raise StageError(str(exc)) from None

    def _fetch(self, wu_id: str, what: str, url: str, target: Path, headers: dict[str, str]) -> None:
        """Fetch from another host under the one retry policy (``perdure.retry``), bounded: at most
        ``transfer_tries`` tries within ``transfer_timeout_s``, and none once the workunit is discarded
        (the heartbeat says so). Then ``StageError`` with the URL and the last error: the workunit
        fails with them."""
        started, tries = time.monotonic(), 0

        def once() -> None:
            nonlocal tries
            if wu_id in self._discarded:
                raise StageError(f"{what}: workunit discarded while fetching {url}")
            tries += 1
            self.api.fetch_once(url, target, headers=headers)

        policy = Policy(attempts=self.transfer_tries, within_s=self.transfer_timeout_s, first_wait_s=1.0)
        try:
            retry_call(
                once,
                policy,
                what=f"{what}: fetching {url}",
                stop=self._discard_wake,
                give_up=lambda: wu_id in self._discarded,
            )
            return
        except (sdk_errors.PerdureError, ServerRefused, OSError) as exc:  # a refusal is never retried
            last = str(exc) or type(exc).__name__
        if wu_id in self._discarded:
            raise StageError(f"{what}: workunit discarded while fetching {url}")
        elapsed = time.monotonic() - started
        raise StageError(f"{what}: could not fetch {url} ({tries} tries in {elapsed:.1f}s): {last}")

    def _datatoken_headers(self, wu: dict[str, Any]) -> dict[str, str]:
        if not (wu.get("info") or {}).get("auth"):
            return {}
        token = self.api.secret(wu["id"], self.client_id, "datatoken")
        return {"Authorization": token if " " in token else f"OAuth {token}"}

    def _predata(self, wu_id: str, io: dict[str, Any], workdir: Path) -> Path:
        """Reference data is fetched once per node and linked into each work directory."""
        url = io.get("url") or ""
        if not url:
            raise StageError(f"predata {io['filename']!r} has no url")
        # Cached by the URL without the lease's capability, which changes with every workunit.
        cached = (
            self.predata / hashlib.sha256(_CAPTOKEN.sub("", url).encode()).hexdigest()[:32] / io["filename"]
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        # One download per node: slots wait on a lock file (it also serialises other processes).
        with (cached.parent / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached.exists():
                partial = cached.with_name(cached.name + f".{os.getpid()}.{threading.get_ident()}.part")
                if url.startswith("file://"):
                    shutil.copyfile(self._local_file(url), partial)
                elif url.startswith(("http://", "https://")):
                    self._fetch(wu_id, f"predata {io['filename']!r}", url, partial, {})
                elif url.startswith("s3://"):
                    direct_transfer(stage_s3, url, partial)
                else:
                    self.api.download(url, partial)
                os.replace(partial, cached)  # atomic: a reader never sees a half-written file
        link: Path = workdir / str(io["filename"])
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cached.resolve())
        return link


def direct_transfer(transfer: Callable[..., object], *args: Any) -> None:
    """A transfer to or from the object store (``worker/direct.py``); its failure fails the work."""
    try:
        transfer(*args)
    except DirectError as exc:
        raise StageError(str(exc)) from None


def _gunzip_in_place(path: Path) -> None:
    tmp = path.with_name(path.name + ".gunzip")
    with gzip.open(path, "rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.replace(tmp, path)


def _part_params(wu: dict[str, Any], part: dict[str, Any]) -> dict[str, str] | None:
    """The query that selects this workunit's part of its split input: AWE's ``index``/``part``
    (``PartInfo``, as AWE's worker appends them), or a byte range from an older server."""
    if int(wu.get("rank") or 0) <= 0:
        return None
    if part.get("index") and part.get("totalindex"):
        units = awe_part(int(wu["rank"]), int(wu.get("totalwork") or 1), int(part["totalindex"]))
        return {"index": str(part["index"]), "part": units}
    if "offset" in part and "length" in part:
        return {"offset": str(part["offset"]), "length": str(part["length"])}
    return None
