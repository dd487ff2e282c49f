"""The ``pool`` section of the configuration: worker pools on EC2 that follow the queue (issue 21,
item 4). Kept apart from ``config/model.py`` like ``s3config.py``: one small model plus one field there.

A pool is an entry of ``pool.pools``; configKV takes the whole list as a JSON array
(``{"pool.pools": "[{\\"name\\": \\"spot\\", ...}]"}``), so a change of several fields is one
validated change. Credentials are never part of it: the server uses the standard AWS chain
(environment, shared files, instance profile), and a pool's clientgroup token, if the workers need
one, is read on the node from an SSM SecureString parameter (``tokenParameter``), never from here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from perdure.duration import Duration

DAY = 86400.0
HOUR = 3600.0
#: The most nodes one pool may have (a typo of 10000 must not buy ten thousand machines).
MAX_NODES = 1000
MAX_POOLS = 20

InstanceType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$", max_length=64)]
SubnetId = Annotated[str, StringConstraints(pattern=r"^subnet-[0-9a-f]{8,17}$")]
SecurityGroupId = Annotated[str, StringConstraints(pattern=r"^sg-[0-9a-f]{8,17}$")]


class PoolSpec(BaseModel):
    """One pool: an Auto Scaling group of worker nodes for one client group."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: The pool's name; its Auto Scaling group and launch template are ``perdure-<name>``.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    #: The client group the pool's workers join; its queued and running work sizes the pool.
    clientgroup: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,128}$")
    #: Instance types the group may launch (spot capacity-optimized picks among them), 1 to 20.
    instanceTypes: list[InstanceType] = Field(min_length=1, max_length=20)
    #: Subnets (and so availability zones) the group launches into.
    subnets: list[SubnetId] = Field(min_length=1, max_length=16)
    #: Security groups of the nodes; empty: the VPC's default.
    securityGroups: list[SecurityGroupId] = Field(default_factory=list, max_length=5)
    #: The machine image (Debian, Ubuntu or Amazon Linux with systemd and curl).
    ami: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$")
    #: An EC2 key pair for SSH to the nodes; empty: none.
    keyName: str = Field(default="", max_length=255, pattern=r"^[\x20-\x7e]*$")
    #: The nodes' instance profile (name or ARN): what the workers may read (``s3://`` inputs).
    iamInstanceProfile: str = Field(default="", max_length=1600, pattern=r"^[A-Za-z0-9_+=,.@:/-]*$")
    #: Workunits each node runs at once (``perdure worker --slots``).
    slotsPerNode: int = Field(default=1, ge=1, le=1024)
    #: Nodes kept even with an empty queue.
    minNodes: int = Field(default=0, ge=0, le=MAX_NODES)
    #: Nodes never exceeded, however long the queue.
    maxNodes: int = Field(default=10, ge=0, le=MAX_NODES)
    #: The first this many nodes are on-demand; the rest follow ``onDemandPercentAboveBase``.
    onDemandBase: int = Field(default=0, ge=0, le=MAX_NODES)
    #: Percentage of the nodes above the base that are on-demand (0: all spot).
    onDemandPercentAboveBase: int = Field(default=0, ge=0, le=100)
    #: Least time between two changes of the pool's size (0 to 1 day).
    cooldown: Duration = Field(default=300.0, ge=0.0, le=DAY)
    #: A node idle (no workunit leased, none checked out or reported) this long may be scaled in.
    scaleInIdleFor: Duration = Field(default=600.0, ge=0.0, le=DAY)
    #: The workers' work directory on each node (``perdure worker --workpath``).
    workpath: str = Field(default="/var/lib/perdure/work", pattern=r"^/[A-Za-z0-9._/-]{0,254}$")
    #: The pool's region; empty: ``pool.region``.
    region: str = Field(default="", pattern=r"^$|^[a-z0-9-]{1,32}$")
    #: An SSM SecureString parameter holding the clientgroup token the nodes use; empty: none.
    tokenParameter: str = Field(default="", max_length=2048, pattern=r"^[A-Za-z0-9_./-]*$")

    @field_validator("workpath")
    @classmethod
    def _plain_path(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")):
            raise ValueError("workpath must be an absolute path without '.' or '..'")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> PoolSpec:
        if self.minNodes > self.maxNodes:
            raise ValueError(f"minNodes ({self.minNodes}) is more than maxNodes ({self.maxNodes})")
        if self.onDemandBase > self.maxNodes:
            raise ValueError(f"onDemandBase ({self.onDemandBase}) is more than maxNodes ({self.maxNodes})")
        return self


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: Run the scaler: the servers (one at a time) size each pool's Auto Scaling group from the queue.
    enabled: bool = False
    #: How often the scaler looks at the queue (1 s to 1 hour).
    interval: Duration = Field(default=30.0, ge=1.0, le=HOUR)
    #: The pools' AWS region; empty: the AWS chain's default (``AWS_REGION``).
    region: str = Field(default="", pattern=r"^$|^[a-z0-9-]{1,32}$")
    #: An EC2 and Auto Scaling endpoint instead of AWS's (a test double such as moto), ``http(s)://host[:port]``.
    endpoint: str = Field(default="", pattern=r"^$|^https?://[^\s/@]+(/[^\s@]*)?$")
    #: The server's URL as new nodes reach it (installer and worker); empty: ``perdure.externalURL``.
    serverURL: str = Field(default="", pattern=r"^$|^https?://[A-Za-z0-9.\[\]:-]+(/[A-Za-z0-9._~/-]*)?$")
    #: The pools (a JSON array through configKV); see docs/aws.md.
    pools: list[PoolSpec] = Field(default_factory=list, max_length=MAX_POOLS)

    @field_validator("pools")
    @classmethod
    def _unique(cls, value: list[PoolSpec]) -> list[PoolSpec]:
        names = [p.name for p in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pool names must be unique: {', '.join(twice)}")
        return value

    def get(self, name: str) -> PoolSpec | None:
        return next((p for p in self.pools if p.name == name), None)


__all__ = ["MAX_NODES", "MAX_POOLS", "PoolConfig", "PoolSpec"]
