"""The ``podman`` engine: transparent checkpoints of a task container (``cmd.Dockerimage``).

Every interval ``podman container checkpoint --export ARCHIVE --leave-running`` writes the container's
whole state (CRIU images of its processes, and its root filesystem changes unless ``rootFSDiff`` is
off) to one archive, which is snapshotted into the checkpoint store beside the work directory. On the
notice the same command without ``--leave-running`` stops the container with its state written. A
restore on another node puts the work directory back at its original path (the container's bind
mount names it), the archive into scratch space, and runs ``podman container restore --import``: the
container continues where it was, under this attempt's name.

Podman runs CRIU from ``PATH``: the worker's CRIU (``criu_path``) is put first on podman's ``PATH``.
Every podman call uses the ``runc`` runtime (crun refuses hybrid cgroup layouts). Pre-checkpoints
(``--pre-checkpoint``/``--with-previous``) need dirty-memory tracking in the kernel: they are used only
where ``criu check --feature mem_dirty_track`` passes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from perdure.spot.engine import Launch, Run, wait_for_exit
from perdure.spot.manifest import CheckpointError, CorruptCheckpoint, Manifest
from perdure.spot.snapshot import Aborted, Taken

log = logging.getLogger("perdure.spot")

#: The only OCI runtime used (crun fails on hybrid cgroup layouts).
RUNTIME = "runc"
#: The prefix of the archive's directory in a snapshot, beside the work directory.
ARCHIVE_PREFIX = "podman-archive"
ARCHIVE = "checkpoint.tar.zst"
#: The podman log of the container's standard streams, in the work directory (conmon writes it).
LOG_NAME = ".perdure-container.log"
#: Its copy as of the checkpoint, beside the archive: the live log keeps growing while the snapshot
#: reads the work directory.
LOG_COPY = "container.log"
PRE_ARCHIVE = "pre-checkpoint.tar.zst"
#: An iterative checkpoint that takes longer than this is stuck.
CHECKPOINT_TIMEOUT_S = 1800.0
RESTORE_TIMEOUT_S = 600.0
#: After the final checkpoint the container has stopped; the runner's ``podman wait`` returns.
EXIT_WAIT_S = 15.0


def container_name(workunit: str, attempt: int) -> str:
    """The container of one attempt at a workunit: unique per attempt, so the same work restored on
    another worker of the same host never meets its earlier container's name."""
    digest = hashlib.sha256(workunit.encode()).hexdigest()[:20]
    return f"perdure-{digest}-{attempt}"


def podman_env(criu: str = "criu") -> dict[str, str]:
    """The environment podman itself runs in: the worker's, with the worker's CRIU first on PATH."""
    env = dict(os.environ)
    found = shutil.which(criu)
    if found is not None:
        env["PATH"] = (
            f"{Path(found).resolve().parent}{os.pathsep}{Path(found).parent}{os.pathsep}{env.get('PATH', '')}"
        )
    return env


