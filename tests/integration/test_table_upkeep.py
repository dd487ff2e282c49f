"""The sweep's table upkeep: PostgreSQL's statistics and visibility map kept without autovacuum."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, text

from perdure.store import migrate
from perdure.store.database import Database
from perdure.store.schema import jobs


def _grow_jobs(db: Database, count: int) -> None:
    rows = [{"id": f"job-{n:05d}", "state": "queued", "remaintasks": 1, "info": {}} for n in range(count)]
    with db.engine.begin() as conn:
        conn.execute(insert(jobs), rows)
    if not db.is_sqlite:
        with db.engine.begin() as conn:  # the counters reach shared memory at this commit, not up to 1 s on
            conn.execute(text("SELECT pg_stat_force_next_flush()"))


# Autovacuum's defaults: ANALYZE past 50 changed rows + 10 % of the table, VACUUM past 1,000 inserted
# rows + 20 % (and sets the visibility map, which index-only scans such as count(*) need).
@pytest.mark.parametrize(("count", "step"), [(200, "ANALYZE jobs"), (1100, "VACUUM ANALYZE jobs")])
def test_a_grown_table_is_tended_once_and_then_left_alone(db_url: str, count: int, step: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db)
        _grow_jobs(db, count)
        if db.is_sqlite:
            assert db.tend_tables() == []  # SQLite: PRAGMA optimize, hourly
            return
        assert step in db.tend_tables()
        with db.engine.connect() as conn:
            planned, visible = conn.execute(
                text("SELECT reltuples, relallvisible FROM pg_class WHERE relname = 'jobs'")
            ).one()
        assert planned == count
        assert (visible > 0) == step.startswith("VACUUM")
        assert not [done for done in db.tend_tables() if done.endswith(" jobs")]
    finally:
        db.dispose()
