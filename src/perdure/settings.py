"""Server settings: what the server needs to start and what the job rules read.

Defaults are AWE's. Each can be set with an environment variable ``PERDURE_<NAME>`` (upper case);
the management plane adds a configuration file and live changes on top of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from perdure.store.database import sqlite_url

MIB = 1024 * 1024


@dataclass
class Settings:
    data_dir: Path = Path("./perdure-data")
    #: SQLAlchemy URL; empty means SQLite in the data directory.
    db_url: str = ""
    #: Largest job script ``POST /job`` accepts.
    max_upload_bytes: int = 16 * MIB
    #: Largest single output file a worker may upload to the data store.
    max_output_bytes: int = 64 * 1024 * MIB
    #: A workunit failing this many times suspends its job (``info.noretry`` makes it 1).
    max_work_failure: int = 3
    #: A client failing this many workunits in a row is suspended.
    max_client_failure: int = 5
    #: Expiration given to completed jobs that have none, e.g. ``30D``; empty means never.
    global_expire: str = ""
    #: Per-pipeline expiration, ``{"pipeline": "12H"}``; wins over ``global_expire``.
    pipeline_expire: dict[str, str] = field(default_factory=dict)
    #: How often the background sweep runs (start_at, expirations, lost clients).
    sweep_interval_s: float = 5.0
    #: Clients are told to heartbeat this often.
    node_heartbeat_s: float = 30.0
    #: A client silent this long is offline and its work goes back to the queue.
    node_ttl_s: float = 300.0
    #: Refuse worker calls without a valid clientgroup token.
    client_auth_required: bool = False
    #: Any configuration key, as configKV strings (``perdure server --set key=value``).
    config_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"PERDURE_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.data_dir = Path(settings.data_dir)
        return settings


#: Settings fields that mirror configuration keys: a field set away from its default (by environment,
#: CLI or code) overrides the key for this process; otherwise the configuration's value is used.
CONFIG_KEYS = {
    "node_ttl_s": "node.ttl",
    "node_heartbeat_s": "node.heartbeat",
    "max_work_failure": "perdure.maxWorkFailure",
    "max_client_failure": "perdure.maxClientFailure",
    "max_upload_bytes": "perdure.maxUploadBytes",
    "max_output_bytes": "perdure.maxOutputBytes",
    "client_auth_required": "perdure.clientAuthRequired",
    "global_expire": "perdure.globalExpire",
    "pipeline_expire": "perdure.pipelineExpire",
    "sweep_interval_s": "perdure.sweepInterval",
}


def config_overrides(settings: Settings) -> dict[str, str]:
    """The configuration keys this process overrides, as configKV strings."""
    defaults = Settings()
    pairs: dict[str, str] = {}
    for name, key in CONFIG_KEYS.items():
        value = getattr(settings, name)
        if value == getattr(defaults, name):
            continue
        if isinstance(value, bool):
            pairs[key] = "true" if value else "false"
        elif isinstance(value, dict):
            pairs[key] = ",".join(f"{k}:{v}" for k, v in value.items())
        else:
            pairs[key] = str(value)
    return {**pairs, **settings.config_overrides}


def apply_config(settings: Settings, config: Any) -> None:
    """Make the live settings follow the effective configuration."""
    settings.node_ttl_s = config.node.ttl
    settings.node_heartbeat_s = config.node.heartbeat
    settings.max_work_failure = config.perdure.maxWorkFailure
    settings.max_client_failure = config.perdure.maxClientFailure
    settings.max_upload_bytes = config.perdure.maxUploadBytes
    settings.max_output_bytes = config.perdure.maxOutputBytes
    settings.client_auth_required = config.perdure.clientAuthRequired
    settings.global_expire = config.perdure.globalExpire
    settings.pipeline_expire = dict(config.perdure.pipelineExpire)
    settings.sweep_interval_s = config.perdure.sweepInterval


def _coerce(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("dict"):
            return dict(pair.split(":", 1) for pair in raw.split(",") if pair)
        if kind == "Path":
            return Path(raw)
    except ValueError:
        raise ValueError(f"PERDURE_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
