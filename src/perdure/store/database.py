"""Connections: one ``Database`` per server, handing out read and write transactions.

SQLite runs in WAL mode, and write transactions start with ``BEGIN IMMEDIATE`` so two writers never
deadlock upgrading a read lock; PostgreSQL uses its defaults (READ COMMITTED) with row locks where a
claim needs them. PostgreSQL's worker hot path (reports and claims) has a pool of its own
(``Database.dispatch``), whose sessions carry that path's plan settings.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.pool import NullPool

from perdure.store import upkeep

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy waiting orders the processes there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("perdure.store")
P = ParamSpec("P")
T = TypeVar("T")
#: PostgreSQL SQLSTATEs that mean "this transaction lost a race; run it again".
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
#: The channel PostgreSQL NOTIFYs when workunits become queued (LISTENed to by every server).
WORK_CHANNEL = "perdure_work"

#: PostgreSQL: the plan settings of the dispatch pool's sessions (``Database.dispatch``), given at
#: connect, so that no transaction spends a round trip on them: plans that do not depend on statistics,
#: which lag behind a table that grows by thousands of workunits a minute (autovacuum catches up
#: eventually; these plans need not). Every statement of a report or a claim looks rows up by key, so
#: a nested loop over index lookups is always right, where a planner that thinks the table small would
#: scan all of it. (The claim's own settings, ``enable_sort`` and ``enable_bitmapscan`` off, are set by
#: its transaction: ``store.checkout``.) No JIT: these statements are short. Prepared statements keep
#: their generic plan: PostgreSQL otherwise plans a statement of a batch's arrays anew at every run (a
#: custom plan looks cheaper to it than the generic one, which guesses the arrays' length), which cost
#: the backend more than running it; the claim, whose plan may depend on its values, plans as usual
#: (``store.checkout`` sets ``plan_cache_mode`` back to ``auto`` with its own settings).
DISPATCH_PLAN_SETTINGS = {
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
    "jit": "off",
    "plan_cache_mode": "force_generic_plan",
}
#: ``Connection.info`` key: a dispatch transaction has begun for SQLAlchemy but not yet on the server
#: (``Database.dispatch``); ``take_begin`` takes it.
_BEGIN_PENDING = "perdure_begin_pending"

#: How long a SQLite writer waits for another to finish before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'perdure.db').resolve()}"


def normalize_url(url: str) -> str:
    """Let users write ``postgresql://``; we drive it with psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, pool_size: int = 40) -> None:
        self.url = normalize_url(url)
        self.engine: Engine = _make_engine(self.url, pool_size)
        self.dialect = self.engine.dialect.name
        #: PostgreSQL: the worker hot path's own pool (``dispatch``); SQLite: none.
        self._dispatch_engine = None if self.is_sqlite else _make_dispatch_engine(self.url)
        #: Called after a commit that queued work (wakes long-polling checkouts in this process).
        self.work_listeners: list[Callable[[], None]] = []
        # SQLite has one writer at a time anyway; queueing writers here, rather than in SQLite's busy
        # loop (which sleeps and retries), keeps the tail latency short. Server processes sharing the
        # file (``--workers``) queue on a lock file beside it the same way.
        self._sqlite_writer = threading.Lock()
        self._sqlite_lock_fd: int | None = None
        database = make_url(self.url).database
        if self.is_sqlite and fcntl is not None and database and database != ":memory:":
            self._sqlite_lock_fd = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def write(self) -> contextlib.AbstractContextManager[Connection]:
        """One transaction that may change state: committed on success, rolled back on any error."""
        return self._transaction(self.engine)

    def dispatch(self) -> contextlib.AbstractContextManager[Connection]:
        """``write`` for the worker hot path: a batch's reports and claims (``store.work``).

        On PostgreSQL its connections come from a pool of their own, whose sessions carry the plan
        settings of those statements (``DISPATCH_PLAN_SETTINGS``) and run in psycopg's autocommit mode,
        so that ``BEGIN`` is not a round trip of its own: it goes with the transaction's first statement
        (``pgdirect.pg_run`` sends both at once; a SQLAlchemy statement first sends it alone). The
        transaction is otherwise ``write``'s: committed on success, rolled back on any error."""
        return self._transaction(self._dispatch_engine or self.engine)

    @contextmanager
    def _transaction(self, engine: Engine) -> Iterator[Connection]:
        """A transaction on one of ``engine``'s connections (SQLite: behind the writer locks); once it
        has committed work it queued (``work_queued``), the work listeners are woken."""
        with contextlib.ExitStack() as stack:
            if self.is_sqlite:
                stack.enter_context(self._sqlite_writer)
                if self._sqlite_lock_fd is not None:
                    stack.enter_context(_flocked(self._sqlite_lock_fd))
            conn = stack.enter_context(engine.connect())
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn
            queued = conn.info.pop("work_queued", False)
        if queued:
            for listener in self.work_listeners:
                listener()

    @staticmethod
    def take_begin(conn: Connection) -> bool:
        """Whether ``conn``'s dispatch transaction still has to send its ``BEGIN``: the caller sends it
        with the statement it runs (once: afterwards this says False)."""
        return bool(conn.info.pop(_BEGIN_PENDING, False))

    @staticmethod
    def work_queued(conn: Connection) -> None:
        """Mark that this transaction made workunits eligible: waiters here and on other servers wake."""
        if conn.dialect.name == "postgresql" and not conn.info.get("work_queued"):
            conn.execute(text(f"NOTIFY {WORK_CHANNEL}"))  # delivered at commit, to every server
        conn.info["work_queued"] = True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A consistent snapshot for reading several tables."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def optimize(self) -> None:
        """Refresh SQLite's planner statistics (it samples; cheap). PostgreSQL's are kept by
        ``tend_tables`` on every sweep."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA optimize")

    def tend_tables(self) -> list[str]:
        """PostgreSQL: the ``ANALYZE`` and ``VACUUM`` of the hot tables autovacuum would have run by
        now, in case it is off (``store/upkeep.py``); returns what ran. SQLite: nothing."""
        return [] if self.is_sqlite else upkeep.tend_tables(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._dispatch_engine is not None:
            self._dispatch_engine.dispose()
        if self._sqlite_lock_fd is not None:
            os.close(self._sqlite_lock_fd)
            self._sqlite_lock_fd = None


@contextmanager
def _flocked(fd: int) -> Iterator[None]:
    """An exclusive lock on the open lock file, across processes (held by one thread of this one)."""
    assert fcntl is not None
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _make_engine(url: str, pool_size: int) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=40,
            max_overflow=10,
            pool_use_lifo=True,
        )
        _configure_sqlite(engine)
        return engine
    kwargs: dict[str, Any] = {}
    if os.environ.get("PERDURE_DB_NULLPOOL"):
        kwargs["poolclass"] = NullPool
    else:
        # At least as many connections as request threads, so none waits for one or opens its own.
        kwargs.update(pool_size=pool_size, max_overflow=10)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


#: Connections kept by the dispatch pool: the batcher runs at most two batches per process at once.
DISPATCH_POOL_SIZE = 4


def _make_dispatch_engine(url: str) -> Engine:
    """PostgreSQL's dispatch pool (``Database.dispatch``): sessions with ``DISPATCH_PLAN_SETTINGS``
    (sent with the connection's start-up message: no round trip), in autocommit mode (the transaction's
    ``BEGIN`` is sent by this module's listeners or by ``pgdirect``, with its first statement)."""
    settings = " ".join(f"-c {name}={value}" for name, value in DISPATCH_PLAN_SETTINGS.items())
    given = make_url(url).query.get("options")
    options = f"{given} {settings}" if isinstance(given, str) and given else settings
    kwargs: dict[str, Any] = {"connect_args": {"options": options}, "isolation_level": "AUTOCOMMIT"}
    if os.environ.get("PERDURE_DB_NULLPOOL"):
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=DISPATCH_POOL_SIZE, max_overflow=16)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    _begin_with_first_statement(engine)
    return engine


