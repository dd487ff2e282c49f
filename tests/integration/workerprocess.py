"""A real ``perdure worker`` in a child process, for end-to-end tests.

Each worker gets its own workpath (``<base>/<label>``) and log file. The node id the worker persists in
``<workpath>/node-id`` gives its slots' client ids (``<node id>-<slot>``), so a test can tell which worker
ran what. ``stop()`` is SIGTERM (the worker deregisters and hands its work back), ``kill()`` is SIGKILL
(the crash case); both wait for the process to exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Worker settings for tests: no cloud metadata lookup, short heartbeats and long-polls.
TEST_ENV = {
    "PERDURE_WORKER_IMDS_ENDPOINT": "",
    "PERDURE_WORKER_HEARTBEAT_S": "0.5",
    "PERDURE_WORKER_CHECKOUT_WAIT_S": "1",
    "PERDURE_WORKER_LOG_SHIP_S": "3600",
}


class WorkerProcess:
    """``perdure worker`` pointed at ``server_url``, started by ``start()``."""

    def __init__(
        self,
        base: Path,
        server_url: str,
        *,
        label: str = "worker",
        slots: int = 1,
        group: str | None = "default",
        apps: str | None = "*",
        token: str | None = None,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        """``group``, ``apps`` and ``token`` given as None are left off the command line (so the
        environment or the ``config`` TOML file decides)."""
        self.label = label
        self.server_url = server_url
        self.workpath = base / label
        self.slots = slots
        self.group = group
        self.apps = apps
        self.token = token
        self.config = config
        self.extra_args = list(extra_args or [])
        # Worker settings from the test runner's own environment would leak into the worker: drop them.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PERDURE_WORKER_") and k != "PERDURE_TOKEN"
        }
        self.env = {**inherited, **TEST_ENV, **(env or {})}
        if token is not None:  # never on the command line: the worker refuses --token (issue 17)
            self.env["PERDURE_WORKER_TOKEN"] = token
        self.log_path = base / f"{label}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "perdure", "worker", "--server", self.server_url]
        command += ["--name", self.label, "--workpath", str(self.workpath), "--slots", str(self.slots)]
        for flag, value in (("--group", self.group), ("--apps", self.apps)):
            if value is not None:
                command += [flag, value]
        if self.config is not None:
            command += ["--config", str(self.config)]
        return [*command, "--log-level", "debug", *self.extra_args]

    def start(self) -> WorkerProcess:
        self.workpath.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self

    # ---- identity -------------------------------------------------------------------------------

    def node_id(self, timeout: float = 20.0) -> str:
        """The id the worker persisted in ``<workpath>/node-id`` (waits for it to be written)."""
        path = self.workpath / "node-id"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                text = path.read_text().strip()
                if text:
                    return text
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.label} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.label} wrote no node id within {timeout}s:\n{self.log()}")

    def client_ids(self) -> list[str]:
        node = self.node_id()
        return [f"{node}-{k}" for k in range(self.slots)]

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, the orderly shutdown; SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the crash case (the commands it started live on in their own sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


__all__ = ["TEST_ENV", "WorkerProcess"]
