"""The job, task and workunit state machines, written once.

Each enum member's comment says what the state means and where it can go; ``TRANSITIONS`` is the only
table of legal moves, and the store refuses any move not in it. Names and strings are AWE's
(``../shared/reference/awe.md`` §2) so job documents stay wire-compatible.
"""

from __future__ import annotations

from enum import StrEnum


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
    #: Stored, tasks not yet enqueued. → queued (at once, in the submitting transaction), deleted.
    INIT = "init"
    #: Waiting for its first checkout. → in-progress, completed, suspend, failed-permanent, deleted.
    QUEUED = "queued"
    #: At least one workunit has been checked out. → completed, suspend, failed-permanent, queued, deleted.
    IN_PROGRESS = "in-progress"
    #: Every task completed. → queued (resubmit, recompute), deleted.
    COMPLETED = "completed"
    #: Stopped by a user or by the failure rules; ``error`` says why. → queued (resume, resubmit,
    #: recompute), failed-permanent, deleted.
    SUSPEND = "suspend"
    #: A workunit exited 42: retrying cannot help. Resume is refused. → queued (resubmit, recompute), deleted.
    FAILED_PERMANENT = "failed-permanent"
    #: Soft-deleted; kept until ``?full`` or expiration removes it. → deleted only.
    DELETED = "deleted"


class TaskState(_Machine):
    #: Waiting for its dependencies or for ``info.start_at``. → ready, suspend.
    PENDING = "pending"
    #: Dependencies met, not yet split into workunits. → queued, suspend.
    READY = "ready"
    #: Workunits exist, none checked out yet. → in-progress, completed, suspend, failed-permanent, pending.
    QUEUED = "queued"
    #: Some workunit has been checked out. → completed, suspend, failed-permanent, pending.
    IN_PROGRESS = "in-progress"
    #: Every workunit done. → pending (reset by recompute or resubmit).
    COMPLETED = "completed"
    #: Held with its job. → pending (reset), ready, queued or in-progress (resume), failed-permanent.
    SUSPEND = "suspend"
    #: A workunit exited 42. → pending (reset).
    FAILED_PERMANENT = "failed-permanent"


class WorkunitState(_Machine):
    #: Eligible for checkout. → checkout, suspend.
    QUEUED = "queued"
    #: Leased to a client. → done, queued (fail under the limit, lost client), suspend, failed-permanent,
    #: preempted.
    CHECKOUT = "checkout"
    #: Finished successfully (terminal until a reset deletes it).
    DONE = "done"
    #: Held: its job is suspended or it failed too often. → queued (resume).
    SUSPEND = "suspend"
    #: Exited 42 (terminal until a reset).
    FAILED_PERMANENT = "failed-permanent"
    #: Taken off a node that was reclaimed, with a checkpoint to restore from; not a failure.
    #: → queued, checkout (restored elsewhere), suspend.
    PREEMPTED = "preempted"


_J, _T, _W = JobState, TaskState, WorkunitState

_TRANSITIONS: dict[type[_Machine], dict[_Machine, frozenset[_Machine]]] = {
    JobState: {
        _J.INIT: frozenset({_J.QUEUED, _J.DELETED}),
        _J.QUEUED: frozenset({_J.IN_PROGRESS, _J.COMPLETED, _J.SUSPEND, _J.FAILED_PERMANENT, _J.DELETED}),
        _J.IN_PROGRESS: frozenset({_J.COMPLETED, _J.SUSPEND, _J.FAILED_PERMANENT, _J.QUEUED, _J.DELETED}),
        _J.COMPLETED: frozenset({_J.QUEUED, _J.DELETED}),
        _J.SUSPEND: frozenset({_J.QUEUED, _J.FAILED_PERMANENT, _J.DELETED}),
        _J.FAILED_PERMANENT: frozenset({_J.QUEUED, _J.DELETED}),
        _J.DELETED: frozenset({_J.DELETED}),
    },
    TaskState: {
        _T.PENDING: frozenset({_T.READY, _T.SUSPEND, _T.PENDING}),
        _T.READY: frozenset({_T.QUEUED, _T.SUSPEND, _T.PENDING}),
        _T.QUEUED: frozenset({_T.IN_PROGRESS, _T.COMPLETED, _T.SUSPEND, _T.FAILED_PERMANENT, _T.PENDING}),
        _T.IN_PROGRESS: frozenset({_T.COMPLETED, _T.SUSPEND, _T.FAILED_PERMANENT, _T.PENDING}),
        _T.COMPLETED: frozenset({_T.PENDING}),
        _T.SUSPEND: frozenset({_T.PENDING, _T.READY, _T.QUEUED, _T.IN_PROGRESS, _T.FAILED_PERMANENT}),
        _T.FAILED_PERMANENT: frozenset({_T.PENDING}),
    },
    WorkunitState: {
        _W.QUEUED: frozenset({_W.CHECKOUT, _W.SUSPEND}),
        _W.CHECKOUT: frozenset({_W.DONE, _W.QUEUED, _W.SUSPEND, _W.FAILED_PERMANENT, _W.PREEMPTED}),
        _W.DONE: frozenset(),
        _W.SUSPEND: frozenset({_W.QUEUED, _W.FAILED_PERMANENT}),
        _W.FAILED_PERMANENT: frozenset(),
        _W.PREEMPTED: frozenset({_W.QUEUED, _W.CHECKOUT, _W.SUSPEND}),
    },
}

#: Jobs a queue still holds: AWE's JOB_STATS_ACTIVE.
ACTIVE_JOB_STATES = frozenset({JobState.QUEUED, JobState.IN_PROGRESS})
#: Active or suspended: AWE's JOB_STATS_REGISTERED.
REGISTERED_JOB_STATES = ACTIVE_JOB_STATES | {JobState.SUSPEND}
#: Jobs whose tasks may be reset by recompute or resubmit.
RERUNNABLE_JOB_STATES = frozenset({JobState.COMPLETED, JobState.SUSPEND, JobState.FAILED_PERMANENT})
#: Workunits that still hold or want a worker: the work a zombie job lacks.
LIVE_WORKUNIT_STATES = frozenset({WorkunitState.QUEUED, WorkunitState.CHECKOUT, WorkunitState.PREEMPTED})
#: Tasks with work still to come.
LIVE_TASK_STATES = frozenset({TaskState.PENDING, TaskState.READY, TaskState.QUEUED, TaskState.IN_PROGRESS})
