"""The configuration's sections: every setting once, with its type, default, bounds and a ``#:``
comment (docs/gen_config.py writes docs/configuration.md from them; a test checks every setting has one).

The server's sections are the management API's document (``GET /api/v1/config``) plus ``perdure``;
the worker's settings are the ``worker`` section (``WorkerConfig``), which each worker reads for itself.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perdure.config.values import Flag, coerce, validation_messages
from perdure.duration import Duration
from perdure.poolconfig import PoolConfig
from perdure.s3config import StoreConfig

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MIB = 1024 * 1024
GIB = 1024 * MIB


class _Section(BaseModel):
    """A configuration is replaced on change, never changed in place: every section is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ---- the server's sections --------------------------------------------------------------------------


class ServerLogConfig(_Section):
    #: The server log; served at ``/<base>.log``, so it must be a ``.log`` file (never, say, config.json).
    file: str = Field(default="", pattern=r"^$|^[^\x00]*\.log$")
    #: Least severe level written to the server log.
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    #: A log file is rotated at this size.
    maxSizeMB: int = Field(default=10, ge=1, le=10_240)
    #: Rotated log files kept.
    maxBackups: int = Field(default=10, ge=0, le=1000)


class CognitoConfig(_Section):
    #: Require a token from the identity provider on every call.
    enabled: Flag = False
    #: The AWS region of the Cognito user pool.
    region: str = ""
    #: The Cognito user pool.
    userPoolID: str = ""
    #: The Cognito identity pool.
    identityPoolID: str = ""
    #: The client (single-page application) the tokens are issued to.
    clientID: str = ""
    #: Users in these groups are administrators.
    adminGroups: list[str] = Field(default_factory=lambda: ["admin"])
    #: Any OIDC provider: the token issuer (default: the Cognito pool's).
    issuer: str = ""
    #: Any OIDC provider: its JWKS URL (default: the Cognito pool's).
    jwksURL: str = ""
    #: Secret: stored, never shown.
    accessKey: str = ""
    #: Secret: stored, never shown.
    secretKey: str = ""


class SecurityConfig(_Section):
    #: TLS certificate (PEM); with ``keyFile``, the server speaks HTTPS.
    certFile: str = ""
    #: TLS private key (PEM).
    keyFile: str = ""
    #: Token authentication.
    cognito: CognitoConfig = Field(default_factory=CognitoConfig)
    #: A token of its own for Prometheus on ``/metrics`` (``Authorization: Bearer <it>``); empty: none.
    #: Once set, ``/metrics`` needs it (or an admin) even with security off.
    metricsToken: str = ""
    #: How long the data capability each checkout carries stays valid (seconds, 1 s to 7 days);
    #: it dies sooner with its lease. It reads the workunit's inputs and checkpoints (issue 17).
    capabilityTTL: int = Field(default=3600, ge=1, le=7 * 24 * 3600)


class CkptConfig(_Section):
    #: ``iterative`` (checkpoint every ``ckptInterval``) or ``none``.
    ckptMode: Literal["iterative", "none"] = "iterative"
    #: A directory every node mounts for checkpoint images; empty: the server's store over HTTP.
    ckptImagePath: str = ""
    #: Time between two checkpoints of a running workunit (1 s to 30 days).
    ckptInterval: Duration = Field(default=3600.0, ge=1.0, le=30 * DAY)
    #: Only these paths of the work directory are checkpointed; null: all of it.
    ckptFiles: list[str] | None = None
    #: Paths CRIU scans for its IR map.
    IRMapScanPaths: list[str] | None = None
    #: Include the root filesystem's changes in a checkpoint.
    rootFSDiff: Flag = True
    #: Close TCP connections on restore.
    tcpClose: Flag = True
    #: Keep checkpoints after the work completes, for inspection.
    diagnosisMode: Flag = False


class NodeConfig(_Section):
    """What workers follow, sent with every heartbeat reply."""

    #: Workers heartbeat this often (100 ms to 1 hour; a worker never beats less often than ttl/3).
    heartbeat: Duration = Field(default=30.0, ge=0.1, le=HOUR)
    #: A worker silent this long is offline and its work is re-queued (1 s to 7 days).
    ttl: Duration = Field(default=300.0, ge=1.0, le=7 * DAY)


#: Why ``job.ebsPerJob`` cannot be turned on (issue 21 item 5).
EBS_REFUSED = (
    "EBS volumes per job are not implemented: Perdure keeps job data in the data store (S3 or the "
    "server's directory) and checkpoints in the checkpoint store, and would ignore this setting"
)


