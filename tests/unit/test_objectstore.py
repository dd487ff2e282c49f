"""The S3 data store and checkpoint store against moto's in-process S3 (``mock_aws``: no socket is
opened, and the dummy credentials below keep boto3 from looking anywhere else)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from perdure.errors import BadRequest, NotFound
from perdure.objectstore import MiB, S3BlobStore, parse_s3_url
from perdure.s3config import S3StoreConfig
from perdure.spot.manifest import Entry, Identity, Manifest
from perdure.spot.s3store import S3CheckpointStore
from perdure.spot.store import CheckpointMissing

BUCKET = "unit-bucket"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        blobs = S3BlobStore(S3StoreConfig(bucket=BUCKET, prefix="/pre/fix/", region="us-east-1"))
        blobs.client.create_bucket(Bucket=BUCKET)
        yield blobs


def keys(store: S3BlobStore) -> list[str]:
    answer: Any = store.client.list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def test_a_small_blob_is_one_put_under_the_prefix_and_reads_by_range(store: S3BlobStore) -> None:
    data = b"0123456789" * 10
    pending = store.begin("jobs/j/t/0/out.txt", 1000)
    pending.write(data[:30])
    pending.write(data[30:])
    info = pending.commit(hashlib.sha256(data).hexdigest())
    assert (info.size, info.sha256) == (100, hashlib.sha256(data).hexdigest())
    assert keys(store) == ["pre/fix/jobs/j/t/0/out.txt"]
    assert store.size("jobs/j/t/0/out.txt") == 100
    with store.open("jobs/j/t/0/out.txt") as handle:
        handle.seek(95)
        assert handle.read(10) == b"56789"
        handle.seek(10)
        assert handle.read(3) == b"012"
    assert store.bytes_read == 8 and store.bytes_received == 100


def test_a_large_blob_goes_up_in_parts(store: S3BlobStore) -> None:
    store.part_size = 5 * MiB  # S3's smallest part
    data = os.urandom(11 * MiB + 17)
    pending = store.begin("jobs/j/t/1/big.bin", 64 * MiB)
    for start in range(0, len(data), MiB):
        pending.write(data[start : start + MiB])
    assert pending.upload_id is not None and len(pending.parts) == 2  # the rest goes with the commit
    pending.commit(hashlib.sha256(data).hexdigest())
    assert store.size("jobs/j/t/1/big.bin") == len(data)
    with store.open("jobs/j/t/1/big.bin") as handle:
        handle.seek(len(data) - 100)
        assert handle.read() == data[-100:]


def test_a_checksum_mismatch_or_an_oversized_upload_leaves_nothing(store: S3BlobStore) -> None:
    store.part_size = 5 * MiB
    pending = store.begin("jobs/j/t/2/bad.bin", 64 * MiB)
    pending.write(os.urandom(6 * MiB))
    with pytest.raises(BadRequest, match="checksum mismatch"):
        pending.commit("0" * 64)
    assert keys(store) == []
    assert store.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    small = store.begin("jobs/j/t/2/small.bin", 10)
    with pytest.raises(BadRequest, match="larger than the limit"):
        small.write(b"x" * 11)
    assert keys(store) == []


def test_missing_keys_bad_keys_and_delete_prefix(store: S3BlobStore) -> None:
    with pytest.raises(NotFound):
        store.size("jobs/none")
    with pytest.raises(BadRequest):
        store.begin("../escape", 10)
    for name in ("jobs/a/t/0/x", "jobs/a/t/1/y", "jobs/ab/t/0/z"):
        pending = store.begin(name, 10)
        pending.write(b"1")
        pending.commit(None)
    store.delete_prefix("jobs/a")
    assert keys(store) == ["pre/fix/jobs/ab/t/0/z"]  # a sibling with a longer name is kept


def test_presigned_urls_name_the_object_and_their_expiry(store: S3BlobStore) -> None:
    url = store.presign_get("jobs/j/t/0/out.txt", 60)
    assert f"/{BUCKET}/pre/fix/jobs/j/t/0/out.txt" in url or "pre/fix/jobs/j/t/0/out.txt" in url
    assert "X-Amz-Expires=60" in url
    assert "X-Amz-Expires=900" in store.presign_put("jobs/j/t/0/out.txt")  # store.s3.presignExpiry


def test_s3_urls() -> None:
    assert parse_s3_url("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    for bad in ("s3://bucket", "s3:///key", "http://x/y"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_settings_bounds() -> None:
    assert S3StoreConfig().enabled is False
    assert S3StoreConfig(prefix="/a/b/").prefix == "a/b"
    for bad in ({"presignExpiry": 10}, {"presignExpiry": 7200}, {"bucket": "UPPER"}, {"prefix": "a/../b"}):
        with pytest.raises(ValueError):
            S3StoreConfig(**bad)


def test_the_checkpoint_store_in_a_bucket(store: S3BlobStore) -> None:
    checkpoints = S3CheckpointStore(store.client, BUCKET, "pre/fix")
    old, new = b"old chunk", b"new chunk"
    old_digest, new_digest = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    assert checkpoints.put_chunk("job-1", "job-1_t_0", old_digest, old) == len(old)
    assert checkpoints.put_chunk("job-1", "job-1_t_0", old_digest, old) == 0  # already there
    assert checkpoints.has_chunk("job-1", "job-1_t_0", old_digest)
    checkpoints.put_chunk("job-1", "job-1_t_0", new_digest, new)
    assert checkpoints.get_chunk("job-1", "job-1_t_0", new_digest) == new
    with pytest.raises(CheckpointMissing):
        checkpoints.get_chunk("job-1", "job-1_t_0", "a" * 64)

    first = _manifest("000001-a1", {old_digest})
    second = _manifest("000002-a1", {new_digest})
    checkpoints.put_manifest("job-1", "job-1_t_0", first)
    checkpoints.put_manifest("job-1", "job-1_t_0", second)
    assert checkpoints.get_manifest("job-1", "job-1_t_0", "000002-a1").name == "000002-a1"
    checkpoints.prune("job-1", "job-1_t_0", keep="000002-a1")
    with pytest.raises(CheckpointMissing):
        checkpoints.get_manifest("job-1", "job-1_t_0", "000001-a1")
    assert not checkpoints.has_chunk("job-1", "job-1_t_0", old_digest)
    assert checkpoints.has_chunk("job-1", "job-1_t_0", new_digest)

    checkpoints.put_chunk("job-2", "job-2_t_0", old_digest, old)
    assert checkpoints.job_ids() == ["job-1", "job-2"]
    checkpoints.delete_job("job-1")
    checkpoints.delete_workunit("job-2", "job-2_t_0")
    assert checkpoints.job_ids() == []
    assert keys(store) == []


def _manifest(name: str, chunks: set[str]) -> Manifest:
    identity = Identity(job="job-1", task="t", rank=0, workunit="job-1_t_0", attempt=1)
    entries = (Entry("data.bin", "file", size=9, chunks=tuple(sorted(chunks))),)
    return Manifest(identity, name, "workdir", "iterative", 0, 0, entries, {})


def test_a_split_part_is_a_ranged_read_of_each_stored_part_it_covers(store: S3BlobStore) -> None:
    """The byte range of a workunit's part, over an input stored in several parts (an earlier split
    task's output), becomes one ranged GET per stored part it touches."""
    from perdure.api.s3 import _segments
    from perdure.store.blobrefs import StoredPart

    parts = [StoredPart("jobs/j/t/1/a", 10, "1" * 64), StoredPart("jobs/j/t/2/b", 10, "2" * 64)]
    spans = [(s["offset"], s["length"], s["size"]) for s in _segments(store, parts, (5, 10), 60)]
    assert spans == [(5, 5, 10), (0, 5, 10)]
    whole = _segments(store, parts, (0, 20), 60)
    assert [(s["offset"], s["length"], s["sha256"]) for s in whole] == [(0, 10, "1" * 64), (0, 10, "2" * 64)]
    assert _segments(store, parts, (10, 10), 60)[0]["url"].split("?")[0].endswith("jobs/j/t/2/b")
    assert _segments(store, parts, (20, 0), 60) == []
