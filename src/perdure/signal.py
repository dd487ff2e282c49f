"""Wake long-polling checkouts when work may have appeared.

In one process, the store's commit hook wakes the waiters directly. Across servers sharing a
PostgreSQL database, every transaction that queues work also sends ``NOTIFY perdure_work``, and each
server LISTENs on a connection of its own (``perdure.store.listen``). Waiters re-check at least once
a second anyway, so a lost notification costs at most that.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from perdure.store.database import Database
from perdure.store.listen import listen_for_work


class WorkSignal:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None

    def start(self, db: Database) -> None:
        self._loop = asyncio.get_running_loop()
        db.work_listeners.append(self.notify)
        if db.dialect == "postgresql":
            self._listener = threading.Thread(
                target=listen_for_work,
                args=(db.url, self.notify, self._stop),
                name="perdure-listen",
                daemon=True,
            )
            self._listener.start()

    def stop(self) -> None:
        """Close the LISTEN connection before the server goes (and, in tests, its database with it)."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
            self._listener = None

    def notify(self) -> None:
        """Thread-safe: wake every waiter of this process."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop shutting down
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Return when work may have appeared, or after ``timeout`` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
