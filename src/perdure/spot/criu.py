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

Beside it: the command lines (``criucommands``), the reading of CRIU's images (``criuimages``), the
open files a full dump holds (``criuheldfiles``) and the clean-up of a ``--tcp-close`` restore
(``criutcplocks``); this module orders them into checkpoints and restores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from perdure.spot.criucommands import (
    DUMP_LOG,
    dump_command,
    isolated_command,
    namespace_init,
    pre_dump_command,
    restore_command,
)
from perdure.spot.criuheldfiles import hold, open_file_sizes, put_back
from perdure.spot.criuimages import read_stats
from perdure.spot.criutcplocks import TcpLockCleanup
from perdure.spot.engine import Launch, Run, wait_for_exit
from perdure.spot.manifest import CheckpointError, CorruptCheckpoint, Manifest
from perdure.spot.snapshot import Aborted, Taken

log = logging.getLogger("perdure.spot")

#: Under ``run.scratch``: one directory per pre-dump (1, 2, ...) and ``final`` for the dump.
IMAGES = "images"
FINAL = "final"
#: The prefix of the image tree in a snapshot, beside the work directory.
IMAGES_PREFIX = "criu-images"
PIDFILE = "restore.pid"
#: In the work directory: the program's exit status, written by the namespace's init when it ends
#: (``criu restore`` exits 0 whatever its tree did, so the status cannot come from it).
EXIT_FILE = ".perdure-exit-status"
#: Beside a full dump's images: the files the tree held open in the work directory, at the dump's size.
HELD = "held-files"
#: A pre-dump copies memory while the work runs; one that takes longer than this is stuck.
PRE_DUMP_TIMEOUT_S = 1800.0
#: ``criu dump`` kills the tree; the runner reaps it, which should take moments.
EXIT_WAIT_S = 10.0
#: Of CRIU's log, the last error lines (or lines) a failure is reported with.
LOG_TAIL = 5


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
        figures = read_stats(target / "stats-dump")
        if cancel.is_set():
            raise Aborted("cancelled")
        workdir = self._workdir(run)
        # The files the tree holds open in the work directory (its logs) go on growing: they are
        # copied at the size CRIU recorded, beside the images, and left out of the work directory's
        # snapshot (which would find them changing, and CRIU refuses a file of another size).
        held = open_file_sizes(target / "files.img", workdir)
        hold(workdir, held, target / HELD)
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
        figures = read_stats(target / "stats-dump")
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
        figures = read_stats(target / "stats-dump")
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
        put_back(final / HELD, workdir, data.get("files"))
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
        after = TcpLockCleanup(pidfile) if run.policy.tcp_close else None
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
                self._restore_figures = read_stats(path)
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
