"""What every bench script needs: a free loopback port, a server process and its CPU time, a throwaway
PostgreSQL database (or the reason there is none) for each database a run asks for, the machine's load,
and an exit that still cleans up on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import psutil
import psycopg

T = TypeVar("T")


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


def run_main(main: Callable[[], int], cleaned_up: str) -> NoReturn:
    """Exit with ``main()``'s status; on Ctrl-C (or SIGTERM after ``begin``), say what was cleaned up
    and exit 130."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); {cleaned_up}", file=sys.stderr)
        sys.exit(130)


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


def each_database(
    choice: str,
    admin_dsn: str,
    prefix: str,
    run: Callable[[str, str | None, Path], T],
    skipped: Callable[[str, str], T],
) -> list[T]:
    """``run(kind, db_url, tmp_dir)`` for each database ``--db`` names (``sqlite``, ``postgresql`` or
    ``both``), each with a temporary directory of its own (``db_url`` None for SQLite, else a
    throwaway PostgreSQL database, dropped afterwards); ``skipped(kind, why)`` for PostgreSQL when it
    cannot be reached."""
    kinds = ["sqlite", "postgresql"] if choice == "both" else [choice]
    results: list[T] = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"{prefix}{kind}-") as tmp:
            if kind == "sqlite":
                results.append(run(kind, None, Path(tmp)))
                continue
            problem = postgres_problem(admin_dsn)
            if problem:
                print(f"\n=== postgresql: SKIPPED ({problem}) ===")
                results.append(skipped(kind, problem))
                continue
            with postgres_database(admin_dsn) as url:
                results.append(run(kind, url, Path(tmp)))
    return results


def load_average() -> str:
    """Other work on the machine skews every figure: show how busy it was (1-minute load, CPUs)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a child's log, for an error message."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User and system CPU seconds used so far by these processes (one that went away counts nothing)."""
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def server_cpu(server: Server) -> float:
    """CPU seconds used so far by the server and its children."""
    return cpu_seconds(server.processes())


def print_failures(count: int, kept: list[str], server: Server) -> None:
    """List the failed requests a run kept (``count`` in all) and the server log's tail."""
    if not count:
        return
    print(f"\n  !! {count} failed request(s); the first {len(kept)}:")
    for message in kept:
        print(f"     {message}")
    tail = server.log_tail()
    if tail:
        print("  server log (tail):\n" + "\n".join("     " + line for line in tail.splitlines()))


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
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 20.0)
