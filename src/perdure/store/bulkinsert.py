"""Inserts of many new rows, as a submit makes them, without SQLAlchemy's work per row.

For a batch of submitted jobs SQLAlchemy spent more on each row's parameters (a bind processor per
column, the parameter dictionaries copied) than SQLite spent storing it. On SQLite the rows go to the
driver's ``executemany`` with the statement built once per table and columns, each JSON column encoded
as SQLAlchemy's ``JSON`` type does (``json.dumps``, ``None`` as JSON ``null``), so what is stored is the
same. On PostgreSQL SQLAlchemy's own insert (one multi-row statement) is kept: there the round trip is
the cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Connection, Table, insert

#: (table, columns) -> (the statement, which of its columns are JSON).
_STATEMENTS: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[bool, ...]]] = {}


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dictionaries with the same keys) into ``table``, in this transaction."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(insert(table), rows[0] if len(rows) == 1 else list(rows))
        return
    columns = tuple(rows[0])
    key = (table.name, columns)
    found = _STATEMENTS.get(key)
    if found is None:
        names = ", ".join(f'"{name}"' for name in columns)
        marks = ", ".join("?" * len(columns))
        is_json = tuple(isinstance(table.c[name].type, JSON) for name in columns)
        found = _STATEMENTS[key] = (f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', is_json)
    sql, is_json = found
    dumps = json.dumps
    values = [
        tuple(dumps(row[c]) if j else row[c] for c, j in zip(columns, is_json, strict=True)) for row in rows
    ]
    conn.connection.driver_connection.executemany(sql, values)  # type: ignore[union-attr]


__all__ = ["insert_rows"]
