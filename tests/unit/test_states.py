"""The job, task and workunit state machines: the moves users depend on, and a complete table."""

from __future__ import annotations

from collections import deque

import pytest

from perdure.states import (
    ACTIVE_JOB_STATES,
    LIVE_TASK_STATES,
    LIVE_WORKUNIT_STATES,
    REGISTERED_JOB_STATES,
    RERUNNABLE_JOB_STATES,
    IllegalTransition,
    JobState,
    TaskState,
    WorkunitState,
)

J, T, W = JobState, TaskState, WorkunitState
MACHINES = [JobState, TaskState, WorkunitState]
ALL_STATES = [state for machine in MACHINES for state in machine]


def reachable(start: J | T | W) -> set[J | T | W]:
    seen = {start}
    todo = deque([start])
    while todo:
        for nxt in todo.popleft().successors:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# --- the table is complete and self-consistent -----------------------------------------------------


@pytest.mark.parametrize("state", ALL_STATES, ids=lambda s: f"{type(s).__name__}.{s.name}")
def test_every_state_has_an_entry_in_the_table_within_its_own_machine(state: J | T | W) -> None:
    successors = state.successors  # KeyError here means the state was forgotten in the table
    assert isinstance(successors, frozenset)
    assert all(type(target) is type(state) for target in successors)


@pytest.mark.parametrize(
    ("machine", "start"), [(JobState, J.INIT), (TaskState, T.PENDING), (WorkunitState, W.QUEUED)]
)
def test_every_state_is_reachable_from_the_initial_state(machine: type[J | T | W], start: J | T | W) -> None:
    assert reachable(start) == set(machine)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
def test_check_raises_exactly_when_can_become_is_false(machine: type[J | T | W]) -> None:
    for source in machine:
        for target in machine:
            if source.can_become(target):
                source.check(target)
            else:
                with pytest.raises(IllegalTransition):
                    source.check(target)


def test_illegal_transition_message_names_the_machine_and_both_states() -> None:
    with pytest.raises(IllegalTransition) as caught:
        J.COMPLETED.check(J.SUSPEND)
    assert str(caught.value) == "JobState cannot go from 'completed' to 'suspend'"


def test_illegal_transition_message_for_a_workunit() -> None:
    with pytest.raises(IllegalTransition, match=r"WorkunitState cannot go from 'done' to 'queued'"):
        W.DONE.check(W.QUEUED)


def test_illegal_transition_is_a_value_error() -> None:
    assert issubclass(IllegalTransition, ValueError)


def test_state_values_are_awes_wire_strings() -> None:
    assert [s.value for s in JobState] == [
        "init",
        "queued",
        "in-progress",
        "completed",
        "suspend",
        "failed-permanent",
        "deleted",
    ]
    assert [s.value for s in TaskState] == [
        "pending",
        "ready",
        "queued",
        "in-progress",
        "completed",
        "suspend",
        "failed-permanent",
    ]
    assert [s.value for s in WorkunitState] == [
        "queued",
        "checkout",
        "done",
        "suspend",
        "failed-permanent",
        "preempted",
    ]
    assert J.IN_PROGRESS == "in-progress"
    assert JobState("failed-permanent") is J.FAILED_PERMANENT


# --- jobs ------------------------------------------------------------------------------------------


def test_submitted_job_goes_from_init_to_queued() -> None:
    assert J.INIT.successors == {J.QUEUED, J.DELETED}


def test_completed_job_can_be_requeued_or_deleted_but_not_suspended() -> None:
    assert J.COMPLETED.can_become(J.QUEUED)  # resubmit / recompute
    assert J.COMPLETED.can_become(J.DELETED)
    assert not J.COMPLETED.can_become(J.SUSPEND)
    assert J.COMPLETED.successors == {J.QUEUED, J.DELETED}


def test_failed_permanent_job_cannot_be_suspended_so_it_can_never_be_resumed() -> None:
    assert not J.FAILED_PERMANENT.can_become(J.SUSPEND)
    with pytest.raises(IllegalTransition, match="'failed-permanent' to 'suspend'"):
        J.FAILED_PERMANENT.check(J.SUSPEND)


def test_failed_permanent_job_can_still_be_resubmitted_or_deleted() -> None:
    assert J.FAILED_PERMANENT.successors == {J.QUEUED, J.DELETED}


def test_suspended_job_can_be_resumed_marked_failed_permanent_or_deleted() -> None:
    assert J.SUSPEND.successors == {J.QUEUED, J.FAILED_PERMANENT, J.DELETED}


def test_only_queued_or_running_jobs_can_be_suspended() -> None:
    assert {s for s in JobState if s.can_become(J.SUSPEND)} == {J.QUEUED, J.IN_PROGRESS}


