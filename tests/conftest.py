"""Fixtures shared by every tier.

``db_url`` runs a test once on SQLite and once on PostgreSQL (a database created for the test and
dropped after it; on PostgreSQL a copy of one migrated once per session, unless the test is marked
``fresh_database``, which gets an empty one). ``client`` is the app in-process over httpx;
``server`` is a real ``perdure server`` process on loopback.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from perdure.api.app import create_app
from perdure.settings import Settings
from tests.support import ServerProcess, drop_postgres_databases, postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'perdure.db'}"
    else:
        fresh = request.node.get_closest_marker("fresh_database") is not None
        with postgres_database(migrated=not fresh) as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'perdure.db'}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", db_url=db_url, sweep_interval_s=0.2)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server-data", db_url).start()
    try:
        yield process
    finally:
        process.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for the test databases' drops (a background thread), and say if any was left behind."""
    failures = drop_postgres_databases()
    if failures:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"PostgreSQL test databases not dropped: {failures}", yellow=True)


#: Modules that run podman and CRIU for real (one container store and root's checkpoints for the
#: machine), or drain a program part-way through and check it had not finished before the drain:
#: timing that the load of a second test beside them can upset. Under pytest-xdist they are one
#: scheduling unit (one worker, one after another), and the tests of ALONE run alone (below).
HANDOVER_GROUP = "podman-criu-handover"
HANDOVER_MODULES = frozenset(
    {"test_containers_e2e.py", "test_spot_criu_e2e.py", "test_spot_e2e.py", "test_s3_store.py"}
)
#: Of those, what runs alone: whole modules, or ``module::test`` (test_s3_store's other tests drain
#: nothing).
ALONE = frozenset(
    {
        "test_containers_e2e.py",
        "test_spot_criu_e2e.py",
        "test_spot_e2e.py",
        "test_s3_store.py::test_a_hand_over_checkpoint_goes_through_the_bucket",
    }
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def is_handover(nodeid: str) -> bool:
    return _module(nodeid) in HANDOVER_MODULES


def runs_alone(nodeid: str) -> bool:
    test = nodeid.split("::", 1)[-1].split("[", 1)[0]
    return _module(nodeid) in ALONE or f"{_module(nodeid)}::{test}" in ALONE


def scheduling_unit(nodeid: str) -> str:
    """What pytest-xdist hands a worker in one piece: a test module (its tests in their order, its
    module-scoped fixtures made once), or the hand-over group."""
    return HANDOVER_GROUP if is_handover(nodeid) else nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the hand-over modules as one unit. (Not ``xdist_group`` marks with
    ``--dist loadgroup``: pytest-xdist 3.8 applies them by rewriting ``item._nodeid``, which pytest 9
    no longer reads, so the groups are silently ignored.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_unit(nodeid)

    return ModuleScheduling(config, log)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outside pytest-timeout: waiting is not the test's time
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Under pytest-xdist, a test of ``ALONE`` waits for the other worker's test to end, and the other
    worker waits for it (a readers-writer lock on files both workers see)."""
    basetemp = item.config.option.basetemp
    if "PYTEST_XDIST_WORKER" not in os.environ or not basetemp:
        yield
        return
    with _turn(Path(basetemp).parent, exclusive=runs_alone(item.nodeid)):
        yield


@contextmanager
def _turn(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """A turnstile keeps the shared holders from starving an exclusive one."""
    with (folder / "turnstile.lock").open("a") as turnstile, (folder / "tests.lock").open("a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
