"""``Job``: a job document with the operations on it, so a script reads ``client.submit(...).wait()``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perdure.sdk.errors import PerdureError, WaitTimeout
from perdure.sdk.models import FINAL_JOB_STATES, JobReport, OutputFile, TaskStatus, tasks_of
from perdure.states import TaskState

if TYPE_CHECKING:
    from perdure.sdk.client import Client


@dataclass(frozen=True)
class Job:
    """A job as the server last described it. Operations return a fresh ``Job``; this one never changes."""

    id: str
    name: str
    state: str
    project: str
    user: str
    pipeline: str
    tasks: list[TaskStatus]
    error: Any
    submitted: str
    completed: str
    updated: str
    raw: dict[str, Any] = field(repr=False)
    client: Client = field(repr=False, compare=False)

    @classmethod
    def from_document(cls, client: Client, document: dict[str, Any]) -> Job:
        if "jobstate" in document:  # ?verbosity=minimal: per-task remaining work and state only
            return cls._from_minimal(client, document)
        info = document.get("info") or {}
        return cls(
            id=str(document.get("id", "")),
            name=str(info.get("name", "")),
            state=str(document.get("state", "")),
            project=str(info.get("project", "")),
            user=str(info.get("user", "")),
            pipeline=str(info.get("pipeline", "")),
            tasks=tasks_of(document),
            error=document.get("error"),
            submitted=str(info.get("submittime", "")),
            completed=str(info.get("completedtime", "")),
            updated=str(document.get("updatetime", "")),
            raw=document,
            client=client,
        )

    @classmethod
    def _from_minimal(cls, client: Client, document: dict[str, Any]) -> Job:
        remain = document.get("task") or []
        states = document.get("state") or []
        tasks = [
            TaskStatus(
                id=str(i), name=str(i), state=str(s), totalwork=0, remainwork=int(r), depends_on=[], raw={}
            )
            for i, (r, s) in enumerate(zip(remain, states, strict=False))
        ]
        return cls(
            id=str(document.get("id", "")),
            name=str(document.get("name", "")),
            state=str(document.get("jobstate", "")),
            project="",
            user="",
            pipeline="",
            tasks=tasks,
            error=None,
            submitted=str(document.get("submittime", "")),
            completed=str(document.get("completedtime", "")),
            updated="",
            raw=document,
            client=client,
        )

    # ---- state ------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the job will not move on by itself (completed, suspended, failed or deleted)."""
        return self.state in FINAL_JOB_STATES

    @property
    def completed_ok(self) -> bool:
        return self.state == "completed"

    def task(self, name: str) -> TaskStatus:
        for task in self.tasks:
            if name in (task.name, task.id):
                return task
        raise KeyError(f"job {self.id} has no task {name!r}")

    def failed_task(self) -> TaskStatus | None:
        """The task that stopped the job, if one did."""
        error = self.error if isinstance(self.error, dict) else {}
        taskid = str(error.get("taskfailed") or "")
        if taskid:
            for task in self.tasks:
                if taskid in (task.id, task.name):
                    return task
        return next(
            (t for t in self.tasks if t.state in (TaskState.SUSPEND, TaskState.FAILED_PERMANENT)), None
        )

    def refresh(self) -> Job:
        return self.client.job(self.id)

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll: float = 1.0,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is finished and return it; ``progress`` sees every state on the way.
        Raises ``WaitTimeout`` after ``timeout`` seconds. Success is ``completed_ok`` of the result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self
        while True:
            job = job.refresh()
            if progress is not None:
                progress(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    # ---- data -------------------------------------------------------------------------------------

    def outputs(self) -> list[OutputFile]:
        return self.client.outputs(self.id)

    def download(
        self, dest: str | Path = ".", *, task: str | None = None, filename: str | None = None
    ) -> list[Path]:
        """Save the job's outputs (or those of one task, or one file) as ``dest/<task>/<filename>``."""
        chosen = [
            o
            for o in self.outputs()
            if (task is None or o.task == task) and (filename is None or o.filename == filename)
        ]
        if not chosen and (task or filename):
            raise PerdureError(f"job {self.id} has no output {task or '*'}/{filename or '*'}")
        paths = []
        for output in chosen:
            target = Path(dest) / output.task / output.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_output(self.id, output.task, output.filename, target)
            paths.append(target)
        return paths

    def report(self) -> JobReport:
        return self.client.job_report(self.id)

    def logs(self, task: str, *, rank: int = 0, kind: str = "stdout") -> str:
        return self.client.task_log(self.id, task, rank=rank, kind=kind)

    # ---- operations ---------------------------------------------------------------------------------

    def suspend(self) -> Job:
        self.client.suspend_job(self.id)
        return self.refresh()

    def resume(self) -> Job:
        self.client.resume_job(self.id)
        return self.refresh()

    def resubmit(self) -> Job:
        self.client.resubmit_job(self.id)
        return self.refresh()

    def recompute(self, task: str) -> Job:
        self.client.recompute_task(self.id, task)
        return self.refresh()

    def delete(self, *, full: bool = False) -> None:
        self.client.delete_job(self.id, full=full)
