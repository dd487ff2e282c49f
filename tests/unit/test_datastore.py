"""The data store: DirectoryBlobStore (complete-or-nothing writes, checksums, limits, safe keys) and
ConcatReader (a split task's parts read as one file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from perdure.datastore import CHUNK, BlobInfo, ConcatReader, DirectoryBlobStore
from perdure.errors import BadRequest, NotFound


@pytest.fixture
def store(tmp_path: Path) -> DirectoryBlobStore:
    return DirectoryBlobStore(tmp_path / "blobs")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: DirectoryBlobStore, key: str, data: bytes, chunk: int = 3) -> BlobInfo:
    pending = store.begin(key, max_bytes=1 << 30)
    for i in range(0, len(data), chunk):
        pending.write(data[i : i + chunk])
    return pending.commit(sha(data))


def read(store: DirectoryBlobStore, key: str) -> bytes:
    with store.open(key) as handle:
        return handle.read()


def leftovers(store: DirectoryBlobStore) -> list[Path]:
    return sorted((store.root / ".tmp").iterdir())


# ---- DirectoryBlobStore -------------------------------------------------------------------------------


def test_blob_is_visible_only_once_committed(store: DirectoryBlobStore) -> None:
    key = "jobs/j1/t/0/out.txt"
    pending = store.begin(key, max_bytes=100)
    pending.write(b"hello ")
    pending.write(b"world")
    with pytest.raises(NotFound):
        store.open(key)
    with pytest.raises(NotFound):
        store.size(key)
    assert not store.path(key).exists()
    info = pending.commit(sha(b"hello world"))
    assert info == BlobInfo(size=11, sha256=sha(b"hello world"))
    assert read(store, key) == b"hello world"
    assert store.size(key) == 11
    assert leftovers(store) == []


def test_commit_without_a_checksum_and_with_upper_case_checksum(store: DirectoryBlobStore) -> None:
    pending = store.begin("a/b", max_bytes=10)
    pending.write(b"abc")
    assert pending.commit(None) == BlobInfo(3, sha(b"abc"))
    pending = store.begin("a/c", max_bytes=10)
    pending.write(b"abc")
    assert pending.commit(sha(b"abc").upper()).sha256 == sha(b"abc")
    assert read(store, "a/c") == b"abc"


def test_empty_blob(store: DirectoryBlobStore) -> None:
    assert store.begin("e/mpty", max_bytes=0).commit(sha(b"")) == BlobInfo(0, sha(b""))
    assert read(store, "e/mpty") == b""


def test_checksum_mismatch_discards_and_raises(store: DirectoryBlobStore) -> None:
    pending = store.begin("jobs/j/out", max_bytes=100)
    pending.write(b"data")
    with pytest.raises(BadRequest, match="checksum mismatch"):
        pending.commit(sha(b"other"))
    assert not store.path("jobs/j/out").exists()
    assert leftovers(store) == []


def test_checksum_mismatch_keeps_the_previous_blob(store: DirectoryBlobStore) -> None:
    put(store, "k/v", b"first")
    pending = store.begin("k/v", max_bytes=100)
    pending.write(b"second")
    assert read(store, "k/v") == b"first"  # an upload in progress does not disturb the blob
    with pytest.raises(BadRequest):
        pending.commit("0" * 64)
    assert read(store, "k/v") == b"first"
    put(store, "k/v", b"third")
    assert read(store, "k/v") == b"third"


def test_size_limit_raises_and_leaves_nothing(store: DirectoryBlobStore) -> None:
    pending = store.begin("big/one", max_bytes=10)
    pending.write(b"12345")
    pending.write(b"67890")  # exactly the limit is fine
    with pytest.raises(BadRequest, match="limit of 10 bytes"):
        pending.write(b"1")
    assert leftovers(store) == []
    assert not store.path("big/one").exists()
    pending.discard()  # the caller's cleanup after the error is harmless
    assert leftovers(store) == []


def test_discard(store: DirectoryBlobStore) -> None:
    pending = store.begin("x/y", max_bytes=10)
    pending.write(b"abc")
    pending.discard()
    pending.discard()
    assert leftovers(store) == []
    assert not store.path("x/y").exists()


@pytest.mark.parametrize(
    "key",
    ["", "/", "/etc/passwd", "..", "../x", "a/../../x", "a/..", "a//b", "./a", "a/./b", "a/", "a\x00b"],
)
def test_unsafe_keys_are_refused(store: DirectoryBlobStore, key: str) -> None:
    with pytest.raises(BadRequest, match="invalid data store key"):
        store.begin(key, max_bytes=10)
    with pytest.raises(BadRequest):
        store.open(key)
    with pytest.raises(BadRequest):
        store.size(key)
    with pytest.raises(BadRequest):
        store.path(key)
    assert leftovers(store) == []


@pytest.mark.parametrize("prefix", ["", "/", "..", "../blobs", "/tmp", "a/../.."])
def test_delete_prefix_refuses_unsafe_prefixes(store: DirectoryBlobStore, prefix: str) -> None:
    put(store, "jobs/j1/x", b"keep")
    with pytest.raises(BadRequest):
        store.delete_prefix(prefix)
    assert read(store, "jobs/j1/x") == b"keep"


def test_delete_prefix(store: DirectoryBlobStore) -> None:
    for key in ("jobs/j1/a/0/out", "jobs/j1/b/1/out", "jobs/j10/a/0/out", "jobs/j2/a/0/out"):
        put(store, key, key.encode())
    store.delete_prefix("jobs/j1")
    for key in ("jobs/j1/a/0/out", "jobs/j1/b/1/out"):
        with pytest.raises(NotFound):
            store.open(key)
    assert read(store, "jobs/j10/a/0/out") == b"jobs/j10/a/0/out"  # a prefix is a directory, not a string
    store.delete_prefix("jobs/j2/")
    with pytest.raises(NotFound):
        store.size("jobs/j2/a/0/out")
    store.delete_prefix("jobs/never-existed")
    assert read(store, "jobs/j10/a/0/out") == b"jobs/j10/a/0/out"
    assert (store.root / ".tmp").is_dir()


def test_missing_blob_is_not_found(store: DirectoryBlobStore) -> None:
    with pytest.raises(NotFound):
        store.open("no/such")
    with pytest.raises(NotFound):
        store.size("no/such")


def test_two_stores_on_one_directory(store: DirectoryBlobStore) -> None:
    put(store, "s/hared", b"seen by both")
    other = DirectoryBlobStore(store.root)
    assert read(other, "s/hared") == b"seen by both"


# ---- ConcatReader -------------------------------------------------------------------------------------

PARTS = [b"abc", b"", b"defgh", b"i", b"", b"jklm"]


@pytest.fixture
def parts(store: DirectoryBlobStore) -> tuple[ConcatReader, bytes]:
    keys = []
    for rank, data in enumerate(PARTS, start=1):
        key = f"jobs/j/t/{rank}/out"
        put(store, key, data, chunk=2)
        keys.append(key)
    return ConcatReader(store, keys), b"".join(PARTS)


def test_concat_reader_total_and_whole(parts: tuple[ConcatReader, bytes]) -> None:
    reader, whole = parts
    assert reader.total == len(whole) == 13
    assert b"".join(reader.iter_range()) == whole
    assert reader.read_at(0, reader.total) == whole


def test_concat_reader_every_range(parts: tuple[ConcatReader, bytes]) -> None:
    reader, whole = parts
    for offset in range(len(whole) + 2):
        for length in range(len(whole) + 2 - offset):
            assert b"".join(reader.iter_range(offset, length)) == whole[offset : offset + length], (
                offset,
                length,
            )
            assert reader.read_at(offset, length) == whole[offset : offset + length]
        assert b"".join(reader.iter_range(offset)) == whole[offset:]


def test_concat_reader_yields_nothing_empty(parts: tuple[ConcatReader, bytes]) -> None:
    reader, _ = parts
    assert all(chunk for chunk in reader.iter_range(0, None))
    assert list(reader.iter_range(5, 0)) == []
    assert list(reader.iter_range(100, 5)) == []


def test_concat_reader_large_parts_in_chunks(store: DirectoryBlobStore) -> None:
    first = bytes(range(256)) * (CHUNK // 256) + b"tail-of-first"
    second = b"second" * 1000
    put(store, "l/1", first, chunk=CHUNK)
    put(store, "l/2", second, chunk=CHUNK)
    reader = ConcatReader(store, ["l/1", "l/2"])
    whole = first + second
    chunks = list(reader.iter_range())
    assert all(0 < len(c) <= CHUNK for c in chunks)
    assert b"".join(chunks) == whole
    # A range that starts in the first part and ends in the second.
    offset = len(first) - 7
    assert reader.read_at(offset, 20) == whole[offset : offset + 20]
    assert reader.read_at(len(first), 6) == b"second"


def test_concat_reader_no_parts(store: DirectoryBlobStore) -> None:
    reader = ConcatReader(store, [])
    assert reader.total == 0
    assert reader.read_at(0, 10) == b""


def test_concat_reader_needs_existing_parts(store: DirectoryBlobStore) -> None:
    with pytest.raises(NotFound):
        ConcatReader(store, ["not/there"])
