"""Storage: the database is the source of truth, and this package is the only code that speaks SQL.

Only this package imports SQLAlchemy, psycopg, sqlite3 or Alembic, and it imports neither the API nor
the metrics (it reports events through ``hooks``): ``lint-imports`` checks both in ``make lint`` (see
``docs/architecture.md``).
"""
