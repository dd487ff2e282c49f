"""The store's metric hooks, against the store itself on both databases: each event the store reports
(submit, checkout, report, failure, completion) reaches the installed recorder, and the samples it
answers are written in that same transaction; with no recorder, nothing is written."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from perdure.jobscript import parse_job_script
from perdure.store import hooks, metricstore, migrate
from perdure.store.clients import ClientStore, Profile, ensure_cluster_id
from perdure.store.database import Database
from perdure.store.jobs import JobStore
from perdure.store.work import WorkStore
from perdure.store.workrequests import FailureLimits
from tests.jobs import script, task

AT_US = 1_234_000_000


class Recorder:
    """Answers each hook with one sample named after it (on object ``o-<clientgroups>``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def now_us(self) -> int:
        return AT_US

    def _sample(self, hook: str, clientgroups: str | None, *args: Any) -> Sequence[metricstore.Sample]:
        self.calls.append((hook, (clientgroups, *args)))
        return [(hook, f"o-{clientgroups}", 1.0)]

    def job_submitted(self, clientgroups: str) -> Sequence[metricstore.Sample]:
        return self._sample("job_submitted", clientgroups)

    def job_completed(self, clientgroups: str, runtime_s: float) -> Sequence[metricstore.Sample]:
        return self._sample("job_completed", clientgroups)

    def workunit_checked_out(
        self, clientgroups: str, node_id: str | None, queued_since_us: int, now_us: int
    ) -> Sequence[metricstore.Sample]:
        return self._sample("workunit_checked_out", clientgroups, node_id)

    def workunit_done(self, clientgroups: str, node_id: str | None) -> Sequence[metricstore.Sample]:
        return self._sample("workunit_done", clientgroups, node_id)

    def workunit_failed(
        self, clientgroups: str, node_id: str | None, *, job_failed: bool
    ) -> Sequence[metricstore.Sample]:
        return self._sample("workunit_failed", clientgroups, node_id, job_failed)

    def checkpoint_taken(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, size_bytes: float
    ) -> Sequence[metricstore.Sample]:
        return self._sample("checkpoint_taken", clientgroups, node_id, ok)

    def restored(
        self, clientgroups: str | None, node_id: str | None, *, ok: bool, duration_s: float, saved_s: float
    ) -> Sequence[metricstore.Sample]:
        return self._sample("restored", clientgroups, node_id, ok)


HOOKS = [
    "job_submitted",
    "job_completed",
    "workunit_checked_out",
    "workunit_done",
    "workunit_failed",
    "checkpoint_taken",
    "restored",
]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A recorder installed for the test; whatever was installed before comes back after it."""
    before = hooks.recorder()
    found = Recorder()
    hooks.install(found)
    try:
        yield found
    finally:
        hooks.install(before)


@pytest.fixture
def no_recorder() -> Iterator[None]:
    before = hooks.recorder()
    hooks.install(None)
    try:
        yield
    finally:
        hooks.install(before)


def recorded(db: Database) -> list[tuple[str, str, float]]:
    """The events written so far (none is folded in these tests)."""
    with db.read() as conn:
        _rows, pending = metricstore.totals_rows(conn, HOOKS, 0, 0, 1, None)
    return sorted(pending)


def run_one_job(db: Database, tmp_path: Path, status: str, *, max_work_failure: int = 3) -> WorkStore:
    """Submit a one-workunit job for client group ``qa``, check it out on node ``n1`` and report it."""
    jobs = JobStore(db, tmp_path)
    work = WorkStore(db, FailureLimits(max_work_failure=max_work_failure))
    clients = ClientStore(db, lambda: 300.0, ensure_cluster_id(db))
    spec = parse_job_script(json.dumps(script(task("t"), clientgroups="qa")).encode())
    jobs.submit(spec, "{}", None)
    client_id = clients.register(Profile(group="qa", node_id="n1", apps=["*"]))["id"]
    leased = work.checkout(client_id)
    assert work.report(leased["id"], client_id, status) == "ok"
    return work


def test_a_job_run_to_completion_is_recorded_in_the_store_transactions(
    db: Database, tmp_path: Path, recorder: Recorder
) -> None:
    run_one_job(db, tmp_path, "done")

    assert [hook for hook, _ in recorder.calls] == [
        "job_submitted",
        "workunit_checked_out",
        "workunit_done",
        "job_completed",
    ]
    assert ("workunit_done", ("qa", "n1")) in recorder.calls  # the reporting client's node
    assert recorded(db) == [
        ("job_completed", "o-qa", 1.0),
        ("job_submitted", "o-qa", 1.0),
        ("workunit_checked_out", "o-qa", 1.0),
        ("workunit_done", "o-qa", 1.0),
    ]
    with db.read() as conn:
        _rows, pending = metricstore.totals_rows(conn, HOOKS, 0, 0, 1, (AT_US, AT_US + 1))
    assert len(pending) == 4  # each at the recorder's time


def test_a_failure_that_ends_the_job_is_recorded_as_such(
    db: Database, tmp_path: Path, recorder: Recorder
) -> None:
    run_one_job(db, tmp_path, "fail", max_work_failure=1)

    assert ("workunit_failed", ("qa", "n1", True)) in recorder.calls
    assert ("workunit_failed", "o-qa", 1.0) in recorded(db)


def test_without_a_recorder_the_store_writes_no_metric_events(
    db: Database, tmp_path: Path, no_recorder: None
) -> None:
    run_one_job(db, tmp_path, "done")

    assert recorded(db) == []
    assert hooks.Samples().insert() is None


def test_a_rolled_back_transaction_counts_nothing(db: Database, recorder: Recorder) -> None:
    with pytest.raises(RuntimeError), db.write() as conn:
        hooks.job_submitted(conn, "qa")
        raise RuntimeError("the change this would have counted failed")

    assert recorder.calls == [("job_submitted", ("qa",))]
    assert recorded(db) == []
