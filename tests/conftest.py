"""Fixtures shared by every tier.

``db_url`` runs a test once on SQLite and once on PostgreSQL (a database created for the test and
dropped after it; on PostgreSQL a copy of one migrated once per session, unless the test is marked
``fresh_database``, which gets an empty one). ``client`` is the app in-process over httpx;
``server`` is a real ``perdure server`` process on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
