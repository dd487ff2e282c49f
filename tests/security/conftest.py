"""Fixtures of the security tier: the integration tier's real servers and workers, on both databases."""

from __future__ import annotations

from tests.integration.conftest import cluster, sqlite_cluster

__all__ = ["cluster", "sqlite_cluster"]
