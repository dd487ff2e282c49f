"""The batcher: worker operations that arrive while a batch is in the database go together in the next,
one operation per client at a time, and a batch that fails is sent again one operation at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from perdure.api.batcher import Batcher
from perdure.store.workrequests import CheckoutRequest, DispatchOutcome, Operation, ReportRequest


class FakeStore:
    """Records each batch; the first waits until ``release`` is set, so others can pile up. With
    ``early``, the operations so described are answered before the batch waits (as the store answers
    those that do not wait for a task's completion)."""

    def __init__(self, poison: str | None = None, early: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.poison = poison
        self.early = early

    def dispatch(
        self, operations: Sequence[Operation], answer: Callable[[int, DispatchOutcome], None] | None = None
    ) -> list[DispatchOutcome]:
        self.batches.append([describe(op) for op in operations])
        outcomes = [DispatchOutcome(checkout={"id": describe(op)}) for op in operations]
        for n, op in enumerate(operations):
            if describe(op) in self.early and answer is not None:
                answer(n, outcomes[n])
        if len(self.batches) == 1:
            assert self.release.wait(10)
        if any(describe(op) == self.poison for op in operations):
            raise RuntimeError("the database refused the batch")
        return outcomes


def describe(operation: Operation) -> str:
    if operation.report is not None:
        return f"report:{operation.report.client_id}:{operation.report.wu_id}"
    assert operation.checkout is not None
    return f"checkout:{operation.checkout.client_id}"


def checkout(client_id: str) -> Operation:
    return Operation(checkout=CheckoutRequest(client_id))


def report(client_id: str, wu_id: str) -> Operation:
    return Operation(report=ReportRequest(wu_id, client_id, "done"))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for a state, not for a time: look every millisecond, fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def run_all(batcher: Batcher, store: FakeStore, operations: list[Operation]) -> list[Any]:
    """Submit the first operation, then the rest while the first batch is held in the 'database'."""
    first = asyncio.ensure_future(batcher.submit(operations[0]))
    await until(lambda: bool(store.batches), "the first batch is in the database")
    rest = [asyncio.ensure_future(batcher.submit(op)) for op in operations[1:]]
    # Settled: every operation is pending or in a batch the 'database' has seen (a batch started after
    # lingering counts once its thread has called dispatch), and no batch is lingering to start.
    await until(
        lambda: (
            batcher._linger is None
            and len(batcher._pending) + sum(map(len, store.batches)) == len(operations)
        ),
        "every operation is pending or sent",
    )
    store.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_operations_arriving_during_a_batch_go_together_in_the_next() -> None:
    store = FakeStore()
    batcher = Batcher(store, max_running=1)  # type: ignore[arg-type]
    operations = [checkout(f"c{n}") for n in range(6)]
    outcomes = asyncio.run(run_all(batcher, store, operations))
    assert store.batches == [["checkout:c0"], [f"checkout:c{n}" for n in range(1, 6)]]
    assert [o.checkout["id"] for o in outcomes] == [describe(op) for op in operations]


def test_a_batch_holds_at_most_max_batch_operations() -> None:
    store = FakeStore()
    batcher = Batcher(store, max_batch=2, max_running=1)  # type: ignore[arg-type]
    asyncio.run(run_all(batcher, store, [checkout(f"c{n}") for n in range(6)]))
    assert [len(batch) for batch in store.batches] == [1, 2, 2, 1]


def test_a_clients_operations_are_never_in_the_database_at_once() -> None:
    store = FakeStore()
    batcher = Batcher(store, max_running=2)  # type: ignore[arg-type]
    operations = [report("c1", "w1"), report("c1", "w2"), checkout("c2"), checkout("c1")]
    asyncio.run(run_all(batcher, store, operations))
    # c1's second and third operation each wait for the one before, though a batch slot was free.
    assert store.batches == [["report:c1:w1"], ["checkout:c2"], ["report:c1:w2"], ["checkout:c1"]]


def test_a_failed_batch_is_sent_again_one_operation_at_a_time() -> None:
    store = FakeStore(poison="checkout:c2")
    batcher = Batcher(store, max_running=1)  # type: ignore[arg-type]
    operations = [checkout("c0"), checkout("c1"), checkout("c2"), checkout("c3")]
    outcomes = asyncio.run(run_all(batcher, store, operations))
    assert store.batches[1] == ["checkout:c1", "checkout:c2", "checkout:c3"]
    assert store.batches[2:] == [["checkout:c1"], ["checkout:c2"], ["checkout:c3"]]
    assert outcomes[1].checkout == {"id": "checkout:c1"} and outcomes[3].checkout == {"id": "checkout:c3"}
    assert isinstance(outcomes[2], RuntimeError)


def test_a_lone_operation_is_sent_at_once() -> None:
    store = FakeStore()
    store.release.set()
    batcher = Batcher(store)  # type: ignore[arg-type]

    async def one() -> DispatchOutcome:
        return await asyncio.wait_for(batcher.submit(checkout("c1")), timeout=5)

    assert asyncio.run(one()).checkout == {"id": "checkout:c1"}
    failing = FakeStore(poison="checkout:c1")
    failing.release.set()
    with pytest.raises(RuntimeError, match="refused the batch"):
        asyncio.run(Batcher(failing).submit(checkout("c1")))  # type: ignore[arg-type]


def test_an_operation_answered_early_frees_its_client_before_the_batch_ends() -> None:
    store = FakeStore(early=frozenset({"checkout:c0"}))
    batcher = Batcher(store, max_running=2)  # type: ignore[arg-type]

    async def scenario() -> tuple[DispatchOutcome, DispatchOutcome, list[list[str]]]:
        first = await asyncio.wait_for(batcher.submit(checkout("c0")), timeout=5)
        # Answered while its batch is still in the 'database': c0's next operation goes at once.
        second = await asyncio.wait_for(batcher.submit(report("c0", "w1")), timeout=5)
        seen = [list(batch) for batch in store.batches]
        store.release.set()
        await until(lambda: not batcher._running, "every batch is done")
        return first, second, seen

    first, second, seen = asyncio.run(scenario())
    assert first.checkout == {"id": "checkout:c0"} and second.checkout == {"id": "report:c0:w1"}
    assert seen == [["checkout:c0"], ["report:c0:w1"]]


def test_answers_given_in_a_row_all_arrive_while_the_batch_is_held() -> None:
    """The batch's thread answers three operations in a row (one wake-up of the loop takes them all):
    each caller gets its own outcome before the batch ends."""
    store = FakeStore(early=frozenset({"checkout:c0", "checkout:c1", "checkout:c2"}))
    batcher = Batcher(store, max_running=1, min_company=1)  # type: ignore[arg-type]

    async def scenario() -> list[DispatchOutcome]:
        held = asyncio.ensure_future(batcher.submit(checkout("c9")))  # the first batch, held
        await until(lambda: bool(store.batches), "the first batch is in the database")
        answers = asyncio.gather(*(batcher.submit(checkout(f"c{n}")) for n in range(3)))
        store.release.set()
        outcomes = await asyncio.wait_for(answers, timeout=5)
        await asyncio.wait_for(held, timeout=5)
        return list(outcomes)

    outcomes = asyncio.run(scenario())
    assert [o.checkout for o in outcomes] == [{"id": f"checkout:c{n}"} for n in range(3)]


def test_a_failed_batch_does_not_send_again_what_it_answered() -> None:
    store = FakeStore(poison="checkout:c2", early=frozenset({"checkout:c1"}))
    batcher = Batcher(store, max_running=1)  # type: ignore[arg-type]
    operations = [checkout("c0"), checkout("c1"), checkout("c2")]
    outcomes = asyncio.run(run_all(batcher, store, operations))
    assert store.batches[1:] == [["checkout:c1", "checkout:c2"], ["checkout:c2"]]
    assert outcomes[1].checkout == {"id": "checkout:c1"}
    assert isinstance(outcomes[2], RuntimeError)


def test_a_second_batch_waits_briefly_for_company() -> None:
    """While one batch is in the database, a lone operation waits up to ``linger_s`` for others, so
    that batches of 1 and of many do not alternate; with ``min_company`` pending it goes at once."""
    store = FakeStore()
    batcher = Batcher(store, max_running=2, min_company=3, linger_s=1.0)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
        held = asyncio.ensure_future(batcher.submit(checkout("c0")))
        await until(lambda: bool(store.batches), "the first batch is in the database")
        lone = asyncio.ensure_future(batcher.submit(checkout("c1")))
        await until(lambda: batcher._linger is not None, "c1 lingers")
        waiting = [list(batch) for batch in store.batches]  # c1 lingers: not sent yet
        await lone
        after_linger = [list(batch) for batch in store.batches]
        crowd = [asyncio.ensure_future(batcher.submit(checkout(f"c{n}"))) for n in range(2, 5)]
        await asyncio.wait_for(asyncio.gather(*crowd), timeout=0.5)  # sooner than the linger
        store.release.set()
        await held
        return waiting, after_linger, [list(batch) for batch in store.batches]

    waiting, after_linger, batches = asyncio.run(scenario())
    assert waiting == [["checkout:c0"]]
    assert after_linger == [["checkout:c0"], ["checkout:c1"]]
    assert batches[2] == ["checkout:c2", "checkout:c3", "checkout:c4"]
