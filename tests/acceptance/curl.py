"""Running the API documents' curl commands, literally, against a real server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import ServerProcess

PLACEHOLDER = re.compile(r"<[A-Za-z _|-]+>")


@dataclass
class Reply:
    command: str
    status: int
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"Reply({self.command!r} -> {self.status}: {self.text[:1500]})"


@dataclass
class Curl:
    """Runs a document's curl commands against one server; keeps every reply for later checks.

    ``bases`` maps how the document writes the server (``<awe_api_url>``, ``https://<ip>:<port>``) to
    what replaces it for this server.
    """

    server: ServerProcess
    cwd: Path
    bases: Mapping[str, str]
    replies: list[Reply] = field(default_factory=list)

    def __call__(self, command: str, **values: str) -> Reply:
        filled = command.replace("\\ ", " ")  # the document's line continuations, flattened
        for written, actual in self.bases.items():
            filled = filled.replace(written, actual)
        for name, value in values.items():
            filled = filled.replace(f"<{name}>", value)
        assert not PLACEHOLDER.search(filled), f"unfilled placeholder in {filled!r}"
        argv = shlex.split(filled)
        assert argv[0] == "curl", filled
        proc = subprocess.run(
            ["curl", "-s", "-w", r"\n%{http_code}", *argv[1:]],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"{filled}: curl exited {proc.returncode}: {proc.stderr}"
        text, _, code = proc.stdout.rpartition("\n")
        reply = Reply(filled, int(code), text)
        self.replies.append(reply)
        return reply
