"""``perdure up``: a server and a local worker on this machine, and optionally a first workflow.

The quickest way to see Perdure work: everything runs on SQLite in one data directory, logs go to
``<data-dir>/logs``, and the processes stop together on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from perdure.sdk.client import Client
from perdure.sdk.errors import ApiError, PerdureError
from perdure.sdk.models import FINAL_JOB_STATES

console = Console()


class Stack:
    def __init__(self, data_dir: Path, host: str, port: int, slots: int) -> None:
        self.data_dir = data_dir.resolve()
        self.url = f"http://{host}:{port}"
        self.host, self.port, self.slots = host, port, slots
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        server = [sys.executable, "-m", "perdure", "server", "--host", self.host, "--port", str(self.port)]
        server += ["--data-dir", str(self.data_dir), "--log-level", "warning"]
        self._spawn(server, logs / "server.log")
        self._wait_ready()
        worker = [sys.executable, "-m", "perdure", "worker", "--server", self.url, "--slots", str(self.slots)]
        worker += ["--workpath", str(self.data_dir / "worker"), "--log-level", "warning"]
        self._spawn(worker, logs / "worker.log", env={"PERDURE_WORKER_IMDS_ENDPOINT": ""})

    def _spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        with log_path.open("ab") as log:
            self.processes.append(
                subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
                )
            )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"the server exited; see {self.data_dir / 'logs' / 'server.log'}")
            try:
                with Client(self.url, retries=0, timeout=1.0) as client:
                    client.info()
                return
            except PerdureError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)


def submit(client: Client, script: Path) -> dict[str, Any]:
    try:
        return client.submit(script).raw
    except ApiError as exc:
        raise RuntimeError(f"{script} was refused: {exc.message}") from None


def _progress(job: dict[str, Any], elapsed: float) -> Table:
    table = Table(
        title=f"{job['info']['name'] or job['id']}  [{job['state']}]  {elapsed:5.1f}s", expand=False
    )
    table.add_column("task")
    table.add_column("state")
    table.add_column("workunits", justify="right")
    for task in job["tasks"]:
        done = task["totalwork"] - task["remainwork"]
        table.add_row(task["task_name"], task["state"], f"{done}/{task['totalwork']}")
    return table


def follow(client: Client, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """Show the job's progress until it completes or stops; return its last document."""
    started = time.monotonic()
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            job = client.job(job_id).raw
            live.update(_progress(job, time.monotonic() - started))
            if job["state"] in FINAL_JOB_STATES:
                return job
            if time.monotonic() - started > timeout:
                return job
            time.sleep(0.25)


def show_outputs(client: Client, job: dict[str, Any], data_dir: Path) -> None:
    outputs = client.outputs(job["id"])
    table = Table(title="outputs", expand=False)
    table.add_column("task")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("download", overflow="fold")
    for entry in outputs:
        table.add_row(entry.task, entry.filename, str(entry.size), client.url + entry.url)
    console.print(table)
    last = outputs[-1] if outputs else None
    if last and last.size <= 200:
        text = client.read_output(job["id"], last.task, last.filename).decode(errors="replace").strip()
        console.print(f"[bold]{last.task}/{last.filename}[/bold]: {text}")
    console.print(f"stored under {data_dir / 'blobs' / 'jobs' / job['id']}")


def run(data_dir: Path, host: str, port: int, slots: int, example: Path | None, keep_running: bool) -> int:
    stack = Stack(data_dir, host, port, slots)
    code = 0

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the stack like Ctrl-C: no process is left behind

    signal.signal(signal.SIGTERM, interrupted)
    try:
        stack.start()
        console.print(f"Perdure server on [bold]{stack.url}[/bold], a worker with {slots} slot(s)")
        console.print(f"data and logs in {stack.data_dir}")
        console.print(f"dashboard: [bold]{stack.url}/ui/[/bold]   API docs: {stack.url}/docs")
        if example is not None:
            with Client(stack.url) as client:
                job = submit(client, example)
                console.print(f"submitted {example} as job {job['id']}")
                job = follow(client, job["id"])
                if job["state"] == "completed":
                    show_outputs(client, job, stack.data_dir)
                else:
                    code = 1
                    console.print(f"[red]job ended {job['state']}[/red]: {json.dumps(job.get('error'))}")
        if keep_running:
            console.print("running; Ctrl-C stops the server and the worker")
            while stack.alive():
                time.sleep(0.5)
            console.print("[red]a process exited; see the logs in[/red] " + str(stack.data_dir / "logs"))
            code = 1
    except KeyboardInterrupt:
        pass
    except (RuntimeError, PerdureError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        code = 1
    finally:
        stack.stop()
    return code
