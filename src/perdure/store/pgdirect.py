"""PostgreSQL statements run on psycopg directly, inside a SQLAlchemy transaction: the dispatch hot
path's batches skip SQLAlchemy's per-statement work."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from perdure.store import hooks
from perdure.store.database import Database

IDLE = TransactionStatus.IDLE


def psycopg_placeholders(sql: str) -> str:
    """``:name`` binds as psycopg's ``%(name)s`` (the statements here have no other colons or %)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


def pg_run(
    conn: Connection,
    statements: Sequence[tuple[str, Any] | None],
    *,
    commit: bool = False,
    prepare: bool | None = None,
) -> list[list[Any]]:
    """Run statements (psycopg's placeholders, parameters known in advance) on psycopg directly, in the
    connection's transaction, without SQLAlchemy's per-statement work (psycopg prepares them once it
    has seen them a few times), and return each one's rows (attributes by column name; empty for a
    statement that returns none). With ``commit`` the transaction ends here; nothing may run on
    ``conn`` afterwards (SQLAlchemy's own commit finds nothing to do).

    All of it is one round trip: on a connection of ``Database.dispatch`` whose ``BEGIN`` is still to
    be sent, it goes first, and the ``COMMIT`` last, in psycopg's pipeline mode (it costs a few system
    calls; a round trip costs two wake-ups, which on a busy machine are what takes the time). The first
    error skips the rest, the ``COMMIT`` too, and is raised. ``prepare=False``: planned afresh each
    time (a statement whose best plan changes as its tables grow; see ``transitions.queue_new_pg``).
    """
    raw: Any = conn.connection.driver_connection
    todo = [statement for statement in statements if statement is not None]
    if todo and Database.take_begin(conn):
        todo.insert(0, ("BEGIN", None))
    # A dispatch connection (autocommit at the driver) commits with a statement of the pipeline; one
    # of ``Database.write`` through psycopg. Nothing to commit if nothing ran.
    pipelined_commit = commit and raw.autocommit and (todo or raw.pgconn.transaction_status != IDLE)
    if pipelined_commit:
        todo.append(("COMMIT", None))
    sql = ""
    try:
        results: list[list[Any]] = []
        if len(todo) == 1:
            sql, params = todo[0]
            with raw.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(sql, params, prepare=prepare)
                if sql != "COMMIT":
                    results.append(cursor.fetchall() if cursor.description is not None else [])
        elif todo:
            cursors = []
            # Corked only where this function sends the ``BEGIN`` (a dispatch connection): on one that
            # begins its transactions itself, psycopg waits, inside the block, for the implicit
            # ``BEGIN`` it sends first, which the cork would hold back for Linux's 200 ms.
            with raw.pipeline(), _corked(raw.pgconn.socket) if raw.autocommit else nullcontext():
                for sql, params in todo:
                    cursor = raw.cursor(row_factory=namedtuple_row)
                    cursor.execute(sql, params, prepare=prepare)
                    cursors.append((sql, cursor))
            for sql, cursor in cursors:
                if sql not in ("BEGIN", "COMMIT"):
                    results.append(cursor.fetchall() if cursor.description is not None else [])
                cursor.close()
        if commit and not raw.autocommit:
            sql = "COMMIT"
            raw.commit()
        return results
    except psycopg.Error as exc:
        raise DBAPIError(sql, None, exc) from exc  # as SQLAlchemy would: ``retry_on_conflict`` sees it


#: ``Connection.info`` key: the transaction in which ``keep_clients`` kept rows, and those rows.
_KEPT_CLIENTS = "perdure_kept_clients"


def keep_clients(conn: Connection, rows: Sequence[Any]) -> None:
    """Keep clients' rows, read for a claim later in this transaction (``kept_clients``)."""
    conn.info[_KEPT_CLIENTS] = (conn.get_transaction(), {row.id: row for row in rows})


def kept_clients(conn: Connection) -> dict[str, Any]:
    """The clients' rows ``keep_clients`` kept in this very transaction, by id (taken: once)."""
    transaction, rows = conn.info.pop(_KEPT_CLIENTS, (None, {}))
    return rows if transaction is not None and transaction is conn.get_transaction() else {}


@contextmanager
def _corked(fd: int) -> Iterator[None]:
    """Hold back the socket's sends until the end of the block, so that a pipeline's statements go
    in one packet: psycopg sends each as it is queued, and on a busy machine a database process woken
    by the first would sleep and wake again for each of the others. (Linux's ``TCP_CORK``; elsewhere,
    or on a Unix socket, nothing. The block ends before psycopg waits for the answers.)"""
    if not _CORK:
        yield
        return
    sock = socket.socket(fileno=fd)  # not a copy: detached below, so the descriptor stays libpq's
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        except OSError:  # not TCP (a Unix socket): nothing to hold back
            corked = False
        else:
            corked = True
        try:
            yield
        finally:
            if corked:
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
    finally:
        sock.detach()


_CORK = getattr(socket, "TCP_CORK", 0)


def pg_rows(
    conn: Connection, sql: str, params: Mapping[str, Any], *, prepare: bool | None = None
) -> list[Any]:
    return pg_run(conn, [(sql, params)], prepare=prepare)[0]


def finish(conn: Connection, dialect: str, samples: hooks.Samples) -> None:
    """The transaction's metric samples, written with one statement, and (PostgreSQL) the COMMIT, in
    one round trip (``pg_run``: prepared statements in a pipeline; as one simple query, bound by
    psycopg, PostgreSQL parsed and planned the insert every time: 0.93 ms against 0.65 ms for two
    round trips, issue 22)."""
    if dialect == "postgresql":
        pg_run(conn, [samples.insert()], commit=True)
    else:
        samples.write(conn)
