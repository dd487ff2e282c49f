"""Worker requests that arrive together are served together.

Under load, many workers report and check out at once. Each request costs the database a transaction
and a few round trips, most of which do not depend on how many workunits they touch, so a server
process gathers the worker operations that arrive while its earlier batches are in the database and
runs them as one batch (``WorkStore.dispatch``: one transaction for the reports, one for the
checkouts). Alone, a request is sent at once, without waiting for company: batching adds no latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from starlette.concurrency import run_in_threadpool

from perdure.store.work import Operation, Outcome, WorkStore

log = logging.getLogger("perdure.work")

#: Operations per batch: enough that the database's per-transaction costs vanish, few enough that a
#: batch's rows are not locked for long.
MAX_BATCH = 64
#: Batches of one process in the database at once: one can be sent while another's replies are read.
MAX_RUNNING = 2


class Batcher:
    def __init__(
        self, store: WorkStore, *, max_batch: int = MAX_BATCH, max_running: int = MAX_RUNNING
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_running = max_running
        self._pending: deque[tuple[Operation, asyncio.Future[Outcome]]] = deque()
        self._running: set[asyncio.Task[None]] = set()
        #: Clients with an operation in a running batch.
        self._busy: set[str] = set()

    async def submit(self, operation: Operation) -> Outcome:
        """The operation's outcome. A database error raises for this operation alone: a batch that
        fails is sent again one operation at a time."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._pending and len(self._running) < self.max_running:
            batch = self._take()
            if not batch:
                return  # what is pending waits for its clients' running operations
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    def _take(self) -> list[tuple[Operation, asyncio.Future[Outcome]]]:
        """The oldest pending operations, one per client: a client's next operation (a retry sent
        while the first is still running) waits until that one is done."""
        batch: list[tuple[Operation, asyncio.Future[Outcome]]] = []
        later: list[tuple[Operation, asyncio.Future[Outcome]]] = []
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

    async def _run(self, batch: list[tuple[Operation, asyncio.Future[Outcome]]]) -> None:
        results: list[Outcome | Exception]
        try:
            results = await run_in_threadpool(self._dispatch, [operation for operation, _ in batch])
        except Exception as exc:
            results = [exc] * len(batch)
        except BaseException:  # cancelled: the server is stopping
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._busy.difference_update(operation.client_id for operation, _ in batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Outcome):
                future.set_result(result)
            else:
                future.set_exception(result)

    def _dispatch(self, operations: list[Operation]) -> list[Outcome | Exception]:
        """In a thread: the batch, or after a database error each operation alone, so that one
        operation that cannot be applied does not fail the others."""
        try:
            return list(self.store.dispatch(operations))
        except Exception as exc:
            if len(operations) == 1:
                return [exc]
            log.warning(
                "a batch of %d worker operations failed (%s); sending each alone", len(operations), exc
            )
        results: list[Outcome | Exception] = []
        for operation in operations:
            try:
                results.extend(self.store.dispatch([operation]))
            except Exception as exc:
                results.append(exc)
        return results
