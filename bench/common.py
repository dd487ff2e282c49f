"""What every bench script needs: a free loopback port, a server process, a throwaway PostgreSQL
database, the machine's load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def begin(title: str) -> None:
    """Start a bench: SIGTERM and SIGINT raise KeyboardInterrupt (so its ``with`` and ``finally``
    blocks stop the processes and drop the data, also when it runs in the background), and say how
    busy the machine is."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    print(f"perdure {title} benchmark; {load_average()} at start")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, wait_s: float = 30.0) -> None:
    """Ask a child to stop with ``sig`` (SIGINT: a worker stops at once); kill it after ``wait_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    """A database of our own, dropped afterwards; yields its URL."""
    name = f"perdure_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_dsn.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_problem(admin_dsn: str) -> str | None:
    """Why PostgreSQL cannot be used, or None when it can."""
    try:
        with psycopg.connect(admin_dsn, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL unreachable at {admin_dsn}: {' '.join(str(exc).split())}"


def load_average() -> str:
    """Other work on the machine skews every figure: show how busy it was (1-minute load, CPUs)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


class Server:
    """``perdure server`` in a child process on a free loopback port."""

    def __init__(self, data_dir: Path, db_url: str | None, workers: int) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "perdure", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), "--workers", str(self.workers), "--log-level", "warning"]
        if self.db_url:
            cmd += ["--db", self.db_url]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    # With --workers > 1 the first answer can come before every worker is up.
                    if self.workers > 1:
                        time.sleep(1.0)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer GET / within {timeout:.0f}s:\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
