"""PostgreSQL's wake-up across servers (``store.listen``): a transaction that queues work wakes the
listener of another connection, the listener stops when told, and a lost LISTEN connection is opened
again."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from perdure.store.database import Database
from perdure.store.listen import listen_for_work
from tests.support import postgres_database, wait_for

pytestmark = pytest.mark.postgres


class Listener:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.heard = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=listen_for_work, args=(db.url, self._notify, self.stop))
        self.thread.start()

    def _notify(self) -> None:
        self.heard += 1

    def hears_queued_work(self, more_than: int) -> bool:
        """Queue work (a NOTIFY at commit) and say whether the listener heard more than before; the
        LISTEN may not be in place yet, so ``wait_for`` calls this until it is."""
        with self.db.write() as conn:
            Database.work_queued(conn)
        return self.heard > more_than


@pytest.fixture
def db() -> Iterator[Database]:
    with postgres_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


@pytest.fixture
def listener(db: Database) -> Iterator[Listener]:
    running = Listener(db)
    try:
        yield running
    finally:
        running.stop.set()
        running.thread.join(timeout=10)


def test_queued_work_wakes_the_listener_which_stops_when_told(db: Database, listener: Listener) -> None:
    wait_for(lambda: listener.hears_queued_work(0), 10, "the listener to hear queued work")

    listener.stop.set()
    listener.thread.join(timeout=5)
    assert not listener.thread.is_alive()


def test_a_lost_listen_connection_is_opened_again(db: Database, listener: Listener) -> None:
    wait_for(lambda: listener.hears_queued_work(0), 10, "the listener to hear queued work")
    dsn = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        ).fetchall()
    assert ended == [(True,)]  # the listener's connection, and only it
    heard = listener.heard

    wait_for(lambda: listener.hears_queued_work(heard), 15, "the listener to hear work after reconnecting")
