"""Protection of one running workunit with the workdir engine and a real process: iterative checkpoints
reported and pruned, the final checkpoint on the notice, and the fallbacks when it cannot be taken."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from perdure.spot.engine import Run
from perdure.spot.manifest import CheckpointError, Identity
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.protection import Protection
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import DirectoryStore
from perdure.spot.workdir import WorkdirEngine
from tests.support import wait_for

PROGRAM = """
import signal, sys, time, pathlib
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == "ignore" else term)
state = pathlib.Path("state.txt")
n = int(state.read_text()) if state.exists() else 0
while not stop:
    n += 1
    state.write_text(str(n))
    time.sleep(0.02)
state.write_text(f"saved {n}")
"""


class Reporter:
    def __init__(self, fail: bool = False) -> None:
        self.checkpoints: list[dict[str, Any]] = []
        self.restores: list[dict[str, Any]] = []
        self.fail = fail

    def checkpoint_taken(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("server away")
        self.checkpoints.append(record)

    def restore_result(self, wu_id: str, client_id: str, record: dict[str, Any]) -> None:
        self.restores.append(record)


def protected(
    tmp_path: Path, reporter: Reporter, *, attempt: int = 1, **policy: Any
) -> tuple[Protection, Path]:
    workdir = tmp_path / f"work-{attempt}"
    workdir.mkdir()
    identity = Identity("job-1", "t", 0, "job-1_t_0", attempt)
    snapshotter = Snapshotter(DirectoryStore(tmp_path / "store"), identity, "workdir", threads=2)
    run = Run(identity, workdir, CheckpointPolicy(**policy), snapshotter)
    return Protection(run, WorkdirEngine(), reporter, "job-1_t_0", "client-1"), workdir


def start(protection: Protection, workdir: Path, mode: str = "obey") -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", PROGRAM, mode], cwd=workdir, start_new_session=True)
    protection.started(process.pid)

    def reap() -> None:
        process.wait()
        protection.run.exited.set()

    threading.Thread(target=reap, daemon=True).start()
    return process


def running_for(protection: Protection, workdir: Path, seconds: float) -> None:
    """Wait until the program has saved some state and run ``seconds``: a condition, not a sleep."""
    wait_for(
        lambda: (workdir / "state.txt").exists() and protection.run.progress_s() >= seconds,
        20,
        f"the program to run {seconds}s",
    )


def manifests(tmp_path: Path) -> list[str]:
    return sorted(p.stem for p in (tmp_path / "store").rglob("manifests/*.json"))


def test_iterative_checkpoints_are_reported_then_older_ones_pruned(tmp_path: Path) -> None:
    reporter = Reporter()
    protection, workdir = protected(tmp_path, reporter, interval_s=1.0)
    start(protection, workdir)
    wait_for(lambda: len(reporter.checkpoints) >= 2, 10, "two iterative checkpoints")
    first, second = reporter.checkpoints[:2]
    assert first["ok"] and first["kind"] == "iterative" and first["restorable"]
    assert second["progress_s"] > first["progress_s"] >= 0.9
    preemption = protection.final(time.monotonic() + 20)
    assert preemption.outcome == "final"
    assert preemption.checkpoint is not None and preemption.checkpoint["kind"] == "final"
    assert preemption.final is not None and preemption.final["ok"]
    # The iterative ones the server accepted were pruned as newer ones came; the final one is there.
    assert preemption.checkpoint["name"] in manifests(tmp_path)
    assert first["name"] not in manifests(tmp_path)


def test_the_final_checkpoint_holds_what_the_program_saved_on_its_signal(tmp_path: Path) -> None:
    reporter = Reporter()
    protection, workdir = protected(tmp_path, reporter, interval_s=3600)
    start(protection, workdir)
    running_for(protection, workdir, 0.5)
    preemption = protection.final(time.monotonic() + 20)
    assert preemption.outcome == "final"
    assert preemption.checkpoint is not None

    # Another node restores it: the program sees the state it saved on SIGTERM.
    restorer, new_workdir = protected(tmp_path, Reporter(), attempt=2, interval_s=3600)
    restorer_reporter = restorer.reporter
    assert isinstance(restorer_reporter, Reporter)
    launch = restorer.restore(preemption.checkpoint)
    assert launch is not None and launch.env["PERDURE_RESTORED"] == "1"
    assert (new_workdir / "state.txt").read_text().startswith("saved ")
    (record,) = restorer_reporter.restores
    assert record["ok"] and record["saved_s"] == preemption.checkpoint["progress_s"] > 0.4
    assert restorer.run.base_progress_s == pytest.approx(record["saved_s"], abs=0.001)


def test_a_program_that_does_not_stop_in_time_falls_back_to_the_last_iterative(tmp_path: Path) -> None:
    reporter = Reporter()
    protection, workdir = protected(tmp_path, reporter, interval_s=3600, grace_s=1.0)
    process = start(protection, workdir, mode="ignore")
    running_for(protection, workdir, 0.3)
    taken = protection.checkpoint_now()
    assert taken is not None
    preemption = protection.final(time.monotonic() + 20)
    assert preemption.outcome == "iterative"
    assert preemption.checkpoint is not None and preemption.checkpoint["name"] == taken.manifest.name
    assert preemption.final is not None and not preemption.final["ok"]
    assert "did not exit within 1s of SIGTERM" in preemption.detail
    assert process.wait(10) is not None  # killed: nothing runs on a node about to go away


def test_no_checkpoint_at_all_means_restart_from_zero(tmp_path: Path) -> None:
    protection, workdir = protected(tmp_path, Reporter(), interval_s=3600, grace_s=0.5)
    start(protection, workdir, mode="ignore")
    running_for(protection, workdir, 0.2)
    preemption = protection.final(time.monotonic() + 20)
    assert (preemption.outcome, preemption.checkpoint) == ("none", None)
    assert "no earlier checkpoint" in preemption.detail


def test_a_checkpoint_the_server_never_accepted_is_not_a_fallback(tmp_path: Path) -> None:
    protection, workdir = protected(tmp_path, Reporter(fail=True), interval_s=3600, grace_s=0.5)
    start(protection, workdir, mode="ignore")
    running_for(protection, workdir, 0.2)
    assert protection.checkpoint_now() is not None  # taken, but the report was lost
    assert protection.final(time.monotonic() + 20).outcome == "none"


def test_ckpt_mode_none_takes_nothing_and_hands_back_for_a_fresh_start(tmp_path: Path) -> None:
    protection, workdir = protected(tmp_path, Reporter(), mode="none", interval_s=1.0)
    process = start(protection, workdir)
    running_for(protection, workdir, 1.5)
    preemption = protection.final(time.monotonic() + 20)
    assert (preemption.outcome, preemption.checkpoint) == ("none", None)
    assert process.wait(10) is not None
    assert manifests(tmp_path) == []


def test_a_checkpoint_unlike_the_one_the_server_recorded_is_refused(tmp_path: Path) -> None:
    protection, workdir = protected(tmp_path, Reporter(), interval_s=3600)
    start(protection, workdir)
    running_for(protection, workdir, 0.3)
    preemption = protection.final(time.monotonic() + 20)
    assert preemption.checkpoint is not None
    restorer, new_workdir = protected(tmp_path, Reporter(), attempt=2)
    forged = {**preemption.checkpoint, "checksum": "0" * 64}
    assert restorer.restore(forged) is None
    reporter = restorer.reporter
    assert isinstance(reporter, Reporter)
    (record,) = reporter.restores
    assert not record["ok"] and "not the one the server recorded" in record["reason"]
    assert not os.listdir(new_workdir) or not (new_workdir / "state.txt").exists()


def test_finished_work_leaves_no_checkpoints_unless_kept_to_diagnose(tmp_path: Path) -> None:
    protection, workdir = protected(tmp_path, Reporter(), interval_s=3600)
    start(protection, workdir)
    running_for(protection, workdir, 0.2)
    assert protection.checkpoint_now() is not None
    protection.finished(keep=True)
    assert manifests(tmp_path)
    protection.finished(keep=False)
    assert manifests(tmp_path) == []
    protection.engine_stop()


class CountingStore(DirectoryStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.deletes = 0

    def delete_workunit(self, job_id: str, workunit: str) -> None:
        self.deletes += 1
        super().delete_workunit(job_id, workunit)


def test_short_work_that_took_no_checkpoint_costs_no_thread_and_no_store_request(tmp_path: Path) -> None:
    """Issue 22: the first interval is a timer, not a thread, and with nothing stored there is nothing
    to delete (with the server's store, the delete was a round trip per workunit)."""
    protection, workdir = protected(tmp_path, Reporter(), interval_s=3600)
    store = protection.run.snapshotter.store = CountingStore(tmp_path / "store")
    process = subprocess.Popen(["true"], cwd=workdir)
    protection.started(process.pid)
    assert not any(t.name == "checkpointer" for t in threading.enumerate())
    process.wait()
    protection.run.exited.set()
    protection.finished(keep=False)
    assert store.deletes == 0


def test_the_first_checkpoint_comes_one_interval_after_the_start(tmp_path: Path) -> None:
    reporter = Reporter()
    protection, workdir = protected(tmp_path, reporter, interval_s=0.3)
    store = protection.run.snapshotter.store = CountingStore(tmp_path / "store")
    start(protection, workdir)
    wait_for(lambda: reporter.checkpoints, 20, "the first iterative checkpoint")
    assert protection.run.progress_s() >= 0.3
    protection.engine_stop()
    protection.finished(keep=False)
    assert store.deletes == 1 and manifests(tmp_path) == []


class FailingEngine(WorkdirEngine):
    """A checkpoint that fails; with ``end_work`` the work ends during it, as when a CRIU dump meets the
    program's own exit ("Unable to detach ... No such process")."""

    def __init__(self, end_work: bool) -> None:
        super().__init__()
        self.end_work = end_work

    def checkpoint(self, run: Run, cancel: threading.Event) -> Any:
        if self.end_work:
            assert run.pid is not None
            os.killpg(run.pid, 9)
        raise CheckpointError("criu dump failed: Unable to detach from 4436: No such process")


@pytest.mark.parametrize("end_work", [False, True], ids=["work-runs-on", "work-ended-during-it"])
def test_a_failed_checkpoint_is_reported_unless_the_work_ended(tmp_path: Path, end_work: bool) -> None:
    reporter = Reporter()
    protection, workdir = protected(tmp_path, reporter, interval_s=3600)
    protection.engine = FailingEngine(end_work)
    start(protection, workdir)
    running_for(protection, workdir, 0.2)
    assert protection.checkpoint_now() is None
    if end_work:
        assert protection.run.exited.is_set() and reporter.checkpoints == []
    else:
        (record,) = reporter.checkpoints
        assert record["ok"] is False and "Unable to detach" in record["error"]
        protection.engine_stop()
