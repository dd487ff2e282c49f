"""Build an AWE job script in Python: ``Workflow``, ``Task``, and data flow by passing one task's
outputs as another's inputs (which makes the dependency too).

    wf = Workflow("sum-of-squares", project="examples")
    gen = wf.task("generate", "sh", "-c", "seq 1 100000 > numbers.txt", outputs=["numbers.txt"])
    sq = wf.task("square", "sh", "-c", "awk '{print $1*$1}' numbers.txt > squares.txt",
                 inputs=[gen.output("numbers.txt")], outputs=["squares.txt"], split=4)
    wf.task("sum", "sh", "-c", "awk '{s+=$1} END {print s}' squares.txt > total.txt",
            inputs=[sq.output("squares.txt")], outputs=["total.txt"])
    client.submit(wf).wait()     # or wf.save("job.json") and `perdure submit job.json`

The script is exactly what ``POST /job`` accepts, so ``validate()`` runs the server's own checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Output:
    """A file a task writes; pass it as another task's input to feed that task (and depend on this one)."""

    task: str
    filename: str


@dataclass(frozen=True)
class Remote:
    """An input fetched from a URL by the worker (``filename`` is its name in the work directory)."""

    filename: str
    url: str


Input = Output | Remote


@dataclass
class Task:
    """One step: a command run in a fresh work directory, ``split`` times over parts of one input."""

    taskid: str
    command: str
    args: list[str] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    split: int = 1
    split_input: str | None = None
    split_index: str = "line"
    env: dict[str, str] = field(default_factory=dict)
    private_env: dict[str, str] = field(default_factory=dict)
    userattr: dict[str, Any] = field(default_factory=dict)
    clientgroups: str = ""
    description: str = ""
    nonzero: Sequence[str] = ()

    def output(self, filename: str) -> Output:
        """This task's output ``filename``, to pass as an input elsewhere."""
        if filename not in self.outputs:
            raise ValueError(f"task {self.taskid!r} has no output {filename!r} (it has {self.outputs})")
        return Output(self.taskid, filename)

    def after(self, *tasks: Task) -> Task:
        """Run after ``tasks`` even without data passing between them."""
        for task in tasks:
            if task.taskid not in self.depends_on:
                self.depends_on.append(task.taskid)
        return self

    def to_dict(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"name": self.command, "args_array": list(self.args)}
        if self.description:
            cmd["description"] = self.description
        if self.env or self.private_env:
            cmd["environ"] = {"public": dict(self.env), "private": dict(self.private_env)}
        inputs = []
        for item in self.inputs:
            if isinstance(item, Output):
                inputs.append({"filename": item.filename, "origin": item.task})
            else:
                inputs.append({"filename": item.filename, "url": item.url})
        document: dict[str, Any] = {
            "taskid": self.taskid,
            "cmd": cmd,
            "dependsOn": list(self.depends_on),
            "inputs": inputs,
            "outputs": [
                {"filename": name, **({"nonzero": True} if name in self.nonzero else {})}
                for name in self.outputs
            ],
        }
        if self.split > 1:
            source = self.split_input or (inputs[0]["filename"] if len(inputs) == 1 else "")
            if not source:
                raise ValueError(f"task {self.taskid!r} is split but has no single input: name split_input")
            document["totalwork"] = self.split
            document["partinfo"] = {"input": source, "index": self.split_index}
        if self.userattr:
            document["userattr"] = dict(self.userattr)
        if self.clientgroups:
            document["clientgroups"] = self.clientgroups
        return document


@dataclass
class Workflow:
    """A job: ``info`` (name, project, pipeline, ...) and a DAG of tasks."""

    name: str
    project: str = ""
    pipeline: str = ""
    user: str = ""
    clientgroups: str = ""
    priority: int = 1
    userattr: dict[str, Any] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)

    def task(
        self,
        taskid: str,
        command: str,
        *args: str,
        inputs: Iterable[Input] = (),
        outputs: Iterable[str] = (),
        after: Iterable[Task] = (),
        split: int = 1,
        **options: Any,
    ) -> Task:
        """Add a task running ``command *args``; other ``Task`` fields go in ``options``."""
        if any(t.taskid == taskid for t in self.tasks):
            raise ValueError(f"workflow already has a task {taskid!r}")
        made = Task(
            taskid, command, list(args), inputs=list(inputs), outputs=list(outputs), split=split, **options
        )
        made.after(*after)
        self.tasks.append(made)
        return made

    def add(self, task: Task) -> Task:
        if any(t.taskid == task.taskid for t in self.tasks):
            raise ValueError(f"workflow already has a task {task.taskid!r}")
        self.tasks.append(task)
        return task

    def to_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "project": self.project, "pipeline": self.pipeline}
        if self.user:
            info["user"] = self.user
        if self.clientgroups:
            info["clientgroups"] = self.clientgroups
        if self.priority != 1:
            info["priority"] = self.priority
        if self.userattr:
            info["userattr"] = dict(self.userattr)
        return {"info": info, "tasks": [t.to_dict() for t in self.tasks]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write the job script, for ``perdure submit`` or any AWE client."""
        target = Path(path)
        target.write_text(self.to_json() + "\n")
        return target

    def validate(self) -> None:
        """The server's own checks (origins, cycles, ...); raises ``ValueError`` naming the problem."""
        from perdure.jobscript import parse_job_script

        parse_job_script(self.to_json().encode())

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Workflow:
        """Read a job script back (the list form of inputs and outputs, as ``to_dict`` writes it)."""
        info = document.get("info") or {}
        flow = cls(
            name=str(info.get("name", "")),
            project=str(info.get("project", "")),
            pipeline=str(info.get("pipeline", "")),
            user=str(info.get("user", "")),
            clientgroups=str(info.get("clientgroups", "")),
            priority=int(info.get("priority", 1)),
            userattr=dict(info.get("userattr") or {}),
        )
        for raw in document.get("tasks") or []:
            cmd = raw.get("cmd") or {}
            environ = cmd.get("environ") or {}
            partinfo = raw.get("partinfo") or {}
            inputs: list[Input] = [
                Output(str(io["origin"]), str(io["filename"]))
                if io.get("origin")
                else Remote(str(io["filename"]), str(io.get("url", "")))
                for io in raw.get("inputs") or []
            ]
            outputs = raw.get("outputs") or []
            flow.add(
                Task(
                    taskid=str(raw["taskid"]),
                    command=str(cmd.get("name", "")),
                    args=[str(a) for a in cmd.get("args_array") or []],
                    inputs=inputs,
                    outputs=[str(o["filename"]) for o in outputs],
                    depends_on=[str(d) for d in raw.get("dependsOn") or []],
                    split=int(raw.get("totalwork", 1)),
                    split_input=partinfo.get("input") or None,
                    split_index=str(partinfo.get("index") or "line"),
                    env=dict(environ.get("public") or {}),
                    private_env=dict(environ.get("private") or {}),
                    userattr=dict(raw.get("userattr") or {}),
                    clientgroups=str(raw.get("clientgroups", "")),
                    description=str(cmd.get("description", "")),
                    nonzero=tuple(str(o["filename"]) for o in outputs if o.get("nonzero")),
                )
            )
        return flow

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        return cls.from_dict(json.loads(Path(path).read_text()))


__all__ = ["Input", "Output", "Remote", "Task", "Workflow"]