class JobConfig(_Section):
    #: Give each job an EBS volume of its own. Not implemented: turning it on is refused (the
    #: ``disk*``/``ebsMountPath``/``customTags`` keys describe such a volume and are kept for MMAB's
    #: configuration document only).
    ebsPerJob: Flag = False
    #: Tags put on each job's volume.
    customTags: dict[str, str] = Field(default_factory=dict)
    #: Where a job's volume is mounted.
    ebsMountPath: str = ""
    #: The EBS volume type.
    diskType: str = "gp3"
    #: Size of a job's volume (1 GiB to 64 TiB, EBS's range).
    diskSizeGB: int = Field(default=120, ge=1, le=65_536)
    #: Throughput of a job's volume, MB/s.
    diskThroughputMB: int = Field(default=125, ge=1, le=10_000)

    @field_validator("ebsPerJob")
    @classmethod
    def _no_ebs(cls, value: bool) -> bool:
        if value:
            raise ValueError(EBS_REFUSED)
        return value


class PerdureConfig(_Section):
    """Perdure's own settings, beside the management API's."""

    #: SQLAlchemy URL of the database (read-only: it names this process's database).
    databaseURL: str = ""
    #: The data directory (read-only).
    dataDir: str = ""
    #: A workunit failing this many times suspends its job (``info.noretry`` makes it 1).
    maxWorkFailure: int = Field(default=3, ge=1, le=1000)
    #: A client failing this many workunits in a row is suspended; 0: never.
    maxClientFailure: int = Field(default=5, ge=0, le=1000)
    #: Largest job script ``POST /job`` accepts (1 KiB to 1 GiB).
    maxUploadBytes: int = Field(default=16 * MIB, ge=1024, le=GIB)
    #: Largest single output file a worker may upload to the data store (up to 16 TiB).
    maxOutputBytes: int = Field(default=64 * GIB, ge=1, le=16 * 1024 * GIB)
    #: Refuse worker calls without a valid clientgroup token.
    clientAuthRequired: Flag = False
    #: Expiration given to completed jobs that have none, e.g. ``30D``; empty: never.
    globalExpire: str = Field(default="", pattern=r"^(\d{1,6}[MHD])?$")
    #: Per-pipeline expiration, ``pipeline:12H,other:30D``; wins over ``globalExpire``.
    pipelineExpire: dict[str, str] = Field(default_factory=dict)
    #: How often each server's housekeeping runs (50 ms to 1 hour).
    sweepInterval: Duration = Field(default=5.0, ge=0.05, le=HOUR)
    #: The server's address as workers reach it, for the absolute input and output URLs (``host`` +
    #: ``node``) in workunit documents (AWE workers need them); empty: each request's own base URL.
    externalURL: str = Field(default="", pattern=r"^(https?://[^\s/?#]+(/[^\s?#]*)?)?$")
    #: A request's headers must arrive within this long (0.1 s to 5 minutes), or the connection is
    #: closed (slowloris); read when the server starts.
    headerTimeout: Duration = Field(default=10.0, ge=0.1, le=300.0)

    @field_validator("pipelineExpire")
    @classmethod
    def _expirations(cls, value: dict[str, str]) -> dict[str, str]:
        for pipeline, expire in value.items():
            if not re.fullmatch(r"\d{1,6}[MHD]", expire):
                raise ValueError(f"{pipeline}: {expire!r} is not an expiration like 30D, 12H or 90M")
        return value


