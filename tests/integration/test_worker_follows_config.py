"""A real worker follows the server's ``node.heartbeat`` (and never beats less often than a third of
``node.ttl``): a workunit running longer than the TTL is not taken for lost, though the worker's own
default interval (10 s) is longer than the TTL (2 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script, upload
from tests.support import ServerProcess, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        "PERDURE_NODE_TTL_S": "2",
        "PERDURE_CFG_node__heartbeat": "0.5s",
        "PERDURE_SWEEP_INTERVAL_S": "0.3",
    }
    process = ServerProcess(tmp_path / "server", f"sqlite:///{tmp_path / 'p.db'}", env=env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.timeout(180)
def test_a_worker_beats_as_the_server_says_and_keeps_its_lease(tmp_path: Path, server: ServerProcess) -> None:
    worker = WorkerProcess(tmp_path / "workers", server.url)
    del worker.env["PERDURE_WORKER_HEARTBEAT_S"]  # the worker's own default: 10 s
    worker.start()
    try:
        task = {"taskid": "0", "cmd": {"name": "sh", "args_array": ["-c", "sleep 6"]}}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            reply = http.post("/job", files=upload(script(task)))
            assert reply.status_code == 200, reply.text
            job_id = reply.json()["data"]["id"]
            started = time.monotonic()

            def state() -> str:
                job = http.get(f"/job/{job_id}").json()["data"]
                return str(job["state"])

            wait_for(lambda: state() == "completed", 120, "the job to complete", worker.log)
        assert time.monotonic() - started >= 6 - 0.5  # it ran for three TTLs
        assert "following the server: heartbeat every 0.5s, ttl 2s" in worker.log()
        assert "re-queued" not in server.log(), server.log()  # its lease never lapsed
    finally:
        worker.stop()
