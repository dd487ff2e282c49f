"""AWE job scripts: parse, validate and normalise what ``POST /job`` receives.

Accepts both IO encodings AWE accepted (the legacy map keyed by filename, kept in the script's order,
and the list form), checks everything that can be checked before a job exists, and returns a
``JobSpec`` in the list form the job document shows. Any problem raises ``JobScriptError`` with a
message that names the offending field; nothing is stored for a rejected script. The script's shape
and each field's own checks are ``perdure.jobmodel``'s; the checks across tasks are here.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from perdure.jobmodel import IO, Script, ScriptTask
from perdure.spot import policy
from perdure.timeutil import parse_time

#: A job script may have at most this many tasks.
MAX_TASKS = 10_000


class JobScriptError(ValueError):
    """The job script is not acceptable; the message is shown to the user as is."""


@dataclass
class TaskSpec:
    """One task, normalised: what the job document shows, plus the private environment kept apart."""

    taskid: str
    ordinal: int
    cmd: dict[str, Any]
    depends_on: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    predata: list[dict[str, Any]]
    partinfo: dict[str, Any] | None
    totalwork: int
    maxworksize: int
    userattr: dict[str, Any]
    clientgroups: str
    private_env: dict[str, str]

    @property
    def app(self) -> str:
        return str(self.cmd["name"])

    def spec_document(self) -> dict[str, Any]:
        """The stored, showable part of the task (never the private environment)."""
        return {
            "cmd": self.cmd,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "predata": self.predata,
            "partinfo": self.partinfo,
            "userattr": self.userattr,
            "clientgroups": self.clientgroups,
            # Splitting may change totalwork; a recompute splits again from what was asked.
            "requested_totalwork": self.totalwork,
        }


@dataclass
class JobSpec:
    info: dict[str, Any]
    start_at_us: int
    priority: int
    clientgroups: str
    tasks: list[TaskSpec] = field(default_factory=list)


def normalize_clientgroups(value: str | list[str]) -> str:
    """AWE stores client groups as one comma string; accept a list too and tidy both."""
    parts = value if isinstance(value, list) else value.split(",")
    return ",".join(p.strip() for p in parts if p.strip())


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "job script"


def _describe(error: ValidationError) -> str:
    messages = []
    for item in error.errors(include_url=False)[:5]:
        message = item["msg"]
        loc = tuple(item["loc"])
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] in ("unknown_key", "refused_key"):
            # The key is part of the path the user has to fix: "tasks[0].dependson: unknown key ...".
            context = item.get("ctx") or {}
            loc = (*loc, str(context["key"]))
            message = message.removeprefix(f"{context['key']}: ")
        messages.append(f"{_format_loc(loc)}: {message}")
    return "invalid job script: " + "; ".join(messages)


def parse_job_script(raw: bytes) -> JobSpec:
    """Parse and check a job script; raise ``JobScriptError`` naming the first problems found."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"job script is not UTF-8 text: cannot decode byte at position {exc.start}"
        raise JobScriptError(message) from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JobScriptError("job script is nested too deeply") from None
    except ValueError as exc:
        raise JobScriptError(f"job script is not valid JSON: {exc}") from None
    if _MAY_HOLD_UNSTORABLE.search(text):
        _check_strings(document)
    if not isinstance(document, dict):
        raise JobScriptError("job script must be a JSON object with 'info' and 'tasks'")
    if not document.get("tasks"):
        raise JobScriptError("job script has no tasks")
    try:
        script = Script.model_validate(document)
    except ValidationError as exc:
        raise JobScriptError(_describe(exc)) from None
    if len(script.tasks) > MAX_TASKS:
        raise JobScriptError(f"job script has {len(script.tasks)} tasks; at most {MAX_TASKS} are allowed")
    return _check(script)


