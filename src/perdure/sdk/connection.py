"""Which server, with which token: flags > environment > ``perdure login``'s file > ``config.toml``.

``PERDURE_SERVER``, ``PERDURE_TOKEN`` and ``PERDURE_CA_FILE`` name them in the environment.
``$XDG_CONFIG_HOME/perdure/login.json`` (``~/.config`` by default; ``PERDURE_LOGIN_FILE`` overrides the
path) is what ``perdure login`` writes, and ``$XDG_CONFIG_HOME/perdure/config.toml`` holds hand-written
defaults (``server = "..."``, ``token = "..."``, ``ca_file = "..."``, at the top level or under
``[client]``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8001"
KEYS = ("server", "token", "ca_file")


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "perdure"


def login_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("PERDURE_LOGIN_FILE") or config_dir(env) / "login.json")


def config_file(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "config.toml"


def _strings(data: object) -> dict[str, str]:
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in KEYS and isinstance(v, str)}


def saved_login(env: Mapping[str, str] | None = None) -> dict[str, str]:
    try:
        return _strings(json.loads(login_file(env).read_text()))
    except (OSError, ValueError):
        return {}


def file_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``config.toml`` (a ``[client]`` table or the top level); a broken file counts as absent."""
    try:
        data = tomllib.loads(config_file(env).read_text())
    except (OSError, ValueError):
        return {}
    return {**_strings(data), **_strings(data.get("client"))}


def save_login(server: str, token: str, ca_file: str, env: Mapping[str, str] | None = None) -> Path:
    """Write the login file readable by its owner only (it holds a token)."""
    path = login_file(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"server": server, "token": token, "ca_file": ca_file}, handle)
    return path


@dataclass(frozen=True)
class Connection:
    server: str
    token: str
    ca_file: str

    @classmethod
    def resolve(
        cls,
        server: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Connection:
        env = os.environ if env is None else env
        saved = {**file_settings(env), **saved_login(env)}
        return cls(
            server=(server or env.get("PERDURE_SERVER") or saved.get("server") or DEFAULT_SERVER).rstrip("/"),
            token=token or env.get("PERDURE_TOKEN") or saved.get("token") or "",
            ca_file=ca_file or env.get("PERDURE_CA_FILE") or saved.get("ca_file") or "",
        )


__all__ = ["DEFAULT_SERVER", "Connection", "config_file", "login_file", "save_login", "saved_login"]
