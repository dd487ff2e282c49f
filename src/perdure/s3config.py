"""The ``store`` section of the configuration: where the data store and the server's checkpoint store
live when they are an S3 bucket (issue 21). Kept apart from ``config/model.py`` so the section is one
small model plus one field there.

Credentials are never part of it: the server and the workers take them from the standard AWS chain
(environment, shared files, instance profile, ...).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Shortest and longest validity of a presigned URL, in seconds.
MIN_PRESIGN_S = 30
MAX_PRESIGN_S = 3600
#: A single presigned PUT is limited to this by S3 (5 GiB); larger outputs go through the server,
#: which uploads them in parts.
MAX_SINGLE_PUT = 5 * 1024**3

_BUCKET = re.compile(r"^$|^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class S3StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: The bucket; empty: the data store and checkpoints stay in the server's data directory.
    bucket: str = Field(default="", pattern=_BUCKET.pattern)
    #: Every key the server writes starts with this (``perdure/`` gives ``perdure/jobs/...``).
    prefix: str = Field(default="", max_length=512)
    #: The bucket's region; empty: the AWS chain's default.
    region: str = Field(default="", pattern=r"^$|^[a-z0-9-]{1,32}$")
    #: An S3-compatible endpoint (MinIO, Ceph, moto, ...) instead of AWS's: ``http(s)://host[:port]``.
    endpoint: str = Field(default="", pattern=r"^$|^https?://[^\s/]+(/[^\s]*)?$")
    #: How long the presigned URLs in a checkout stay valid (seconds, 30..3600).
    presignExpiry: int = Field(default=900, ge=MIN_PRESIGN_S, le=MAX_PRESIGN_S)
    #: Outputs uploaded through the server are sent to S3 in parts of this many MiB (5..5120).
    partSizeMB: int = Field(default=64, ge=5, le=5120)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if any(p in (".", "..") for p in value.split("/")) or "\x00" in value or "//" in value:
            raise ValueError("prefix must be a plain key path (no '.', '..' or empty parts)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    s3: S3StoreConfig = Field(default_factory=S3StoreConfig)


__all__ = ["MAX_PRESIGN_S", "MAX_SINGLE_PUT", "MIN_PRESIGN_S", "S3StoreConfig", "StoreConfig"]
