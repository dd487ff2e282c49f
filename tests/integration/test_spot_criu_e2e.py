"""The criu engine end to end with the real CRIU: a counting process is pre-dumped, dumped on the
"notice", its work directory and images are wiped as if the node were gone, and after ``restore()`` and
the ``criu restore`` it returns the counter goes on from where it was instead of starting again.

Runs only where ``criu check`` passes (root, a recent enough kernel); elsewhere the whole module is
skipped with the reason ``detect()`` gives, which ``-ra`` shows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perdure.spot.criu import CriuEngine
from perdure.spot.engine import Run, detect
from perdure.spot.manifest import Identity
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import DirectoryStore

_availability = detect()
if _availability.engine != "criu":
    pytest.skip(f"CRIU end-to-end test skipped: {_availability.criu_problem}", allow_module_level=True)

#: Counts up ten times a second, rewriting the file each time (no descriptor kept open across ticks).
COUNTER = """\
import os, time
n = 0
while True:
    n += 1
    with open("count.txt.tmp", "w") as f:
        f.write(str(n))
    os.replace("count.txt.tmp", "count.txt")
    time.sleep(0.1)
"""


def read_count(workdir: Path) -> int:
    for _ in range(50):
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((workdir / "count.txt").read_text())
        time.sleep(0.05)
    raise AssertionError(f"no count in {workdir}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(argv: list[str], run: Run, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """As the runner starts work: a session leader with no terminal, reaped by a slot thread."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def reap() -> None:
        proc.wait()
        run.exited.set()

    threading.Thread(target=reap, daemon=True).start()
    return proc


@pytest.fixture
def processes() -> Iterator[list[int]]:
    """Process groups to kill at teardown, whatever happened."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def test_a_dumped_counter_continues_after_restore(tmp_path: Path, processes: list[int]) -> None:
    store = DirectoryStore(tmp_path / "store")
    policy = CheckpointPolicy(tcp_close=True)
    identity = Identity("job-criu", "task", 0, "wu-criu", 1)
    workdir = tmp_path / "work"
    workdir.mkdir()
    run = Run(
        identity=identity,
        workdir=workdir,
        policy=policy,
        snapshotter=Snapshotter(store, identity, "criu"),
        scratch=tmp_path / "node1-scratch",
    )
    engine = CriuEngine()
    proc = start([sys.executable, "-c", COUNTER], run, cwd=workdir)
    processes.append(proc.pid)
    run.pid = proc.pid
    wait_until(lambda: read_count(workdir) >= 5, 20, "the counter to start")

    iterative = engine.checkpoint(run, threading.Event())
    assert iterative.manifest.engine_data["restorable"] is False
    assert engine.stats()["pre_dump"]["pages_written"] > 0
    wait_until(lambda: read_count(workdir) >= 15, 20, "the counter to go on after the pre-dump")

    final = engine.final(run, deadline=time.monotonic() + 60)
    assert run.exited.is_set()
    dumped = read_count(workdir)
    stats = engine.stats()["dump"]
    assert stats["pages_scanned"] > 0
    assert stats["pages_skipped_parent"] > 0  # the pre-dump's pages were not written again

    # The node is gone: nothing of the work or its images is left on disk.
    shutil.rmtree(workdir)
    shutil.rmtree(tmp_path / "node1-scratch")

    identity2 = Identity("job-criu", "task", 0, "wu-criu", 2)
    restored = Run(
        identity=identity2,
        workdir=tmp_path / "work2",
        policy=policy,
        snapshotter=Snapshotter(store, identity2, "criu"),
        scratch=tmp_path / "node2-scratch",
    )
    engine2 = CriuEngine()
    launch = engine2.restore(restored, restored.snapshotter.load(final.manifest.name))
    assert read_count(workdir) == dumped  # put back at its original path
    assert launch.argv is not None and launch.pidfile is not None
    criu = start(launch.argv, restored)
    processes.append(criu.pid)
    pidfile = launch.pidfile
    wait_until(pidfile.is_file, 30, f"criu restore to write {pidfile}")
    pid = int(pidfile.read_text().strip())
    processes.append(pid)
    try:
        first = read_count(workdir)
        assert first >= dumped, f"the counter restarted: {first} after {dumped}"
        wait_until(lambda: read_count(workdir) > dumped + 5, 20, "the restored counter to count on")
        wait_until(lambda: "restore" in engine2.stats(), 10, "criu's restore statistics")
        assert engine2.stats()["restore"]["restore_time"] >= 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        restored.exited.wait(10)
        log = pidfile.parent / "restore.log"
        if log.is_file() and not restored.exited.is_set():
            print(log.read_text()[-4000:])
