"""The server configuration's keys (``node.ttl``, ``ckpt.ckptInterval``, ...) and changes made by key:
configKV pairs over the API, ``--set`` flags and ``PERDURE_CFG_<key>`` variables, applied all or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from perdure.config.model import ServerConfig
from perdure.config.values import ConfigError, coerce, is_duration, leaf_fields, validation_messages

#: Every settable key of the server's configuration and its field.
FIELDS: dict[str, FieldInfo] = leaf_fields(ServerConfig)
#: Every settable key and its Python type.
KEY_TYPES: dict[str, Any] = {key: info.annotation for key, info in FIELDS.items()}
#: Keys that hold durations (seconds inside, Go strings outside).
DURATION_KEYS = frozenset(key for key, info in FIELDS.items() if is_duration(info))
#: Never shown: masked in every response.
SECRET_KEYS = frozenset({"security.cognito.accessKey", "security.cognito.secretKey", "security.metricsToken"})
#: Cannot be changed over the API.
READ_ONLY_KEYS = frozenset({"id", "perdure.databaseURL", "perdure.dataDir"})


def parse_value(key: str, text: str) -> Any:
    """A configKV string, parsed by the key's type (bounds are checked with the whole configuration)."""
    return coerce(FIELDS[key], text)


def get_key(config: ServerConfig, key: str) -> Any:
    """The value at a dotted key (``node.ttl``) of a configuration."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


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
        errors.update(validation_messages(exc, ServerConfig))
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
