"""The job, task, workunit and client state machines: the moves users depend on, a complete table, and
(against a SQLite store, every write watched by triggers) the store's domain rules obeying it. The
conformance test over every store operation on both databases is tests/integration/test_transitions.py."""

from __future__ import annotations

from collections import deque

import pytest

from perdure.states import (
    ACTIVE_JOB_STATES,
    INITIAL_STATES,
    LIVE_TASK_STATES,
    LIVE_WORKUNIT_STATES,
    REGISTERED_JOB_STATES,
    RERUNNABLE_JOB_STATES,
    TRANSITIONS,
    ClientState,
    ClientStatus,
    IllegalTransition,
    JobState,
    ReportStatus,
    TaskState,
    WorkunitState,
    may_become,
)

J, T, W, C = JobState, TaskState, WorkunitState, ClientState
MACHINES = [JobState, TaskState, WorkunitState, ClientState]
ALL_STATES = [state for machine in MACHINES for state in machine]


def reachable(start: J | T | W | C) -> set[J | T | W | C]:
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
    ("machine", "start"),
    [(JobState, J.INIT), (TaskState, T.PENDING), (WorkunitState, W.QUEUED), (ClientState, C.ACTIVE)],
)
def test_every_state_is_reachable_from_the_initial_state(machine: type[J | T | W], start: J | T | W) -> None:
    assert INITIAL_STATES[machine] is start
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
    assert [s.value for s in ReportStatus] == ["done", "fail", "failed-permanent", "preempted"]
    assert [s.value for s in ClientStatus] == ["suspended", "offline", "busy", "online"]
    assert J.IN_PROGRESS == "in-progress"
    assert JobState("failed-permanent") is J.FAILED_PERMANENT


def test_transitions_lists_every_move_of_every_machine() -> None:
    assert (JobState, J.SUSPEND, J.QUEUED) in TRANSITIONS
    assert (JobState, J.COMPLETED, J.SUSPEND) not in TRANSITIONS
    assert len(TRANSITIONS) == sum(len(s.successors) for m in MACHINES for s in m)


def test_may_become_is_the_guard_of_set_based_writes() -> None:
    assert may_become(W.CHECKOUT) == {W.QUEUED, W.PREEMPTED}
    assert may_become(J.IN_PROGRESS) == {J.QUEUED}
    assert may_become(C.ACTIVE) == {C.SUSPENDED, C.DELETED}
    assert may_become(J.INIT) == frozenset()


# --- jobs ------------------------------------------------------------------------------------------


def test_submitted_job_goes_from_init_to_queued_only() -> None:
    assert J.INIT.successors == {J.QUEUED}


def test_completed_job_can_be_requeued_or_deleted_but_not_suspended() -> None:
    assert J.COMPLETED.successors == {J.QUEUED, J.DELETED}


def test_failed_permanent_job_cannot_be_suspended_so_it_can_never_be_resumed() -> None:
    assert not J.FAILED_PERMANENT.can_become(J.SUSPEND)
    with pytest.raises(IllegalTransition, match="'failed-permanent' to 'suspend'"):
        J.FAILED_PERMANENT.check(J.SUSPEND)
    assert J.FAILED_PERMANENT.successors == {J.QUEUED, J.DELETED}  # resubmit, recompute


def test_suspended_job_can_be_resumed_or_deleted() -> None:
    assert J.SUSPEND.successors == {J.QUEUED, J.DELETED}


def test_only_queued_or_running_jobs_can_be_suspended() -> None:
    assert may_become(J.SUSPEND) == {J.QUEUED, J.IN_PROGRESS}


def test_only_a_running_job_fails_permanently() -> None:
    assert may_become(J.FAILED_PERMANENT) == {J.IN_PROGRESS}


def test_every_job_that_was_queued_can_be_deleted_and_deleted_is_terminal() -> None:
    assert may_become(J.DELETED) == set(JobState) - {J.INIT, J.DELETED}
    assert J.DELETED.successors == frozenset()


