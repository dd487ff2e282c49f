"""Job scripts for tests, built as dicts so each test says only what matters to it."""

from __future__ import annotations

import json
from typing import Any


def task(
    taskid: str, *, name: str = "true", depends: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"taskid": taskid, "cmd": {"name": name, "args": ""}, "dependsOn": depends or [], **extra}


def script(*tasks: dict[str, Any], **info: Any) -> dict[str, Any]:
    return {
        "info": {"pipeline": "test", "name": "job", "project": "p", "user": "u", **info},
        "tasks": list(tasks),
    }


def diamond() -> dict[str, Any]:
    """0 -> (1, 2) -> 3"""
    return script(
        task("0"), task("1", depends=["0"]), task("2", depends=["0"]), task("3", depends=["1", "2"])
    )


def upload(document: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """The multipart ``files=`` argument for POST /job."""
    body = document if isinstance(document, (str, bytes)) else json.dumps(document)
    return {"upload": ("job.json", body, "application/json")}
