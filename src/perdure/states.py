"""The job, task, workunit and client state machines, and the statuses a worker reports, written once.

Each enum member's comment says what the state means and where it can go; ``TRANSITIONS`` is the only
table of legal moves. Every write of a state column goes through a named transition function in
``perdure.store.transitions``, which checks this table (set-based statements are guarded by
``may_become``: ``WHERE state IN (<the states that may become X>)``), and
``tests/integration/test_transitions.py`` watches every write on both databases. Names and strings are
AWE's (``../shared/reference/awe.md`` §2) so job documents stay wire-compatible.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class IllegalTransition(ValueError):
    """A state change the state machine does not allow."""


class _Machine(StrEnum):
    @property
    def successors(self) -> frozenset[_Machine]:
        return _TRANSITIONS[type(self)][self]

    def can_become(self, target: _Machine) -> bool:
        return target in self.successors

    def check(self, target: _Machine) -> None:
        if target not in self.successors:
            raise IllegalTransition(
                f"{type(self).__name__} cannot go from {self.value!r} to {target.value!r}"
            )


class JobState(_Machine):
    #: Stored, tasks not yet enqueued; never seen outside the submitting transaction. → queued.
    INIT = "init"
    #: Waiting for its first checkout (again, after resume or a rerun). → in-progress (checkout),
    #: completed (resumed with no work left), suspend, deleted.
    QUEUED = "queued"
    #: At least one workunit has been checked out. → completed, suspend (by hand, or a workunit failed
    #: too often), failed-permanent (a workunit exited 42), deleted.
    IN_PROGRESS = "in-progress"
    #: Every task completed. → queued (resubmit, recompute), deleted.
    COMPLETED = "completed"
    #: Stopped by a user or by the failure rules; ``error`` says why. → queued (resume, resubmit,
    #: recompute), deleted.
    SUSPEND = "suspend"
    #: A workunit exited 42: retrying cannot help. Resume is refused (it needs ``suspend``), as in AWE;
    #: only a reset (resubmit, recompute) runs it again. → queued (resubmit, recompute), deleted.
    FAILED_PERMANENT = "failed-permanent"
    #: Soft-deleted; kept until ``?full`` or expiration removes the row. Terminal (deleting it again
    #: changes nothing).
    DELETED = "deleted"


class TaskState(_Machine):
    #: Waiting for its dependencies or for ``info.start_at``. → queued (enqueued: split into workunits),
    #: suspend (its job deleted).
    #:
    #: AWE has a ``ready`` state between the two; Perdure checks the dependencies and splits the task in
    #: the same transaction, so ``ready`` could never be seen and is not a state here.
    PENDING = "pending"
    #: Workunits exist, none checked out yet (so none done: it cannot complete). → in-progress, suspend,
    #: pending (reset).
    QUEUED = "queued"
    #: Some workunit has been checked out. → completed, suspend, failed-permanent, pending (reset).
    IN_PROGRESS = "in-progress"
    #: Every workunit done. → pending (reset by recompute or resubmit).
    COMPLETED = "completed"
    #: Held with its job. → pending (reset, or resumed with no workunits), queued or in-progress
    #: (resume, where it was).
    SUSPEND = "suspend"
    #: A workunit exited 42. Terminal until a reset, which resume is not. → pending (reset).
    FAILED_PERMANENT = "failed-permanent"


class WorkunitState(_Machine):
    #: Eligible for checkout. → checkout, suspend (job suspended or deleted).
    QUEUED = "queued"
    #: Leased to a client. → done, queued (``fail`` under the limit; client lost, suspended, deleted or
    #: restarted), preempted (reported ``preempted``, or lost while holding a checkpoint), suspend
    #: (``fail`` at the limit; job suspended or deleted), failed-permanent (exit 42).
    CHECKOUT = "checkout"
    #: Finished successfully. Terminal (a reset deletes it).
    DONE = "done"
    #: Held: its job is suspended or deleted, or it failed too often. → queued (resume).
    SUSPEND = "suspend"
    #: Exited 42. Terminal: resume does not revive it (a failed-permanent job cannot be resumed); a
    #: reset deletes it.
    FAILED_PERMANENT = "failed-permanent"
    #: Taken off a node that was reclaimed, with a checkpoint to restore from; not a failure. Checked
    #: out ahead of queued work. → checkout (restored elsewhere), suspend.
    PREEMPTED = "preempted"


class ClientState(_Machine):
    """What the server holds about a client (stored as ``suspended`` and ``deleted_at``); the status a
    client document shows (``ClientStatus``) adds liveness and leases to it."""

    #: Registered: checks out work. → suspended (by hand, or ``max_client_failure``), deleted.
    ACTIVE = "active"
    #: Gets no work (``Client suspended``); its leases went back to the queue. → active (resume), deleted.
    SUSPENDED = "suspended"
    #: Forgotten: told to stop at its next heartbeat or checkout. → active (a worker registers again with
    #: the same id: it starts afresh, not suspended).
    DELETED = "deleted"


class ClientStatus(StrEnum):
    """A client document's ``Status`` (AWE v0.9.6x), derived from ``ClientState``, the last heartbeat and
    the leases, never stored."""

    #: ``ClientState.SUSPENDED``, whatever else.
    SUSPENDED = "suspended"
    #: Active, but silent for longer than ``node.ttl``: its leases are re-queued.
    OFFLINE = "offline"
    #: Active, heartbeating and holding a lease.
    BUSY = "busy"
    #: Active, heartbeating, holding nothing.
    ONLINE = "online"


class ReportStatus(StrEnum):
    """What a worker reports about the workunit it holds (``PUT /work/<id>?status=``): each member says
    where the workunit goes (``outcomes``); any report needs the lease (``checkout``)."""

    #: Exit 0, outputs uploaded. → done.
    DONE = "done"
    #: Any other exit. → queued (failures under ``max_work_failure``) or suspend (at it: the job is
    #: suspended). AWE's constant is WORK_STAT_ERROR; the string stays ``fail``.
    FAIL = "fail"
    #: Exit 42. → failed-permanent (with its task and job).
    FAILED_PERMANENT = "failed-permanent"
    #: The node is being reclaimed; the report names the checkpoint to restore from. → preempted.
    PREEMPTED = "preempted"

    @property
    def outcomes(self) -> frozenset[WorkunitState]:
        return _REPORT_OUTCOMES[self]


_M = TypeVar("_M", bound=_Machine)

_J, _T, _W, _C = JobState, TaskState, WorkunitState, ClientState

_TRANSITIONS: dict[type[_Machine], dict[_Machine, frozenset[_Machine]]] = {
    JobState: {
        _J.INIT: frozenset({_J.QUEUED}),
        _J.QUEUED: frozenset({_J.IN_PROGRESS, _J.COMPLETED, _J.SUSPEND, _J.DELETED}),
        _J.IN_PROGRESS: frozenset({_J.COMPLETED, _J.SUSPEND, _J.FAILED_PERMANENT, _J.DELETED}),
        _J.COMPLETED: frozenset({_J.QUEUED, _J.DELETED}),
        _J.SUSPEND: frozenset({_J.QUEUED, _J.DELETED}),
        _J.FAILED_PERMANENT: frozenset({_J.QUEUED, _J.DELETED}),
        _J.DELETED: frozenset(),
    },
    TaskState: {
        _T.PENDING: frozenset({_T.QUEUED, _T.SUSPEND}),
        _T.QUEUED: frozenset({_T.IN_PROGRESS, _T.SUSPEND, _T.PENDING}),
        _T.IN_PROGRESS: frozenset({_T.COMPLETED, _T.SUSPEND, _T.FAILED_PERMANENT, _T.PENDING}),
        _T.COMPLETED: frozenset({_T.PENDING}),
        _T.SUSPEND: frozenset({_T.PENDING, _T.QUEUED, _T.IN_PROGRESS}),
        _T.FAILED_PERMANENT: frozenset({_T.PENDING}),
    },
    WorkunitState: {
        _W.QUEUED: frozenset({_W.CHECKOUT, _W.SUSPEND}),
        _W.CHECKOUT: frozenset({_W.DONE, _W.QUEUED, _W.SUSPEND, _W.FAILED_PERMANENT, _W.PREEMPTED}),
        _W.DONE: frozenset(),
        _W.SUSPEND: frozenset({_W.QUEUED}),
        _W.FAILED_PERMANENT: frozenset(),
        _W.PREEMPTED: frozenset({_W.CHECKOUT, _W.SUSPEND}),
    },
    ClientState: {
        _C.ACTIVE: frozenset({_C.SUSPENDED, _C.DELETED}),
        _C.SUSPENDED: frozenset({_C.ACTIVE, _C.DELETED}),
        _C.DELETED: frozenset({_C.ACTIVE}),
    },
}

#: Every legal move, as (machine, from, to): what the conformance test checks each write against.
TRANSITIONS: frozenset[tuple[type[_Machine], _Machine, _Machine]] = frozenset(
    (machine, source, target)
    for machine, table in _TRANSITIONS.items()
    for source, targets in table.items()
    for target in targets
)
#: The state a new row is created in.
INITIAL_STATES: dict[type[_Machine], _Machine] = {
    JobState: JobState.INIT,
    TaskState: TaskState.PENDING,
    WorkunitState: WorkunitState.QUEUED,
    ClientState: ClientState.ACTIVE,
}

_REPORT_OUTCOMES: dict[ReportStatus, frozenset[WorkunitState]] = {
    ReportStatus.DONE: frozenset({_W.DONE}),
    ReportStatus.FAIL: frozenset({_W.QUEUED, _W.SUSPEND}),
    ReportStatus.FAILED_PERMANENT: frozenset({_W.FAILED_PERMANENT}),
    ReportStatus.PREEMPTED: frozenset({_W.PREEMPTED}),
}


def may_become(target: _M) -> frozenset[_M]:
    """The states that may move to ``target``: the guard of a set-based write (``WHERE state IN …``)."""
    machine = type(target)
    return frozenset(s for s in machine if target in _TRANSITIONS[machine][s])


#: Jobs a queue still holds: AWE's JOB_STATS_ACTIVE.
ACTIVE_JOB_STATES = frozenset({JobState.QUEUED, JobState.IN_PROGRESS})
#: Active or suspended: AWE's JOB_STATS_REGISTERED.
REGISTERED_JOB_STATES = ACTIVE_JOB_STATES | {JobState.SUSPEND}
#: Jobs whose tasks may be reset by recompute or resubmit.
RERUNNABLE_JOB_STATES = frozenset({JobState.COMPLETED, JobState.SUSPEND, JobState.FAILED_PERMANENT})
#: Workunits that still hold or want a worker: the work a zombie job lacks.
LIVE_WORKUNIT_STATES = frozenset({WorkunitState.QUEUED, WorkunitState.CHECKOUT, WorkunitState.PREEMPTED})
#: Tasks with work still to come.
LIVE_TASK_STATES = frozenset({TaskState.PENDING, TaskState.QUEUED, TaskState.IN_PROGRESS})
