"""The one configuration model: every setting once, with its type, default, bounds and a comment.

The server's sections are the management API's document (``GET /api/v1/config``) plus ``perdure``;
the worker's settings are the ``worker`` section (``WorkerConfig``), which each worker reads for itself.
Durations are ``perdure.duration.Duration`` (Go strings outside, seconds inside); booleans are ``Flag``
(``true/false``, ``1/0``, ``yes/no``, ``on/off``); lists and maps arrive as ``a,b`` and ``k:v,k2:v2``
strings from configKV, environment variables and flags. ``coerce`` is the only place that turns such
a string into a value; pydantic checks the value against the field's type and bounds.

Sources, lowest first: defaults; the file ``<data-dir>/config.json``; the copy in the database,
shared by every server on it (the file is the local copy of it: a file edited while the server was
down, and so newer than the database's copy, is taken into the database at start); environment
variables (``PERDURE_<NAME>`` settings, ``PERDURE_CFG_<key>``); command-line flags (``--set``). Changes
over the API go to the database and the file at once, and every server picks them up as a new
immutable, versioned snapshot (``configstore.Snapshot``).

A stored value out of range (written by an older version with looser bounds) does not stop a server:
``from_document(..., lenient=True)`` clamps it to the nearest bound, or falls back to the default
when it cannot be read at all, and logs a warning naming the key. Values arriving over the API, the
environment or the command line are refused instead (422 / errorCode 1003, or a one-line error).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from perdure.duration import Duration, format_duration, parse_duration, to_seconds
from perdure.poolconfig import PoolConfig
from perdure.s3config import StoreConfig

__all__ = [
    "MASK",
    "CkptConfig",
    "CognitoConfig",
    "ConfigError",
    "Duration",
    "Flag",
    "JobConfig",
    "NodeConfig",
    "PerdureConfig",
    "SecurityConfig",
    "ServerConfig",
    "ServerLogConfig",
    "WorkerConfig",
    "apply_kv",
    "coerce",
    "coerce_bool",
    "format_duration",
    "from_document",
    "parse_duration",
    "to_document",
]

log = logging.getLogger("perdure.config")

#: Shown instead of a secret in every response.
MASK = "****"

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MIB = 1024 * 1024
GIB = 1024 * MIB

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A key or value the configuration cannot take; ``fields`` maps each bad key to why."""

    def __init__(self, message: str, fields: Mapping[str, str]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


def coerce_bool(value: Any) -> bool:
    """The boolean words every setting accepts: true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected true or false, not {value!r}")


#: A boolean setting (``coerce_bool``'s words).
Flag = Annotated[bool, BeforeValidator(coerce_bool)]


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
            messages = _messages(exc, prefix="worker setting ", model=cls)
            raise ValueError("; ".join(messages.values())) from None
        except ValueError as exc:
            raise ValueError(f"worker setting {exc}") from None

    def validate(self) -> None:  # type: ignore[override]
        """Check again (every bound is already checked when the settings are made)."""
        try:
            type(self).model_validate(self.model_dump())
        except ValidationError as exc:
            messages = _messages(exc, prefix="worker setting ", model=type(self))
            raise ValueError("; ".join(messages.values())) from None


# ---- keys, values and documents ---------------------------------------------------------------------


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    leaves: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(_leaf_fields(annotation, key + "."))
        else:
            leaves[key] = info
    return leaves


def _is_duration(info: FieldInfo) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is to_seconds for m in info.metadata)


#: Every settable key of the server's configuration and its field.
FIELDS: dict[str, FieldInfo] = _leaf_fields(ServerConfig)
#: Every settable key and its Python type.
KEY_TYPES: dict[str, Any] = {key: info.annotation for key, info in FIELDS.items()}
#: Keys that hold durations (seconds inside, Go strings outside).
DURATION_KEYS = frozenset(key for key, info in FIELDS.items() if _is_duration(info))
#: Never shown: masked in every response.
SECRET_KEYS = frozenset({"security.cognito.accessKey", "security.cognito.secretKey", "security.metricsToken"})
#: Cannot be changed over the API.
READ_ONLY_KEYS = frozenset({"id", "perdure.databaseURL", "perdure.dataDir"})
#: The defaults, built once (``id`` aside, which each installation draws at its first start).
DEFAULTS = ServerConfig()


#: pydantic keeps a field's bounds in its metadata as ``annotated_types`` ``Ge``/``Gt``/``Le``/``Lt``.
_BOUND_WORDS = (("ge", "at least"), ("gt", "more than"), ("le", "at most"), ("lt", "less than"))


def _limits(info: FieldInfo) -> list[tuple[str, float]]:
    """``[("ge", 1.0), ("le", 604800.0)]``: a field's bounds, in the order they were declared."""
    found: list[tuple[str, float]] = []
    for item in info.metadata:
        for name, _ in _BOUND_WORDS:
            value = getattr(item, name, None)
            if isinstance(value, int | float):
                found.append((name, float(value)))
    return found


def bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    """A field's (lowest, highest) allowed value; None where unbounded."""
    limits = dict(_limits(info))
    low = limits.get("ge", limits.get("gt"))
    high = limits.get("le", limits.get("lt"))
    return low, high


def describe_bounds(info: FieldInfo) -> str:
    """``at least 1s and at most 168h0m0s``: a field's bounds in its own units."""
    words = dict(_BOUND_WORDS)
    return " and ".join(f"{words[name]} {_shown(info, value)}" for name, value in _limits(info))


def _shown(info: FieldInfo, value: float) -> str:
    if _is_duration(info):
        return format_duration(value)
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def coerce(info: FieldInfo, raw: Any) -> Any:
    """A string from configKV, the environment or a flag, as the field takes it: ``a,b`` for lists,
    ``k:v,k2:v2`` for maps, ``""`` as null for a list that may be null. Anything else (and any value
    that is not a string) goes to pydantic as it is, which checks types, words and bounds."""
    if not isinstance(raw, str):
        return raw
    annotation = info.annotation
    kinds = {get_origin(a) or a for a in (get_args(annotation) or (annotation,))} | {
        get_origin(annotation) or annotation
    }
    if dict in kinds:
        pairs: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"{item!r} is not key:value")
            pairs[name.strip()] = value.strip()
        return pairs
    if list in kinds and _list_of_models(annotation):
        try:
            value = json.loads(raw or "[]")
        except ValueError as exc:
            raise ValueError(f"expected a JSON array of objects: {exc}") from None
        if not isinstance(value, list):
            raise ValueError("expected a JSON array of objects")
        return value
    if list in kinds:
        items = [p.strip() for p in raw.split(",") if p.strip()]
        return items if items or type(None) not in kinds else None
    if annotation is int:
        return raw.strip()
    return raw


