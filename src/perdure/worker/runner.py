"""Running one workunit (awe.md §5.3): stage, run in its own process group, check and ship outputs.

Exit 0 is ``done``, 42 ``failed-permanent``, anything else ``fail``; a workunit the server told us to
discard is killed and not reported. The steps live beside it: ``staging`` (inputs), ``command`` (the
command line), ``process`` (the running process group), ``delivery`` (outputs); ``Runner`` orders them
and holds what the heartbeat and hand-over threads may act on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perdure.spot.engine import Launch
from perdure.spot.protection import HandOver, Protection
from perdure.states import ReportStatus
from perdure.worker.api import ServerAPI, ServerRefused
from perdure.worker.command import command_argv
from perdure.worker.container import (
    Container,
    ContainerSupport,
    ImageError,
    container_image,
    split_log,
)
from perdure.worker.container import Usage as ContainerUsage
from perdure.worker.delivery import deliver_outputs, deliver_to_user
from perdure.worker.direct import DirectData
from perdure.worker.environment import command_environment, inherited_environment
from perdure.worker.process import PeakMemory, exit_status, kill_group, started_from_pidfile
from perdure.worker.staging import StageError, Stager

if TYPE_CHECKING:
    from perdure.worker.protect import SpotContext

log = logging.getLogger("perdure.worker")

#: AWE's exit code for "retrying cannot help".
EXIT_PERMANENT = 42

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
        #: Set when the current workunit is discarded: wakes a fetch waiting to try again.
        self._discard_wake = threading.Event()
        self._discarded: set[str] = set()
        #: Fetches inputs: ``file_roots`` are the directories ``file://`` inputs may be read from
        #: (``--allow-file-root``), none by default; ``transfer_*`` bound fetches from other hosts.
        self._stager = Stager(
            api,
            client_id,
            predata,
            file_roots=file_roots,
            transfer_tries=transfer_tries,
            transfer_timeout_s=transfer_timeout_s,
            discarded=self._discarded,
            discard_wake=self._discard_wake,
        )
        #: None where this node cannot run task containers (checkout never gives it one).
        self.containers = containers
        self.client_id = client_id
        self.workpath = workpath
        self.predata = predata
        self.spot = spot
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._current: str | None = None
        self._protection: Protection | None = None
        #: The checkpoint the server would restore this work from, were it handed back now.
        self._reference: dict[str, Any] | None = None
        self._preempting = threading.Event()
        self._preempted = threading.Event()
        self._preemption: HandOver | None = None
        #: What a command inherits of the worker's environment, read once: ``os.environ`` look-ups
        #: for every workunit were a twentieth of a busy worker's CPU (issue 22).
        self._inherited = inherited_environment()

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
            kill_group(process)

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
                kill_group(process)
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
            # The workunit's presigned URLs to the object store, if the server gave any.
            direct = DirectData(self.api, wu, self.client_id)
            inputs, size_in = self._stager.stage(wu, workdir, direct)
            perf.update(time_data_in=round(time.time() - started, 3), size_infile=size_in)
            argv = command_argv(wu, inputs, env)
            if container_image(wu):
                container = self._container(wu, perf)
            _write_new(workdir / "userattr.json", json.dumps(wu.get("userattr") or {}).encode())
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
            perf["size_outfile"] = deliver_outputs(self.api, self.client_id, wu, workdir, direct)
            perf["time_data_out"] = round(time.time() - out_start, 3)
            notes = deliver_to_user(self.api, wu, workdir, perf)
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
        return command_environment(wu, workdir, private, inherited=self._inherited)

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
            # Plain descriptors, not file objects: the child gets them, this process only closes them.
            mode = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
            out = os.open(stdout, mode, 0o666)  # a restored program continues its logs
            try:
                err = os.open(stderr, mode, 0o666)
                try:
                    process = subprocess.Popen(
                        command,
                        cwd=workdir,
                        env=env,
                        stdout=out,
                        stderr=err,
                        stdin=_devnull(),
                        start_new_session=True,
                    )
                finally:
                    os.close(err)
            finally:
                os.close(out)
        with self._lock:
            self._process = process
            stopped = wu_id in self._discarded or self._preempting.is_set()
        if stopped:
            kill_group(process)
        elif protection is not None and pidfile is not None:
            # Restored by another program (criu restore): the work's own process id is in its pidfile.
            threading.Thread(target=started_from_pidfile, args=(protection, pidfile), daemon=True).start()
        elif protection is not None:
            protection.started(process.pid)
        peak = PeakMemory(process.pid)
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if protection is not None:
            protection.run.exited.set()
        peak.stop()
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        if launch is not None and launch.exit_file is not None:
            code = exit_status(launch.exit_file, code)
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
            kill_group(process)
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


def _write_new(path: Path, data: bytes) -> None:
    """Write a small file in three system calls (``Path.write_text`` makes seven)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


_DEVNULL: int | None = None
_DEVNULL_LOCK = threading.Lock()


def _devnull() -> int:
    """One descriptor of /dev/null for every command's stdin, opened once (``subprocess.DEVNULL``
    opens and closes it for each process)."""
    global _DEVNULL
    if _DEVNULL is None:
        with _DEVNULL_LOCK:
            if _DEVNULL is None:
                _DEVNULL = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # as subprocess.DEVNULL
    return _DEVNULL


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
