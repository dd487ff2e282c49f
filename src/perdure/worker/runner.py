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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import psutil

from perdure.retry import Policy, retry_call
from perdure.sdk import errors as sdk_errors
from perdure.split import awe_part
from perdure.spot.engine import Launch
from perdure.spot.protection import HandOver, Protection
from perdure.states import ReportStatus
from perdure.timers import TIMERS
from perdure.worker.api import ServerAPI, ServerRefused
from perdure.worker.container import (
    Container,
    ContainerSupport,
    ImageError,
    container_image,
    split_log,
)
from perdure.worker.container import Usage as ContainerUsage
from perdure.worker.direct import DirectData, DirectError, deliver_s3, stage_s3
from perdure.worker.environment import command_environment
from perdure.worker.localfiles import LocalFileRefused, local_path

if TYPE_CHECKING:
    from perdure.worker.protect import SpotContext

log = logging.getLogger("perdure.worker")

#: AWE's exit code for "retrying cannot help".
EXIT_PERMANENT = 42
_AT_FILE = re.compile(r"@([\w\-.]+)")
_ENV_VAR = re.compile(r"\$\{(\w+)\}")
#: The lease's data capability in a URL the server handed out (issue 17): not part of what it names.
_CAPTOKEN = re.compile(r"[?&]captoken=[^&#]*")
#: Of each log, the last this many bytes are sent with the report.
LOG_TAIL = 4 * 1024 * 1024


class StageError(Exception):
    """An input could not be fetched or an output is missing: the workunit fails."""


#: The outcome of a workunit the server told us to drop: not reported.
DISCARDED = "discarded"


