"""SQLite statements run on the raw ``sqlite3`` connection, inside a SQLAlchemy transaction: the
dispatch hot path's statements skip SQLAlchemy's per-statement work (the counterpart of
``pgdirect``).

Per statement, SQLAlchemy's execute, parameter processing and result set-up cost several times what
SQLite spends running it (issue 22: 12 statements per report+next). Here a Core statement is compiled
once into its SQL text (``:name`` parameters, which ``sqlite3`` binds itself and whose prepared
statement it caches by text), and rows come back as named tuples, with the JSON columns decoded as
SQLAlchemy's ``JSON`` type would. The statements stay those of ``store/``: the state moves are
``store/transitions.py``'s, compiled from them.
"""

from __future__ import annotations

import functools
import json
import re
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Connection, Select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from perdure.store import hooks, pgdirect

#: SQLite's dialect with named parameters (``:name``), which ``sqlite3`` binds from a mapping.
_NAMED = sqlite.dialect(paramstyle="named")


@functools.cache
def compiled(statement: ClauseElement) -> str:
    """A Core statement's SQL text for ``run``/``many``/``rows`` (built once per statement; the
    statements given are module constants): its ``bindparam``s stay ``:name`` parameters, the
    constants of its ``values`` (a state, ``+ 1``) are written into the text. Expanding parameters
    (``IN :list``) are not supported."""
    done = statement.compile(dialect=_NAMED)
    assert isinstance(done, SQLCompiler)
    constants = {
        name: bind.effective_value
        for bind, name in done.bind_names.items()
        if not bind.required and not bind.expanding and bind.callable is None
    }

    def written(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in constants:
            return match.group(0)
        value = constants[name]
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        raise TypeError(f"constant {name}={value!r} of {statement} cannot be written into its SQL")

    return re.sub(r"(?<![:\w]):(\w+)", written, str(done))


@functools.cache
def json_columns(statement: Select[Any]) -> frozenset[str]:
    """The names of a select's columns that SQLAlchemy would decode as JSON."""
    return frozenset(str(c.key) for c in statement.selected_columns if isinstance(c.type, JSON))


@functools.cache
def _row_class(names: tuple[str, ...]) -> Any:
    return namedtuple("Row", names)


def _raw(conn: Connection) -> Any:
    return conn.connection.driver_connection


def _failed(conn: Connection, sql: str, params: Any, exc: Exception) -> DBAPIError:
    """The driver's error as SQLAlchemy would raise it (``OperationalError``, ``IntegrityError`` …)."""
    error = DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error)
    assert isinstance(error, DBAPIError)
    return error


def rows(
    conn: Connection, sql: str, params: Mapping[str, Any] | Sequence[Any], decoded: Iterable[str] = ()
) -> list[Any]:
    """The rows of a query (attributes by column name), its ``decoded`` (JSON) columns decoded."""
    try:
        cursor = _raw(conn).execute(sql, params)
        fetched = cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _failed(conn, sql, params, exc) from exc
    names = tuple(d[0] for d in cursor.description)
    make = _row_class(names)._make
    decode = [i for i, name in enumerate(names) if name in decoded]
    if not decode:
        return list(map(make, fetched))
    result = []
    for row in fetched:
        values = list(row)
        for i in decode:
            if values[i] is not None:
                values[i] = json.loads(values[i])
        result.append(make(values))
    return result


def run(conn: Connection, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> int:
    """A statement that returns no rows; the number of rows it changed."""
    try:
        return int(_raw(conn).execute(sql, params).rowcount)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _failed(conn, sql, params, exc) from exc


def many(conn: Connection, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
    """A statement once per set of parameters (one prepared statement, stepped for each)."""
    if not params:
        return
    try:
        _raw(conn).executemany(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _failed(conn, sql, params, exc) from exc


def in_list(name: str, k: int) -> str:
    """``(:name0, :name1, …)`` for ``k`` values, bound by ``in_params``."""
    return "(" + ", ".join(f":{name}{n}" for n in range(k)) + ")"


def in_params(name: str, values: Sequence[Any]) -> dict[str, Any]:
    return {f"{name}{n}": value for n, value in enumerate(values)}


def write_samples(conn: Connection, samples: hooks.Samples) -> None:
    """The transaction's metric samples, in one statement on the raw connection."""
    insert = samples.insert(sqlite=True)
    if insert is not None:
        run(conn, *insert)


def finish(conn: Connection, dialect: str, samples: hooks.Samples) -> None:
    """``pgdirect.finish``, with SQLite's samples written on the raw connection."""
    if dialect == "sqlite":
        write_samples(conn, samples)
    else:
        pgdirect.finish(conn, dialect, samples)
