"""What an AWE worker reads about clients (issue 19, the smaller points): the client list shows the
server's ``skip_work`` (not the one in the profile the worker registered with), and ``discard`` is
built from the work the worker reports, not repeated at every heartbeat."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.clientloop import Worker, envelope
from tests.jobs import script, task, upload
from tests.support import ServerProcess

_OPEN: list[Worker] = []


@pytest.fixture(autouse=True)
def _close_workers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def worker(server: ServerProcess) -> Worker:
    made = Worker(server.url)
    _OPEN.append(made)
    return made


def submit(server: ServerProcess, document: dict[str, object]) -> str:
    reply = httpx.post(server.url + "/job", files=upload(document), timeout=30)
    assert reply.status_code == 200, reply.text
    return str(envelope(reply)["data"]["id"])


def listed(server: ServerProcess, client_id: str) -> dict[str, object]:
    clients = envelope(httpx.get(server.url + "/client", timeout=30))["data"]
    return next(c for c in clients if c["id"] == client_id)


def test_the_client_list_shows_the_servers_skip_work_not_the_profiles(server: ServerProcess) -> None:
    failing = worker(server)
    assert failing.register(skip_work=["stale-from-the-profile"]).status_code == 200
    assert listed(server, failing.id)["skip_work"] == []
    submit(server, script(task("0")))
    wu_id = failing.checkout_id()
    assert envelope(failing.report(wu_id, "fail"))["data"] == "ok"
    assert listed(server, failing.id)["skip_work"] == [wu_id]
    assert failing.info()["skip_work"] == [wu_id]  # the single-client route agrees


def test_discard_follows_the_work_the_worker_reports(server: ServerProcess) -> None:
    holder = worker(server)
    assert holder.register().status_code == 200
    job_id = submit(server, script(task("0")))
    wu_id = holder.checkout_id()
    suspended = httpx.put(f"{server.url}/job/{job_id}", params={"suspend": ""}, timeout=30)
    assert suspended.status_code == 200, suspended.text

    assert holder.instructions([wu_id])["discard"] == wu_id
    # The worker dropped it: it reports no work, and is told nothing more, heartbeat after heartbeat.
    for _ in range(3):
        assert "discard" not in holder.instructions([])
    # AWE's old GET heartbeat reports no work at all: it still learns what it must drop.
    legacy = envelope(httpx.get(f"{server.url}/client/{holder.id}", params={"heartbeat": ""}, timeout=30))
    assert legacy["data"]["discard"] == wu_id