#: The only ways JSON text can put a NUL or a lone surrogate into a parsed string: a ``\u0000`` escape
#: or a surrogate escape (``\ud800``-``\udfff``; a raw NUL is refused by the parser). Text without
#: either needs no walk through every string of the document.
_MAY_HOLD_UNSTORABLE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _check_strings(document: Any) -> None:
    """Refuse what no database can store, anywhere in the parsed document (keys too), naming where.

    NUL: PostgreSQL text and JSONB cannot hold it (``json.dumps`` writes it as ``\\u0000``, so the
    parsed strings are checked, not the text). A lone surrogate escape (``"\\ud800"``) parses but is
    not UTF-8, so it can never be stored or sent back.
    """
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), document)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                stack.append(((*loc, key), key))
                stack.append(((*loc, key), value))
        elif isinstance(item, list):
            stack.extend(((*loc, index), value) for index, value in enumerate(item))
        elif isinstance(item, str):
            if "\x00" in item:
                raise JobScriptError(f"{_format_loc(loc)}: must not contain NUL characters (\\u0000)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                message = "contains a lone surrogate escape, which is not valid UTF-8"
                raise JobScriptError(f"{_format_loc(loc)}: {message}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check(script: Script) -> JobSpec:
    info = script.info
    start_at_us = 0
    if info.start_at:
        try:
            start_at_us = parse_time(info.start_at)
        except ValueError as exc:
            raise JobScriptError(f"info.start_at: {exc}") from None

    tasks_by_id: dict[str, ScriptTask] = {}
    for task in script.tasks:
        if task.taskid in tasks_by_id:
            raise JobScriptError(f"duplicate taskid {task.taskid!r}")
        tasks_by_id[task.taskid] = task

    edges: dict[str, list[str]] = {}
    for task in script.tasks:
        where = f"task {task.taskid!r}"
        _check_unique_filenames(task.inputs, f"{where} inputs")
        _check_unique_filenames(task.outputs, f"{where} outputs")
        _check_unique_filenames(task.predata, f"{where} predata")
        deps: dict[str, None] = {}  # ordered, with O(1) look-ups: a merge task may depend on 10,000
        for dep in task.dependsOn:
            if dep not in tasks_by_id:
                raise JobScriptError(f"{where} dependsOn unknown task {dep!r}")
            deps[dep] = None
        for io in task.inputs:
            if not io.origin:
                continue
            origin = tasks_by_id.get(io.origin)
            if origin is None:
                raise JobScriptError(
                    f"{where} input {io.filename!r} has origin {io.origin!r}, which is no task"
                )
            if not any(out.filename == io.filename for out in origin.outputs):
                raise JobScriptError(
                    f"{where} input {io.filename!r} has origin {io.origin!r}, which outputs no such file"
                )
            deps[io.origin] = None  # an origin is an implicit dependency, as in AWE
        if (
            task.partinfo
            and task.partinfo.input
            and all(io.filename != task.partinfo.input for io in task.inputs)
        ):
            raise JobScriptError(f"{where} partinfo.input {task.partinfo.input!r} is not one of its inputs")
        edges[task.taskid] = list(deps)
        try:
            policy.check_overrides({**info.userattr, **task.userattr}, task.cmd.environ.public)
        except ValueError as exc:
            raise JobScriptError(f"{where}: {exc}") from None

    _check_acyclic(edges)

    priority = max(info.priority, 1)  # AWE raises anything lower to BasePriority
    clientgroups = normalize_clientgroups(info.clientgroups)
    info_doc: dict[str, Any] = {
        "name": info.name,
        "xref": info.xref,
        "service": info.service,
        "project": info.project,
        "user": info.user,
        "pipeline": info.pipeline,
        "clientgroups": clientgroups,
        "priority": priority,
        "auth": info.auth,
        "noretry": info.noretry,
        "userattr": info.userattr,
        "description": info.description,
        "tracking": info.tracking,
    }
    specs = []
    for ordinal, task in enumerate(script.tasks):
        cmd = task.cmd
        cmd_doc = {
            "name": cmd.name,
            "args": cmd.args,
            "args_array": cmd.args_array,
            "Dockerimage": cmd.Dockerimage,
            "dockerPull": cmd.dockerPull,
            "cmd_script": cmd.cmd_script,
            "environ": {"public": cmd.environ.public},
            "has_private_env": bool(cmd.environ.private),
            "description": cmd.description,
        }
        specs.append(
            TaskSpec(
                taskid=task.taskid,
                ordinal=ordinal,
                cmd=cmd_doc,
                depends_on=edges[task.taskid],
                inputs=[io.model_dump() for io in task.inputs],
                outputs=[io.model_dump() for io in task.outputs],
                predata=[io.model_dump() for io in task.predata],
                partinfo=task.partinfo.model_dump() if task.partinfo else None,
                totalwork=task.totalwork,
                maxworksize=task.maxworksize,
                userattr=task.userattr,
                clientgroups=task.clientgroups,
                private_env=dict(cmd.environ.private),
            )
        )
    return JobSpec(
        info=info_doc, start_at_us=start_at_us, priority=priority, clientgroups=clientgroups, tasks=specs
    )


def _check_unique_filenames(ios: list[IO], where: str) -> None:
    seen: set[str] = set()
    for io in ios:
        if not io.filename:
            raise JobScriptError(f"{where}: every entry needs a filename")
        if io.filename in seen:
            raise JobScriptError(f"{where}: duplicate filename {io.filename!r}")
        seen.add(io.filename)


def _check_acyclic(edges: dict[str, list[str]]) -> None:
    """Kahn's algorithm; on a cycle, name the tasks caught in it."""
    remaining = {task: len(deps) for task, deps in edges.items()}
    dependents: dict[str, list[str]] = {task: [] for task in edges}
    for task, deps in edges.items():
        for dep in deps:
            dependents[dep].append(task)
    ready = deque(task for task, count in remaining.items() if count == 0)
    while ready:
        task = ready.popleft()
        del remaining[task]
        for child in dependents[task]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if remaining:
        raise JobScriptError(f"dependency cycle among tasks {sorted(remaining)}")
