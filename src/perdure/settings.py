"""Server settings: what the server needs to start and what the job rules read.

A view of the configuration model (``perdure.config``) for this process: the defaults are the
model's, and the live values follow the effective configuration (``apply_config``). Each can be set
with an environment variable ``PERDURE_<NAME>`` (upper case), parsed and bounded by the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from perdure.config.keys import apply_kv, env_overrides, get_key
from perdure.config.model import DEFAULTS
from perdure.config.values import ConfigError
from perdure.store.database import sqlite_url


@dataclass
class Settings:
    data_dir: Path = Path("./perdure-data")
    #: SQLAlchemy URL; empty means SQLite in the data directory.
    db_url: str = ""
    #: Largest job script ``POST /job`` accepts.
    max_upload_bytes: int = DEFAULTS.perdure.maxUploadBytes
    #: Largest single output file a worker may upload to the data store.
    max_output_bytes: int = DEFAULTS.perdure.maxOutputBytes
    #: A workunit failing this many times suspends its job (``info.noretry`` makes it 1).
    max_work_failure: int = DEFAULTS.perdure.maxWorkFailure
    #: A client failing this many workunits in a row is suspended.
    max_client_failure: int = DEFAULTS.perdure.maxClientFailure
    #: Expiration given to completed jobs that have none, e.g. ``30D``; empty means never.
    global_expire: str = DEFAULTS.perdure.globalExpire
    #: Per-pipeline expiration, ``{"pipeline": "12H"}``; wins over ``global_expire``.
    pipeline_expire: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS.perdure.pipelineExpire))
    #: How often the background sweep runs (start_at, expirations, lost clients).
    sweep_interval_s: float = DEFAULTS.perdure.sweepInterval
    #: Clients are told to heartbeat this often.
    node_heartbeat_s: float = DEFAULTS.node.heartbeat
    #: A client silent this long is offline and its work goes back to the queue.
    node_ttl_s: float = DEFAULTS.node.ttl
    #: Refuse worker calls without a valid clientgroup token.
    client_auth_required: bool = DEFAULTS.perdure.clientAuthRequired
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


def process_overrides(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """What this process puts over the shared configuration, lowest first: the environment
    (``PERDURE_<NAME>`` settings, then ``PERDURE_CFG_<key>``), then the command line (``--set``)."""
    return {**config_overrides(settings), **env_overrides(environ), **settings.config_overrides}


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
    """``PERDURE_<NAME>`` as the setting takes it: the model's coercer and bounds for the settings
    that mirror configuration keys (so ``PERDURE_NODE_TTL_S=5m`` works and an out-of-range value is
    refused at start); a path or a plain string otherwise."""
    key = CONFIG_KEYS.get(name)
    if key is None:
        return Path(raw) if str(kind) == "Path" else raw
    try:
        return get_key(apply_kv(DEFAULTS, {key: raw}, allow_read_only=True), key)
    except ConfigError as exc:
        reason = next(iter(exc.fields.values()), str(exc))
        raise ValueError(f"PERDURE_{name.upper()}={raw!r} is not valid for {key}: {reason}") from None
