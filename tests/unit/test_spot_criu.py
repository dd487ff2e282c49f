"""The criu engine without CRIU: detect(), and the engine's orchestration (image chain, snapshots,
restore placement) against a fake ``criu``. Its commands, image reading and TCP lock clean-up have
tests of their own (``test_spot_criucommands``, ``test_spot_criuimages``, ``test_spot_criutcplocks``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from perdure.spot.criu import CriuEngine
from perdure.spot.criucommands import dump_command, isolated_command, namespace_init, restore_command
from perdure.spot.engine import Availability, Run, detect
from perdure.spot.manifest import CheckpointError, Identity
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.snapshot import Aborted, Snapshotter
from perdure.spot.store import DirectoryStore
from tests.unit.test_spot_criuimages import DUMP_FIGURES, dump_entry, field, files_image, stats_image

# ---- detect() -------------------------------------------------------------------------------------


def fake_check(bindir: Path, status: int, output: str) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / "criu"
    script.write_text(f"#!/bin/sh\nprintf '{output}' >&2\nexit {status}\n")
    script.chmod(0o755)


def test_detect_without_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    availability = detect()
    assert (availability.engine, availability.criu_problem) == ("workdir", "criu is not installed")


def test_detect_when_criu_check_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_check(
        tmp_path / "bin", 1, "Warn: no userfaultfd\\n\\nError (criu/cr-check.c:1): Kernel is too old\\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    availability = detect()
    assert availability.engine == "workdir"
    assert availability.criu_problem == (
        "`criu check` failed on this kernel: Error (criu/cr-check.c:1): Kernel is too old"
    )


def test_detect_when_criu_check_fails_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_check(tmp_path / "bin", 3, "")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert detect().criu_problem == "`criu check` failed on this kernel: exit code 3"


def test_detect_when_criu_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_check(tmp_path / "bin", 0, "Looks good.\\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert detect(criu_binary="criu") == Availability("criu", "")


# ---- the engine against a fake criu ---------------------------------------------------------------

#: Writes what CRIU would into -D (a log, statistics, pages, the parent link); a dump kills the tree.
FAKE_CRIU = """\
import json, os, signal, sys
args = sys.argv[1:]
def value(flag):
    return args[args.index(flag) + 1] if flag in args else None
