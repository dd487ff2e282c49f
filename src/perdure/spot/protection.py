"""Protection of one running workunit: when to checkpoint, what to tell the server, what to fall back to.

Every interval an engine checkpoint is taken while the work runs, reported to the server (which keeps
it on the workunit, so even a node lost without notice is restored from it), and only then are older
checkpoints pruned. On the notice the final checkpoint is taken within the deadline; if it cannot be,
the last checkpoint the server knows is used, and if there is none the work starts again from zero.
Every one of these outcomes is said to the server, which records it in the job's events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from perdure.spot.engine import Engine, Launch, Run
from perdure.spot.manifest import CheckpointError, Manifest
from perdure.spot.snapshot import Aborted, Taken
from perdure.timers import TIMERS, Timer

log = logging.getLogger("perdure.spot")

#: After a failed iterative checkpoint, how long the work has to show it ended meanwhile (the runner
#: reaps it within moments) before the failure is reported as one.
ENDED_GRACE_S = 2.0


class SpotReporter(Protocol):
    """The worker's narrow channel to the server for spot protection."""

    def checkpoint_taken(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None: ...
    def restore_result(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class HandOver:
    """What became of the work when the node was reclaimed; sent with the ``preempted`` report."""

    #: final (a checkpoint taken on the notice), iterative (the last one before it), none (from zero),
    #: or returned (handed back before it started: whatever checkpoint it came with still holds).
    outcome: str
    checkpoint: dict[str, Any] | None
    detail: str
    final: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "checkpoint": self.checkpoint,
            "detail": self.detail,
            "final": self.final,
        }


def restorable(manifest: Manifest | None) -> bool:
    return manifest is not None and bool(manifest.engine_data.get("restorable", True))


class Protection:
    def __init__(self, run: Run, engine: Engine, reporter: SpotReporter, wu_id: str, client_id: str) -> None:
        self.run = run
        self.engine = engine
        self.reporter = reporter
        self.wu_id = wu_id
        self.client_id = client_id
        #: The newest checkpoint the server has accepted: the fallback on a failed final checkpoint.
        self.committed: Manifest | None = None
        self._lock = threading.Lock()  # one checkpoint at a time
        self._cancel = threading.Event()
        self._stop = threading.Event()
        #: The first interval's timer (a heap entry, not a thread: most work ends before it is due),
        #: then the thread taking the iterative checkpoints; ``_timer_lock`` orders them with ``stop``.
        self._first: Timer | None = None
        self._timer: threading.Thread | None = None
        self._timer_lock = threading.Lock()
        #: Whether the store may hold checkpoints of this workunit: it came with one, or this run wrote
        #: (or began to write) one. If not, ``finished`` has nothing to delete and asks nobody.
        self.stored = False

    # ---- restore ------------------------------------------------------------------------------

    def restore(self, reference: dict[str, Any]) -> Launch | None:
        """Bring the work back from the checkpoint the server named; None (and the reason told to the
        server) when it cannot be trusted, so the caller starts from zero."""
        started = time.monotonic()
        name = str(reference.get("name", ""))
        self.stored = True
        try:
            manifest = self.run.snapshotter.load(name)
            if reference.get("checksum") and manifest.checksum() != reference["checksum"]:
                raise CheckpointError(f"checkpoint {name} is not the one the server recorded")
            if not restorable(manifest):
                raise CheckpointError(f"checkpoint {name} cannot be restored on its own")
            launch = self.engine.restore(self.run, manifest)
        except (CheckpointError, OSError, ValueError) as exc:
            log.warning("%s: checkpoint %s refused: %s; starting from zero", self.wu_id, name, exc)
            self._tell_restore(
                {"ok": False, "name": name, "reason": str(exc), "duration_s": time.monotonic() - started}
            )
            return None
        self.committed = manifest
        self.run.base_progress_s = manifest.progress_s
        duration = time.monotonic() - started
        log.info(
            "%s: restored from checkpoint %s (%.0fs of run time kept) in %.1fs",
            self.wu_id,
            name,
            manifest.progress_s,
            duration,
        )
        self._tell_restore(
            {
                "ok": True,
                "name": name,
                "saved_s": round(manifest.progress_s, 3),
                "duration_s": round(duration, 3),
                "size": manifest.size,
                "engine": self.engine.name,
                "stats": self.engine.stats(),
            }
        )
        return launch

    def _tell_restore(self, record: dict[str, Any]) -> None:
        try:
            self.reporter.restore_result(self.wu_id, self.client_id, record)
        except Exception as exc:  # accounting must not stop the work
            log.warning("%s: could not report the restore: %s", self.wu_id, exc)

    # ---- while running ------------------------------------------------------------------------

    def started(self, pid: int) -> None:
        self.run.pid = pid
        self.run.started = time.monotonic()
        if self.run.policy.enabled:
            with self._timer_lock:
                if self._first is not None:
                    self._first.cancel()
                self._first = TIMERS.call_later(self.run.policy.interval_s, self._start_checkpointer)

    def _start_checkpointer(self) -> None:
        """The first interval has passed and the work still runs: from now on a thread of its own."""
        with self._timer_lock:
            if self._stop.is_set() or self.run.exited.is_set():
                return
            self._timer = threading.Thread(target=self._every_interval, name="checkpointer", daemon=True)
            self._timer.start()

    def _every_interval(self) -> None:
        while not self.run.exited.is_set():
            self.checkpoint_now()
            if self._stop.wait(self.run.policy.interval_s):
                return

    def checkpoint_now(self) -> Taken | None:
        """One iterative checkpoint (also on a rebalance recommendation); None when it failed."""
        with self._lock:
            if self._stop.is_set() or self.run.exited.is_set():
                return None
            self._cancel.clear()
            self.stored = True
            try:
                taken = self.engine.checkpoint(self.run, self._cancel)
            except Aborted:
                return None  # the notice came: the final checkpoint supersedes this one
            except (CheckpointError, OSError) as exc:
                failure: Exception = exc
            else:
                self._commit(taken)
                return taken
        # Outside the lock, so a notice's final checkpoint is not held up: a dump that met the work's
        # own end (CRIU finds a process gone while it detaches) failed nothing that needed protecting.
        if self.run.exited.wait(ENDED_GRACE_S):
            log.info("%s: the work ended during a checkpoint, which gave way: %s", self.wu_id, failure)
            return None
        log.warning("%s: checkpoint failed: %s", self.wu_id, failure)
        self._tell_checkpoint({"ok": False, "kind": "iterative", "error": str(failure)})
        return None

    def _commit(self, taken: Taken) -> None:
        record = {
            "ok": True,
            **taken.manifest.reference(),
            "restorable": restorable(taken.manifest),
            "written": taken.written,
            "duration_s": round(taken.duration_s, 3),
            "stats": self.engine.stats(),
        }
        try:
            self.reporter.checkpoint_taken(self.wu_id, self.client_id, record)
        except Exception as exc:
            # The server still names the previous checkpoint: keep it, try again next interval.
            log.warning("%s: could not report checkpoint %s: %s", self.wu_id, taken.manifest.name, exc)
            return
        if restorable(taken.manifest):
            self.committed = taken.manifest
            self._prune(taken.manifest)
        log.info(
            "%s: checkpoint %s: %d bytes, %d written, %.2fs",
            self.wu_id,
            taken.manifest.name,
            taken.manifest.size,
            taken.written,
            taken.duration_s,
        )

    def _tell_checkpoint(self, record: dict[str, Any]) -> None:
        try:
            self.reporter.checkpoint_taken(self.wu_id, self.client_id, record)
        except Exception as exc:
            log.warning("%s: could not report a checkpoint failure: %s", self.wu_id, exc)

    def _prune(self, keep: Manifest) -> None:
        snapshotter, identity = self.run.snapshotter, self.run.identity
        # Forget first: should the prune fail halfway, a chunk is written again rather than assumed.
        snapshotter.pruned_to(keep)
        try:
            snapshotter.store.prune(identity.job, identity.workunit, keep.name)
        except Exception as exc:  # old checkpoints cost space, not correctness
            log.warning("%s: could not prune older checkpoints: %s", self.wu_id, exc)

    # ---- the notice ---------------------------------------------------------------------------

    def final(self, deadline: float) -> HandOver:
        """Stop the work with a last checkpoint; what the server should restore from."""
        self._stop.set()
        self._cancel.set()  # an iterative checkpoint in progress gives way
        remaining = deadline - time.monotonic()
        if not self._lock.acquire(timeout=max(0.0, remaining)):
            return self._fallback("an earlier checkpoint was still being written at the deadline", None)
        started = time.monotonic()
        try:
            if not self.run.policy.enabled:
                self.engine_stop()
                return HandOver("none", None, "checkpointing is off for this job (ckptMode none)")
            self.stored = True
            try:
                taken = self.engine.final(self.run, deadline)
            except (CheckpointError, OSError) as exc:
                log.warning("%s: final checkpoint failed: %s", self.wu_id, exc)
                self.engine_stop()
                failure = {"ok": False, "error": str(exc), "duration_s": round(time.monotonic() - started, 3)}
                return self._fallback(f"the final checkpoint failed: {exc}", failure)
            final = {
                "ok": True,
                "duration_s": round(taken.duration_s, 3),
                "size": taken.manifest.size,
                "written": taken.written,
                "stats": self.engine.stats(),
            }
            self.committed = taken.manifest
            return HandOver(
                "final",
                taken.manifest.reference(),
                f"final checkpoint {taken.manifest.name} taken in {taken.duration_s:.1f}s",
                final,
            )
        finally:
            self._lock.release()

    def engine_stop(self) -> None:
        """Make sure nothing of the work keeps running on a node about to go away."""
        if self.run.pid is not None and not self.run.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.run.pid, signal.SIGKILL)
            self.run.exited.wait(5.0)

    def _fallback(self, why: str, failure: dict[str, Any] | None) -> HandOver:
        if restorable(self.committed):
            assert self.committed is not None
            return HandOver(
                "iterative",
                self.committed.reference(),
                f"{why}; using checkpoint {self.committed.name} "
                f"({self.committed.progress_s:.0f}s of run time)",
                failure,
            )
        return HandOver("none", None, f"{why}; there is no earlier checkpoint", failure)

    # ---- the end ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._cancel.set()
        with self._timer_lock:
            first, timer = self._first, self._timer
        if first is not None:
            first.cancel()
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=30)

    def finished(self, *, keep: bool) -> None:
        """The work completed (or failed): its checkpoints are of no more use, unless kept to diagnose.
        Work that neither came with a checkpoint nor took one has none to delete: no request (with
        the server's store that was a round trip per workunit; a partial write of an earlier attempt
        that the server never accepted is left to its sweep, as after a failed delete)."""
        self.stop()
        self.engine.discard(self.run)
        if keep or not self.stored:
            return
        store, identity = self.run.snapshotter.store, self.run.identity
        try:
            store.delete_workunit(identity.job, identity.workunit)
        except Exception as exc:  # the server's sweep collects what is left
            log.warning("%s: could not delete its checkpoints: %s", self.wu_id, exc)
