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
    #: Time to hand running work over on an interruption notice (SIGTERM, drain; a spot notice's own
    #: time is used when sooner). Give Kubernetes or systemd at least this long to stop the worker.
    handover_deadline_s: float = 120.0
    #: How often instance metadata is polled for a spot interruption notice (AWS recommends 5 s).
    imds_poll_s: float = 5.0
    #: auto (criu where `criu check` passes, else workdir), criu or workdir.
    checkpoint_engine: str = "auto"
    criu_path: str = "criu"
    #: Where this node mounts the shared checkpoint store, if not at ``ckpt.ckptImagePath``.
    checkpoint_path: str = ""
    #: Threads hashing and writing checkpoint chunks.
    checkpoint_threads: int = 4
    #: Task containers (``cmd.Dockerimage``): auto (where podman can run them) or off.
    containers: str = "auto"
    #: ``podman run --network`` for task containers (``none``, ``host``...); empty: podman's default.
    container_network: str = ""

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
        if self.checkpoint_engine not in ("auto", "criu", "workdir"):
            raise ValueError("checkpoint_engine must be auto, criu or workdir")
        if self.containers not in ("auto", "off"):
            raise ValueError("containers must be auto or off")
        if not 1 <= self.checkpoint_threads <= 64:
            raise ValueError("checkpoint_threads must be between 1 and 64")
        for name in ("heartbeat_s", "log_ship_s", "handover_deadline_s", "imds_poll_s"):
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
