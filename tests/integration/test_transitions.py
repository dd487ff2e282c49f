"""The transition table is what the system does, on SQLite and PostgreSQL.

Each scenario drives the stores (submit, checkout, every report, every job and client operation, the
sweeps) as the API would, with database triggers (``tests/statewatch.py``) logging every write of a
state column: every new row must start in its machine's initial state and every change must be a move
of ``perdure.states``' table. Together the scenarios make every move of the table, so a move the system
can no longer make shows up too: the table stays exactly what the system does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from perdure.errors import Conflict
from perdure.protocol import ClientDeleted, ClientSuspended, LeaseLost, Refusal
from perdure.spot.records import CheckpointRef, CheckpointTaken, Preemption
from perdure.states import INITIAL_STATES, TRANSITIONS, ClientState, IllegalTransition, JobState
from perdure.store import transitions
from perdure.store.report import report_batch
from perdure.store.schema import clients, workunits
from perdure.store.workrequests import ReportRequest
from tests import statewatch
from tests.domain import World, open_world
from tests.jobs import task


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with open_world(db_url, tmp_path) as opened:
        yield opened


def _checkpoint(world: World, wu_id: str, name: str) -> None:
    world.spot.checkpoint_taken(
        wu_id,
        world.id(name),
        CheckpointTaken(
            ok=True, name="000001-a1", engine="workdir", created=time.time(), checksum="a" * 64, attempt=1
        ),
    )


# ---- the scenarios ---------------------------------------------------------------------------------


def run_to_completion(w: World) -> None:
    """Workunits done and failed under the limit, a dependency met, the job completed and rerun."""
    job = w.submit(task("a", totalwork=2), task("b", depends=["a"]))
    for name in ("c1", "c2", "c3"):
        w.register(name)
    first = w.checkout("c1")
    w.report(first, "c1", "done")
    second = w.checkout("c2")
    w.report(second, "c2", "fail")  # 1 of 2 failures: back in the queue
    assert w.workunit_state(second) == "queued"
    assert w.checkout("c3") == second  # c2 skips it now
    w.report(second, "c3", "done")  # task a completes, b is enqueued
    last = w.checkout("c1")
    w.report(last, "c1", "done")
    assert w.job_state(job) == JobState.COMPLETED
    w.jobs.resubmit(job)
    assert w.job_state(job) == JobState.QUEUED


def suspended_by_failures_and_resumed(w: World) -> None:
    """A workunit failing ``max_work_failure`` times suspends its job; resume picks up where it was."""
    job = w.submit(task("a", totalwork=2))
    for name in ("c1", "c2", "c3", "c4"):
        w.register(name)
    w.report(w.checkout("c1"), "c1", "done")
    failing = w.checkout("c2")
    w.report(failing, "c2", "fail")
    w.report(w.checkout("c3"), "c3", "fail")  # the second failure: held, the job suspended
    assert (w.workunit_state(failing), w.job_state(job)) == ("suspend", JobState.SUSPEND)
    w.jobs.resume(job)
    assert (w.workunit_state(failing), w.job_state(job)) == ("queued", JobState.QUEUED)
    w.report(w.checkout("c4"), "c4", "done")
    assert w.job_state(job) == JobState.COMPLETED


def suspended_by_hand_resumed_resubmitted_deleted(w: World) -> None:
    job = w.submit(task("a"))
    w.jobs.suspend(job)  # queued work is held
    w.jobs.resume(job)
    w.jobs.suspend(job)
    w.jobs.resubmit(job)
    w.jobs.delete(job)
    w.jobs.delete(job)  # again: nothing changes
    assert w.job_state(job) == JobState.DELETED


def failed_permanently(w: World) -> None:
    """Exit 42 fails the workunit, its task and its job for good: resume is refused, a reset reruns it."""
    job = w.submit(task("a", totalwork=2), task("b", depends=["a"]))
    w.register("c1")
    w.register("c2")
    doomed = w.checkout("c1")
    other = w.checkout("c2")
    w.report(doomed, "c1", "failed-permanent")
    assert (w.job_state(job), w.workunit_state(doomed), w.workunit_state(other)) == (
        JobState.FAILED_PERMANENT,
        "failed-permanent",
        "suspend",
    )
    with pytest.raises(Conflict):
        w.jobs.resume(job)
    with pytest.raises(LeaseLost):
        w.work.report(other, w.id("c2"), "done")
    w.jobs.recompute(job, "a")
    assert w.job_state(job) == JobState.QUEUED


def deleted_while_running(w: World) -> None:
    job = w.submit(task("a"), task("b", depends=["a"]))
    w.register("c1")
    running = w.checkout("c1")
    w.jobs.delete(job)
    assert w.workunit_state(running) == "suspend"
    with pytest.raises(LeaseLost):
        w.work.report(running, w.id("c1"), "done")


def deleted_when_completed_failed_or_suspended(w: World) -> None:
    w.register("c1")
    completed, failed, suspended = (w.submit(task("a")) for _ in range(3))
    w.report(w.checkout("c1"), "c1", "done")
    w.report(w.checkout("c1"), "c1", "failed-permanent")
    w.jobs.suspend(suspended)
    assert [w.job_state(j) for j in (completed, failed, suspended)] == [
        JobState.COMPLETED,
        JobState.FAILED_PERMANENT,
        JobState.SUSPEND,
    ]
    for job in (completed, failed, suspended):
        w.jobs.delete(job)
        assert w.job_state(job) == JobState.DELETED


def preempted_restored_and_held(w: World) -> None:
    job = w.submit(task("a"))
    w.register("c1")
    w.register("c2")
    wu = w.checkout("c1")
    _checkpoint(w, wu, "c1")
    checkpoint = CheckpointRef(
        name="000001-a1",
        engine="workdir",
        kind="iterative",
        created=time.time(),
        progress_s=1.0,
        size=1,
        checksum="a" * 64,
        attempt=1,
    )
    w.report(wu, "c1", "preempted", preemption=Preemption(outcome="iterative", checkpoint=checkpoint))
    assert w.workunit_state(wu) == "preempted"
    assert w.checkout("c2") == wu  # restored elsewhere, ahead of queued work
    w.report(wu, "c2", "preempted", preemption=Preemption(outcome="none"))
    w.jobs.suspend(job)
    assert w.workunit_state(wu) == "suspend"


def clients_suspended_resumed_deleted_revived(w: World) -> None:
    w.submit(task("a", totalwork=4))
    w.register("c1")
    held = w.checkout("c1")
    w.clients.suspend(w.id("c1"))  # its lease goes back
    assert w.workunit_state(held) == "queued"
    with pytest.raises(ClientSuspended) as refused:
        w.work.checkout(w.id("c1"))
    assert refused.value.code == Refusal.CLIENT_SUSPENDED
    w.clients.resume(w.id("c1"))
    held = w.checkout("c1")
    w.clients.delete(w.id("c1"))
    assert w.workunit_state(held) == "queued"
    with pytest.raises(ClientDeleted):
        w.work.checkout(w.id("c1"))
    w.register("c1")  # the same worker registers again: it starts afresh
    w.checkout("c1")
    w.clients.suspend(w.id("c1"))
    w.clients.delete(w.id("c1"))
    # max_client_failure (3) failures in a row suspend a client.
    w.register("c2")
    for _ in range(3):
        w.report(w.checkout("c2"), "c2", "fail")
    with pytest.raises(ClientSuspended):
        w.work.checkout(w.id("c2"))


def lost_and_restarted_clients(w: World) -> None:
    w.submit(task("a", totalwork=3))
    w.register("c1")
    w.register("c2")
    forgotten = w.checkout("c1")
    silent = w.checkout("c2")
    _checkpoint(w, silent, "c2")
    w.register("c1", current_work=[])  # c1 restarted and lost its work
    assert w.workunit_state(forgotten) == "queued"
    w.ttl_s[0] = 0.0
    try:
        assert w.clients.requeue_lost() >= 1  # c2 went silent; its work has a checkpoint to restore from
    finally:
        w.ttl_s[0] = 300.0
    assert w.workunit_state(silent) == "preempted"


def suspended_between_report_and_completion(w: World) -> None:
    """A job suspended after its last report was committed but before its task was completed (a server
    stopped in between) completes as soon as it is resumed."""
    job = w.submit(task("a"))
    w.register("c1")
    wu = w.checkout("c1")
    results, _finished = report_batch(w.work.db, w.work.limits, [ReportRequest(wu, w.id("c1"), "done")])
    assert results == ["ok"]
    w.jobs.suspend(job)
    w.jobs.resume(job)
    assert w.job_state(job) == JobState.COMPLETED


def recovered_after_damage(w: World) -> None:
    """``recoverall`` resets tasks whose workunits are gone (a hand edit) and enqueues them again."""
    job = w.submit(task("a", totalwork=2), task("b"))
    w.register("c1")
    w.checkout("c1")
    with w.db.write() as conn:
        conn.execute(delete(workunits).where(workunits.c.job_id == job))
    assert w.jobs.recover_all().endswith("missing jobs recovered")
    assert w.job_state(job) == JobState.IN_PROGRESS
    w.report(w.checkout("c1"), "c1", "done")  # the tasks have their workunits again


SCENARIOS: list[Callable[[World], None]] = [
    run_to_completion,
    suspended_by_failures_and_resumed,
    suspended_by_hand_resumed_resubmitted_deleted,
    failed_permanently,
    deleted_while_running,
    deleted_when_completed_failed_or_suspended,
    preempted_restored_and_held,
    clients_suspended_resumed_deleted_revived,
    lost_and_restarted_clients,
    suspended_between_report_and_completion,
    recovered_after_damage,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_every_state_write_is_a_move_of_the_table(world: World, scenario: Callable[[World], None]) -> None:
    scenario(world)
    assert statewatch.moves(world.db), "the watch saw nothing: the triggers are not working"
    assert statewatch.illegal(world.db) == []


def test_together_the_scenarios_make_every_move_of_the_table_and_no_other(world: World) -> None:
    for n, scenario in enumerate(SCENARIOS):
        world.group = f"s{n}"
        scenario(world)
    log = statewatch.moves(world.db)
    made = {(m.machine, m.machine(m.old), m.machine(m.new)) for m in log if m.old is not None}
    created = {(m.machine, m.machine(m.new)) for m in log if m.old is None}
    assert statewatch.illegal(world.db) == []
    missing = sorted(f"{machine.__name__}: {a} -> {b}" for machine, a, b in TRANSITIONS - made)
    assert not missing, (
        f"moves in the table the system never makes (remove them, or add a scenario): {missing}"
    )
    assert created == {(machine, state) for machine, state in INITIAL_STATES.items()}


# ---- the guards refuse, and write nothing ---------------------------------------------------------


def test_a_move_from_a_state_the_table_does_not_allow_is_refused_and_not_written(world: World) -> None:
    job = world.submit(task("a"))
    world.jobs.delete(job)
    before = statewatch.last_seq(world.db)
    completed = "JobState cannot go from 'deleted' to 'completed'"
    with pytest.raises(IllegalTransition, match=completed), world.db.write() as conn:
        transitions.complete_job(conn, job, {})
    with (
        pytest.raises(IllegalTransition, match="JobState cannot go from 'deleted' to 'queued'"),
        world.db.write() as conn,
    ):
        transitions.requeue_job(conn, job, {})
    assert world.job_state(job) == JobState.DELETED
    assert statewatch.moves(world.db, before) == []


def test_a_set_based_guard_leaves_rows_in_other_states_alone(world: World) -> None:
    """Re-queueing a client's leases touches only its checked-out workunits, whatever the caller asks."""
    world.submit(task("a", totalwork=2))
    world.register("c1")
    held = world.checkout("c1")
    before = statewatch.last_seq(world.db)
    with world.db.write() as conn:
        moved = transitions.requeue_leases(conn, [workunits.c.job_id.is_not(None)], 1)  # every workunit
    assert [row.id for row in moved] == [held]
    assert [(m.old, m.new) for m in statewatch.moves(world.db, before)] == [("checkout", "queued")]


def test_client_moves_refuse_what_the_table_does_not_allow(world: World) -> None:
    world.register("c1")
    c1 = world.id("c1")
    with world.db.write() as conn:
        assert not transitions.resume_client(conn, c1)  # not suspended
        assert not transitions.revive_client(conn, c1)  # not deleted
        assert transitions.delete_client(conn, c1, 1)
        assert not transitions.suspend_client(conn, c1, "no")  # deleted: cannot be suspended
        row = conn.execute(select(clients).where(clients.c.id == c1)).one()
    assert transitions.client_state(row) == ClientState.DELETED
