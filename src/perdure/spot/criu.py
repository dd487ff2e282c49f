"""The ``criu`` engine: transparent checkpoints of the workunit's process tree with CRIU.

Every interval ``criu pre-dump --track-mem`` copies the tree's memory while it keeps running, each pass
into its own image directory holding only the pages changed since the pass before, and the image chain
is snapshotted into the store at once: on the notice only the pages of the last pass remain to upload.
On the notice ``criu dump`` freezes the tree, writes what changed since the last pre-dump and kills the
tree; the whole chain and the work directory are then snapshotted, within the deadline.

A pre-dump holds memory only, no process state: its checkpoint is marked ``restorable: false`` and
never used to restore. CRIU keeps absolute paths in its images, so a restore puts the work directory
back where it was on the first node, and the tree's process ids must be free on the new one. CRIU saves
no files: the work directory goes into the snapshot beside the images when ``rootfs_diff`` is on (else
it must be on storage both nodes share).

CRIU's own statistics (``stats-dump``, ``stats-restore``) are read here with a small protobuf decoder,
so neither ``crit`` nor ``pycriu`` is needed on a node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perdure.spot.engine import Launch, Run, wait_for_exit
from perdure.spot.manifest import CheckpointError, CorruptCheckpoint, Manifest
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.snapshot import Aborted, Taken

log = logging.getLogger("perdure.spot")

#: Under ``run.scratch``: one directory per pre-dump (1, 2, ...) and ``final`` for the dump.
IMAGES = "images"
FINAL = "final"
#: The prefix of the image tree in a snapshot, beside the work directory.
IMAGES_PREFIX = "criu-images"
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
PIDFILE = "restore.pid"
#: In the work directory: the program's exit status, written by the namespace's init when it ends
#: (``criu restore`` exits 0 whatever its tree did, so the status cannot come from it).
EXIT_FILE = ".perdure-exit-status"
#: Beside a full dump's images: the files the tree held open in the work directory, at the dump's size.
HELD = "held-files"
# criu/include/magic.h: every image but the service ones starts with IMG_COMMON_MAGIC, then its own.
IMG_COMMON_MAGIC = 0x54564319
FILES_MAGIC = 0x56303138
#: A pre-dump copies memory while the work runs; one that takes longer than this is stuck.
PRE_DUMP_TIMEOUT_S = 1800.0
#: ``criu dump`` kills the tree; the runner reaps it, which should take moments.
EXIT_WAIT_S = 10.0
LOG_TAIL = 5

# criu/include/magic.h: service images (stats, irmap cache) start with IMG_SERVICE_MAGIC, then their own.
IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306
# images/stats.proto: stats_entry { dump_stats_entry dump = 1; restore_stats_entry restore = 2; }
DUMP_FIELDS = {
    1: "freezing_time",
    2: "frozen_time",
    3: "memdump_time",
    4: "memwrite_time",
    5: "pages_scanned",
    6: "pages_skipped_parent",
    7: "pages_written",
    8: "irmap_resolve",
    9: "pages_lazy",
    10: "page_pipes",
    11: "page_pipe_bufs",
    12: "shpages_scanned",
    13: "shpages_skipped_parent",
    14: "shpages_written",
}
RESTORE_FIELDS = {
    1: "pages_compared",
    2: "pages_skipped_cow",
    3: "forking_time",
    4: "restore_time",
    5: "pages_restored",
}


# ---- commands -----------------------------------------------------------------------------------


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


# ---- statistics ---------------------------------------------------------------------------------


def parse_stats(data: bytes) -> dict[str, int]:
    """The figures of a CRIU ``stats-dump`` or ``stats-restore`` image (times in microseconds).
    Raises ValueError for anything that is not a whole stats image."""
    if len(data) < 4:
        raise ValueError("not a CRIU stats image: shorter than its magic")
    (magic,) = struct.unpack_from("<I", data, 0)
    offset = 4
    if magic == IMG_SERVICE_MAGIC:  # images v1.1; older CRIU wrote the stats magic alone
        if len(data) < 8:
            raise ValueError("truncated CRIU stats image: no image magic after the service magic")
        (magic,) = struct.unpack_from("<I", data, 4)
        offset = 8
    if magic != STATS_MAGIC:
        raise ValueError(f"not a CRIU stats image (magic {magic:#010x})")
    figures: dict[str, int] = {}
    for entry in _entries(data, offset, "stats"):
        for number, value in _fields(entry):
            names = DUMP_FIELDS if number == 1 else RESTORE_FIELDS if number == 2 else None
            if names is None or not isinstance(value, bytes):
                continue  # a field of a newer CRIU
            for sub, figure in _fields(value):
                if sub in names and isinstance(figure, int):
                    figures[names[sub]] = figure
    return figures


def _entries(data: bytes, offset: int, kind: str) -> Iterator[bytes]:
    """The entries of a CRIU image from ``offset`` (past its magic): each a 4-byte size, then a
    protobuf message of that size."""
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError(f"truncated CRIU {kind} image: partial entry size")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise ValueError(f"truncated CRIU {kind} image: entry of {size} bytes, {len(data) - offset} left")
        yield data[offset : offset + size]
        offset += size


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: an int for varints and fixed-width fields, bytes
    for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("bad protobuf field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError("truncated protobuf fixed-width field")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated protobuf length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise ValueError("protobuf varint longer than 10 bytes")


def regular_files(data: bytes) -> dict[str, int]:
    """The regular files a ``files.img`` names, with the size CRIU recorded (CRIU refuses to restore
    a file whose size differs). Raises ValueError for anything that is not a files image."""
    if len(data) < 8 or struct.unpack_from("<II", data, 0) != (IMG_COMMON_MAGIC, FILES_MAGIC):
        raise ValueError("not a CRIU files image")
    files: dict[str, int] = {}
    for entry in _entries(data, 8, "files"):
        for number, value in _fields(entry):
            if number != 3 or not isinstance(value, bytes):  # file_entry.reg
                continue
            found = dict(_fields(value))
            name, length = found.get(6), found.get(8)  # reg_file_entry.name, .size
            if isinstance(name, bytes) and isinstance(length, int):
                files[name.decode(errors="surrogateescape")] = length
    return files


def _file_sizes(files_img: Path, workdir: Path) -> dict[str, int]:
    """Of the files the dump holds open, those in the work directory, by relative path: a full dump
    taken while the work runs is snapshotted a moment later, when its logs may have grown."""
    try:
        files = regular_files(files_img.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("CRIU files image %s unreadable: %s", files_img, exc)
        return {}
    root = str(workdir).rstrip("/") + "/"
    return {name[len(root) :]: size for name, size in files.items() if name.startswith(root)}


def _safe(rel: Any) -> bool:
    return isinstance(rel, str) and bool(rel) and not rel.startswith("/") and ".." not in Path(rel).parts


def _hold(workdir: Path, sizes: dict[str, int], held: Path) -> None:
    """Copy the first ``size`` bytes of each open file: what it held at the dump, were it appended to
    since (a log)."""
    for rel, size in sizes.items():
        if not _safe(rel):
            continue
        target = held / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError), (workdir / rel).open("rb") as src, target.open("wb") as out:
            remaining = size
            while remaining > 0 and (chunk := src.read(min(remaining, 1 << 20))):
                out.write(chunk)
                remaining -= len(chunk)


def _put_back(held: Path, workdir: Path, sizes: Any) -> None:
    """The open files of a full dump, as they were at the dump, back into the restored work directory."""
    if not isinstance(sizes, dict):
        return
    for rel in sizes:
        if not _safe(rel) or not (held / rel).is_file():
            continue
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copy2(held / rel, target)


def _read_stats(path: Path) -> dict[str, Any]:
    """Statistics are for the record: a missing or unreadable file must not fail a checkpoint."""
    try:
        return dict(parse_stats(path.read_bytes()))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("CRIU statistics %s unreadable: %s", path, exc)
        return {"error": str(exc)}


# ---- the engine ---------------------------------------------------------------------------------


class CriuEngine:
    name = "criu"

    def __init__(self, criu: str = "criu", *, pre_dump: bool = True) -> None:
        self.criu = criu
        #: Pre-dump chains where the kernel tracks dirty pages (``mem_dirty_track``); otherwise every
        #: checkpoint is a full ``criu dump --leave-running``.
        self.pre_dump = pre_dump
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        #: Where a restored work's directory really is (its first node's path), by (job, workunit).
        self._workdirs: dict[tuple[str, str], Path] = {}
        #: The image directory of the last restore: ``criu restore`` writes its statistics there later.
        self._restored: Path | None = None
        self._restore_figures: dict[str, Any] | None = None

    def isolate(self, argv: list[str], workdir: Path, stdout: Path, stderr: Path) -> Launch:
        """How a bare workunit starts under this engine: in its own PID namespace, so that its process
        ids, restored on another node, cannot collide with ones taken there (``isolated_command``)."""
        exit_file = workdir / EXIT_FILE
        exit_file.unlink(missing_ok=True)
        return Launch(
            argv=isolated_command(argv, stdout, stderr, exit_file), exit_file=exit_file, streams=False
        )

    def checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        if not self.pre_dump:
            return self._full_checkpoint(run, cancel)
        return self._pre_dump_checkpoint(run, cancel)

    def _full_checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        """Where the kernel cannot track dirty pages: a full ``criu dump --leave-running`` (the work
        goes on), restorable on its own; the images of older passes are dropped once it is written."""
        pid = _pid(run)
        images = _images(run)
        chain = self._chain(images)
        number = chain[-1] + 1 if chain else 1
        target = images / str(number)
        target.mkdir(parents=True)
        progress = run.progress_s()
        started = time.monotonic()
        argv = dump_command(self.criu, pid, target, None, run.policy, leave_running=True, track_mem=False)
        try:
            self._criu(argv, target, PRE_DUMP_TIMEOUT_S)
        except CheckpointError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        criu_s = time.monotonic() - started
        for older in chain:
            shutil.rmtree(images / str(older), ignore_errors=True)
        figures = _read_stats(target / "stats-dump")
        if cancel.is_set():
            raise Aborted("cancelled")
        workdir = self._workdir(run)
        # The files the tree holds open in the work directory (its logs) go on growing: they are
        # copied at the size CRIU recorded, beside the images, and left out of the work directory's
        # snapshot (which would find them changing, and CRIU refuses a file of another size).
        held = _file_sizes(target / "files.img", workdir)
        _hold(workdir, held, target / HELD)
        taken = self._snapshot(
            run,
            "iterative",
            workdir,
            progress,
            {
                "restorable": True,
                "images": str(number),
                "workdir": str(workdir),
                "pid": pid,
                "files": held,
            },
            cancel=cancel,
            exclude=set(held),
        )
        self._record("dump", str(number), criu_s, figures, taken)
        return taken

    def _pre_dump_checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        """A pre-dump, then a snapshot of the image chain (and work directory) marked not restorable.

        The snapshot is what makes the final checkpoint fast: the store already holds the pages of every
        pass but the last, and chunks it holds are not written again. A failed pre-dump may have reset
        the kernel's dirty-page tracking, so the chain is dropped and the next pass starts a full one.
        """
        pid = _pid(run)
        images = _images(run)
        chain = self._chain(images)
        number = chain[-1] + 1 if chain else 1
        target = images / str(number)
        target.mkdir(parents=True)
        prev = f"../{chain[-1]}" if chain else None
        progress = run.progress_s()
        started = time.monotonic()
        try:
            self._criu(pre_dump_command(self.criu, pid, target, prev, run.policy), target, PRE_DUMP_TIMEOUT_S)
        except CheckpointError:
            shutil.rmtree(images, ignore_errors=True)
            raise
        criu_s = time.monotonic() - started
        figures = _read_stats(target / "stats-dump")
        if cancel.is_set():  # the pass stays: the final dump builds on it
            raise Aborted("cancelled")
        workdir = self._workdir(run)
        taken = self._snapshot(
            run,
            "iterative",
            workdir,
            progress,
            {"restorable": False, "images": str(number), "workdir": str(workdir)},
            cancel=cancel,
        )
        self._record("pre-dump", str(number), criu_s, figures, taken)
        return taken

    def final(self, run: Run, deadline: float) -> Taken:
        """``criu dump`` (on top of the last pre-dump where there is a chain; it kills the tree), then
        the snapshot of the images and the work directory, taken after the tree is gone so the files
        match its state."""
        pid = _pid(run)
        if run.exited.is_set():
            raise CheckpointError("the work exited before its final checkpoint")
        images = _images(run)
        chain = self._chain(images)
        if not self.pre_dump:  # full dumps stand alone: older passes are not part of this one
            for older in chain:
                shutil.rmtree(images / str(older), ignore_errors=True)
            chain = []
        target = images / FINAL
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        prev = f"../{chain[-1]}" if chain else None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._stop(run)
            raise CheckpointError("no time was left before the deadline for criu dump")
        progress = run.progress_s()
        started = time.monotonic()
        argv = dump_command(self.criu, pid, target, prev, run.policy, track_mem=self.pre_dump)
        try:
            self._criu(argv, target, remaining)
        except CheckpointError:
            self._stop(run)  # CRIU resumes the tree after a failed dump; the node is going away
            raise
        criu_s = time.monotonic() - started
        if not wait_for_exit(run, min(EXIT_WAIT_S, deadline - time.monotonic())):
            log.warning("process %d still there after criu dump; killing it", pid)
            self._stop(run)
        figures = _read_stats(target / "stats-dump")
        workdir = self._workdir(run)
        taken = self._snapshot(
            run,
            "final",
            workdir,
            progress,
            {"restorable": True, "images": FINAL, "workdir": str(workdir), "pid": pid},
            deadline=deadline,
        )
        self._record("dump", FINAL, criu_s, figures, taken)
        return taken

    def restore(self, run: Run, manifest: Manifest) -> Launch:
        """The work directory at its original absolute path (CRIU's images name it), the images under
        ``run.scratch``; then ``criu restore`` is what the runner starts."""
        data = manifest.engine_data
        original = data.get("workdir")
        if not isinstance(original, str) or not os.path.isabs(original):
            raise CorruptCheckpoint(f"checkpoint {manifest.name} does not name the work directory")
        name = data.get("images")
        if data.get("restorable") is not True or not isinstance(name, str):
            raise CheckpointError(f"checkpoint {manifest.name} holds a pre-dump, which cannot be restored")
        if name != FINAL and not name.isdigit():
            raise CorruptCheckpoint(f"checkpoint {manifest.name} names images {name!r}")
        images = _images(run)
        shutil.rmtree(images, ignore_errors=True)  # images of another attempt must not mix with these
        workdir = Path(original)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        size = run.snapshotter.restore(manifest, workdir, extra_roots={IMAGES_PREFIX: images})
        final = images / name
        if not (final / "inventory.img").is_file():
            raise CorruptCheckpoint(f"checkpoint {manifest.name} has no CRIU images")
        _put_back(final / HELD, workdir, data.get("files"))
        pidfile = final / PIDFILE
        pidfile.unlink(missing_ok=True)
        if workdir != run.workdir.resolve():
            log.info("%s: work directory restored at its original path %s", run.identity.workunit, workdir)
            run.bring_inputs(workdir)
        with self._lock:
            self._workdirs[run.key] = workdir
            self._restored = final
            self._restore_figures = None
            self._stats = {
                "restored_bytes": size,
                "restore_s": round(time.monotonic() - started, 3),
                "workdir": str(workdir),
            }
        exit_file = workdir / EXIT_FILE
        exit_file.unlink(missing_ok=True)
        after = _TcpLockCleanup(pidfile) if run.policy.tcp_close else None
        if after is not None:
            after.start()
        return Launch(
            argv=restore_command(self.criu, final, pidfile, run.policy),
            pidfile=pidfile,
            workdir=workdir,
            exit_file=exit_file,
            streams=False,
        )

    def discard(self, run: Run) -> None:
        if run.scratch is not None:
            shutil.rmtree(run.scratch / IMAGES, ignore_errors=True)
        with self._lock:
            self._workdirs.pop(run.key, None)

    def stats(self) -> dict[str, Any]:
        """The last checkpoint's figures; ``restore`` once ``criu restore`` has written its own (it runs
        after ``restore()`` returns, so they come with the next report)."""
        with self._lock:
            result = dict(self._stats)
            restore = self._restore_stats()
        if restore:
            result.update(_flat("restore", restore))
        return result

    # ---- helpers ------------------------------------------------------------------------------

    def _chain(self, images: Path) -> list[int]:
        """The passes of the current chain (pre-dumps, or full dumps), oldest first. Images a restore
        came from are dropped: dirty-page tracking starts anew in the restored tree."""
        with self._lock:
            self._restore_stats()  # read before its directory goes
            restored = self._restored
        if (images / FINAL).exists() or (restored is not None and restored.exists()):
            shutil.rmtree(images)
        if not images.is_dir():
            return []
        return sorted(int(p.name) for p in images.iterdir() if p.name.isdigit() and p.is_dir())

    def _restore_stats(self) -> dict[str, Any] | None:
        if self._restore_figures is None and self._restored is not None:
            path = self._restored / "stats-restore"
            if path.is_file():
                self._restore_figures = _read_stats(path)
        return self._restore_figures

    def _workdir(self, run: Run) -> Path:
        with self._lock:
            known = self._workdirs.get(run.key)
        return known if known is not None else run.workdir.resolve()

    def _criu(self, argv: list[str], images_dir: Path, timeout: float) -> None:
        what = argv[1]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=images_dir
            )
        except subprocess.TimeoutExpired:
            raise CheckpointError(f"criu {what} did not finish within {timeout:.0f}s") from None
        except OSError as exc:
            raise CheckpointError(f"criu {what} could not run: {exc}") from None
        if result.returncode != 0:
            tail = _log_tail(images_dir / DUMP_LOG) or result.stderr.strip() or "no log"
            raise CheckpointError(f"criu {what} failed (exit code {result.returncode}): {tail}")

    def _snapshot(
        self,
        run: Run,
        kind: str,
        workdir: Path,
        progress: float,
        engine_data: dict[str, Any],
        *,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
        exclude: set[str] | None = None,
    ) -> Taken:
        return run.snapshotter.take(
            workdir,
            kind=kind,
            progress_s=progress,
            include=run.policy.files if run.policy.rootfs_diff else (),
            exclude=run.exclude | (exclude or set()),
            engine_data=engine_data,
            deadline=deadline,
            cancel=cancel,
            extra_roots={IMAGES_PREFIX: _images(run)},
        )

    def _record(self, what: str, images: str, criu_s: float, figures: dict[str, Any], taken: Taken) -> None:
        with self._lock:
            self._stats = {
                "criu": what,
                "images": images,
                "criu_s": round(criu_s, 3),
                **_flat(what.replace("-", "_"), figures),
                "size": taken.manifest.size,
                "written": taken.written,
                "duration_s": round(taken.duration_s, 3),
            }

    @staticmethod
    def _stop(run: Run) -> None:
        if run.pid is not None and not run.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            wait_for_exit(run, 5.0)


def _flat(prefix: str, figures: dict[str, Any]) -> dict[str, Any]:
    """CRIU's figures as flat statistics (the server takes names to numbers or text, one level):
    ``dump_pages_written``, ``restore_restore_time``."""
    kept = (int, float, str)
    return {f"{prefix}_{name}": value for name, value in figures.items() if isinstance(value, kept)}


def _pid(run: Run) -> int:
    if run.pid is None:
        raise CheckpointError("the work has no process to checkpoint yet")
    return namespace_init(run.pid)


#: CRIU's per-connection network lock (criu/netfilter.c): packets not marked 0xC114 are dropped.
_LOCK_RULE = re.compile(r"^-A (INPUT|OUTPUT) .*! --mark 0xc114\b.* -j DROP$", re.IGNORECASE)


def lock_rules(listing: str) -> list[str]:
    """The ``iptables -S`` lines that are CRIU's connection locks."""
    return [line.strip() for line in listing.splitlines() if _LOCK_RULE.match(line.strip())]


