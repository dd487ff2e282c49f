"""``perdure clients|client|nodes|node logs`` against a real server and a real worker: tables inside 80
columns, ``--json`` equal to the API's documents, changes visible through the API, one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_cli_jobs import Perdure, fits, ok, one_error_line
from tests.integration.test_sdk import Stack, stack

__all__ = ["stack"]  # the module's server and worker (a fixture)
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def perdure(stack: Stack, tmp_path: Path) -> Perdure:
    return Perdure(stack.server.url, tmp_path / "home")


def api_get(stack: Stack, path: str) -> object:
    body = httpx.get(stack.server.url + path, timeout=60).json()
    return body["data"] if path.startswith("/client") else body


CLOCKS = ("time", "heartbeat")


def steady(clients: Any) -> list[dict[str, Any]]:
    """Client or node documents without their clocks (heartbeat, serve and idle times), sorted by id."""
    return sorted(
        ({k: v for k, v in c.items() if not any(clock in k.lower() for clock in CLOCKS)} for c in clients),
        key=lambda c: str(c.get("id")),
    )


def test_clients_table_and_json(stack: Stack, perdure: Perdure) -> None:
    run = perdure("clients")
    lines = fits(ok(run))
    assert lines[0].split() == ["id", "group", "status", "host", "work", "done", "failed"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(stack.worker.client_ids())
    assert all(row[1] == "default" and row[2] in ("online", "busy") for row in rows.values())
    assert run.err.strip() == "2 client(s)"
    # The same documents as the API's, but for what a heartbeat between the two reads moves.
    assert steady(json.loads(ok(perdure("clients", "--json")))) == steady(api_get(stack, "/client"))
    assert json.loads(ok(perdure("clients", "--group", "nobody", "--json"))) == []


def test_client_suspend_and_resume(stack: Stack, perdure: Perdure) -> None:
    client_id = stack.worker.client_ids()[0]
    assert ok(perdure("client", "suspend", client_id)).strip()
    assert api_get(stack, f"/client/{client_id}")["suspended"] is True  # type: ignore[index]
    assert "suspended" in ok(perdure("clients"))
    assert "already suspended" in one_error_line(perdure("client", "suspend", client_id)).lower()
    ok(perdure("client", "resume", client_id))
    assert api_get(stack, f"/client/{client_id}")["suspended"] is False  # type: ignore[index]
    # An id that names no client is taken as a prefix that matches none: a command-line error (2).
    assert one_error_line(perdure("client", "resume", "no-such-client"), 2) == (
        "error: no client id starts with 'no-such-client' (see: perdure clients)"
    )
    assert "Missing argument" in one_error_line(perdure("client", "suspend"), 2)


def test_nodes_and_their_logs(stack: Stack, perdure: Perdure) -> None:
    node_id = stack.worker.node_id()
    lines = fits(ok(perdure("nodes")))
    assert lines[0].split() == ["id", "host", "cores", "memory", "instance", "checkpoint", "last", "seen"]
    assert lines[1].split()[0] == node_id
    # The engines the node can checkpoint with (workdir always), then why not the others, one line each.
    document = api_get(stack, "/api/v1/node")[0]  # type: ignore[index]
    engines = document["checkpointEngines"]
    assert "workdir" in lines[1].split()[6].split(",")  # the memory column is two words
    why_not = [f"{node_id}: no {name}: {s['reason']}" for name, s in engines.items() if not s["available"]]
    assert len(lines) == 2 + len(why_not), lines
    for line, expected in zip(lines[2:], why_not, strict=True):
        assert expected.startswith(line.rstrip().rstrip("…")), (line, expected)
    # The same documents as the API's, but for what a heartbeat between the two reads moves.
    assert steady(json.loads(ok(perdure("nodes", "--json")))) == steady(api_get(stack, "/api/v1/node"))

    log_file = str(stack.worker.workpath / "logs" / "worker.log")
    assert ok(perdure("node", "logs", node_id)).splitlines() == [log_file]
    assert json.loads(ok(perdure("node", "logs", node_id, "--json"))) == [log_file]
    deadline = time.monotonic() + 30
    while (run := perdure("node", "logs", node_id, log_file)).code != 0:
        assert time.monotonic() < deadline, run
        time.sleep(0.3)
    served = httpx.get(f"{stack.server.url}/nodes/{node_id}{log_file}", timeout=60).text
    assert run.out.strip() and served.startswith(run.out.rstrip("\n"))  # the log only grows meanwhile
    assert one_error_line(perdure("node", "logs", node_id, "/etc/passwd")) == (
        f"error: node {node_id} ships no file /etc/passwd"
    )
    assert (
        one_error_line(perdure("node", "logs", "no-such-node"))
        == "error: no node no-such-node on this server"
    )