def test_resume_target_queued_is_reachable_from_suspend_but_not_from_a_deleted_job() -> None:
    assert J.SUSPEND.can_become(J.QUEUED)
    assert not J.DELETED.can_become(J.QUEUED)


def test_every_job_state_can_be_deleted() -> None:
    assert all(s.can_become(J.DELETED) for s in JobState)


def test_deleted_is_terminal_except_deleting_again() -> None:
    assert J.DELETED.successors == {J.DELETED}
    for target in JobState:
        if target is not J.DELETED:
            with pytest.raises(IllegalTransition, match="'deleted' to"):
                J.DELETED.check(target)


def test_no_job_goes_back_to_init() -> None:
    assert not any(s.can_become(J.INIT) for s in JobState)


def test_running_job_can_complete_suspend_fail_or_be_requeued() -> None:
    assert J.IN_PROGRESS.successors == {J.COMPLETED, J.SUSPEND, J.FAILED_PERMANENT, J.QUEUED, J.DELETED}


def test_job_state_groups_match_awe() -> None:
    assert {J.QUEUED, J.IN_PROGRESS} == ACTIVE_JOB_STATES
    assert {J.QUEUED, J.IN_PROGRESS, J.SUSPEND} == REGISTERED_JOB_STATES
    assert {J.COMPLETED, J.SUSPEND, J.FAILED_PERMANENT} == RERUNNABLE_JOB_STATES


def test_every_rerunnable_job_can_be_requeued() -> None:
    assert all(s.can_become(J.QUEUED) for s in RERUNNABLE_JOB_STATES)


# --- tasks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [T.COMPLETED, T.FAILED_PERMANENT])
def test_finished_task_can_only_be_reset_to_pending(state: T) -> None:
    assert state.successors == {T.PENDING}


def test_pending_task_must_become_ready_before_it_is_queued() -> None:
    assert not T.PENDING.can_become(T.QUEUED)
    assert T.PENDING.can_become(T.READY)
    assert T.READY.can_become(T.QUEUED)


def test_task_completes_only_from_queued_or_in_progress() -> None:
    assert {s for s in TaskState if s.can_become(T.COMPLETED)} == {T.QUEUED, T.IN_PROGRESS}


def test_every_unfinished_task_can_be_suspended() -> None:
    assert all(s.can_become(T.SUSPEND) for s in LIVE_TASK_STATES)
    assert not T.COMPLETED.can_become(T.SUSPEND)


def test_every_task_state_can_be_reset_to_pending() -> None:
    assert all(s.can_become(T.PENDING) for s in TaskState)


def test_suspended_task_can_resume_where_it_was() -> None:
    assert {T.PENDING, T.READY, T.QUEUED, T.IN_PROGRESS} <= T.SUSPEND.successors
    assert not T.SUSPEND.can_become(T.COMPLETED)


def test_live_task_states_are_the_unfinished_ones() -> None:
    assert {T.PENDING, T.READY, T.QUEUED, T.IN_PROGRESS} == LIVE_TASK_STATES


# --- workunits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [W.DONE, W.FAILED_PERMANENT])
def test_finished_workunit_is_terminal(state: W) -> None:
    assert state.successors == frozenset()
    for target in WorkunitState:
        with pytest.raises(IllegalTransition):
            state.check(target)


def test_workunit_is_done_only_after_checkout() -> None:
    assert {s for s in WorkunitState if s.can_become(W.DONE)} == {W.CHECKOUT}


def test_checked_out_workunit_can_finish_fail_be_requeued_held_or_preempted() -> None:
    assert W.CHECKOUT.successors == {W.DONE, W.QUEUED, W.SUSPEND, W.FAILED_PERMANENT, W.PREEMPTED}


def test_preempted_workunit_can_be_requeued() -> None:
    assert W.CHECKOUT.can_become(W.PREEMPTED)
    assert W.PREEMPTED.can_become(W.QUEUED)


def test_preempted_workunit_is_not_a_failure() -> None:
    assert W.PREEMPTED in LIVE_WORKUNIT_STATES
    assert not W.PREEMPTED.can_become(W.FAILED_PERMANENT)
    assert not W.PREEMPTED.can_become(W.DONE)


def test_suspended_workunit_is_resumed_to_queued() -> None:
    assert W.SUSPEND.can_become(W.QUEUED)
    assert not W.SUSPEND.can_become(W.CHECKOUT)
    assert not W.SUSPEND.can_become(W.DONE)


def test_live_workunit_states_are_those_that_still_want_a_worker() -> None:
    assert {W.QUEUED, W.CHECKOUT, W.PREEMPTED} == LIVE_WORKUNIT_STATES
    assert all(s.successors for s in LIVE_WORKUNIT_STATES)
