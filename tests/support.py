"""Test support: throwaway databases, real server processes, and waiting for what they do."""

from __future__ import annotations

import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    context: Callable[[], str] = str,
    *,
    interval: float = 0.05,
) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value or fails with ``what`` and ``context()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(interval)


PG_ADMIN_DSN = os.environ.get("PERDURE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def require_postgres() -> None:
    """Skip on a developer machine without PostgreSQL; fail in CI, where it must be there."""
    if postgres_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_DSN}")
    pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_DSN}")


class _Databases:
    """This process's PostgreSQL test databases: a migrated template made once, and the drops.

    Alembic on an empty database costs PostgreSQL about a second per test; ``CREATE DATABASE …
    TEMPLATE`` of a database migrated once per session is a copy of its files. ``DROP DATABASE``
    waits for a checkpoint, so drops go to a background thread and the next test does not wait for
    them; the end of the session waits for the last ones (``drain``)."""

    def __init__(self) -> None:
        self.template: str | None = None
        self.lock = threading.Lock()
        self.drops: queue.Queue[str | None] = queue.Queue()
        self.dropper: threading.Thread | None = None
        self.failures: list[str] = []

    def migrated_template(self) -> str:
        with self.lock:
            if self.template is None:
                # Imported here: the tiers that never open a database need not import the store.
                from perdure.store import migrate
                from perdure.store.database import Database

                name = f"perdure_template_{uuid.uuid4().hex[:12]}"
                execute(f'CREATE DATABASE "{name}"')
                db = Database(database_url(name))
                try:
                    migrate.upgrade(db)
                finally:
                    db.dispose()  # a template with a connection open cannot be copied
                self.template = name
            return self.template

    def drop_later(self, name: str) -> None:
        with self.lock:
            if self.dropper is None:
                self.dropper = threading.Thread(target=self._drop_queued, name="pg-drops", daemon=True)
                self.dropper.start()
        self.drops.put(name)

    def _drop_queued(self) -> None:
        while (name := self.drops.get()) is not None:
            self._drop(name)

    def _drop(self, name: str) -> None:
        try:
            execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:  # reported by drain(): a leaked database fails no test
            self.failures.append(f"{name}: {exc}")

    def drain(self) -> list[str]:
        """Drop what is queued, then the template; returns the drops that failed."""
        with self.lock:
            dropper, self.dropper = self.dropper, None
            template, self.template = self.template, None
        if dropper is not None:
            self.drops.put(None)
            dropper.join()
        if template is not None:
            self._drop(template)
        failures, self.failures = self.failures, []
        return failures


def execute(sql: str) -> None:
    """One statement on the PostgreSQL server's admin database, outside a transaction."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def database_url(name: str) -> str:
    return f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


_databases = _Databases()


@contextmanager
def postgres_database(*, migrated: bool = False) -> Iterator[str]:
    """Create a database of our own and drop it afterwards; yields its SQLAlchemy URL.

    ``migrated``: a copy of a template already at the newest schema (what a server makes of an empty
    database at start-up, without the cost of migrating each time); otherwise empty."""
    require_postgres()
    name = f"perdure_test_{uuid.uuid4().hex[:12]}"
    if migrated:
        execute(f'CREATE DATABASE "{name}" TEMPLATE "{_databases.migrated_template()}"')
    else:
        execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        _databases.drop_later(name)


def drop_postgres_databases() -> list[str]:
    """At the end of the session: wait for the queued drops, drop the template; the failed drops."""
    return _databases.drain()


#: free_port's range: below the kernel's ephemeral ports (32768-60999 on Linux).
_PORTS = (20000, 32768)
#: Ports this process gave out, never given twice (a test's "nothing listens there" stays so).
_handed_out: set[int] = set()
_random = random.Random()


def free_port() -> int:
    """A loopback port nothing listens on now.

    Two pytest-xdist workers that each asked the kernel for a free port (bind to 0) could be handed
    the same one before either server binds it. So each worker draws from its own slice of a range
    below the ephemeral ports, which neither the other worker nor an outgoing connection is given."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    size = (_PORTS[1] - _PORTS[0]) // count
    low = _PORTS[0] + index * size
    for _ in range(500):
        port = _random.randrange(low, low + size)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{low + size - 1}")


class ServerProcess:
    """``perdure server`` in a child process, on a free loopback port."""

    def __init__(self, data_dir: Path, db_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PERDURE_SWEEP_INTERVAL_S": "0.5", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "perdure", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), "--log-level", "warning"]
        if self.db_url:
            cmd += ["--db", self.db_url]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        # One client for the polls: each httpx.get() builds an SSL context (~20 ms of CPU), which
        # polling every 50 ms would take from the server that is starting.
        with httpx.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if http.get(self.url + "/").status_code == 200:
                        return self
                except httpx.HTTPError:
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