class ServerConfig(_Section):
    """The server's configuration, in the management API's shape."""

    #: Where the server listens (set by each server process).
    addr: str = "http://127.0.0.1:8001"
    #: This installation (read-only).
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    #: The web front end's folder.
    staticFolder: str = ""
    log: ServerLogConfig = Field(default_factory=ServerLogConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    ckpt: CkptConfig = Field(default_factory=CkptConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    job: JobConfig = Field(default_factory=JobConfig)
    perdure: PerdureConfig = Field(default_factory=PerdureConfig)
    #: Where data and checkpoints live (``store.s3.*``: an S3 bucket; see ``s3config.py``).
    store: StoreConfig = Field(default_factory=StoreConfig)
    #: Worker pools on EC2 that follow the queue (``pool.*``; see ``poolconfig.py``).
    pool: PoolConfig = Field(default_factory=PoolConfig)


#: The defaults, built once (``id`` aside, which each installation draws at its first start).
DEFAULTS = ServerConfig()


# ---- the worker's section ---------------------------------------------------------------------------


class WorkerConfig(_Section):
    """A worker node's settings: CLI flags over ``PERDURE_WORKER_<NAME>`` over a TOML file's
    ``[worker]`` table. ``node.heartbeat`` and ``node.ttl`` come from the server at every heartbeat."""

    #: The server's URL.
    server: str = "http://127.0.0.1:8001"
    #: The client group this node's slots join.
    group: str = "default"
    #: The node's name (default: the host name).
    name: str = Field(default_factory=socket.gethostname)
    #: Commands this node runs; ``*`` means any.
    apps: list[str] = Field(default_factory=lambda: ["*"])
    #: Directory for work, caches and logs.
    workpath: Path = Path("./perdure-work")
    #: Workunits run at once (one registered client each).
    slots: int = Field(default=1, ge=1, le=1024)
    #: Clientgroup token (``Authorization: CG_TOKEN``); from the environment or the TOML file only,
    #: never the command line (where ``ps`` shows it).
    token: str = ""
    #: A file of mode 0600 holding the token (``--token-file``).
    token_file: str = ""
    #: Directories ``file://`` inputs may be read from; none by default (file inputs are refused).
    allow_file_root: list[str] = Field(default_factory=list)
    #: A CA bundle to trust for an HTTPS server with a private certificate.
    ca_file: str = ""
    #: Heartbeat interval until the server sends ``node.heartbeat``; set it to override the server's.
    heartbeat_s: Duration = Field(default=10.0, gt=0, le=HOUR)
    #: How long a checkout waits at the server for work to appear.
    checkout_wait_s: Duration = Field(default=20.0, ge=0, le=HOUR)
    #: Work directories of failed workunits are kept this long for inspection.
    keep_failed_s: Duration = Field(default=1800.0, ge=0, le=365 * DAY)
    #: Cloud instance metadata (AWS IMDSv2): ``auto`` polls 169.254.169.254 only on a node detected as
    #: EC2 without a network call (DMI, /sys/hypervisor); a URL polls that; empty or ``off`` never.
    imds_endpoint: str = "auto"
    #: Extra log files to advertise to the server.
    log_files: list[str] = Field(default_factory=list)
    #: How often advertised log files are shipped to the server.
    log_ship_s: Duration = Field(default=30.0, gt=0, le=DAY)
    #: Time to hand running work over on an interruption notice (SIGTERM, drain; a spot notice's own
    #: time is used when sooner). Give Kubernetes or systemd at least this long to stop the worker.
    handover_deadline_s: Duration = Field(default=120.0, gt=0, le=HOUR)
    #: How often instance metadata is polled for a spot interruption notice (AWS recommends 5 s).
    imds_poll_s: Duration = Field(default=5.0, gt=0, le=HOUR)
    #: auto (criu where `criu check` passes, else workdir), criu or workdir.
    checkpoint_engine: Literal["auto", "criu", "workdir"] = "auto"
    #: The criu binary.
    criu_path: str = "criu"
    #: Where this node mounts the shared checkpoint store, if not at ``ckpt.ckptImagePath``.
    checkpoint_path: str = ""
    #: Threads hashing and writing checkpoint chunks.
    checkpoint_threads: int = Field(default=4, ge=1, le=64)
    #: Tries at fetching an input or predata from another host before the workunit fails.
    transfer_tries: int = Field(default=5, ge=1, le=1000)
    #: Time allowed for all the tries at one such fetch.
    transfer_timeout_s: Duration = Field(default=300.0, gt=0, le=DAY)
    #: Task containers (``cmd.Dockerimage``): auto (where podman can run them) or off.
    containers: Literal["auto", "off"] = "auto"
    #: ``podman run --network`` for task containers (``none``, ``host``...); empty: podman's default.
    container_network: str = ""

    @field_validator("server")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, not {value!r}")
        return value

    @field_validator("apps")
    @classmethod
    def _some_apps(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("apps must name at least one command, or '*'")
        return value

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> WorkerConfig:
        """Defaults < the TOML file (a ``[worker]`` table, or top-level keys) < ``PERDURE_WORKER_<NAME>``
        < flags (``None`` flags are unset). Raises ValueError naming the setting."""
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                document = tomllib.loads(config_file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read worker config {config_file}: {exc}") from None
            section = document.get("worker", document)
            unknown = set(section) - set(cls.model_fields)
            if unknown:
                raise ValueError(f"unknown worker setting(s) in {config_file}: {', '.join(sorted(unknown))}")
            values.update(section)
        for name in cls.model_fields:
            raw = os.environ.get(f"PERDURE_WORKER_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        try:
            coerced = {k: coerce(cls.model_fields[k], v) for k, v in values.items() if k in cls.model_fields}
            return cls(**coerced, **{k: v for k, v in values.items() if k not in cls.model_fields})
        except ValidationError as exc:
            messages = validation_messages(exc, cls, prefix="worker setting ")
            raise ValueError("; ".join(messages.values())) from None
        except ValueError as exc:
            raise ValueError(f"worker setting {exc}") from None

    def validate(self) -> None:  # type: ignore[override]
        """Check again (every bound is already checked when the settings are made)."""
        try:
            type(self).model_validate(self.model_dump())
        except ValidationError as exc:
            messages = validation_messages(exc, type(self), prefix="worker setting ")
            raise ValueError("; ".join(messages.values())) from None