def _list_of_models(annotation: Any) -> bool:
    """``list[SomeModel]`` (``pool.pools``): set as a JSON array, since a comma list cannot say it."""
    return any(isinstance(a, type) and issubclass(a, BaseModel) for a in get_args(annotation))


def parse_value(key: str, text: str) -> Any:
    """A configKV string, parsed by the key's type (bounds are checked with the whole configuration)."""
    return coerce(FIELDS[key], text)


_BOUND_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _messages(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] = ServerConfig
) -> dict[str, str]:
    """``{key: why}`` for each error, with bounds said in the key's own units."""
    out: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        key = ".".join(str(p) for p in error["loc"])
        info = _leaf_fields(model).get(key)
        message = error["msg"].removeprefix("Value error, ")
        beyond_go = info is not None and _is_duration(info) and "out of range" in message
        if info is not None and (error["type"] in _BOUND_ERRORS or beyond_go):
            given = error["input"]
            if _is_duration(info) and isinstance(given, int | float):
                given = format_duration(given)
            message = f"{given!r} is out of range: must be {describe_bounds(info)}"
        out[key] = f"{prefix}{key}: {message}" if prefix else message
    return out


def get_key(config: ServerConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def to_document(config: ServerConfig, *, mask: bool = True) -> dict[str, Any]:
    """The configuration in the API's JSON shape: durations as Go strings, secrets masked."""
    document = config.model_dump(mode="json")
    if mask:
        for key in SECRET_KEYS:
            node = document
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            if node.get(last):
                node[last] = MASK
        url = document["perdure"]["databaseURL"]
        document["perdure"]["databaseURL"] = re.sub(r"://([^:/@]+):[^@]*@", rf"://\1:{MASK}@", url)
    return document


def from_document(document: Mapping[str, Any], *, lenient: bool = False) -> ServerConfig:
    """Read a stored document (durations as Go strings or seconds). ``lenient``: a value out of range
    is clamped to its bound and one that cannot be read falls back to its default, each with a
    warning, so a value an older version accepted cannot stop a server."""
    data: dict[str, Any] = json.loads(json.dumps(document))
    for _ in range(len(FIELDS) + 1):
        try:
            return ServerConfig.model_validate(data)
        except ValidationError as exc:
            if not lenient:
                raise
            for error in exc.errors(include_url=False):
                _repair(data, error)
    return ServerConfig.model_validate(data)


def _repair(data: dict[str, Any], error: Any) -> None:
    path = [str(p) for p in error["loc"]]
    key = ".".join(path)
    if _drop_list_entry(data, path, error):
        return
    node: Any = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    last = path[-1] if path else ""
    info = FIELDS.get(key)
    if info is None:  # an unknown key (extra="forbid"), or a whole section that is not an object
        log.warning("stored configuration: dropping %s (%s)", key or "?", error["msg"])
        if isinstance(node, dict):
            node.pop(last, None)
        return
    low, high = bounds(info)
    kind = error["type"]
    if kind == "greater_than_equal" and low is not None:
        replacement: Any = low
    elif kind == "less_than_equal" and high is not None:
        replacement = high
    else:
        replacement = get_key(DEFAULTS, key)
    if info.annotation is int and isinstance(replacement, float):
        replacement = int(replacement)
    shown = format_duration(replacement) if _is_duration(info) else replacement
    log.warning(
        "stored configuration: %s=%r is not allowed (%s); using %r instead",
        key,
        node.get(last),
        error["msg"],
        shown,
    )
    node[last] = replacement


def _drop_list_entry(data: dict[str, Any], path: list[str], error: Any) -> bool:
    """A bad entry of a list of models (a pool) is dropped whole, with a warning: half an entry
    would be a different pool than the one written."""
    node: Any = data
    for n, part in enumerate(path):
        if isinstance(node, list):
            if part.isdigit() and int(part) < len(node):
                entry = node.pop(int(part))
                where = ".".join(path[:n])
                log.warning("stored configuration: dropping %s entry %r (%s)", where, entry, error["msg"])
                return True
            return False
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return False


def apply_kv(config: ServerConfig, kv: Mapping[str, Any], *, allow_read_only: bool = False) -> ServerConfig:
    """A new configuration with every change applied, or ``ConfigError`` naming every bad key."""
    errors: dict[str, str] = {}
    data = config.model_dump()
    if not isinstance(kv, Mapping) or not kv:
        raise ConfigError(
            "kvMap must be a non-empty object of key: string value", {"kvMap": "empty or not an object"}
        )
    for key, raw in kv.items():
        if key not in FIELDS:
            errors[key] = "unknown configuration key"
            continue
        if key in READ_ONLY_KEYS and not allow_read_only:
            errors[key] = "read-only: cannot be changed"
            continue
        if not isinstance(raw, str):
            errors[key] = "value must be given as a string"
            continue
        try:
            value = parse_value(key, raw)
        except ValueError as exc:
            errors[key] = str(exc)
            continue
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    try:
        updated = ServerConfig.model_validate(data)
    except ValidationError as exc:
        errors.update(_messages(exc))
    if errors:
        raise ConfigError("Invalid argument", errors)
    return updated


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``PERDURE_CFG_<key path with __ for .>`` (e.g. ``PERDURE_CFG_node__ttl=2m``) as configKV pairs."""
    pairs: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith("PERDURE_CFG_"):
            pairs[name[len("PERDURE_CFG_") :].replace("__", ".")] = value
    return pairs


def read_file(path: Path, *, lenient: bool = True) -> ServerConfig | None:
    if not path.exists():
        return None
    try:
        return from_document(json.loads(path.read_text()), lenient=lenient)
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", {"file": str(path)}) from None


def write_file(path: Path, config: ServerConfig) -> None:
    """Atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(to_document(config, mask=False), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)  # it holds secrets
    os.replace(tmp, path)
