"""Checkpoints in an S3 bucket, behind ``store.CheckpointStore``: the server's checkpoint store when
``store.s3.bucket`` is set, and a worker's own when ``ckpt.ckptImagePath`` is ``s3://bucket/prefix``
(the worker then reaches the bucket with its own credentials, and no checkpoint byte passes through
the server). Same layout as ``DirectoryStore``, under ``<prefix>/checkpoints/``::

    <prefix>/checkpoints/<job id>/<workunit>/chunks/<ab>/<sha256>
    <prefix>/checkpoints/<job id>/<workunit>/manifests/<name>.json

An S3 PUT is atomic (an object appears whole or not at all) and read-after-write consistent, so the
manifest, written after its chunks, makes a checkpoint visible only when whole, as in a directory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from perdure.objectstore import _is_missing, make_client
from perdure.spot.manifest import CorruptCheckpoint, Manifest, valid_digest, valid_name
from perdure.spot.store import CheckpointMissing, unit_dir_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

_JOB_ID = re.compile(r"^[\w-]{1,64}$")


class S3CheckpointStore:
    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.root = f"{prefix}/checkpoints" if prefix else "checkpoints"

    @classmethod
    def from_url(cls, url: str, *, region: str = "", endpoint: str = "") -> S3CheckpointStore:
        """``s3://bucket[/prefix]``, with the caller's credentials (the AWS chain)."""
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise ValueError(f"{url!r} is not s3://bucket[/prefix]")
        bucket, _, prefix = url[5:].partition("/")
        return cls(make_client(region=region, endpoint=endpoint), bucket, prefix)

    def _unit(self, job_id: str, workunit: str) -> str:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return f"{self.root}/{job_id}/{unit_dir_name(workunit)}"

    def _chunk(self, job_id: str, workunit: str, digest: str) -> str:
        if not valid_digest(digest):
            raise ValueError(f"invalid chunk digest {digest!r}")
        return f"{self._unit(job_id, workunit)}/chunks/{digest[:2]}/{digest}"

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _get(self, key: str, missing: str) -> bytes:
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if _is_missing(exc):
                raise CheckpointMissing(missing) from None
            raise
        return data

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool:
        return self._exists(self._chunk(job_id, workunit, digest))

    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        key = self._chunk(job_id, workunit, digest)
        if self._exists(key):
            return 0
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return len(data)

    def get_chunk(self, job_id: str, workunit: str, digest: str) -> bytes:
        return self._get(
            self._chunk(job_id, workunit, digest),
            f"chunk {digest[:12]}… is missing from the checkpoint store",
        )

    def put_manifest(self, job_id: str, workunit: str, manifest: Manifest) -> int:
        data = manifest.to_bytes()
        key = f"{self._unit(job_id, workunit)}/manifests/{manifest.name}.json"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return len(data)

    def get_manifest(self, job_id: str, workunit: str, name: str) -> Manifest:
        if not valid_name(name):
            raise CorruptCheckpoint(f"bad checkpoint name {name!r}")
        data = self._get(
            f"{self._unit(job_id, workunit)}/manifests/{name}.json",
            f"checkpoint {name} is not in the checkpoint store",
        )
        return Manifest.from_bytes(data)

    def prune(self, job_id: str, workunit: str, keep: str) -> None:
        unit = self._unit(job_id, workunit)
        wanted = self.get_manifest(job_id, workunit, keep).chunks
        stale = [k for k in self._keys(f"{unit}/manifests/") if k.rsplit("/", 1)[-1] != f"{keep}.json"]
        stale += [k for k in self._keys(f"{unit}/chunks/") if k.rsplit("/", 1)[-1] not in wanted]
        self._delete(stale)

    def delete_workunit(self, job_id: str, workunit: str) -> None:
        self._delete(self._keys(f"{self._unit(job_id, workunit)}/"))

    def job_ids(self) -> list[str]:
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.root}/", Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common.get("Prefix", "").rstrip("/").rsplit("/", 1)[-1]
                if _JOB_ID.match(name):
                    found.add(name)
        return sorted(found)

    def delete_job(self, job_id: str) -> None:
        if _JOB_ID.match(job_id):
            self._delete(self._keys(f"{self.root}/{job_id}/"))


__all__ = ["S3CheckpointStore"]
