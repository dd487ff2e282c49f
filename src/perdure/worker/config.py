"""Worker settings: CLI flags over environment variables (``PERDURE_WORKER_<NAME>``) over a TOML file."""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class WorkerConfig:
    server: str = "http://127.0.0.1:8001"
    group: str = "default"
    name: str = field(default_factory=socket.gethostname)
    #: Commands this node runs; ``*`` means any.
    apps: list[str] = field(default_factory=lambda: ["*"])
    workpath: Path = Path("./perdure-work")
    slots: int = 1
    #: Clientgroup token (``Authorization: CG_TOKEN``).
    token: str = ""
    #: A CA bundle to trust for an HTTPS server with a private certificate.
    ca_file: str = ""
    heartbeat_s: float = 10.0
    #: How long a checkout waits at the server for work to appear.
    checkout_wait_s: float = 20.0
    #: Work directories of failed workunits are kept this long for inspection.
    keep_failed_s: float = 1800.0
    #: Cloud instance metadata (AWS IMDSv2); empty to skip.
    imds_endpoint: str = "http://169.254.169.254"
    #: Extra log files to advertise to the server.
    log_files: list[str] = field(default_factory=list)
    #: How often advertised log files are shipped to the server.
    log_ship_s: float = 30.0

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> WorkerConfig:
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                document = tomllib.loads(config_file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read worker config {config_file}: {exc}") from None
            section = document.get("worker", document)
            known = {f.name for f in fields(cls)}
            unknown = set(section) - known
            if unknown:
                raise ValueError(f"unknown worker setting(s) in {config_file}: {', '.join(sorted(unknown))}")
            values.update(section)
        for f in fields(cls):
            raw = os.environ.get(f"PERDURE_WORKER_{f.name.upper()}")
            if raw is not None:
                values[f.name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def validate(self) -> None:
        if not self.server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, not {self.server!r}")
        if self.slots < 1:
            raise ValueError("slots must be at least 1")
        if not self.apps:
            raise ValueError("apps must name at least one command, or '*'")
        for name in ("heartbeat_s", "log_ship_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        for name in ("checkout_wait_s", "keep_failed_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(WorkerConfig)}[name]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value)
        if kind.startswith("list") and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    except (TypeError, ValueError):
        raise ValueError(f"worker setting {name}={value!r} is not a valid {kind}") from None
    return value