@dataclass
class Outcome:
    #: A ``ReportStatus`` (done, fail, failed-permanent, preempted), or ``DISCARDED`` (never reported).
    status: str
    computetime: int
    notes: list[str] = field(default_factory=list)
    perf: dict[str, Any] = field(default_factory=dict)
    stdout: Path | None = None
    stderr: Path | None = None
    #: For ``preempted``: how the work left this node, and what to restore it from.
    preemption: HandOver | None = None


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

    def __init__(
        self,
        api: ServerAPI,
        client_id: str,
        workpath: Path,
        predata: Path,
        spot: SpotContext | None = None,
        *,
        file_roots: Sequence[str | Path] = (),
        transfer_tries: int = 5,
        transfer_timeout_s: float = 300.0,
        containers: ContainerSupport | None = None,
    ) -> None:
        self.api = api
        #: Directories ``file://`` inputs may be read from (``--allow-file-root``); none by default.
        self.file_roots = tuple(file_roots)
        #: Bounds on fetching from other hosts (WorkerConfig.transfer_tries / transfer_timeout_s).
        self.transfer_tries = transfer_tries
        self.transfer_timeout_s = transfer_timeout_s
        #: Set when the current workunit is discarded: wakes a fetch waiting to try again.
        self._discard_wake = threading.Event()
        #: None where this node cannot run task containers (checkout never gives it one).
        self.containers = containers
        self.client_id = client_id
        self.workpath = workpath
        self.predata = predata
        self.spot = spot
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._current: str | None = None
        self._discarded: set[str] = set()
        self._protection: Protection | None = None
        #: The checkpoint the server would restore this work from, were it handed back now.
        self._reference: dict[str, Any] | None = None
        self._preempting = threading.Event()
        self._preempted = threading.Event()
        self._preemption: HandOver | None = None
        #: The current workunit's presigned URLs to the object store, if the server gave any.
        self._direct: DirectData | None = None

    @property
    def current(self) -> str | None:
        return self._current

    @property
    def protection(self) -> Protection | None:
        return self._protection

    def discard(self, wu_id: str) -> None:
        with self._lock:
            if self._current != wu_id:
                return
            self._discarded.add(wu_id)
            self._discard_wake.set()
            process = self._process
        # Never poll() here: that could reap the child under the runner's wait4().
        if process is not None:
            log.warning("discarding %s: killing its process group", wu_id)
            _kill_group(process)

    def preempt(self, deadline: float) -> None:
        """The node is being reclaimed: stop the current work with a final checkpoint (in the calling
        thread, so several slots hand over in parallel); ``run`` then returns it as preempted."""
        with self._lock:
            if self._current is None or self._preempting.is_set():
                return
            process, protection = self._process, self._protection
            if process is not None and (
                process.returncode is not None or (protection is not None and protection.run.exited.is_set())
            ):
                return  # it finished just now: its report is on the way, and that is better than a restore
            self._preempting.set()
        try:
            if process is None:
                # Still staging: it never ran here, so whatever it came with still holds.
                result = HandOver("returned", self._reference, "handed back before it started")
            elif protection is None:
                _kill_group(process)
                result = HandOver("none", None, "checkpointing is off for this work (ckptMode none)")
            else:
                result = protection.final(deadline)
        except Exception as exc:  # whatever happens, the work must be handed back
            log.exception("final checkpoint of %s failed unexpectedly", self._current)
            result = HandOver("none", None, f"the hand-over failed: {exc}")
        self._preemption = result
        self._preempted.set()

    def run(self, wu: dict[str, Any]) -> Outcome:
        wu_id = wu["id"]
        with self._lock:
            self._current = wu_id
            self._discarded.discard(wu_id)
            self._discard_wake.clear()
            self._reference = wu.get("checkpoint")
            self._preempting.clear()
            self._preempted.clear()
            self._preemption = None
        started = time.time()
        workdir = self.workpath / re.sub(r"[^\w.-]", "_", f"{wu_id}-{wu.get('attempt', 0)}")
        try:
            workdir.mkdir(parents=True)
        except FileExistsError:  # left by an earlier run of this attempt: start clean
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
        perf: dict[str, Any] = {"client_id": self.client_id, "checkout": started, "workdir": str(workdir)}
        stdout, stderr = workdir / "awe_stdout.txt", workdir / "awe_stderr.txt"
        protection: Protection | None = None
        container: Container | None = None
        try:
            env = self._environment(wu, workdir)
            inputs, size_in = self._stage(wu, workdir, env)
            perf.update(time_data_in=round(time.time() - started, 3), size_infile=size_in)
            argv = self._argv(wu, inputs, env)
            if container_image(wu):
                container = self._container(wu, perf)
            (workdir / "userattr.json").write_text(json.dumps(wu.get("userattr") or {}))
            protection, launch = self._protect_and_restore(wu, workdir, inputs)
            if launch is not None:
                env.update(launch.env)
                argv = launch.argv or argv
                perf["restored_from"] = (self._reference or {}).get("name")
                if launch.workdir is not None and launch.workdir != workdir:
                    workdir = launch.workdir  # the restored process works where it always did
                    perf["workdir"] = str(workdir)
                    stdout, stderr = workdir / "awe_stdout.txt", workdir / "awe_stderr.txt"
            if self._preempting.is_set():
                return self._preempted_outcome(0, perf)
            run_start = time.time()
            if container is not None:
                code, usage = self._execute_container(
                    wu_id,
                    container,
                    argv,
                    workdir,
                    env,
                    stdout,
                    stderr,
                    restored=launch is not None,
                    protection=protection,
                )
            else:
                code, usage = self._execute(
                    wu_id,
                    argv,
                    workdir,
                    env,
                    stdout,
                    stderr,
                    append=launch is not None,
                    protection=protection,
                    pidfile=launch.pidfile if launch is not None else None,
                    launch=launch,
                )
            runtime = time.time() - run_start
            perf.update(runtime=round(runtime, 3), exit_code=code, **usage)
            if self._preempting.is_set():
                return self._preempted_outcome(int(runtime), perf)
            if wu_id in self._discarded:
                return Outcome(DISCARDED, int(runtime), perf=perf)
            if protection is not None:
                # Done or failed, the checkpoints are of no more use (a failed retry starts clean).
                protection.finished(keep=protection.run.policy.diagnosis)
            if code == EXIT_PERMANENT:
                notes = [f"exit code {code}"]
                return Outcome(ReportStatus.FAILED_PERMANENT, int(runtime), notes, perf, stdout, stderr)
            if code != 0:
                notes = [f"command exited with {code}"]
                return Outcome(ReportStatus.FAIL, int(runtime), notes, perf, stdout, stderr)
            out_start = time.time()
            perf["size_outfile"] = self._deliver(wu, workdir)
            perf["time_data_out"] = round(time.time() - out_start, 3)
            notes = self._deliver_to_user(wu, workdir, perf)
            return Outcome(ReportStatus.DONE, int(runtime), notes, perf, stdout, stderr)
        except ImageError as exc:
            log.warning("workunit %s failed: %s", wu_id, exc)
            return Outcome(ReportStatus.FAILED_PERMANENT, int(time.time() - started), [str(exc)], perf)
        except (StageError, ServerRefused, OSError) as exc:
            if self._preempting.is_set():
                return self._preempted_outcome(int(time.time() - started), perf)
            log.warning("workunit %s failed: %s", wu_id, exc)
            if not stderr.exists():  # it failed before its command ran: the job's apperror says why
                with contextlib.suppress(OSError):
                    stderr.write_text(f"perdure worker: {exc}\n")
            return Outcome(
                ReportStatus.FAIL,
                int(time.time() - started),
                [str(exc)],
                perf,
                stdout if stdout.exists() else None,
                stderr if stderr.exists() else None,
            )
        finally:
            perf["total_time"] = round(time.time() - started, 3)
            if protection is not None:
                protection.stop()
            if container is not None:
                container.remove()
            engine = self._protection.engine.name if self._protection is not None else None
            if self.spot is not None and engine not in (None, "workdir"):
                self.spot.clear_scratch(wu_id)  # the workdir engine (and no protection) keeps none
            with self._lock:
                self._current = None
                self._process = None
                self._protection = None

    def _preempted_outcome(self, runtime: int, perf: dict[str, Any]) -> Outcome:
        self._preempted.wait()  # the hand-over thread is taking the final checkpoint
        preemption = self._preemption or HandOver("none", None, "no checkpoint was taken")
        perf["preemption"] = preemption.outcome
        return Outcome(ReportStatus.PREEMPTED, runtime, [preemption.detail], perf, preemption=preemption)

    # ---- spot protection ----------------------------------------------------------------------

    def _protect_and_restore(
        self, wu: dict[str, Any], workdir: Path, inputs: dict[str, Path]
    ) -> tuple[Protection | None, Launch | None]:
        """The workunit's protection (None when checkpointing is off), and how to start it when it
        was restored from a checkpoint (None: start the command from the beginning)."""
        if self.spot is None:
            return None, None
        policy = self.spot.policy(wu)
        reference = self._reference
        if not policy.enabled:
            if reference:
                self._refuse(wu["id"], reference, "checkpointing is off for this job (ckptMode none)")
            return None, None
        exclude = {str(p.relative_to(workdir)) for p in inputs.values() if p.is_relative_to(workdir)}
        exclude.add("userattr.json")
        protection = self.spot.protect(wu, self.client_id, workdir, exclude, policy)
        with self._lock:
            self._protection = protection
        if not reference:
            return protection, None
        launch = protection.restore(reference)
        if launch is None:
            self._reference = None
            _clear_except(workdir, exclude)  # whatever the refused restore left must not be used
        return protection, launch

    def _refuse(self, wu_id: str, reference: dict[str, Any], reason: str) -> None:
        self._reference = None
        try:
            self.api.restore_result(
                wu_id, self.client_id, {"ok": False, "name": str(reference.get("name", "")), "reason": reason}
            )
        except Exception as exc:
            log.warning("%s: could not report the refused checkpoint: %s", wu_id, exc)

    # ---- staging ------------------------------------------------------------------------------

    def _environment(self, wu: dict[str, Any], workdir: Path) -> dict[str, str]:
        private: dict[str, Any] = {}
        if wu["cmd"].get("has_private_env"):
            private = json.loads(self.api.secret(wu["id"], self.client_id, "privateenv") or "{}")
        return command_environment(wu, workdir, private)

    def _stage(self, wu: dict[str, Any], workdir: Path, env: dict[str, str]) -> tuple[dict[str, Path], int]:
        inputs: dict[str, Path] = {}
        total = 0
        token_headers: dict[str, str] | None = None
        part = wu.get("part") or {}
        direct = self._direct = DirectData(self.api, wu, self.client_id)
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
                _direct_transfer(direct.stage, io["filename"], target)
            elif url.startswith("s3://"):
                _direct_transfer(stage_s3, url, target)
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
            inputs[io["filename"]] = self._predata(io, workdir)
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

    def _predata(self, io: dict[str, Any], workdir: Path) -> Path:
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
                    self._fetch(self._current or "", f"predata {io['filename']!r}", url, partial, {})
                elif url.startswith("s3://"):
                    _direct_transfer(stage_s3, url, partial)
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
        self,
        wu_id: str,
        argv: list[str],
        workdir: Path,
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        *,
        append: bool = False,
        protection: Protection | None = None,
        pidfile: Path | None = None,
        launch: Launch | None = None,
    ) -> tuple[int, dict[str, Any]]:
        executable = shutil.which(argv[0], path=f"{workdir}{os.pathsep}{env.get('PATH', '')}")
        if executable is None:
            stderr.write_text(f"perdure: command not found: {argv[0]}\n")
            return 127, {}
        command = [executable, *argv[1:]]
        isolate = getattr(protection.engine, "isolate", None) if protection is not None else None
        if launch is None and isolate is not None:
            # The engine starts the work its own way (criu: in a PID namespace of its own).
            launch = isolate(command, workdir, stdout, stderr)
            command = launch.argv or command
        if launch is not None and not launch.streams:
            # The command opens the work's stdout and stderr itself; this process must not touch them.
            stdout.touch()
            stderr.touch()
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            mode = "ab" if append else "wb"  # a restored program continues its logs
            with stdout.open(mode) as out, stderr.open(mode) as err:
                process = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=env,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        with self._lock:
            self._process = process
            stopped = wu_id in self._discarded or self._preempting.is_set()
        if stopped:
            _kill_group(process)
        elif protection is not None and pidfile is not None:
            # Restored by another program (criu restore): the work's own process id is in its pidfile.
            threading.Thread(target=_started_from_pidfile, args=(protection, pidfile), daemon=True).start()
        elif protection is not None:
            protection.started(process.pid)
        peak = _PeakMemory(process.pid)
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if protection is not None:
            protection.run.exited.set()
        peak.stop()
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        if launch is not None and launch.exit_file is not None:
            code = _exit_status(launch.exit_file, code)
        return code, {
            "cpu_time": round(rusage.ru_utime + rusage.ru_stime, 3),
            "max_memory_total_rss": max(peak.value, rusage.ru_maxrss * 1024),
        }

    # ---- containers ---------------------------------------------------------------------------

    def _container(self, wu: dict[str, Any], perf: dict[str, Any]) -> Container:
        """The workunit's container, its image obtained; never run a container task on the host."""
        image = container_image(wu)
        if self.containers is None:
            raise StageError(f"this node cannot run containers (image {image!r}); another node must run it")
        started = time.time()
        local = self.containers.images.obtain(image)
        perf["dockerprep"] = round(time.time() - started, 3)
        perf["image"] = image
        container = Container(
            local,
            wu["id"],
            int(wu.get("attempt", 0)),
            criu=self.containers.criu,
            network=self.containers.network,
            node_id=self.containers.node_id,
        )
        perf["container"] = container.name
        return container

    def _execute_container(
        self,
        wu_id: str,
        container: Container,
        argv: list[str],
        workdir: Path,
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        *,
        restored: bool,
        protection: Protection | None,
    ) -> tuple[int, dict[str, Any]]:
        """Like ``_execute``, in the container; ``restored``: the container runs already (podman
        restored it from a checkpoint). The process waited on is ``podman wait``: killing it (discard)
        ends the wait, and the container is removed after the run whatever happened."""
        if not restored:
            try:
                self.predata.mkdir(parents=True, exist_ok=True)
                container.start(argv, workdir, env, (self.predata.resolve(),))
            except Exception as exc:
                stderr.write_text(f"perdure: {exc}\n")
                return 125, {}
        process = container.wait_process()
        with self._lock:
            self._process = process
            stopped = wu_id in self._discarded or self._preempting.is_set()
        if stopped:
            _kill_group(process)
        elif protection is not None:
            protection.started(process.pid)
        usage = ContainerUsage(container)
        usage.start()
        printed, _ = process.communicate()
        if protection is not None:
            protection.run.exited.set()
        figures = usage.stop()
        code = container.exit_code(printed.decode(errors="replace"))
        split_log(container.logs(workdir), stdout, stderr)
        return code, figures

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
        direct = self._direct if self._direct is not None and self._direct.wu_id == wu["id"] else None
        for filename, path in files:
            if direct is not None and direct.has_output(filename, path.stat().st_size):
                _direct_transfer(direct.deliver, filename, path, sha256_of(path))
                total += path.stat().st_size
                continue
            self.api.upload_output(wu["id"], self.client_id, filename, path, sha256_of(path))
            total += path.stat().st_size
        return total

    def _deliver_to_user(self, wu: dict[str, Any], workdir: Path, perf: dict[str, Any]) -> list[str]:
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
                size = deliver_s3(path, url, self.api.stop)
            except DirectError as exc:
                raise StageError(str(exc)) from None
            delivered[io["filename"]] = url
            notes.append(f"output {io['filename']!r} delivered to {url} ({size} bytes)")
        if delivered:
            perf["delivered_to"] = delivered
            perf["time_deliver"] = round(time.time() - started, 3)
        return notes


