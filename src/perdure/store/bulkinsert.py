"""Inserts of many new rows, as a submit makes them, without SQLAlchemy's work per row (issue 22).

For a batch of submitted jobs SQLAlchemy spent more on each row's parameters (a bind processor per
column, the parameter dictionaries copied) than SQLite spent storing it. On SQLite (``insert_rows``)
the rows go to the driver's ``executemany`` with the statement built once per table and columns; on
PostgreSQL (``insert_all_pg``) the rows of several tables go in one statement, one round trip. JSON
columns are encoded as SQLAlchemy's ``JSON`` type does (``None`` as JSON ``null``), so what is stored
reads back the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table, insert


def _json_text(value: Any) -> str:
    """JSON text of a value, by orjson (several times faster than ``json``); ``json`` writes what orjson
    refuses (an integer beyond 64 bits in a userattr). Either parses back to the same value, which is
    all the databases keep (JSONB) or read (SQLite's ``json_extract``, the reads' ``json.loads``)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


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
    dumps = _json_text
    values = [
        tuple(dumps(row[c]) if j else row[c] for c, j in zip(columns, is_json, strict=True)) for row in rows
    ]
    conn.connection.driver_connection.executemany(sql, values)  # type: ignore[union-attr]


# ---- PostgreSQL: many tables' rows in one statement -----------------------------------------------

#: (table, columns) of a JSON column whose ``None`` is SQL NULL rather than JSON ``null`` (as written
#: before this statement existed); every other JSON ``None`` is JSON ``null``, as SQLAlchemy writes it.
SQL_NULL_JSON = frozenset({("workunits", "part")})


def insert_all_pg(
    tables: Sequence[tuple[Table, Sequence[dict[str, Any]]]], then: str
) -> tuple[str, dict[str, Any]]:
    """One PostgreSQL statement (psycopg's placeholders) inserting every table's rows (each table's
    rows with the same keys) in a data-modifying ``WITH`` whose main query is ``then``: one round trip
    instead of one per table. (The rows are not visible to ``then``: it sees the statement's
    snapshot.) Foreign keys are checked at the end of the statement, so a job and its tasks may go in
    the same one. Each table's rows go as one JSON parameter (``jsonb_populate_recordset``): psycopg
    quotes an array element by element in Python, which cost more than the statement. ``jsonb``
    rather than ``json``: the text is parsed once, where ``json_populate_recordset`` parsed every
    JSON column's value a second time into ``jsonb`` (32 jobs' task specs: 2-3.6 ms, now 1.5)."""
    shape = tuple((table.name, tuple(rows[0])) for table, rows in tables if rows)
    sql = _PG_STATEMENTS.get((shape, then))
    if sql is None:
        sql = _PG_STATEMENTS[(shape, then)] = _insert_all_sql(
            [(table, tuple(rows[0])) for table, rows in tables if rows], then
        )
    params = {f"t{index}": _json_text(rows) for index, (_, rows) in enumerate(t for t in tables if t[1])}
    return sql, params


#: (each table's name and columns, the main query) -> the statement.
_PG_STATEMENTS: dict[tuple[tuple[tuple[str, tuple[str, ...]], ...], str], str] = {}


def _insert_all_sql(tables: Sequence[tuple[Table, tuple[str, ...]]], then: str) -> str:
    parts = []
    for index, (table, columns) in enumerate(tables):
        selected = []
        for name in columns:
            if isinstance(table.c[name].type, JSON) and (table.name, name) not in SQL_NULL_JSON:
                # JSON null, as SQLAlchemy writes None (the record function reads it as SQL NULL).
                selected.append(f"COALESCE(r.\"{name}\", 'null'::jsonb)")
            else:
                selected.append(f'r."{name}"')
        names = ", ".join(f'"{name}"' for name in columns)
        parts.append(
            f'i{index} AS (INSERT INTO "{table.name}" ({names}) SELECT {", ".join(selected)}'
            f' FROM jsonb_populate_recordset(NULL::"{table.name}", %(t{index})s::jsonb) AS r)'
        )
    return f"WITH {', '.join(parts)} {then}"


__all__ = ["SQL_NULL_JSON", "insert_all_pg", "insert_rows"]
