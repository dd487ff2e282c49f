"""The domain rules, against a SQLite store directly (no HTTP): what each operation moves, what it
refuses and with which protocol code, and that it writes nothing the transition table does not allow
(every state write is watched by triggers, ``tests/statewatch.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from perdure.errors import Conflict
from perdure.protocol import (
    ClientDeleted,
    ClientNotFound,
    ClientSuspended,
    LeaseLost,
    NoWork,
    OutputsMissing,
    Refusal,
)
from perdure.states import ClientState, JobState
from perdure.store import transitions
from perdure.store.schema import clients, job_events
from tests import statewatch
from tests.domain import World, open_world
from tests.jobs import task


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_world(f"sqlite:///{tmp_path / 'perdure.db'}", tmp_path) as opened:
        yield opened
        assert statewatch.illegal(opened.db) == []


def events(world: World, job_id: str) -> list[str]:
    with world.db.read() as conn:
        return list(
            conn.execute(
                select(job_events.c.message).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
            ).scalars()
        )


def client_state(world: World, name: str) -> ClientState:
    with world.db.read() as conn:
        row = conn.execute(select(clients).where(clients.c.id == world.id(name))).one()
    return transitions.client_state(row)


def test_submit_enqueues_ready_tasks_straight_from_pending_to_queued(world: World) -> None:
    job = world.submit(task("a"), task("b", depends=["a"]))
    assert world.job_state(job) == JobState.QUEUED
    assert (world.task_state(f"{job}_a"), world.task_state(f"{job}_b")) == ("queued", "pending")
    made = [(m.table, m.old, m.new) for m in statewatch.moves(world.db) if m.old is not None]
    assert made == [("tasks", "pending", "queued"), ("jobs", "init", "queued")]


def test_resume_is_refused_for_a_failed_permanent_job_and_changes_nothing(world: World) -> None:
    job = world.submit(task("a", totalwork=2))
    world.register("c1")
    world.report(world.checkout("c1"), "c1", "failed-permanent")
    assert (world.job_state(job), world.task_state(f"{job}_a")) == ("failed-permanent", "failed-permanent")
    before = statewatch.last_seq(world.db)
    with pytest.raises(Conflict, match="is not in 'suspend' status"):
        world.jobs.resume(job)
    assert statewatch.moves(world.db, before) == []
    world.jobs.resubmit(job)  # only a reset runs it again
    assert (world.job_state(job), world.task_state(f"{job}_a")) == ("queued", "queued")


def test_resume_requeues_held_work_and_keeps_done_work(world: World) -> None:
    job = world.submit(task("a", totalwork=2))
    world.register("c1")
    done = world.checkout("c1")
    world.report(done, "c1", "done")
    held = world.checkout("c1")
    world.jobs.suspend(job)
    assert (world.workunit_state(done), world.workunit_state(held)) == ("done", "suspend")
    world.jobs.resume(job)
    assert (world.workunit_state(done), world.workunit_state(held)) == ("done", "queued")
    assert world.task_state(f"{job}_a") == "in-progress"  # where it was: one of two workunits done


def test_deleting_a_deleted_job_changes_nothing(world: World) -> None:
    job = world.submit(task("a"))
    world.jobs.delete(job)
    before = statewatch.last_seq(world.db)
    assert world.jobs.delete(job) == f"job deleted: {job}"
    assert statewatch.moves(world.db, before) == []
    assert events(world, job).count("job deleted") == 1


def test_a_client_suspended_for_failing_gives_back_its_other_work_but_not_the_failed_one_twice(
    world: World,
) -> None:
    job = world.submit(task("a", totalwork=3))
    world.register("c1")
    for _ in range(2):
        world.report(world.checkout("c1"), "c1", "fail")
    last = world.checkout("c1")
    world.report(last, "c1", "fail")  # the third failure in a row: max_client_failure
    assert client_state(world, "c1") == ClientState.SUSPENDED
    requeued = [m for m in statewatch.moves(world.db) if m.row_id == last and m.old == "checkout"]
    assert [(m.old, m.new) for m in requeued] == [("checkout", "queued")]  # once, by the failure rule
    assert not any("client suspended" in e and last in e for e in events(world, job))


def test_a_deleted_client_registering_again_starts_afresh(world: World) -> None:
    world.register("c1")
    world.clients.suspend(world.id("c1"))
    world.clients.delete(world.id("c1"))
    assert client_state(world, "c1") == ClientState.DELETED
    world.register("c1")
    assert client_state(world, "c1") == ClientState.ACTIVE
    assert world.clients.get(world.id("c1"))["Status"] == "online"


def test_client_operations_refuse_moves_the_table_does_not_allow(world: World) -> None:
    world.register("c1")
    with pytest.raises(Conflict, match="Client not suspended"):
        world.clients.resume(world.id("c1"))
    world.clients.suspend(world.id("c1"))
    with pytest.raises(Conflict, match="Client already suspended"):
        world.clients.suspend(world.id("c1"))


@pytest.mark.parametrize(
    ("setup", "refusal", "code"),
    [
        ("unknown", ClientNotFound, Refusal.CLIENT_NOT_FOUND),
        ("suspended", ClientSuspended, Refusal.CLIENT_SUSPENDED),
        ("deleted", ClientDeleted, Refusal.CLIENT_DELETED),
        ("idle", NoWork, Refusal.NO_WORK),
    ],
)
def test_checkout_refusals_carry_their_code(
    world: World, setup: str, refusal: type[Exception], code: Refusal
) -> None:
    if setup != "unknown":
        world.register("c1")
    if setup == "suspended":
        world.clients.suspend(world.id("c1"))
    elif setup == "deleted":
        world.clients.delete(world.id("c1"))
    with pytest.raises(refusal) as caught:
        world.work.checkout(world.id("c1"))
    assert getattr(caught.value, "code", None) == code


def test_report_refusals_carry_their_code_and_move_nothing(world: World) -> None:
    world.submit(task("a", outputs=[{"filename": "out.txt"}]))
    world.register("c1")
    world.register("c2")
    wu = world.checkout("c1")
    before = statewatch.last_seq(world.db)
    with pytest.raises(LeaseLost) as lost:
        world.work.report(wu, world.id("c2"), "done")
    assert lost.value.code == Refusal.LEASE_LOST
    with pytest.raises(OutputsMissing, match=r"without uploading outputs: out\.txt") as missing:
        world.work.report(wu, world.id("c1"), "done")
    assert missing.value.code == Refusal.OUTPUTS_MISSING
    assert statewatch.moves(world.db, before) == []
    assert world.workunit_state(wu) == "checkout"
