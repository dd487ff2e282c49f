from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from perdure.store import migrate
from perdure.store.database import Database
from perdure.store.schema import metadata


def _drift(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    # The partial queue indexes are expression indexes autogenerate cannot reflect; checked below.
    return [d for d in diff if not any(name in str(d) for name in PARTIAL_INDEXES)]


PARTIAL_INDEXES = ("ix_workunits_queue", "ix_workunits_preempted")


@pytest.mark.fresh_database
def test_migrations_build_exactly_the_declared_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db)
        assert _drift(db) == []
        indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("workunits")}
        assert set(PARTIAL_INDEXES) <= indexes
        assert migrate.current(db) is not None
    finally:
        db.dispose()


@pytest.mark.fresh_database
def test_upgrading_twice_is_a_no_op_and_downgrade_then_upgrade_round_trips(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db)
        head = migrate.current(db)
        migrate.upgrade(db)
        assert migrate.current(db) == head
        migrate.downgrade(db, "base")
        assert "jobs" not in inspect(db.engine).get_table_names()
        migrate.upgrade(db)
        assert migrate.current(db) == head
        assert _drift(db) == []
    finally:
        db.dispose()