class _PeakMemory:
    """Samples the RSS of the whole process tree every half second (rusage only sees the largest single
    process), on the shared timers: work that ends sooner costs no thread and no psutil call."""

    EVERY_S = 0.5

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = 0
        self._root: psutil.Process | None = None
        self._stopped = False
        self._lock = threading.Lock()  # a sample under way finishes before ``stop`` returns
        self._timer = TIMERS.call_later(self.EVERY_S, self._sample)

    def _sample(self) -> None:
        with self._lock:
            if self._stopped:
                return
            try:
                if self._root is None:
                    self._root = psutil.Process(self.pid)
                procs = [self._root, *self._root.children(recursive=True)]
                self.value = max(self.value, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._timer = TIMERS.call_later(self.EVERY_S, self._sample)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._timer.cancel()


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


def _exit_status(exit_file: Path, launcher_code: int) -> int:
    """The work's own exit status, which its launcher wrote to ``exit_file``; without one the work did
    not end by itself (killed, or never restored), and the launcher's failure stands."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return launcher_code if launcher_code != 0 else 1


def _started_from_pidfile(protection: Protection, pidfile: Path, timeout_s: float = 60.0) -> None:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up and not protection.run.exited.is_set():
        with contextlib.suppress(OSError, ValueError):
            protection.started(int(pidfile.read_text().strip()))
            return
        time.sleep(0.1)
    log.warning("%s: no process id in %s; it will not be checkpointed", protection.wu_id, pidfile)


def _clear_except(workdir: Path, keep: set[str]) -> None:
    """Empty the work directory but for the staged inputs."""
    for path in sorted(workdir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        rel = str(path.relative_to(workdir))
        if rel in keep or any(k.startswith(rel + "/") for k in keep):
            continue
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


def _direct_transfer(transfer: Callable[..., object], *args: Any) -> None:
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


def tail_bytes(path: Path | None, limit: int = LOG_TAIL) -> bytes:
    """The last ``limit`` bytes of a file; an empty or missing one is not opened."""
    if path is None:
        return b""
    try:
        if os.stat(path).st_size == 0:
            return b""
    except OSError:
        return b""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read()


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
