"""Job and client ids by a unique prefix, as git takes commits: ``perdure job show 3f2a``.

The CLI resolves a prefix through the SDK's listings (a whole job id is used as it is); an ambiguous
prefix names up to 5 candidates and a prefix that matches nothing says so, each in one ``error:`` line
with exit code 2. On SQLite and PostgreSQL (``db_url``), with the CLI in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from perdure.cli import common
from tests.integration.clientloop import Worker, envelope
from tests.integration.test_cli_jobs import Perdure, ok, one_error_line
from tests.integration.test_dispatch import StartServer, start_server, workers
from tests.jobs import script, task, upload

__all__ = ["start_server", "workers"]  # fixtures
pytestmark = pytest.mark.timeout(300)


def _data(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return envelope(response)["data"]


def _shortest_unique_prefix(target: str, ids: list[str]) -> str:
    others = [i for i in ids if i != target]
    for n in range(1, len(target) + 1):
        if not any(i.startswith(target[:n]) for i in others):
            return target[:n]
    raise AssertionError(f"{target} is a prefix of another id")


def test_job_commands_take_a_unique_prefix_of_the_id(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server()
    perdure = Perdure(server.url, tmp_path / "home")
    # Small pages, so that resolving a prefix reads the listing over several requests.
    monkeypatch.setattr(common, "PREFIX_PAGE", 4)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # No worker: the jobs stay queued. 17 ids: at least two share their first character.
        job_ids = [
            _data(http.post("/job", files=upload(script(task("0"), name=f"prefix-{n}"))))["id"]
            for n in range(17)
        ]

        def state(job_id: str) -> str:
            return str(_data(http.get(f"/job/{job_id}"))["state"])

        target = job_ids[0]
        prefix = _shortest_unique_prefix(target, job_ids)
        assert json.loads(ok(perdure("job", "show", prefix, "--json")))["id"] == target
        assert ok(perdure("job", "events", prefix))
        assert perdure("job", "outputs", prefix).err.strip() == f"job {target} has no outputs yet"
        download = perdure("job", "download", prefix, "--dest", str(tmp_path))
        assert (download.code, download.err.strip()) == (0, f"job {target} has no outputs yet")
        missing_log = one_error_line(perdure("job", "logs", prefix, "0"))
        assert missing_log == f"error: no stdout recorded for task 0 of job {target} yet"
        ok(perdure("job", "suspend", prefix))
        assert state(target) == "suspend"
        ok(perdure("job", "recompute", prefix, "0"))
        assert state(target) == "queued"
        ok(perdure("job", "suspend", prefix))
        ok(perdure("job", "resume", prefix))
        assert state(target) == "queued"
        ok(perdure("job", "delete", prefix))
        assert state(target) == "deleted"

        # Ambiguous: one line naming the candidates (at most 5), exit code 2; nothing is changed.
        first_chars = [i[0] for i in job_ids]
        shared = next(c for c in first_chars if first_chars.count(c) > 1)
        candidates = sorted(i for i in job_ids if i.startswith(shared))
        shown = ", ".join(candidates[:5]) + (
            f" and {len(candidates) - 5} more" if len(candidates) > 5 else ""
        )
        for command in (("show",), ("suspend",), ("delete",), ("recompute",), ("logs",)):
            args = ("job", *command, shared, *(["0"] if command[0] in ("recompute", "logs") else []))
            assert (
                one_error_line(perdure(*args), 2) == f"error: job id prefix {shared!r} is ambiguous: {shown}"
            )
        assert all(state(i) == "queued" for i in candidates if i != target)

        # No match: one line, exit code 2.
        assert one_error_line(perdure("job", "show", "zz"), 2) == (
            "error: no job id starts with 'zz' (see: perdure jobs)"
        )
        assert one_error_line(perdure("job", "suspend", "zz"), 2).startswith("error: no job id starts with")
        # A whole id is used as it is: an unknown one is the server's 404 (exit 1), not "no match".
        unknown = "00000000-0000-0000-0000-000000000000"
        assert one_error_line(perdure("job", "show", unknown)) == f"error: no job {unknown} on this server"


def test_client_commands_take_a_unique_prefix_of_the_id(
    start_server: StartServer, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    server = start_server()
    perdure = Perdure(server.url, tmp_path / "home")
    for client_id in ("cli-pfx-a1", "cli-pfx-a2", "cli-pfx-bravo"):
        workers(server.url, client_id)
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def suspended(client_id: str) -> bool:
            return bool(_data(http.get(f"/client/{client_id}"))["suspended"])

        ok(perdure("client", "suspend", "cli-pfx-b"))
        assert suspended("cli-pfx-bravo")
        ok(perdure("client", "resume", "cli-pfx-br"))
        assert not suspended("cli-pfx-bravo")
        # A whole id that is also a prefix of nothing else is itself.
        ok(perdure("client", "suspend", "cli-pfx-a1"))
        assert suspended("cli-pfx-a1") and not suspended("cli-pfx-a2")

        assert one_error_line(perdure("client", "resume", "cli-pfx-a"), 2) == (
            "error: client id prefix 'cli-pfx-a' is ambiguous: cli-pfx-a1, cli-pfx-a2"
        )
        assert suspended("cli-pfx-a1")
        assert one_error_line(perdure("client", "suspend", "nope"), 2) == (
            "error: no client id starts with 'nope' (see: perdure clients)"
        )