def remove_tcp_locks() -> int:
    """A ``--tcp-close`` restore leaves the DROP rules the dump's network lock put in (two per
    connection): remove them, for IPv4 and IPv6. How many were removed."""
    removed = 0
    for tool in ("iptables", "ip6tables"):
        binary = shutil.which(tool)
        if binary is None:
            continue
        try:
            listing = subprocess.run(
                [binary, "-w", "-t", "filter", "-S"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        for rule in lock_rules(listing.stdout):
            words = shlex.split(rule)
            words[0] = "-D"
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                done = subprocess.run(
                    [binary, "-w", "-t", "filter", *words], capture_output=True, timeout=30, check=False
                )
                removed += done.returncode == 0
    if removed:
        log.info("removed %d iptables rule(s) CRIU's network lock left", removed)
    return removed


class _TcpLockCleanup(threading.Thread):
    """Once ``criu restore`` has written its pidfile (the tree is back), its locks go."""

    def __init__(self, pidfile: Path, timeout_s: float = 120.0) -> None:
        super().__init__(daemon=True, name="criu-tcp-locks")
        self.pidfile = pidfile
        self.timeout_s = timeout_s

    def run(self) -> None:
        give_up = time.monotonic() + self.timeout_s
        while time.monotonic() < give_up and not self.pidfile.exists():
            time.sleep(0.1)
        remove_tcp_locks()


def _images(run: Run) -> Path:
    if run.scratch is None:
        raise CheckpointError("the criu engine needs scratch space for its images (run.scratch)")
    return run.scratch / IMAGES


def _log_tail(path: Path) -> str:
    """CRIU's error lines when there are any (at -v4 the last lines are its clean-up), else the last."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "Error" in line]
    return " | ".join((errors or lines)[-LOG_TAIL:])
