"""Schema migrations with Alembic, safe to run from several servers starting at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, make_url, text
from sqlalchemy.exc import SQLAlchemyError

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


class DatabaseUnusable(Exception):
    """The database cannot be reached or used; the message names it with its password hidden."""


def upgrade_to_head(db: Database, url: str) -> str:
    """``perdure db upgrade``: migrate and return the revision, or raise ``DatabaseUnusable`` with one
    line (unreachable, refused, no such database) rather than a driver's traceback."""
    try:
        upgrade(db)
        return current(db) or ""
    except SQLAlchemyError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnusable(f"cannot use database {shown!r}: {reason}") from None


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
