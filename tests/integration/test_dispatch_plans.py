"""PostgreSQL's dispatch sessions (``Database.dispatch``): the plan settings of the worker hot path.
Its prepared statements keep their generic plans; the claim, after the clients read that sets its
own settings, is planned as PostgreSQL chooses, for the rest of that transaction only. And
``pgdirect.pg_run``'s pipeline on both kinds of connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from perdure.store import checkout, pgdirect
from tests.domain import open_world
from tests.support import postgres_database

pytestmark = pytest.mark.postgres

_SHOW = "SELECT current_setting('plan_cache_mode') AS plans, current_setting('enable_sort') AS sort"


def test_dispatch_sessions_keep_generic_plans_but_the_claim_plans_as_usual(tmp_path: Path) -> None:
    with postgres_database(migrated=True) as url, open_world(url, tmp_path) as world:
        world.register("c1")
        db = world.db
        with db.dispatch() as conn:
            before, _clients, claiming = pgdirect.pg_run(
                conn,
                [
                    (_SHOW, None),
                    (checkout.CLIENTS_AFTER_REPORTS_PG, {"clients": [world.id("c1")]}),
                    (_SHOW, None),
                ],
            )
        with db.dispatch() as conn:
            after = pgdirect.pg_rows(conn, _SHOW, {})
    assert (before[0].plans, before[0].sort) == ("force_generic_plan", "on")
    assert (claiming[0].plans, claiming[0].sort) == ("auto", "off")
    assert (after[0].plans, after[0].sort) == ("force_generic_plan", "on")


def test_a_pipeline_is_corked_only_where_pg_run_sends_the_begin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a connection that begins its own transactions (``Database.write``) psycopg waits for its
    implicit ``BEGIN`` inside the pipeline: corked, that wait took Linux's 200 ms every time."""
    corked: list[int] = []
    real = pgdirect._corked

    @contextmanager
    def counting(fd: int) -> Iterator[None]:
        corked.append(fd)
        with real(fd):
            yield

    monkeypatch.setattr(pgdirect, "_corked", counting)
    two = [("SELECT 1 AS a", None), ("SELECT 2 AS b", None)]
    with postgres_database(migrated=True) as url, open_world(url, tmp_path) as world:
        with world.db.write() as conn:
            written = pgdirect.pg_run(conn, two)
        assert corked == []
        with world.db.dispatch() as conn:
            dispatched = pgdirect.pg_run(conn, two)
        assert len(corked) == 1
    assert [[row.a for row in written[0]], [row.b for row in written[1]]] == [[1], [2]]
    assert [[row.a for row in dispatched[0]], [row.b for row in dispatched[1]]] == [[1], [2]]