def test_no_job_goes_back_to_init() -> None:
    assert may_become(J.INIT) == frozenset()


def test_running_job_can_complete_suspend_fail_or_be_deleted_but_not_requeued() -> None:
    assert J.IN_PROGRESS.successors == {J.COMPLETED, J.SUSPEND, J.FAILED_PERMANENT, J.DELETED}


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


def test_pending_task_is_enqueued_straight_to_queued() -> None:
    assert T.PENDING.successors == {T.QUEUED, T.SUSPEND}


def test_task_completes_only_once_a_workunit_was_checked_out() -> None:
    assert may_become(T.COMPLETED) == {T.IN_PROGRESS}


def test_every_unfinished_task_can_be_suspended() -> None:
    assert all(s.can_become(T.SUSPEND) for s in LIVE_TASK_STATES)
    assert not T.COMPLETED.can_become(T.SUSPEND)


def test_every_task_state_but_pending_can_be_reset_to_pending() -> None:
    assert may_become(T.PENDING) == set(TaskState) - {T.PENDING}


def test_suspended_task_resumes_where_it_was_but_failed_permanent_is_not_revived() -> None:
    assert T.SUSPEND.successors == {T.PENDING, T.QUEUED, T.IN_PROGRESS}
    assert may_become(T.QUEUED) == {T.PENDING, T.SUSPEND}  # not failed-permanent


def test_live_task_states_are_the_unfinished_ones() -> None:
    assert {T.PENDING, T.QUEUED, T.IN_PROGRESS} == LIVE_TASK_STATES


# --- workunits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [W.DONE, W.FAILED_PERMANENT])
def test_finished_workunit_is_terminal(state: W) -> None:
    assert state.successors == frozenset()
    for target in WorkunitState:
        with pytest.raises(IllegalTransition):
            state.check(target)


def test_workunit_is_done_only_after_checkout() -> None:
    assert may_become(W.DONE) == {W.CHECKOUT}


def test_checked_out_workunit_can_finish_fail_be_requeued_held_or_preempted() -> None:
    assert W.CHECKOUT.successors == {W.DONE, W.QUEUED, W.SUSPEND, W.FAILED_PERMANENT, W.PREEMPTED}


def test_preempted_workunit_is_restored_by_a_checkout_and_is_not_a_failure() -> None:
    assert W.PREEMPTED.successors == {W.CHECKOUT, W.SUSPEND}
    assert W.PREEMPTED in LIVE_WORKUNIT_STATES


def test_suspended_workunit_is_resumed_to_queued() -> None:
    assert W.SUSPEND.successors == {W.QUEUED}


def test_live_workunit_states_are_those_that_still_want_a_worker() -> None:
    assert {W.QUEUED, W.CHECKOUT, W.PREEMPTED} == LIVE_WORKUNIT_STATES
    assert all(s.successors for s in LIVE_WORKUNIT_STATES)
    assert may_become(W.SUSPEND) == LIVE_WORKUNIT_STATES


# --- clients and reports ---------------------------------------------------------------------------


def test_client_states() -> None:
    assert C.ACTIVE.successors == {C.SUSPENDED, C.DELETED}
    assert C.SUSPENDED.successors == {C.ACTIVE, C.DELETED}
    assert C.DELETED.successors == {C.ACTIVE}  # registering again with the same id


@pytest.mark.parametrize(
    ("status", "outcomes"),
    [
        (ReportStatus.DONE, {W.DONE}),
        (ReportStatus.FAIL, {W.QUEUED, W.SUSPEND}),
        (ReportStatus.FAILED_PERMANENT, {W.FAILED_PERMANENT}),
        (ReportStatus.PREEMPTED, {W.PREEMPTED}),
    ],
)
def test_each_report_status_says_where_the_workunit_goes_and_the_table_allows_it(
    status: ReportStatus, outcomes: set[W]
) -> None:
    assert status.outcomes == outcomes
    assert all(W.CHECKOUT.can_become(target) for target in status.outcomes)
