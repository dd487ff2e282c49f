"""Snapshots: incremental (unchanged data is never read or stored twice), atomic, and checked at restore
so a missing, corrupt or foreign checkpoint is refused rather than restored."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from perdure.spot.manifest import CorruptCheckpoint, Identity, Manifest
from perdure.spot.snapshot import CHUNK_SIZE, Aborted, Snapshotter
from perdure.spot.store import CheckpointMissing, DirectoryStore, unit_dir_name

IDENTITY = Identity(job="job-1", task="t", rank=0, workunit="job-1_t_0", attempt=1)


def tree(root: Path) -> Path:
    (root / "state").mkdir(parents=True)
    (root / "state" / "model.bin").write_bytes(os.urandom(CHUNK_SIZE + 1000))  # two chunks
    (root / "state" / "step.json").write_text('{"step": 7}')
    (root / "input.fa").write_bytes(b"ACGT" * 1000)
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("state/step.json")
    return root


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): (b"->" + os.readlink(p).encode()) if p.is_symlink() else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def snapshotter(store: DirectoryStore, identity: Identity = IDENTITY) -> Snapshotter:
    return Snapshotter(store, identity, "workdir", threads=2)


def test_restore_gives_back_exactly_the_tree_except_excluded_inputs(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    taken = snapshotter(store).take(work, kind="iterative", progress_s=12.5, exclude={"input.fa"})
    assert taken.manifest.progress_s == 12.5
    assert taken.written >= CHUNK_SIZE + 1000

    target = tmp_path / "elsewhere"
    other = snapshotter(store, Identity("job-1", "t", 0, "job-1_t_0", attempt=2))
    manifest = other.load(taken.manifest.name)
    other.restore(manifest, target)
    expected = files(work)
    del expected["input.fa"]
    assert files(target) == expected
    assert os.readlink(target / "link") == "state/step.json"


def test_an_unchanged_tree_costs_only_a_manifest_and_a_changed_file_only_its_chunks(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    taker = snapshotter(DirectoryStore(tmp_path / "store"))
    first = taker.take(work, kind="iterative", progress_s=1)
    second = taker.take(work, kind="iterative", progress_s=2)
    assert second.written < 4096  # the manifest alone
    assert second.manifest.name > first.manifest.name

    (work / "state" / "step.json").write_text('{"step": 8}')
    third = taker.take(work, kind="iterative", progress_s=3)
    assert 0 < third.written < 8192  # one small chunk and the manifest, not the 4 MiB model


def test_rewritten_identical_content_is_not_stored_again(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    taker = snapshotter(DirectoryStore(tmp_path / "store"))
    taker.take(work, kind="iterative", progress_s=1)
    data = (work / "state" / "model.bin").read_bytes()
    (work / "state" / "model.bin").unlink()
    (work / "state" / "model.bin").write_bytes(data)  # new inode and mtime, same bytes
    again = taker.take(work, kind="iterative", progress_s=2)
    assert again.written < 4096


def test_only_checkpoint_files_when_they_are_named(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    taken = snapshotter(DirectoryStore(tmp_path / "store")).take(
        work, kind="iterative", progress_s=1, include=["state/*.json"]
    )
    assert {e.path for e in taken.manifest.entries if e.kind == "file"} == {"state/step.json"}


def test_a_checkpoint_is_visible_only_when_complete(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Aborted):
        snapshotter(store).take(work, kind="final", progress_s=1, cancel=cancel)
    with pytest.raises(Aborted, match="deadline"):
        snapshotter(store).take(work, kind="final", progress_s=1, deadline=0.0)
    manifests = tmp_path / "store" / "job-1" / unit_dir_name("job-1_t_0") / "manifests"
    assert not manifests.exists() or not list(manifests.iterdir())


def test_a_corrupt_chunk_is_refused_at_restore(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    taken = snapshotter(store).take(work, kind="iterative", progress_s=1)
    chunk = next((tmp_path / "store").rglob("chunks/*/*"))
    chunk.write_bytes(b"X" + chunk.read_bytes()[1:])
    restorer = snapshotter(store)
    with pytest.raises(CorruptCheckpoint, match="corrupt"):
        restorer.restore(restorer.load(taken.manifest.name), tmp_path / "target")


def test_a_missing_chunk_or_manifest_is_refused(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    taken = snapshotter(store).take(work, kind="iterative", progress_s=1)
    with pytest.raises(CheckpointMissing):
        snapshotter(store).load("000099-a1")
    for chunk in (tmp_path / "store").rglob("chunks/*/*"):
        chunk.unlink()
    restorer = snapshotter(store)
    with pytest.raises(CheckpointMissing):
        restorer.restore(restorer.load(taken.manifest.name), tmp_path / "target")


def test_a_tampered_or_foreign_manifest_is_refused(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    taken = snapshotter(store).take(work, kind="iterative", progress_s=1)
    path = next((tmp_path / "store").rglob("manifests/*.json"))
    path.write_bytes(path.read_bytes().replace(b'"progress_s":1', b'"progress_s":9'))
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        snapshotter(store).load(taken.manifest.name)

    # A manifest of other work, put where this work's checkpoint should be.
    foreign = Identity("job-1", "t", 1, "job-1_t_0", attempt=1)
    other = snapshotter(store, foreign).take(work, kind="iterative", progress_s=1)
    with pytest.raises(CorruptCheckpoint, match="belongs to"):
        snapshotter(store).load(other.manifest.name)


def test_manifest_paths_that_escape_are_refused() -> None:
    bad = Manifest.from_bytes(
        Manifest(IDENTITY, "000001-a1", "workdir", "final", 0, 0, (), {}).to_bytes()
    ).body()
    bad["entries"] = [{"path": "../../etc/passwd", "kind": "file", "size": 0, "chunks": []}]
    checksum = hashlib.sha256(json.dumps(bad, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with pytest.raises(CorruptCheckpoint, match="escapes"):
        Manifest.from_bytes(json.dumps({**bad, "checksum": checksum}).encode())


def test_prune_keeps_one_checkpoint_and_only_its_chunks(tmp_path: Path) -> None:
    work = tree(tmp_path / "work")
    store = DirectoryStore(tmp_path / "store")
    taker = snapshotter(store)
    taker.take(work, kind="iterative", progress_s=1)
    (work / "state" / "model.bin").write_bytes(os.urandom(1000))
    last = taker.take(work, kind="iterative", progress_s=2)
    store.prune("job-1", "job-1_t_0", last.manifest.name)
    unit = tmp_path / "store" / "job-1" / unit_dir_name("job-1_t_0")
    assert [p.stem for p in (unit / "manifests").iterdir()] == [last.manifest.name]
    assert {p.name for p in (unit / "chunks").rglob("*") if p.is_file()} == last.manifest.chunks
    restorer = snapshotter(store)
    restorer.restore(restorer.load(last.manifest.name), tmp_path / "target")
    assert files(tmp_path / "target") == files(work)


def test_the_store_refuses_paths_outside_it(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    with pytest.raises(ValueError):
        store.put_chunk("../job", "w", "0" * 64, b"data")
    with pytest.raises(ValueError):
        store.put_chunk("job", "w", "../../etc", b"data")


def test_content_that_comes_back_after_a_prune_is_stored_again(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    state = work / "state.bin"
    store = DirectoryStore(tmp_path / "store")
    taker = snapshotter(store)
    state.write_bytes(b"A" * 1000)
    taker.take(work, kind="iterative", progress_s=1)
    state.write_bytes(b"B" * 1000)
    second = taker.take(work, kind="iterative", progress_s=2)
    store.prune("job-1", "job-1_t_0", second.manifest.name)
    taker.pruned_to(second.manifest)
    state.write_bytes(b"A" * 1000)  # back to content whose chunk the prune deleted
    third = taker.take(work, kind="iterative", progress_s=3)
    restorer = snapshotter(store)
    restorer.restore(restorer.load(third.manifest.name), tmp_path / "target")
    assert (tmp_path / "target" / "state.bin").read_bytes() == b"A" * 1000
