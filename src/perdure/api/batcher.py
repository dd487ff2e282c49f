"""Worker requests that arrive together are served together.

Under load, many workers report and check out at once. Each request costs the database a transaction
and a few round trips, most of which do not depend on how many workunits they touch, so a server
process gathers the worker operations that arrive while its earlier batches are in the database and
runs them as one batch (``WorkStore.dispatch``: one transaction for the reports, one for the
checkouts). Alone, a request is sent at once, without waiting for company: batching adds no latency
to a quiet server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from perdure.store.work import WorkStore
from perdure.store.workrequests import DispatchOutcome, Operation

log = logging.getLogger("perdure.work")

#: Operations per batch: enough that the database's per-transaction costs vanish, few enough that a
#: batch's rows are not locked for long.
MAX_BATCH = 64
#: Batches of one process in the database at once: one can be sent while another's replies are read.
MAX_RUNNING = 2
#: A batch that would start while another is in the database waits for this many operations, or for
#: ``LINGER_S``, whichever comes first. Without it, the first request to arrive after a batch's answers
#: went out took the free place alone, and the thirty that followed it waited for the next: batches
#: of 1 and 30 in turn, the 1 costing the database nearly as much as the 30.
MIN_COMPANY = 16
LINGER_S = 0.002


class Batcher:
    def __init__(
        self,
        store: WorkStore,
        *,
        max_batch: int = MAX_BATCH,
        max_running: int = MAX_RUNNING,
        min_company: int = MIN_COMPANY,
        linger_s: float = LINGER_S,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_running = max_running
        self.min_company = min_company
        self.linger_s = linger_s
        self._linger: asyncio.TimerHandle | None = None
        self._lingered = False
        self._pending: deque[tuple[Operation, asyncio.Future[DispatchOutcome]]] = deque()
        self._running: set[asyncio.Task[None]] = set()
        #: Clients with an operation in a running batch.
        self._busy: set[str] = set()

    async def submit(self, operation: Operation) -> DispatchOutcome:
        """The operation's outcome. A database error raises for this operation alone: a batch that
        fails is sent again one operation at a time."""
        future: asyncio.Future[DispatchOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._pending and len(self._running) < self.max_running:
            if self._running and len(self._pending) < self.min_company and not self._lingered:
                if self._linger is None:
                    self._linger = asyncio.get_running_loop().call_later(self.linger_s, self._linger_over)
                return
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            batch = self._take()
            if not batch:
                return  # what is pending waits for its clients' running operations
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _linger_over(self) -> None:
        self._linger = None
        self._lingered = True
        try:
            self._start()
        finally:
            self._lingered = False

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    def _take(self) -> list[tuple[Operation, asyncio.Future[DispatchOutcome]]]:
        """The oldest pending operations, one per client: a client's next operation (a retry sent
        while the first is still running) waits until that one is done."""
        batch: list[tuple[Operation, asyncio.Future[DispatchOutcome]]] = []
        later: list[tuple[Operation, asyncio.Future[DispatchOutcome]]] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if item[1].done():
                continue  # its request is gone (the worker hung up) before the batch was sent
            if item[0].client_id in self._busy:
                later.append(item)
            else:
                self._busy.add(item[0].client_id)
                batch.append(item)
        self._pending.extendleft(reversed(later))
        return batch

    async def _run(self, batch: list[tuple[Operation, asyncio.Future[DispatchOutcome]]]) -> None:
        loop = asyncio.get_running_loop()
        futures = [future for _, future in batch]

        def settle(index: int, result: DispatchOutcome | BaseException) -> None:
            future = futures[index]
            if not future.done():  # else its request is gone
                if isinstance(result, DispatchOutcome):
                    future.set_result(result)
                else:
                    future.set_exception(result)

        early: set[int] = set()

        def answer_early(index: int, outcome: DispatchOutcome) -> None:
            early.add(index)
            settle(index, outcome)
            # The client's next operation need not wait for the rest of this batch.
            self._busy.discard(batch[index][0].client_id)
            self._start()

        # Answers given in a row by the batch's thread wake the event loop once (each wake-up is a
        # write to its self-pipe and a turn of the loop).
        given: list[tuple[int, DispatchOutcome]] = []
        lock = threading.Lock()

        def deliver() -> None:
            with lock:
                answers = given[:]
                given.clear()
            for index, outcome in answers:
                answer_early(index, outcome)

        def answer(index: int, outcome: DispatchOutcome) -> None:  # in the batch's thread
            with lock:
                given.append((index, outcome))
                if len(given) > 1:
                    return  # a wake-up is on its way and will take this one too
            loop.call_soon_threadsafe(deliver)

        try:
            results = await run_in_threadpool(self._dispatch, [operation for operation, _ in batch], answer)
        except Exception as exc:
            results = [exc] * len(batch)
        except BaseException:  # cancelled: the server is stopping
            for future in futures:
                future.cancel()
            raise
        finally:
            self._busy.difference_update(
                operation.client_id for index, (operation, _) in enumerate(batch) if index not in early
            )
        for index, result in enumerate(results):
            if result is not None:
                settle(index, result)

    def _dispatch(
        self, operations: list[Operation], answer: Callable[[int, DispatchOutcome], None]
    ) -> list[DispatchOutcome | Exception | None]:
        """In a thread: the batch, or after a database error each operation not yet answered alone,
        so that one operation that cannot be applied does not fail the others. An operation answered
        already (``answer``) is None here."""
        answered: set[int] = set()

        def note(index: int, outcome: DispatchOutcome) -> None:
            answered.add(index)
            answer(index, outcome)

        try:
            outcomes = self.store.dispatch(operations, note)
            return [None if i in answered else outcome for i, outcome in enumerate(outcomes)]
        except Exception as exc:
            if len(operations) == 1:
                return [None if answered else exc]
            log.warning(
                "a batch of %d worker operations failed (%s); sending each not yet answered alone",
                len(operations),
                exc,
            )
        results: list[DispatchOutcome | Exception | None] = []
        for index, operation in enumerate(operations):
            if index in answered:
                results.append(None)
                continue
            try:
                results.extend(self.store.dispatch([operation]))
            except Exception as exc:
                results.append(exc)
        return results
