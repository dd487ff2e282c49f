"""A cluster for end-to-end tests: real ``perdure server`` and ``perdure worker`` processes on loopback,
the API as a test sees it, and waits with deadlines. Used through the ``cluster`` and
``sqlite_cluster`` fixtures (``conftest.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script, upload
from tests.support import ServerProcess, wait_for

HEARTBEAT_S = 0.5
SERVER_ENV = {"PERDURE_NODE_TTL_S": "2", "PERDURE_SWEEP_INTERVAL_S": "0.3"}
TERMINAL = frozenset({"completed", "suspend", "failed-permanent", "deleted"})


# ---- helpers --------------------------------------------------------------------------------------


def sh(taskid: str, command: str, **extra: Any) -> dict[str, Any]:
    """A task running ``sh -c <command>``."""
    return {"taskid": taskid, "cmd": {"name": "sh", "args_array": ["-c", command]}, **extra}


def squares_job(count: int, **info: Any) -> dict[str, Any]:
    """A split DAG: ``generate`` writes 1..count, ``square`` squares it in 4 workunits (a ranged read of
    the file each), ``sum`` adds the squares up into ``total.txt``."""
    return script(
        sh(
            "generate", f"seq 1 {count} > numbers.txt", outputs=[{"filename": "numbers.txt", "nonzero": True}]
        ),
        sh(
            "square",
            "awk '{ print $1 * $1 }' numbers.txt > squares.txt",
            inputs=[{"filename": "numbers.txt", "origin": "generate"}],
            outputs=[{"filename": "squares.txt", "nonzero": True}],
            partinfo={"input": "numbers.txt", "index": "line"},
            totalwork=4,
            dependsOn=["generate"],
        ),
        sh(
            "sum",
            "awk '{ s += $1 } END { printf \"%d\\n\", s }' squares.txt > total.txt",
            inputs=[{"filename": "squares.txt", "origin": "square"}],
            outputs=[{"filename": "total.txt"}],
            dependsOn=["square"],
        ),
        **info,
    )


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in this process group."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def server_time(text: str) -> float:
    """Seconds since the epoch of one of the server's RFC 3339 times."""
    return datetime.fromisoformat(text).timestamp()


def read_pids(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split() if line.strip().isdigit()]


class Api:
    """The user's view of one server over HTTP."""

    def __init__(self, url: str, context: Callable[[], str]) -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)
        self.context = context

    def close(self) -> None:
        self.http.close()

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()["data"]

    def submit(self, document: dict[str, Any], datatoken: str | None = None) -> str:
        headers = {"Datatoken": datatoken} if datatoken else {}
        job_id: str = self.data("POST", "/job", files=upload(document), headers=headers)["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.data("GET", f"/job/{job_id}")
        return job

    def wait_job(self, job_id: str, state: str = "completed", timeout: float = 45.0) -> dict[str, Any]:
        """Wait for the job to reach a final state, and check it is ``state``."""
        job: dict[str, Any] = wait_for(
            lambda: (j := self.job(job_id))["state"] in TERMINAL and j,
            timeout,
            f"job {job_id} to finish",
            self.context,
        )
        assert job["state"] == state, f"job ended {job['state']}, error={job['error']}\n{self.context()}"
        return job

    def workunits(self, job_id: str) -> list[dict[str, Any]]:
        work: list[dict[str, Any]] = self.data("GET", "/work?limit=1000")
        return sorted((w for w in work if w["jobid"] == job_id), key=lambda w: (w["task_name"], w["rank"]))

    def workunit(self, wu_id: str) -> dict[str, Any]:
        work: dict[str, Any] = self.data("GET", f"/work/{wu_id}")
        return work

    def only_workunit(self, job_id: str) -> dict[str, Any]:
        work = self.workunits(job_id)
        assert len(work) == 1, work
        return work[0]

    def client_ids(self) -> set[str]:
        return {c["id"] for c in self.data("GET", "/client")}

    def download(self, job_id: str, taskid: str, filename: str, **params: int) -> httpx.Response:
        response = self.http.get(f"/job/{job_id}/output/{taskid}/{filename}", params=params)
        assert response.status_code == 200, response.text
        return response


class Cluster:
    """Servers, workers, API clients and stray commands of one test, all cleaned up at teardown."""

    def __init__(self, base: Path, db_url: str) -> None:
        self.base = base
        self.db_url = db_url
        self.servers: list[ServerProcess] = []
        self.workers: list[WorkerProcess] = []
        self.apis: list[Api] = []
        #: Files of process group ids (one per line) of commands that may outlive their worker.
        self.pidfiles: list[Path] = []

    def server(
        self,
        env: dict[str, str] | None = None,
        *,
        start: bool = True,
        data_dir: str = "server-data",
        db_url: str | None = None,
        port_of: ServerProcess | None = None,
    ) -> ServerProcess:
        """A server on this test's database (or ``db_url``); with ``port_of``, on that server's port."""
        process = ServerProcess(
            self.base / data_dir, db_url or self.db_url, env={**SERVER_ENV, **(env or {})}
        )
        if port_of is not None:
            process.port, process.url = port_of.port, port_of.url
            process.log_path = process.data_dir / f"server-{process.port}-{len(self.servers)}.log"
        self.servers.append(process)
        return process.start() if start else process

    def worker(
        self, url: str, label: str = "w1", slots: int = 1, env: dict[str, str] | None = None, **options: Any
    ) -> WorkerProcess:
        process = WorkerProcess(self.base / "workers", url, label=label, slots=slots, env=env, **options)
        self.workers.append(process)
        return process.start()

    def start(
        self,
        env: dict[str, str] | None = None,
        workers: tuple[tuple[str, int], ...] = (("w1", 1),),
        worker_env: dict[str, str] | None = None,
    ) -> tuple[ServerProcess, Api, list[WorkerProcess]]:
        """A server and (label, slots) workers; the workers start first and join once it is up, which
        overlaps their start-up with the server's."""
        server = self.server(env, start=False)
        started = [self.worker(server.url, label, slots, env=worker_env) for label, slots in workers]
        server.start()
        return server, self.api(server), started

    def api(self, server: ServerProcess) -> Api:
        api = Api(server.url, self.diagnostics)
        self.apis.append(api)
        return api

    def pidfile(self, name: str) -> Path:
        path = self.base / f"{name}.pids"
        self.pidfiles.append(path)
        return path

    def diagnostics(self) -> str:
        parts = [f"--- worker {w.label} (rc={w.returncode()}) ---\n{w.log()[-4000:]}" for w in self.workers]
        parts += [f"--- server {s.url} ---\n{s.log()[-4000:]}" for s in self.servers]
        return "\n".join(parts)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for path in self.pidfiles:
            for pgid in read_pids(path):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
        for api in self.apis:
            api.close()
        for server in self.servers:
            server.stop()
