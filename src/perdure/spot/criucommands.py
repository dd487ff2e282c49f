"""The ``criu`` command lines the criu engine runs (pre-dump, dump, restore), and how a bare workunit is
started so CRIU can dump it: in a PID namespace of its own, whose init is the process to dump.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from perdure.spot.manifest import CheckpointError
from perdure.spot.policy import CheckpointPolicy

#: CRIU's logs, written in the images directory (``criu`` runs with it as its working directory).
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"


def _dump_options(
    pid: int, images_dir: Path, prev: str | None, policy: CheckpointPolicy, *, track_mem: bool = True
) -> list[str]:
    """Shared by pre-dump and dump. No ``--shell-job``: the work is its own session leader. Cgroups are
    ignored because their paths differ from one node to the next. ``--track-mem`` only where the kernel
    tracks dirty pages (a pre-dump chain); full dumps go without."""
    argv = [
        "-t",
        str(pid),
        "-D",
        str(images_dir),
        "--log-file",
        DUMP_LOG,
        "-v4",
        *(["--track-mem"] if track_mem else []),
        "--file-locks",
        "--manage-cgroups=ignore",
    ]
    if prev is not None:
        if prev.startswith("/"):
            raise ValueError(f"CRIU wants the previous images directory relative to the new one, not {prev}")
        argv += ["--prev-images-dir", prev]
    for path in policy.irmap_scan_paths:
        argv += ["--irmap-scan-path", path]
    return argv


def pre_dump_command(
    criu: str, pid: int, images_dir: Path, prev: str | None, policy: CheckpointPolicy
) -> list[str]:
    """``prev`` is the previous pass's directory relative to ``images_dir`` (``../1``), None for the
    first pass of a chain."""
    return [criu, "pre-dump", *_dump_options(pid, images_dir, prev, policy)]


def dump_command(
    criu: str,
    pid: int,
    images_dir: Path,
    prev: str | None,
    policy: CheckpointPolicy,
    *,
    leave_running: bool = False,
    track_mem: bool = True,
) -> list[str]:
    """A dump; without ``--leave-running`` (the final one) CRIU kills the tree once its state is
    written. With it, a full iterative checkpoint where there is no pre-dump chain."""
    argv = [criu, "dump", *_dump_options(pid, images_dir, prev, policy, track_mem=track_mem)]
    if leave_running:
        argv.append("--leave-running")
    if policy.tcp_close:
        argv.append("--tcp-established")
    return argv


def restore_command(criu: str, images_dir: Path, pidfile: Path, policy: CheckpointPolicy) -> list[str]:
    """A foreground restore: ``criu restore`` stays the parent of the restored tree and exits with its
    root's status, so the runner runs it as the work's process and waits for it."""
    argv = [
        criu,
        "restore",
        "-D",
        str(images_dir),
        "--log-file",
        RESTORE_LOG,
        "-v4",
        "--file-locks",
        "--manage-cgroups=ignore",
        "--pidfile",
        str(pidfile),
    ]
    if policy.tcp_close:
        argv.append("--tcp-close")  # the new node has another address: connections come back closed
    return argv


def isolated_command(argv: list[str], stdout: Path, stderr: Path, exit_file: Path) -> list[str]:
    """``argv`` in a PID namespace of its own: ``unshare --pid --fork`` makes a shell the namespace's
    init and, through ``setsid``, a session leader (CRIU dumps a tree from its namespace's init, and
    restores it as its own session). The shell first points its own standard streams at /dev/null
    (whatever it was given, a file another process appends to would fail the restore), opens the
    program's itself, inside the tree CRIU dumps, runs it, and writes its exit status to
    ``exit_file``. No ``--mount-proc``: CRIU cannot dump files opened outside a new mount namespace.
    ``--kill-child``: the tree dies with the ``unshare`` the runner started (and a restored tree with
    its ``criu restore``, which restores that parent-death signal), so stopping it stops the work."""
    script = 'o=$1 e=$2 x=$3; shift 3; exec </dev/null >/dev/null 2>&1; "$@" >"$o" 2>"$e"; echo $? >"$x"'
    return [
        shutil.which("unshare") or "/usr/bin/unshare",
        "--pid",
        "--fork",
        "--kill-child",
        shutil.which("setsid") or "/usr/bin/setsid",
        shutil.which("sh") or "/bin/sh",
        "-c",
        script,
        "perdure-init",
        str(stdout),
        str(stderr),
        str(exit_file),
        *argv,
    ]


def namespace_init(pid: int) -> int:
    """The process CRIU must dump: ``pid`` itself when it is a PID namespace's init (a restored tree),
    else the init ``unshare`` forked (``isolated_command``)."""
    try:
        ours = os.readlink("/proc/self/ns/pid")
        theirs = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError as exc:
        raise CheckpointError(f"the work (process {pid}) is gone: {exc}") from None
    if theirs != ours:
        return pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError as exc:
        raise CheckpointError(f"the work (process {pid}) is gone: {exc}") from None
    for child in children:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != ours:
                return int(child)
    raise CheckpointError(
        f"process {pid} runs in this node's PID namespace and has no namespace of its own below it: "
        "it was not started by the criu engine"
    )
