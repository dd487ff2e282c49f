"""Schema migrations with Alembic, safe to run from several servers starting at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from perdure.store.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"
#: Arbitrary, fixed key for pg_advisory_lock: one migrator at a time per database.
_ADVISORY_LOCK_KEY = 0x5045_5244  # "PERD"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision``; a no-op when it is there already."""
    with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
            connection.commit()
        try:
            command.upgrade(_config(connection), revision)
            connection.commit()
        finally:
            if db.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                connection.commit()


def downgrade(db: Database, revision: str) -> None:
    """Undo migrations down to ``revision`` (``base`` removes every table)."""
    with db.engine.connect() as connection:
        command.downgrade(_config(connection), revision)
        connection.commit()


def current(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def revision(db: Database, message: str) -> None:
    """Developer helper: autogenerate a migration from the difference between schema.py and ``db``."""
    with db.engine.connect() as connection:
        command.revision(_config(connection), message=message, autogenerate=True)
