"""The server configuration as a document: shown over the API (secrets masked), stored in the database
and the data directory's file, and read back, clamping what an older version stored out of today's
bounds rather than refusing to start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perdure.config.keys import FIELDS, SECRET_KEYS, get_key
from perdure.config.model import DEFAULTS, ServerConfig
from perdure.config.values import ConfigError, bounds, is_duration
from perdure.duration import format_duration

log = logging.getLogger("perdure.config")

#: Shown instead of a secret in every response.
MASK = "****"


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
    shown = format_duration(replacement) if is_duration(info) else replacement
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