def _begin_with_first_statement(engine: Engine) -> None:
    """A transaction of ``engine`` (autocommit at the driver) sends ``BEGIN`` only when its first
    statement goes: with it, from ``pgdirect``, or just before it, for a statement of SQLAlchemy's.
    Its commit or rollback is psycopg's, which sends ``COMMIT`` or ``ROLLBACK`` only if the server is
    in a transaction."""

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.info[_BEGIN_PENDING] = True

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(conn: Connection) -> None:
        conn.info.pop(_BEGIN_PENDING, None)

    @event.listens_for(engine, "before_cursor_execute")
    def _on_execute(conn: Connection, cursor: Any, *_args: Any) -> None:
        if conn.info.pop(_BEGIN_PENDING, False):
            cursor.execute("BEGIN")


#: A pooled PostgreSQL connection idle at least this long is checked before use.
PING_AFTER_IDLE_S = 2.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections that sat idle in the pool.

    Pre-ping costs a round trip (and an autocommit toggle) on every transaction; a connection handed
    back a moment ago is as good as the ping would show. One idle for a while (the database may have
    restarted meanwhile) is pinged, and replaced if dead, before anyone uses it.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["perdure_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("perdure_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return  # new, or back in the pool just now
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling cannot do BEGIN IMMEDIATE; take it over (SQLAlchemy's recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    # BEGIN goes to the driver directly: SQLAlchemy's execute cost more than the statement, in every
    # transaction (issue 22). Its errors are raised as SQLAlchemy's, as its execute would.
    error = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate", False) else "BEGIN"
        try:
            conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
        except error as exc:
            raise DBAPIError.instance(sql, None, exc, error) from exc


def retry_on_conflict(fn: Callable[P, T]) -> Callable[P, T]:
    """Run a one-transaction store method again when PostgreSQL aborts it for a deadlock.

    Each store method is one transaction, rolled back whole on error, so running it again is safe.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(8):
            try:
                return fn(*args, **kwargs)
            except DBAPIError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in _RETRYABLE_SQLSTATES or attempt == 7:
                    raise
                log.debug("retrying %s after %s", fn.__name__, sqlstate)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    return wrapper
