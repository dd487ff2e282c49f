"""Fixtures of the integration tier: a cluster of real server and worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path, db_url: str) -> Iterator[Cluster]:
    with Cluster(tmp_path, db_url) as cluster:
        yield cluster


@pytest.fixture
def sqlite_cluster(tmp_path: Path, sqlite_url: str) -> Iterator[Cluster]:
    """For worker-side behaviour that does not depend on the server's database: SQLite only."""
    with Cluster(tmp_path, sqlite_url) as cluster:
        yield cluster
