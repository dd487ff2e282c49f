"""The ``workdir`` engine: for programs that write their own checkpoint files (HTCondor's
self-checkpointing model, and most long-running scientific codes).

Every interval the work directory (or only ``ckptFiles``) is snapshotted incrementally. On the notice
the program gets its signal (SIGTERM unless the job says otherwise) and its grace period to save its
state and exit; its exit is the sign that the state on disk is whole, and only then is the final
snapshot taken. A program that does not exit in time is killed, and its final checkpoint counts as
failed: the files may be half-written, so the last iterative checkpoint is used instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

from perdure.spot.engine import Launch, Run, wait_for_exit
from perdure.spot.manifest import CheckpointError, Manifest
from perdure.spot.snapshot import Taken

#: Of the time left before the deadline, this share at most is the program's grace; the rest is for
#: the snapshot.
GRACE_SHARE = 0.6


class WorkdirEngine:
    name = "workdir"

    def __init__(self) -> None:
        self._stats: dict[str, Any] = {}

    def checkpoint(self, run: Run, cancel: threading.Event) -> Taken:
        return self._snapshot(run, "iterative", cancel=cancel)

    def final(self, run: Run, deadline: float) -> Taken:
        grace = min(run.policy.grace_s, max(0.0, (deadline - time.monotonic()) * GRACE_SHARE))
        if run.pid is not None and not run.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, run.policy.signal)
            if not wait_for_exit(run, grace):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
                wait_for_exit(run, 5.0)
                name = signal.Signals(run.policy.signal).name
                raise CheckpointError(
                    f"the program did not exit within {grace:.0f}s of {name}, so its state on disk "
                    "may be incomplete"
                )
        return self._snapshot(run, "final", deadline=deadline)

    def restore(self, run: Run, manifest: Manifest) -> Launch:
        started = time.monotonic()
        size = run.snapshotter.restore(manifest, run.workdir)
        self._stats = {"restored_bytes": size, "restore_s": round(time.monotonic() - started, 3)}
        return Launch(env={"PERDURE_RESTORED": "1", "PERDURE_CHECKPOINT": manifest.name})

    def discard(self, run: Run) -> None:
        """Nothing is kept outside the work directory and the store."""

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def _snapshot(
        self,
        run: Run,
        kind: str,
        *,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Taken:
        progress = run.progress_s()
        taken = run.snapshotter.take(
            run.workdir,
            kind=kind,
            progress_s=progress,
            include=run.policy.files,
            exclude=run.exclude,
            cancel=cancel,
            deadline=deadline,
        )
        self._stats = {
            "files": sum(1 for e in taken.manifest.entries if e.kind == "file"),
            "size": taken.manifest.size,
            "written": taken.written,
            "duration_s": round(taken.duration_s, 3),
        }
        return taken
