"""How CLI commands reach a server: URL, token and CA from flags, environment or the login file."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

#: Written by ``perdure login``: {"server": ..., "token": ..., "ca_file": ...}, readable by its owner only.
LOGIN_FILE = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "perdure" / "login.json"
DEFAULT_SERVER = "http://127.0.0.1:8001"


class RemoteError(Exception):
    """The server refused, or could not be reached; the message is one line for the user."""


def login_file() -> Path:
    return Path(os.environ.get("PERDURE_LOGIN_FILE", str(LOGIN_FILE)))


def saved_login() -> dict[str, str]:
    path = login_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def save_login(server: str, token: str, ca_file: str) -> Path:
    path = login_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"server": server, "token": token, "ca_file": ca_file}, handle)
    return path


class Remote:
    def __init__(
        self, server: str | None = None, token: str | None = None, ca_file: str | None = None
    ) -> None:
        saved = saved_login()
        self.server = (
            server or os.environ.get("PERDURE_SERVER") or saved.get("server") or DEFAULT_SERVER
        ).rstrip("/")
        self.token = token or os.environ.get("PERDURE_TOKEN") or saved.get("token") or ""
        ca = ca_file or os.environ.get("PERDURE_CA_FILE") or saved.get("ca_file") or ""
        headers = {"Authorization": f"bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(
            base_url=self.server,
            headers=headers,
            verify=ssl.create_default_context(cafile=ca) if ca else True,
            timeout=30.0,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.server}: {exc}") from None
        if response.status_code >= 400:
            raise RemoteError(_error_text(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        if "message" in body:
            fields = body.get("fields")
            detail = "; ".join(f"{k}: {v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
            return f"{response.status_code}: {body['message']}" + (f" ({detail})" if detail else "")
        if body.get("error"):
            return f"{response.status_code}: {'; '.join(map(str, body['error']))}"
    return f"{response.status_code}: {response.text[:300]}"
