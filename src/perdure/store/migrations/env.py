"""Alembic environment: run with a connection handed in by ``perdure.store.migrate``."""

from __future__ import annotations

from alembic import context

from perdure.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `perdure db upgrade` or perdure.store.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