def podman(
    args: list[str], *, criu: str = "criu", timeout: float = 120.0, podman_binary: str = "podman"
) -> subprocess.CompletedProcess[str]:
    """Run ``podman --runtime runc ARGS``; raises OSError or TimeoutExpired when it cannot run."""
    return subprocess.run(
        [podman_binary, "--runtime", RUNTIME, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=podman_env(criu),
        stdin=subprocess.DEVNULL,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"


@functools.cache
def _restore_supports(option: str) -> bool:
    try:
        result = podman(["container", "restore", "--help"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in result.stdout


@functools.cache
def mem_dirty_track(criu: str = "criu") -> bool:
    """Whether this kernel tracks dirty memory (CRIU pre-dumps; podman pre-checkpoints)."""
    path = shutil.which(criu)
    if path is None:
        return False
    try:
        result = subprocess.run(
            [path, "check", "--feature", "mem_dirty_track"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def podman_status(podman_binary: str = "podman") -> tuple[bool, str]:
    """Whether this node can run task containers, or why not (one line): podman installed, the runc
    runtime installed, and podman able to answer with it."""
    if shutil.which(podman_binary) is None:
        return False, "podman is not installed"
    if shutil.which(RUNTIME) is None:
        return False, f"podman's runtime {RUNTIME} is not installed"
    try:
        result = podman(
            ["info", "--format", "{{.Host.OCIRuntime.Name}}"], timeout=60, podman_binary=podman_binary
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`podman info` could not run: {exc}"
    if result.returncode != 0:
        return False, f"`podman info` failed: {last_line(result)}"
    return True, ""


@functools.cache
def container_checkpoint_status(criu: str = "criu") -> tuple[bool, str]:
    """Whether podman can checkpoint containers on this node, or why not (one line).

    Needs a usable podman and runc, and a CRIU that ``criu check`` accepts (podman needs CRIU 3.11 or
    newer; it runs the one first on its PATH, which is where the worker puts its own)."""
    from perdure.spot.engine import detect

    usable, why = podman_status()
    if not usable:
        return False, why
    found = detect(criu)
    if found.engine != "criu":
        return False, found.criu_problem
    try:
        version = subprocess.run(
            [shutil.which(criu) or criu, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`criu --version` could not run: {exc}"
    match = re.search(r"Version:\s*(\d+)\.(\d+)", version.stdout)
    if match is None:
        return False, f"cannot read CRIU's version from {version.stdout.strip()!r}"
    if (int(match.group(1)), int(match.group(2))) < (3, 11):
        return False, f"podman needs CRIU 3.11 or newer, this is {match.group(1)}.{match.group(2)}"
    return True, ""


class PodmanEngine:
    name = "podman"

    def __init__(self, criu: str = "criu", *, available: tuple[bool, str] | None = None) -> None:
        self.criu = criu
        self._available = available
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        #: Where a restored work's directory really is (its first node's path), by (job, workunit).
        self._workdirs: dict[tuple[str, str], Path] = {}
        #: Whether a pre-checkpoint of this container exists (only with dirty-memory tracking).
        self._pre: set[str] = set()

    # ---- the engine interface -----------------------------------------------------------------

    def checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        """A checkpoint the container survives (``--leave-running``), then its snapshot."""
        self._check_available()
        name = _name(run)
        archive_dir = _archive_dir(run)
        archive_dir.mkdir(parents=True, exist_ok=True)
        progress = run.progress_s()
        started = time.monotonic()
        figures = self._checkpoint(
            run, name, archive_dir / ARCHIVE, leave_running=True, timeout=CHECKPOINT_TIMEOUT_S
        )
        podman_s = time.monotonic() - started
        self._copy_log(run, archive_dir)
        if cancel.is_set():
            raise Aborted("cancelled")
        workdir = self._workdir(run)
        taken = self._snapshot(run, "iterative", workdir, progress, name, cancel=cancel)
        self._record("checkpoint", podman_s, figures, taken)
        return taken

    def final(self, run: Run, deadline: float) -> Taken:
        """The checkpoint that stops the container, then the snapshot of the archive and the work
        directory, taken once the container is gone so the files match its state."""
        self._check_available()
        name = _name(run)
        if run.exited.is_set():
            raise CheckpointError("the container exited before its final checkpoint")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._stop(name, run)
            raise CheckpointError("no time was left before the deadline for the final checkpoint")
        archive_dir = _archive_dir(run)
        archive_dir.mkdir(parents=True, exist_ok=True)
        progress = run.progress_s()
        started = time.monotonic()
        try:
            figures = self._checkpoint(
                run, name, archive_dir / ARCHIVE, leave_running=False, timeout=remaining
            )
        except CheckpointError:
            self._stop(name, run)  # the node is going away: nothing of the work may keep running
            raise
        podman_s = time.monotonic() - started
        self._copy_log(run, archive_dir)
        if not wait_for_exit(run, min(EXIT_WAIT_S, max(0.0, deadline - time.monotonic()))):
            log.warning("container %s: still waited on after its final checkpoint", name)
        workdir = self._workdir(run)
        taken = self._snapshot(run, "final", workdir, progress, name, deadline=deadline)
        self._record("final", podman_s, figures, taken)
        return taken

    def restore(self, run: Run, manifest: Manifest) -> Launch:
        """The work directory at its original path, the archive in scratch space, then
        ``podman container restore --import``: the container runs again when this returns."""
        self._check_available()
        data = manifest.engine_data
        original = data.get("workdir")
        if not isinstance(original, str) or not os.path.isabs(original):
            raise CorruptCheckpoint(f"checkpoint {manifest.name} does not name the work directory")
        if data.get("archive") != ARCHIVE:
            raise CorruptCheckpoint(f"checkpoint {manifest.name} holds no container archive")
        archive_dir = _archive_dir(run)
        shutil.rmtree(archive_dir, ignore_errors=True)
        archive_dir.mkdir(parents=True)
        workdir = Path(original)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        size = run.snapshotter.restore(manifest, workdir, extra_roots={ARCHIVE_PREFIX: archive_dir})
        archive = archive_dir / ARCHIVE
        if not archive.is_file():
            raise CorruptCheckpoint(f"checkpoint {manifest.name} has no container archive")
        if workdir != run.workdir.resolve():
            run.bring_inputs(workdir)
        log_copy = archive_dir / LOG_COPY
        if log_copy.is_file():
            os.replace(log_copy, workdir / LOG_NAME)  # the restored container's log goes on from it
        name = _name(run)
        argv = ["container", "restore", "--import", str(archive), "--print-stats"]
        # podman refuses a new name with --tcp-established: then the container is renamed after.
        original = str(data.get("container") or "")
        renamed = bool(run.policy.tcp_close and original and original != name)
        if not renamed:
            argv += ["--name", name]
        previous = archive_dir / PRE_ARCHIVE
        if previous.is_file():
            argv += ["--import-previous", str(previous)]
        if run.policy.tcp_close:
            # Connections cannot follow the work to another address: closed where podman can say so.
            argv.append("--tcp-close" if _restore_supports("--tcp-close") else "--tcp-established")
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            podman(["rm", "-f", "--time", "0", name], criu=self.criu, timeout=60)
            if renamed:
                podman(["rm", "-f", "--time", "0", original], criu=self.criu, timeout=60)
        podman_started = time.monotonic()
        try:
            result = podman(argv, criu=self.criu, timeout=RESTORE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckpointError(
                f"podman container restore did not finish within {RESTORE_TIMEOUT_S:.0f}s"
            ) from None
        if result.returncode != 0:
            raise CheckpointError(f"podman container restore failed: {last_line(result)}")
        if renamed:
            try:
                moved = podman(["rename", original, name], criu=self.criu, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                moved = subprocess.CompletedProcess([], 1, "", str(exc))
            if moved.returncode != 0:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    podman(["rm", "-f", "--time", "0", original], criu=self.criu, timeout=60)
                raise CheckpointError(f"the restored container could not be renamed: {last_line(moved)}")
        with self._lock:
            self._workdirs[run.key] = workdir
            self._stats = {
                "restored_bytes": size,
                "restore_s": round(time.monotonic() - started, 3),
                "podman_restore_s": round(time.monotonic() - podman_started, 3),
                "workdir": str(workdir),
                **_stats_json(result.stdout),
            }
        return Launch(env={"PERDURE_RESTORED": "1", "PERDURE_CHECKPOINT": manifest.name}, workdir=workdir)

    def discard(self, run: Run) -> None:
        if run.scratch is not None:
            shutil.rmtree(run.scratch / ARCHIVE_PREFIX, ignore_errors=True)
        with self._lock:
            self._workdirs.pop(run.key, None)
            self._pre.discard(_name(run))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

    # ---- helpers ------------------------------------------------------------------------------

    def _check_available(self) -> None:
        if self._available is not None and not self._available[0]:
            raise CheckpointError(f"containers cannot be checkpointed on this node: {self._available[1]}")

    def checkpoint_command(self, run: Run, name: str, archive: Path, *, leave_running: bool) -> list[str]:
        argv = ["container", "checkpoint", name, "--export", str(archive), "--print-stats"]
        if leave_running:
            argv.append("--leave-running")
        if not run.policy.rootfs_diff:
            argv.append("--ignore-rootfs")
        if run.policy.tcp_close:
            argv.append("--tcp-established")
        with self._lock:
            if name in self._pre:
                argv.append("--with-previous")
        return argv

    def _checkpoint(
        self, run: Run, name: str, archive: Path, *, leave_running: bool, timeout: float
    ) -> dict[str, int | float | str]:
        if leave_running and mem_dirty_track(self.criu):
            self._pre_checkpoint(run, name, archive)
        argv = self.checkpoint_command(run, name, archive, leave_running=leave_running)
        partial = archive.with_name(archive.name + ".part")
        argv[argv.index("--export") + 1] = str(partial)
        partial.unlink(missing_ok=True)
        try:
            result = podman(argv, criu=self.criu, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckpointError(
                f"podman container checkpoint did not finish within {timeout:.0f}s"
            ) from None
        except OSError as exc:
            raise CheckpointError(f"podman could not run: {exc}") from None
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise CheckpointError(f"podman container checkpoint failed: {last_line(result)}")
        os.replace(partial, archive)  # a half-written archive never replaces a whole one
        return _stats_json(result.stdout)

    def _pre_checkpoint(self, run: Run, name: str, archive: Path) -> None:
        """Where the kernel tracks dirty memory: copy memory ahead, so the checkpoint writes only what
        changed since. A failed pre-checkpoint only costs time: the checkpoint still runs in full."""
        pre = archive.with_name(PRE_ARCHIVE)
        argv = ["container", "checkpoint", name, "--pre-checkpoint", "--export", str(pre)]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if podman(argv, criu=self.criu, timeout=CHECKPOINT_TIMEOUT_S).returncode == 0:
                with self._lock:
                    self._pre.add(name)

    def _snapshot(
        self,
        run: Run,
        kind: str,
        workdir: Path,
        progress: float,
        name: str,
        *,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Taken:
        return run.snapshotter.take(
            workdir,
            kind=kind,
            progress_s=progress,
            include=run.policy.files,
            exclude=run.exclude | {LOG_NAME},
            engine_data={"restorable": True, "archive": ARCHIVE, "workdir": str(workdir), "container": name},
            deadline=deadline,
            cancel=cancel,
            extra_roots={ARCHIVE_PREFIX: _archive_dir(run)},
        )

    def _record(
        self, what: str, podman_s: float, figures: dict[str, int | float | str], taken: Taken
    ) -> None:
        with self._lock:
            self._stats = {
                "podman": what,
                "podman_s": round(podman_s, 3),
                **figures,
                "size": taken.manifest.size,
                "written": taken.written,
                "duration_s": round(taken.duration_s, 3),
            }

    def _copy_log(self, run: Run, archive_dir: Path) -> None:
        """The container's log as of the checkpoint (a few lines more at most: conmon writes on)."""
        target = archive_dir / LOG_COPY
        with target.open("wb") as out:
            for source in log_files(_name(run), self._workdir(run), self.criu):
                with contextlib.suppress(FileNotFoundError), source.open("rb") as handle:
                    shutil.copyfileobj(handle, out)

    def _workdir(self, run: Run) -> Path:
        with self._lock:
            known = self._workdirs.get(run.key)
        return known if known is not None else run.workdir.resolve()

    def _stop(self, name: str, run: Run) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            podman(["kill", name], criu=self.criu, timeout=30)
        wait_for_exit(run, 5.0)


def log_files(name: str, workdir: Path, criu: str = "criu") -> list[Path]:
    """The container's log, oldest part first: the one in the work directory, then the one podman
    writes now if it is elsewhere (a container restored under a new name logs to podman's own
    directory)."""
    files = [workdir / LOG_NAME]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        result = podman(
            ["inspect", "--format", "{{.HostConfig.LogConfig.Path}}", name], criu=criu, timeout=60
        )
        current = result.stdout.strip()
        if result.returncode == 0 and current.startswith("/") and Path(current) != files[0]:
            files.append(Path(current))
    return files


def _stats_json(text: str) -> dict[str, int | float | str]:
    """podman's ``--print-stats`` JSON, flattened (the server keeps flat figures): podman's and the
    runtime's durations and CRIU's statistics of the container (times in microseconds)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        value = json.loads(text[start:])
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    flat: dict[str, int | float | str] = {}
    for key, figure in value.items():
        if isinstance(figure, (int, float)) and not isinstance(figure, bool):
            flat[key] = figure
    for container in value.get("container_statistics") or []:
        if not isinstance(container, dict):
            continue
        for key, figure in container.items():
            if isinstance(figure, (int, float)) and not isinstance(figure, bool):
                flat[key] = figure
        for key, figure in (container.get("criu_statistics") or {}).items():
            if isinstance(figure, (int, float)) and not isinstance(figure, bool):
                flat[f"criu_{key}"] = figure
    return flat


def _name(run: Run) -> str:
    return container_name(run.identity.workunit, run.identity.attempt)


def _archive_dir(run: Run) -> Path:
    if run.scratch is None:
        raise CheckpointError("the podman engine needs scratch space for its archive (run.scratch)")
    return run.scratch / ARCHIVE_PREFIX
