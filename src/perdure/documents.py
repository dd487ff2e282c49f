"""AWE's wire format: job, task and workunit documents built from stored rows.

The only place that knows how a document looks on the wire (``awe.md`` §1.7 and the real document in
``awe-examples/``), so storage can stay narrow and the format stays in one spot.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from perdure.states import REGISTERED_JOB_STATES, JobState
from perdure.timeutil import format_us


def job_info(job: Any) -> dict[str, Any]:
    info = dict(job.info)
    info.update(
        {
            "name": job.name,
            "pipeline": job.pipeline,
            "project": job.project,
            "user": job.username,
            "clientgroups": job.clientgroups,
            "priority": job.priority,
            "submittime": format_us(job.submittime),
            "startedtime": format_us(job.startedtime),
            "completedtime": format_us(job.completedtime),
            "start_at": format_us(job.start_at),
        }
    )
    return info


#: ``format_us`` remembered: a job's tasks share a few times (never, and the submit's), and a
#: 10,000-task document formatted the same three times 10,000 times over.
_task_time = functools.lru_cache(maxsize=4096)(format_us)


def task_document(job_id: str, task: Any) -> dict[str, Any]:
    spec = task.spec
    return {
        "task_name": task.taskid,
        "parent": "",
        "jobid": job_id,
        "taskid": task.id,
        "task_type": "",
        "cmd": spec["cmd"],
        "dependsOn": [f"{job_id}_{dep}" for dep in task.depends_on],
        "totalwork": task.totalwork,
        "maxworksize": task.maxworksize,
        "remainwork": task.remainwork,
        "state": task.state,
        "createddate": _task_time(task.createddate),
        "starteddate": _task_time(task.starteddate),
        "completeddate": _task_time(task.completeddate),
        "computetime": task.computetime,
        "userattr": spec.get("userattr", {}),
        "clientgroups": spec.get("clientgroups", ""),
        "inputs": spec.get("inputs", []),
        "outputs": spec.get("outputs", []),
        "predata": spec.get("predata", []),
    }


def job_document(job: Any, job_tasks: Iterable[Any]) -> dict[str, Any]:
    return {
        "id": job.id,
        "info": job_info(job),
        "tasks": [task_document(job.id, t) for t in job_tasks],
        "state": job.state,
        "registered": JobState(job.state) in REGISTERED_JOB_STATES,
        "remaintasks": job.remaintasks,
        "expiration": format_us(job.expiration),
        "updatetime": format_us(job.updatetime),
        "error": job.error,
        "resumed": job.resumed,
        "shockhost": "",
        # issue 17: who submitted it, from the verified token; ``info.user`` is only a label.
        "owner": job.owner,
    }


def job_minimal(job: Any, job_tasks: Sequence[Any], userattr_keys: Sequence[str]) -> dict[str, Any]:
    """AWE's JobMin (``?verbosity=minimal``): per-task remaining work and state, no task bodies."""
    userattr = job.info.get("userattr", {}) or {}
    if userattr_keys:
        userattr = {k: v for k, v in userattr.items() if k in userattr_keys}
    first_inputs = job_tasks[0].spec.get("inputs", []) if job_tasks else []
    return {
        "id": job.id,
        "name": job.name,
        "size": sum(int(io.get("size") or 0) for io in first_inputs),
        "submittime": format_us(job.submittime),
        "completedtime": format_us(job.completedtime),
        "computetime": sum(int(t.computetime) for t in job_tasks),
        "task": [t.remainwork for t in job_tasks],
        "state": [t.state for t in job_tasks],
        "jobstate": job.state,
        "userattr": userattr,
    }
