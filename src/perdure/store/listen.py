"""PostgreSQL's LISTEN/NOTIFY: a connection of its own that hears when work is queued.

Every transaction that queues work sends ``NOTIFY perdure_work`` (``Database.work_queued``); each
server listens here and wakes its own long-polling checkouts (``perdure.signal``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from perdure.store.database import WORK_CHANNEL

log = logging.getLogger("perdure.signal")


def listen_for_work(url: str, notify: Callable[[], None], stop: threading.Event) -> None:
    """Call ``notify`` for each notification on the work channel of the database at ``url``, until
    ``stop`` is set (seen within half a second); a lost connection is opened again after a second."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {WORK_CHANNEL}")
                while not stop.is_set():
                    for _ in conn.notifies(timeout=0.5, stop_after=1):
                        notify()
        except psycopg.Error as exc:
            log.warning("LISTEN connection lost (%s); reconnecting", exc)
            stop.wait(1.0)
