"""PostgreSQL statements run on psycopg directly, inside a SQLAlchemy transaction: the dispatch hot
path's batches skip SQLAlchemy's per-statement work."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    Connection,
)
from sqlalchemy.exc import DBAPIError

from perdure.store import hooks


def psycopg_placeholders(sql: str) -> str:
    """``:name`` binds as psycopg's ``%(name)s`` (the statements here have no other colons or %)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


#: PostgreSQL, for the rest of a batch's transaction: plans that do not depend on statistics, which
#: lag behind a table that grows by thousands of workunits a minute. Every statement of a batch looks
#: rows up by key, so a nested loop over index lookups is always right, where a planner that thinks
#: the table small would scan all of it. (Autovacuum catches up eventually; these plans need not.)
BY_KEY_PG = """
SELECT set_config('enable_seqscan', 'off', true) AS seqscan,
    set_config('enable_hashjoin', 'off', true) AS hash, set_config('enable_mergejoin', 'off', true) AS merge,
    set_config('jit', 'off', true) AS jit"""
#: ``Connection.info`` key: the transaction in which ``BY_KEY_PG`` was run.
_BY_KEY_IN = "perdure_by_key_in"


def by_key(conn: Connection) -> list[tuple[str, Any]]:
    """``BY_KEY_PG`` as a statement for ``pg_run``, unless it is in force in this transaction already
    (then none); noted so that ``by_key_in_force`` knows."""
    if by_key_in_force(conn):
        return []
    conn.info[_BY_KEY_IN] = conn.get_transaction()
    return [(BY_KEY_PG, None)]


def by_key_in_force(conn: Connection) -> bool:
    """Whether ``by_key`` ran in this very transaction (the settings end with it)."""
    transaction = conn.get_transaction()
    return transaction is not None and conn.info.get(_BY_KEY_IN) is transaction


def pg_run(
    conn: Connection, statements: Sequence[tuple[str, Any] | None], *, commit: bool = False
) -> list[list[Any]]:
    """Run statements (psycopg's placeholders) on psycopg directly, in the connection's transaction,
    without SQLAlchemy's per-statement work (psycopg prepares them once it has seen them a few times),
    and return each one's rows (attributes by column name; empty for a statement that returns none).
    With ``commit`` the transaction ends here; nothing may run on ``conn`` afterwards (SQLAlchemy's own
    commit finds nothing to do). On loopback, psycopg's pipeline mode saved no time and cost more CPU.
    """
    raw: Any = conn.connection.driver_connection
    sql = ""
    results: list[list[Any]] = []
    try:
        for statement in statements:
            if statement is not None:
                sql, params = statement
                with raw.cursor(row_factory=namedtuple_row) as cursor:
                    cursor.execute(sql, params)
                    results.append(cursor.fetchall() if cursor.description is not None else [])
        if commit:
            sql = "COMMIT"
            raw.commit()
        return results
    except psycopg.Error as exc:
        raise DBAPIError(sql, None, exc) from exc  # as SQLAlchemy would: ``retry_on_conflict`` sees it


def pg_rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[Any]:
    return pg_run(conn, [(sql, params)])[0]


def finish(conn: Connection, dialect: str, samples: hooks.Samples) -> None:
    """The transaction's metric samples, written with one statement, and (PostgreSQL) the COMMIT.

    (Sending both as one simple query, bound by psycopg, saved a round trip but cost more than it
    saved: PostgreSQL then parses and plans the insert every time, and psycopg quotes its arrays in
    Python. Measured at K = 1, issue 22: 0.93 ms against 0.65 ms for the two.)"""
    if dialect == "postgresql":
        pg_run(conn, [samples.insert()], commit=True)
    else:
        samples.write(conn)
