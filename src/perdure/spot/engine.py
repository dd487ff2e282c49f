"""The checkpoint engine interface, and the choice of engine on a node.

An engine knows how to capture one running workunit and how to bring it back; ``Protection`` decides
when (every interval, on the notice) and tells the server. Two engines:

* ``criu`` — transparent: CRIU dumps the process tree itself (``criu.py``);
* ``workdir`` — for programs that save their own state: the work directory is snapshotted, and a
  restored program is started again with ``PERDURE_RESTORED=1`` (``workdir.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from perdure.spot.manifest import Identity, Manifest
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.snapshot import Snapshotter, Taken

log = logging.getLogger("perdure.spot")


@dataclass
class Run:
    """One workunit as an engine sees it."""

    identity: Identity
    workdir: Path
    policy: CheckpointPolicy
    snapshotter: Snapshotter
    #: Staged inputs and other files the worker puts back itself: never part of a snapshot.
    exclude: set[str] = field(default_factory=set)
    #: The process (tree root) to capture; set once it runs.
    pid: int | None = None
    #: Set by the runner when the process has exited (it alone may reap it).
    exited: threading.Event = field(default_factory=threading.Event)
    #: When the process (re)started, and the run time its restored checkpoint already held.
    started: float = field(default_factory=time.monotonic)
    base_progress_s: float = 0.0
    #: Scratch space of the engine on this node (CRIU images).
    scratch: Path | None = None

    def progress_s(self) -> float:
        return self.base_progress_s + (time.monotonic() - self.started)

    @property
    def key(self) -> tuple[str, str]:
        """The job and workunit: what an engine keeps one original work directory under."""
        return self.identity.job, self.identity.workunit

    def bring_inputs(self, workdir: Path) -> None:
        """Staged inputs are never in a snapshot: the worker stages them again in ``self.workdir``. A
        restored process tree or container may hold them open under the original path ``workdir``,
        so they are linked (or, across filesystems, copied) there."""
        for rel in sorted(self.exclude):
            source, target = self.workdir / rel, workdir / rel
            if not source.is_file() or target.exists() or target.is_symlink():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another filesystem
                shutil.copy2(source, target)


@dataclass(frozen=True)
class Launch:
    """How to start a restored workunit: the command with extra environment (``argv`` None), or
    another program that brings the process back (``criu restore``), whose real process id appears in
    ``pidfile``."""

    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    pidfile: Path | None = None
    #: Where the restored work lives, when not in the new work directory (CRIU restores open files
    #: at their original paths): outputs are collected there.
    workdir: Path | None = None
    #: Where the work's exit status appears when the launched program cannot report it (a ``criu
    #: restore`` exits 0 whatever its tree did): the runner reads the status from there.
    exit_file: Path | None = None
    #: False when the launched command opens the work's stdout and stderr itself: the runner then
    #: gives it /dev/null, and never writes to those files while the work runs (CRIU checks their size).
    streams: bool = True


class Engine(Protocol):
    name: str

    def checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        """An iterative checkpoint while the work keeps running."""
        ...

    def final(self, run: Run, deadline: float) -> Taken:
        """Stop the work and take the last checkpoint before ``deadline``; the process is gone after
        this returns or raises."""
        ...

    def restore(self, run: Run, manifest: Manifest) -> Launch:
        """Put the checkpoint's state back on this node; how to start the work from it."""
        ...

    def discard(self, run: Run) -> None:
        """Drop local scratch state of the work (the store's copy is the caller's)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The engine's own figures of its last checkpoint and restore (CRIU's statistics)."""
        ...


@dataclass(frozen=True)
class Availability:
    engine: str
    #: Why CRIU is not used here, in one line; empty when it is.
    criu_problem: str = ""


def detect(criu_binary: str = "criu", timeout_s: float = 30.0) -> Availability:
    """``criu`` where ``criu check`` passes, else ``workdir``, with the reason."""
    path = shutil.which(criu_binary)
    if path is None:
        return Availability("workdir", "criu is not installed")
    try:
        result = subprocess.run(
            [path, "check"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Availability("workdir", f"`criu check` could not run: {exc}")
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        return Availability("workdir", f"`criu check` failed on this kernel: {reason}")
    return Availability("criu")


def wait_for_exit(run: Run, timeout_s: float) -> bool:
    return run.exited.wait(max(0.0, timeout_s))