images = value("-D")
with open(os.environ["FAKE_CRIU_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\\n")
with open(os.path.join(images, "dump.log"), "w") as log:
    log.write("(00.000001) Version: fake\\n")
    if os.environ.get("FAKE_CRIU_FAIL"):
        log.write("(00.000100) Error (criu/cr-dump.c:1): Can't dump the tree\\n")
        log.write("(00.000200) Unfreezing tasks into 1\\n")
        sys.exit(1)
    log.write("(00.000300) Dumping finished successfully\\n")
with open(os.environ["FAKE_CRIU_STATS"], "rb") as src, open(os.path.join(images, "stats-dump"), "wb") as out:
    out.write(src.read())
with open(os.path.join(images, "pages-1.img"), "wb") as pages:
    pages.write(os.urandom(4096))
if value("--prev-images-dir"):
    os.symlink(value("--prev-images-dir"), os.path.join(images, "parent"))
if os.environ.get("FAKE_CRIU_FILES"):
    with open(os.environ["FAKE_CRIU_FILES"], "rb") as src:
        files = src.read()
    with open(os.path.join(images, "files.img"), "wb") as out:
        out.write(files)
if args[0] == "dump":
    open(os.path.join(images, "inventory.img"), "wb").close()
    if "--leave-running" not in args:
        os.killpg(int(value("-t")), signal.SIGKILL)
"""


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-criu"
    script.write_text(f"#!{sys.executable}\n{FAKE_CRIU}")
    script.chmod(0o755)
    stats = tmp_path / "stats.bin"
    stats.write_bytes(stats_image(dump_entry()))
    monkeypatch.setenv("FAKE_CRIU_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_CRIU_STATS", str(stats))
    return script


def calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "store")


IDENTITY = Identity("job-1", "task", 0, "wu-1", 1)


def make_run(tmp_path: Path, store: DirectoryStore, name: str, **policy: Any) -> Run:
    workdir = tmp_path / name / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return Run(
        identity=IDENTITY,
        workdir=workdir,
        policy=CheckpointPolicy(**policy),
        snapshotter=Snapshotter(store, IDENTITY, "criu"),
        scratch=tmp_path / name / "scratch",
    )


@pytest.fixture
def running(tmp_path: Path, store: DirectoryStore) -> Iterator[Run]:
    """A run whose process (a session leader, as the runner starts it) is reaped by a slot thread."""
    run = make_run(tmp_path, store, "node1", irmap_scan_paths=("/data",))
    (run.workdir / "state.txt").write_text("42\n")
    (run.workdir / "input.dat").write_text("staged\n")
    run.exclude = {"input.dat"}
    proc = isolated(run.workdir)
    run.pid = proc.pid

    def reap() -> None:
        proc.wait()
        run.exited.set()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    yield run
    if not run.exited.is_set():
        os.killpg(proc.pid, signal.SIGKILL)
    reaper.join(10)


def isolated(workdir: Path) -> subprocess.Popen[bytes]:
    """``sleep 60`` as the criu engine starts work: in a PID namespace of its own (root only)."""
    argv = isolated_command(["sleep", "60"], workdir / "out", workdir / "err", workdir / "exit")
    proc = subprocess.Popen(argv, start_new_session=True, cwd=workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until unshare has forked the namespace's init
        with contextlib.suppress(CheckpointError):
            namespace_init(proc.pid)
            return proc
        time.sleep(0.02)
    raise AssertionError("unshare did not start its namespace")


def paths(run: Run, name: str) -> set[str]:
    return {e.path for e in run.snapshotter.load(name).entries}


def test_pre_dumps_chain_and_the_final_dump(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path
) -> None:
    engine = CriuEngine(str(fake_criu))
    first = engine.checkpoint(running, threading.Event())
    second = engine.checkpoint(running, threading.Event())
    workdir = str(running.workdir.resolve())
    assert first.manifest.kind == second.manifest.kind == "iterative"
    assert first.manifest.engine_data == {"restorable": False, "images": "1", "workdir": workdir}
    assert second.manifest.engine_data["images"] == "2"
    assert {"state.txt", "criu-images/1/pages-1.img", "criu-images/2/parent"} <= paths(
        running, second.manifest.name
    )
    assert "input.dat" not in paths(running, second.manifest.name)
    stats = engine.stats()
    assert (stats["criu"], stats["images"]) == ("pre-dump", "2")
    assert {k: stats[f"pre_dump_{k}"] for k in DUMP_FIGURES} == DUMP_FIGURES

    assert running.pid is not None
    init = namespace_init(running.pid)
    assert init != running.pid
    taken = engine.final(running, deadline=time.monotonic() + 60)
    assert running.exited.is_set()
    assert taken.manifest.kind == "final"
    assert taken.manifest.engine_data == {
        "restorable": True,
        "images": "final",
        "workdir": workdir,
        "pid": init,
    }
    assert {
        "criu-images/1/pages-1.img",
        "criu-images/2/pages-1.img",
        "criu-images/final/inventory.img",
    } <= paths(running, taken.manifest.name)
    assert {k: engine.stats()[f"dump_{k}"] for k in DUMP_FIGURES} == DUMP_FIGURES

    assert running.scratch is not None
    images = running.scratch / "images"
    made = calls(tmp_path)
    assert [c[0] for c in made] == ["pre-dump", "pre-dump", "dump"]
    assert "--prev-images-dir" not in made[0]
    assert made[1][made[1].index("--prev-images-dir") + 1] == "../1"
    assert made[2] == dump_command("x", init, images / "final", "../2", running.policy)[1:]
    assert os.readlink(images / "final" / "parent") == "../2"


def test_restore_puts_the_work_directory_back_at_its_original_path(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path
) -> None:
    engine = CriuEngine(str(fake_criu))
    engine.checkpoint(running, threading.Event())
    taken = engine.final(running, deadline=time.monotonic() + 60)
    original = running.workdir.resolve()
    shutil.rmtree(tmp_path / "node1")  # the first node is gone

    other = make_run(tmp_path, store, "node2", tcp_close=False)
    other = Run(
        identity=Identity("job-1", "task", 0, "wu-1", 2),
        workdir=other.workdir,
        policy=other.policy,
        snapshotter=Snapshotter(store, Identity("job-1", "task", 0, "wu-1", 2), "criu"),
        scratch=other.scratch,
    )
    other.exclude = {"input.dat"}
    (other.workdir / "input.dat").write_text("staged\n")  # staged again on the new node
    engine2 = CriuEngine(str(fake_criu))
    launch = engine2.restore(other, other.snapshotter.load(taken.manifest.name))
    assert (original / "input.dat").read_text() == "staged\n"
    final = tmp_path / "node2" / "scratch" / "images" / "final"
    assert (original / "state.txt").read_text() == "42\n"
    assert not (other.workdir / "state.txt").exists()
    assert (final / "inventory.img").is_file()
    assert os.readlink(final / "parent") == "../1"
    assert (final.parent / "1" / "pages-1.img").is_file()
    assert launch.pidfile == final / "restore.pid"
    assert launch.argv == restore_command(str(fake_criu), final, final / "restore.pid", other.policy)
    assert engine2.stats()["workdir"] == str(original)
    assert "restore_restore_time" not in engine2.stats()

    # criu restore writes its statistics once it has run; they come with the next report.
    restore_figures = field(1, 5) + field(2, 6) + field(3, 700) + field(4, 800) + field(5, 9)
    (final / "stats-restore").write_bytes(stats_image(field(2, restore_figures)))
    assert engine2.stats()["restore_restore_time"] == 800

    # The restored tree's next checkpoint starts a new chain, in the work directory where it now is.
    proc = isolated(tmp_path)
    other.pid = proc.pid
    try:
        again = engine2.checkpoint(other, threading.Event())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert again.manifest.engine_data == {"restorable": False, "images": "1", "workdir": str(original)}
    assert "--prev-images-dir" not in calls(tmp_path)[-1]
    assert not final.exists()
    assert engine2.stats()["restore_restore_time"] == 800


def test_restore_refuses_a_pre_dump(running: Run, fake_criu: Path) -> None:
    engine = CriuEngine(str(fake_criu))
    taken = engine.checkpoint(running, threading.Event())
    with pytest.raises(CheckpointError, match="pre-dump"):
        engine.restore(running, taken.manifest)


def test_without_rootfs_diff_only_the_images_are_saved(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path
) -> None:
    running.policy = replace(running.policy, rootfs_diff=False)
    taken = CriuEngine(str(fake_criu)).checkpoint(running, threading.Event())
    assert all(p.startswith("criu-images") for p in paths(running, taken.manifest.name))


def test_a_failed_pre_dump_breaks_the_chain(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = CriuEngine(str(fake_criu))
    engine.checkpoint(running, threading.Event())
    monkeypatch.setenv("FAKE_CRIU_FAIL", "1")
    with pytest.raises(CheckpointError, match=r"criu pre-dump failed \(exit code 1\): .*Can't dump the tree"):
        engine.checkpoint(running, threading.Event())
    monkeypatch.delenv("FAKE_CRIU_FAIL")
    taken = engine.checkpoint(running, threading.Event())
    assert taken.manifest.engine_data["images"] == "1"
    assert "--prev-images-dir" not in calls(tmp_path)[-1]
    assert not running.exited.is_set()


def test_a_failed_dump_stops_the_work(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CRIU_FAIL", "1")
    with pytest.raises(CheckpointError, match=r"criu dump failed.*Error \(criu/cr-dump\.c:1\)"):
        CriuEngine(str(fake_criu)).final(running, deadline=time.monotonic() + 60)
    assert running.exited.is_set()


def test_a_cancelled_checkpoint_keeps_its_pre_dump(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path
) -> None:
    engine = CriuEngine(str(fake_criu))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Aborted):
        engine.checkpoint(running, cancel)
    engine.final(running, deadline=time.monotonic() + 60)
    assert calls(tmp_path)[-1][calls(tmp_path)[-1].index("--prev-images-dir") + 1] == "../1"


def test_missing_criu_is_a_checkpoint_error(tmp_path: Path, store: DirectoryStore, running: Run) -> None:
    with pytest.raises(CheckpointError, match="could not run"):
        CriuEngine(str(tmp_path / "no-such-criu")).checkpoint(running, threading.Event())


# ---- full dumps, where the kernel has no dirty-page tracking ------------------------------------------


def test_full_dumps_leave_the_work_running_and_each_restores_on_its_own(
    tmp_path: Path, store: DirectoryStore, running: Run, fake_criu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pre-dump chain: every interval a ``criu dump --leave-running`` (no ``--track-mem``), restorable
    by itself; the images of older passes go; the final dump builds on nothing."""
    workdir = running.workdir.resolve()
    log = workdir / "awe_stdout.txt"
    log.write_bytes(b"a" * 10)
    files = tmp_path / "files.img"
    files.write_bytes(files_image({str(log): 10, "/usr/lib/libc.so.6": 5}))
    monkeypatch.setenv("FAKE_CRIU_FILES", str(files))
    engine = CriuEngine(str(fake_criu), pre_dump=False)
    first = engine.checkpoint(running, threading.Event())
    log.write_bytes(b"a" * 10 + b"written after the dump")  # the work goes on and writes
    second = engine.checkpoint(running, threading.Event())
    assert not running.exited.is_set()
    assert running.pid is not None
    init = namespace_init(running.pid)
    for number, taken in (("1", first), ("2", second)):
        assert taken.manifest.kind == "iterative"
        assert taken.manifest.engine_data == {
            "restorable": True,
            "images": number,
            "workdir": str(workdir),
            "pid": init,
            "files": {"awe_stdout.txt": 10},
        }
    saved = paths(running, second.manifest.name)
    assert not any(p.startswith("criu-images/1/") for p in saved)
    # The open log is saved as it was at the dump, beside the images, not from the work directory.
    assert "awe_stdout.txt" not in saved and "criu-images/2/held-files/awe_stdout.txt" in saved
    made = calls(tmp_path)
    assert [c[0] for c in made] == ["dump", "dump"]
    assert all(
        "--leave-running" in c and "--track-mem" not in c and "--prev-images-dir" not in c for c in made
    )

    # The node is lost without notice: the second full dump is restored elsewhere, its log as it was
    # at the dump (what the work wrote after is redone).
    shutil.rmtree(tmp_path / "node1" / "work")
    other = make_run(tmp_path, store, "node2")
    launch = CriuEngine(str(fake_criu), pre_dump=False).restore(
        other, other.snapshotter.load(second.manifest.name)
    )
    assert log.read_bytes() == b"a" * 10
    images = tmp_path / "node2" / "scratch" / "images" / "2"
    assert launch.argv is not None and launch.argv[:4] == [str(fake_criu), "restore", "-D", str(images)]
    assert launch.exit_file == workdir / ".perdure-exit-status" and launch.streams is False

    engine.final(running, deadline=time.monotonic() + 60)
    assert running.exited.is_set()
    final = calls(tmp_path)[-1]
    assert final[0] == "dump" and "--leave-running" not in final and "--prev-images-dir" not in final
    assert "--track-mem" not in final
