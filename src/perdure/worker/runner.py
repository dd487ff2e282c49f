"""Running one workunit (awe.md §5.3): stage, run in its own process group, check and ship outputs.

Exit 0 is ``done``, 42 ``failed-permanent``, anything else ``fail``; a workunit the server told us to
discard is killed and not reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from perdure.worker.api import ApiError, ServerAPI

log = logging.getLogger("perdure.worker")

#: AWE's exit code for "retrying cannot help".
EXIT_PERMANENT = 42
_AT_FILE = re.compile(r"@([\w\-.]+)")
_ENV_VAR = re.compile(r"\$\{(\w+)\}")
#: Of each log, the last this many bytes are sent with the report.
LOG_TAIL = 4 * 1024 * 1024


class StageError(Exception):
    """An input could not be fetched or an output is missing: the workunit fails."""


@dataclass
class Outcome:
    status: str  # done | fail | failed-permanent | discarded
    computetime: int
    notes: list[str] = field(default_factory=list)
    perf: dict[str, Any] = field(default_factory=dict)
    stdout: Path | None = None
    stderr: Path | None = None


def split_args(args: str) -> list[str]:
    """AWE's rule: split on spaces; single quotes group words and a closing quote ends the word."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in args:
        if char == "'":
            if quoted:
                words.append("".join(current))
                current = []
            quoted = not quoted
        elif char == " " and not quoted:
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def expand(word: str, inputs: dict[str, Path], env: dict[str, str]) -> str:
    """``@file`` becomes the absolute path of that input; ``${VAR}`` the variable's value."""
    word = _AT_FILE.sub(lambda m: str(inputs[m.group(1)]) if m.group(1) in inputs else m.group(0), word)
    return _ENV_VAR.sub(lambda m: env.get(m.group(1), ""), word)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class Runner:
    """Runs workunits for one slot; ``discard`` may be called from the heartbeat thread."""

    def __init__(self, api: ServerAPI, client_id: str, workpath: Path, predata: Path) -> None:
        self.api = api
        self.client_id = client_id
        self.workpath = workpath
        self.predata = predata
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._current: str | None = None
        self._discarded: set[str] = set()

    @property
    def current(self) -> str | None:
        return self._current

    def discard(self, wu_id: str) -> None:
        with self._lock:
            if self._current != wu_id:
                return
            self._discarded.add(wu_id)
            process = self._process
        # Never poll() here: that could reap the child under the runner's wait4().
        if process is not None:
            log.warning("discarding %s: killing its process group", wu_id)
            _kill_group(process)

    def run(self, wu: dict[str, Any]) -> Outcome:
        wu_id = wu["id"]
        with self._lock:
            self._current = wu_id
            self._discarded.discard(wu_id)
        started = time.time()
        workdir = self.workpath / re.sub(r"[^\w.-]", "_", f"{wu_id}-{wu.get('attempt', 0)}")
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        perf: dict[str, Any] = {"client_id": self.client_id, "checkout": started, "workdir": str(workdir)}
        stdout, stderr = workdir / "awe_stdout.txt", workdir / "awe_stderr.txt"
        try:
            env = self._environment(wu, workdir)
            inputs, size_in = self._stage(wu, workdir, env)
            perf.update(time_data_in=round(time.time() - started, 3), size_infile=size_in)
            argv = self._argv(wu, inputs, env)
            (workdir / "userattr.json").write_text(json.dumps(wu.get("userattr") or {}))
            run_start = time.time()
            code, usage = self._execute(wu_id, argv, workdir, env, stdout, stderr)
            runtime = time.time() - run_start
            perf.update(runtime=round(runtime, 3), exit_code=code, **usage)
            if wu_id in self._discarded:
                return Outcome("discarded", int(runtime), perf=perf)
            if code == EXIT_PERMANENT:
                return Outcome("failed-permanent", int(runtime), [f"exit code {code}"], perf, stdout, stderr)
            if code != 0:
                return Outcome("fail", int(runtime), [f"command exited with {code}"], perf, stdout, stderr)
            out_start = time.time()
            perf["size_outfile"] = self._deliver(wu, workdir)
            perf["time_data_out"] = round(time.time() - out_start, 3)
            return Outcome("done", int(runtime), perf=perf, stdout=stdout, stderr=stderr)
        except (StageError, ApiError, OSError) as exc:
            log.warning("workunit %s failed: %s", wu_id, exc)
            return Outcome(
                "fail",
                int(time.time() - started),
                [str(exc)],
                perf,
                stdout if stdout.exists() else None,
                stderr if stderr.exists() else None,
            )
        finally:
            perf["total_time"] = round(time.time() - started, 3)
            with self._lock:
                self._current = None
                self._process = None

    # ---- staging ------------------------------------------------------------------------------

    def _environment(self, wu: dict[str, Any], workdir: Path) -> dict[str, str]:
        cmd = wu["cmd"]
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (cmd.get("environ", {}).get("public") or {}).items()})
        if cmd.get("has_private_env"):
            private = self.api.secret(wu["id"], self.client_id, "privateenv")
            env.update({k: str(v) for k, v in json.loads(private or "{}").items()})
        env.update(
            PERDURE_JOB_ID=wu["jobid"],
            PERDURE_TASK_ID=wu["task_name"],
            PERDURE_WORKUNIT_ID=wu["id"],
            PERDURE_RANK=str(wu["rank"]),
            PERDURE_TOTALWORK=str(wu["totalwork"]),
            PERDURE_WORKDIR=str(workdir),
        )
        return env

    def _stage(self, wu: dict[str, Any], workdir: Path, env: dict[str, str]) -> tuple[dict[str, Path], int]:
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
            if url.startswith("file://"):
                shutil.copyfile(url[7:], target)
            elif url.startswith("/"):
                params = None
                if part.get("input") == io["filename"]:
                    params = {"offset": str(part["offset"]), "length": str(part["length"])}
                self.api.download(url, target, params=params)
            elif url.startswith(("http://", "https://")):
                if token_headers is None:
                    token_headers = self._datatoken_headers(wu)
                self.api.download(url, target, headers=token_headers)
            else:
                raise StageError(f"input {io['filename']!r}: unsupported URL {url!r}")
            if io.get("uncompress") == "gzip":
                _gunzip_in_place(target)
            inputs[io["filename"]] = target.resolve()
            total += target.stat().st_size
        for io in wu.get("predata", []):
            inputs[io["filename"]] = self._predata(io, workdir)
        return inputs, total

    def _datatoken_headers(self, wu: dict[str, Any]) -> dict[str, str]:
        if not (wu.get("info") or {}).get("auth"):
            return {}
        token = self.api.secret(wu["id"], self.client_id, "datatoken")
        return {"Authorization": token if " " in token else f"OAuth {token}"}

    def _predata(self, io: dict[str, Any], workdir: Path) -> Path:
        """Reference data is fetched once per node and linked into each work directory."""
        url = io.get("url") or ""
        if not url:
            raise StageError(f"predata {io['filename']!r} has no url")
        cached = self.predata / hashlib.sha256(url.encode()).hexdigest()[:32] / io["filename"]
        cached.parent.mkdir(parents=True, exist_ok=True)
        # One download per node: slots wait on a lock file (it also serialises other processes).
        with (cached.parent / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached.exists():
                partial = cached.with_name(cached.name + f".{os.getpid()}.{threading.get_ident()}.part")
                if url.startswith("file://"):
                    shutil.copyfile(url[7:], partial)
                else:
                    self.api.download(url, partial)
                os.replace(partial, cached)  # atomic: a reader never sees a half-written file
        link: Path = workdir / str(io["filename"])
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cached.resolve())
        return link

    def _argv(self, wu: dict[str, Any], inputs: dict[str, Path], env: dict[str, str]) -> list[str]:
        cmd = wu["cmd"]
        words = list(cmd.get("args_array") or []) or split_args(cmd.get("args") or "")
        return [cmd["name"], *(expand(w, inputs, env) for w in words)]

    # ---- running ------------------------------------------------------------------------------

    def _execute(
        self, wu_id: str, argv: list[str], workdir: Path, env: dict[str, str], stdout: Path, stderr: Path
    ) -> tuple[int, dict[str, Any]]:
        executable = shutil.which(argv[0], path=f"{workdir}{os.pathsep}{env.get('PATH', '')}")
        if executable is None:
            stderr.write_text(f"perdure: command not found: {argv[0]}\n")
            return 127, {}
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [executable, *argv[1:]],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        with self._lock:
            self._process = process
            discarded = wu_id in self._discarded
        if discarded:
            _kill_group(process)
        peak = _PeakMemory(process.pid)
        peak.start()
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak.stop()
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        return code, {
            "cpu_time": round(rusage.ru_utime + rusage.ru_stime, 3),
            "max_memory_total_rss": max(peak.value, rusage.ru_maxrss * 1024),
        }

    # ---- delivering ---------------------------------------------------------------------------

    def _deliver(self, wu: dict[str, Any], workdir: Path) -> int:
        """Check every declared output, then upload them all; a missing or empty one fails the work."""
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
            self.api.upload_output(wu["id"], self.client_id, filename, path, sha256_of(path))
            total += path.stat().st_size
        return total


class _PeakMemory(threading.Thread):
    """Samples the RSS of the whole process tree (rusage only sees the largest single process)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.value = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.wait(0.5):
            try:
                procs = [root, *root.children(recursive=True)]
                self.value = max(self.value, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass

    def stop(self) -> None:
        self._stop_event.set()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def escalate() -> None:
        time.sleep(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=escalate, daemon=True).start()


def _gunzip_in_place(path: Path) -> None:
    tmp = path.with_name(path.name + ".gunzip")
    with gzip.open(path, "rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.replace(tmp, path)


def tail_bytes(path: Path | None, limit: int = LOG_TAIL) -> bytes:
    if path is None or not path.exists():
        return b""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read()
