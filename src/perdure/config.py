"""The server's typed configuration, in the management API's shape (``GET /api/v1/config``).

Layers, lowest first: defaults; the file ``<data-dir>/config.json`` (created on first start); the
copy in the database, shared by every server on it (whichever of file and database changed last
wins at start); environment variables and CLI flags, which win for the one process that has them.
Changes over the API go to the database and the file at once, and every server picks them up.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perdure.s3config import StoreConfig

#: Shown instead of a secret in every response.
MASK = "****"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A key or value the configuration cannot take; ``fields`` maps each bad key to why."""

    def __init__(self, message: str, fields: Mapping[str, str]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``5m``, ``1h30m``, ``300ms``), plus a bare number of seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body or body == "0":
        if body == "0":
            return 0.0
        raise ValueError(f"invalid duration {text!r}")
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(body):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    return sign * total


def format_duration(seconds: float) -> str:
    """Go's ``Duration.String()``: ``1h0m0s``, ``5m0s``, ``30s``, ``1.5s``, ``300ms``, ``0s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _trim(nanos / size) + unit
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


class Duration(float):
    """Seconds, shown and parsed the Go way."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class LogConfig(_Section):
    #: Served at ``/<base>.log``, so it must be a ``.log`` file (never, say, config.json).
    file: str = Field(default="", pattern=r"^$|^[^\x00]*\.log$")
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    maxSizeMB: int = Field(default=10, ge=1, le=10_240)
    maxBackups: int = Field(default=10, ge=0, le=1000)


class CognitoConfig(_Section):
    enabled: bool = False
    region: str = ""
    userPoolID: str = ""
    identityPoolID: str = ""
    clientID: str = ""
    adminGroups: list[str] = Field(default_factory=lambda: ["admin"])
    #: Any OIDC provider: the token issuer and its JWKS URL (default: the Cognito pool's).
    issuer: str = ""
    jwksURL: str = ""
    accessKey: str = ""
    secretKey: str = ""


class SecurityConfig(_Section):
    certFile: str = ""
    keyFile: str = ""
    cognito: CognitoConfig = Field(default_factory=CognitoConfig)


class CkptConfig(_Section):
    ckptMode: Literal["iterative", "none"] = "iterative"
    ckptImagePath: str = ""
    ckptInterval: float = Field(default=3600.0, ge=1.0)
    ckptFiles: list[str] | None = None
    IRMapScanPaths: list[str] | None = None
    rootFSDiff: bool = True
    tcpClose: bool = True
    diagnosisMode: bool = False


class NodeConfig(_Section):
    heartbeat: float = Field(default=30.0, gt=0)
    ttl: float = Field(default=300.0, gt=0)


class JobConfig(_Section):
    ebsPerJob: bool = False
    customTags: dict[str, str] = Field(default_factory=dict)
    ebsMountPath: str = ""
    diskType: str = "gp3"
    diskSizeGB: int = Field(default=120, ge=1)
    diskThroughputMB: int = Field(default=125, ge=1)


class PerdureConfig(_Section):
    """Perdure's own settings, beside the management API's."""

    databaseURL: str = ""
    dataDir: str = ""
    maxWorkFailure: int = Field(default=3, ge=1)
    maxClientFailure: int = Field(default=5, ge=0)
    maxUploadBytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    maxOutputBytes: int = Field(default=64 * 1024**3, ge=1)
    clientAuthRequired: bool = False
    globalExpire: str = Field(default="", pattern=r"^(\d+[MHD])?$")
    pipelineExpire: dict[str, str] = Field(default_factory=dict)
    sweepInterval: float = Field(default=5.0, gt=0)


class Config(_Section):
    addr: str = "http://127.0.0.1:8001"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    staticFolder: str = ""
    log: LogConfig = Field(default_factory=LogConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    ckpt: CkptConfig = Field(default_factory=CkptConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    job: JobConfig = Field(default_factory=JobConfig)
    perdure: PerdureConfig = Field(default_factory=PerdureConfig)
    #: Where data and checkpoints live (``store.s3.*``: an S3 bucket; see ``s3config.py``).
    store: StoreConfig = Field(default_factory=StoreConfig)


#: Keys that hold durations (seconds inside, Go strings outside).
DURATION_KEYS = frozenset({"ckpt.ckptInterval", "node.heartbeat", "node.ttl", "perdure.sweepInterval"})
#: Never shown: masked in every response.
SECRET_KEYS = frozenset({"security.cognito.accessKey", "security.cognito.secretKey"})
#: Cannot be changed over the API.
READ_ONLY_KEYS = frozenset({"id", "perdure.databaseURL", "perdure.dataDir"})


def _leaf_types(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(_leaf_types(annotation, key + "."))
        else:
            leaves[key] = annotation
    return leaves


#: Every settable key and its Python type.
KEY_TYPES: dict[str, Any] = _leaf_types(Config)


def parse_value(key: str, text: str) -> Any:
    """A configKV string, parsed by the key's type."""
    if key in DURATION_KEYS:
        return parse_duration(text)
    kind = KEY_TYPES[key]
    kind_text = str(kind)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"{text!r} is not a boolean (true or false)")
        return lowered in ("true", "1", "yes", "on")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind is float:
        return float(text)
    if "dict" in kind_text:
        pairs: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = item.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"{item!r} is not key:value")
            pairs[name.strip()] = value.strip()
        return pairs
    if "list" in kind_text:
        items = [p.strip() for p in text.split(",") if p.strip()]
        return items if items or "None" not in kind_text else None
    return text


def get_key(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def to_document(config: Config, *, mask: bool = True) -> dict[str, Any]:
    """The configuration in the API's JSON shape: durations as Go strings, secrets masked."""
    document = config.model_dump()
    for key in DURATION_KEYS:
        section, name = key.split(".")
        document[section][name] = format_duration(document[section][name])
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


def from_document(document: Mapping[str, Any]) -> Config:
    """Read a stored document (durations as Go strings or seconds)."""
    data = json.loads(json.dumps(document))
    for key in DURATION_KEYS:
        section, name = key.split(".")
        value = data.get(section, {}).get(name)
        if isinstance(value, str):
            data[section][name] = parse_duration(value)
    return Config.model_validate(data)


def apply_kv(config: Config, kv: Mapping[str, Any], *, allow_read_only: bool = False) -> Config:
    """A new configuration with every change applied, or ``ConfigError`` naming every bad key."""
    errors: dict[str, str] = {}
    data = config.model_dump()
    if not isinstance(kv, Mapping) or not kv:
        raise ConfigError(
            "kvMap must be a non-empty object of key: string value", {"kvMap": "empty or not an object"}
        )
    for key, raw in kv.items():
        if key not in KEY_TYPES:
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
    if errors:
        raise ConfigError("Invalid argument", errors)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        fields = {".".join(str(p) for p in e["loc"]): e["msg"] for e in exc.errors(include_url=False)}
        raise ConfigError("Invalid argument", fields) from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``PERDURE_CFG_<key path with __ for .>`` (e.g. ``PERDURE_CFG_node__ttl=2m``) as configKV pairs."""
    pairs: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith("PERDURE_CFG_"):
            pairs[name[len("PERDURE_CFG_") :].replace("__", ".")] = value
    return pairs


def read_file(path: Path) -> Config | None:
    if not path.exists():
        return None
    try:
        return from_document(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", {"file": str(path)}) from None


def write_file(path: Path, config: Config) -> None:
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
