"""AWE job scripts: parse, validate and normalise what ``POST /job`` receives.

Accepts both IO encodings AWE accepted (the legacy map keyed by filename, kept in the script's order,
and the list form), checks everything that can be checked before a job exists, and returns a
``JobSpec`` in the list form the job document shows. Any problem raises ``JobScriptError`` with a
message that names the offending field; nothing is stored for a rejected script.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from perdure.spot import policy
from perdure.timeutil import parse_time

#: Task ids become part of workunit ids and URLs, so they are kept to URL-safe characters.
TASKID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: One task may be split into at most this many workunits; more is almost always a typo.
MAX_TOTALWORK = 100_000
MAX_TASKS = 10_000
#: Integers kept only in JSON documents are bounded to 64 bits, the widest integer either database reads.
MAX_INT = 2**63 - 1
#: Integers stored in ``Integer`` columns (priority, totalwork, maxworksize) are 32-bit on PostgreSQL;
#: the same bound holds on SQLite so a script valid on one database is valid on the other.
MAX_INT32 = 2**31 - 1
#: Names stored in ``String(255)`` columns (info.name, project, pipeline, user, cmd.name, group names).
MAX_NAME = 255
#: ``clientgroups`` is stored in a ``String(1024)`` column.
MAX_CLIENTGROUPS = 1024
#: C0 control characters and DEL: never acceptable in names, paths or group names (NUL, newline, ESC...).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str, *, limit: int = MAX_NAME) -> str:
    """A string that becomes a name in a column or a listing: bounded, no control characters."""
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (has {len(value)})")
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters (NUL, newline, ESC, ...)")
    return value


def check_clientgroups(value: str) -> str:
    """A comma list of client group names: each a name that cannot become a path ('/' or '..')."""
    check_name(value, limit=MAX_CLIENTGROUPS)
    for group in value.split(","):
        group = group.strip()
        if "/" in group or "\\" in group or ".." in group:
            raise ValueError(f"group {group!r}: a client group name must not contain '/', '\\' or '..'")
        check_name(group)
    return value


class JobScriptError(ValueError):
    """The job script is not acceptable; the message is shown to the user as is."""


class _Model(BaseModel):
    # Go's encoding/json ignores unknown keys; Perdure does not, because a typo ("dependson", "ouputs",
    # "totalWork", "clientgroup") would run the job silently wrong. Each model lists the keys AWE's own
    # job documents carry that only the server fills (accepted and dropped, so a job document can be
    # submitted again) and the keys AWE knows that Perdure cannot act on (refused, saying why).
    # Null still reads as "absent", as in Go, and types stay strict.
    model_config = ConfigDict(extra="ignore", strict=True)

    #: Keys the server fills in a job document: accepted in a script and dropped.
    server_filled: ClassVar[frozenset[str]] = frozenset()
    #: Keys AWE knows that Perdure cannot act on, with the reason shown when one is given a value.
    refused: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = _known_keys(cls)
        if data.keys() <= known and None not in data.values():
            return data  # the usual case, checked at C speed: a 10,000-task script has 50,000 of these
        kept: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                if value is not None:
                    kept[key] = value
            elif key in cls.refused:
                if value is not None:
                    raise PydanticCustomError(
                        "refused_key", "{key}: {reason}", {"key": key, "reason": cls.refused[key]}
                    )
            elif key not in cls.server_filled:
                raise PydanticCustomError(
                    "unknown_key", "{key}: unknown key{hint}", {"key": key, "hint": _did_you_mean(key, cls)}
                )
        return kept


_KNOWN_KEYS: dict[type[BaseModel], frozenset[str]] = {}


def _known_keys(model: type[BaseModel]) -> frozenset[str]:
    """The model's field names, computed once per model (pydantic builds ``model_fields`` per call)."""
    known = _KNOWN_KEYS.get(model)
    if known is None:
        known = _KNOWN_KEYS[model] = frozenset(model.model_fields)
    return known


def _did_you_mean(key: str, model: type[_Model]) -> str:
    """A hint naming the closest known key ("ouputs" -> "outputs", "totalWork" -> "totalwork")."""
    known = [*model.model_fields, *model.server_filled, *model.refused]
    by_case = {name.lower(): name for name in known}
    if key.lower() in by_case:
        return f"; did you mean {by_case[key.lower()]!r}?"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known keys: {', '.join(sorted(model.model_fields))})"


class IO(_Model):
    refused: ClassVar[dict[str, str]] = {
        "optional": "AWE never reads 'optional' from a job script; every declared output must be written",
        "md5": "Perdure does not check downloads against an md5; remove the key",
        "datatoken": "a data token is sent in the Datatoken header of POST /job, not in the script",
    }

    filename: str = ""
    name: str = ""
    directory: str = ""
    host: str = ""
    node: str = "-"
    url: str = ""
    size: int = Field(default=0, le=MAX_INT)
    cache: bool = False
    origin: str = ""
    nonzero: bool = False
    temporary: bool = False
    shockfilename: str = ""
    shockindex: str = ""
    attrfile: str = ""
    nofile: bool = False
    delete: bool = False
    type: str = ""
    nodeattr: dict[str, Any] = Field(default_factory=dict)
    formoptions: dict[str, str] = Field(default_factory=dict)
    uncompress: str = ""
    #: Output only: ``s3://bucket/key`` the worker copies the file to, with its own AWS credentials,
    #: after Perdure has recorded it (docs/aws.md, "Outputs delivered to your bucket").
    deliverto: str = Field(default="", exclude_if=lambda value: not value)  # absent unless named

    @field_validator("filename", "directory", "attrfile", "shockfilename")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        # These name files inside a worker's work directory: they must not escape it.
        if value and (value.startswith("/") or "\x00" in value or ".." in value.split("/")):
            raise ValueError("must be a relative path without '..'")
        if CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters (newline, ESC, ...)")
        if len(value) > 4096:
            raise ValueError("must be at most 4096 characters")
        return value

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        return check_name(value, limit=128)

    @field_validator("deliverto")
    @classmethod
    def _deliverto(cls, value: str) -> str:
        return check_s3_location(value) if value else value

    @field_validator("uncompress")
    @classmethod
    def _uncompress(cls, value: str) -> str:
        if value not in ("", "gzip"):
            raise ValueError(f"{value!r} is not supported; the worker decompresses only 'gzip'")
        return value

    @field_validator("size")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value


class Environ(_Model):
    public: dict[str, str] = Field(default_factory=dict)
    private: dict[str, str] = Field(default_factory=dict)


class Cmd(_Model):
    server_filled: ClassVar[frozenset[str]] = frozenset({"has_private_env", "Local"})

    name: str
    args: str = ""
    args_array: list[str] = Field(default_factory=list)
    description: str = ""
    environ: Environ = Field(default_factory=Environ)
    Dockerimage: str = ""
    dockerPull: str = ""
    cmd_script: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return check_name(value)


class PartInfo(_Model):
    input: str = ""
    index: str = ""
    output: str = ""


class ScriptTask(_Model):
    server_filled: ClassVar[frozenset[str]] = frozenset(
        {
            "state", "remainwork", "createddate", "starteddate", "completeddate", "computetime",
            "task_name", "parent", "jobid", "task_type", "workflowStep", "stepOutput", "scatter_task",
            "children",
        }
    )  # fmt: skip

    taskid: str
    cmd: Cmd
    dependsOn: list[str] = Field(default_factory=list)
    inputs: list[IO] = Field(default_factory=list)
    outputs: list[IO] = Field(default_factory=list)
    predata: list[IO] = Field(default_factory=list)
    partinfo: PartInfo | None = None
    totalwork: int = 1
    maxworksize: int = Field(default=0, le=MAX_INT32)
    userattr: dict[str, Any] = Field(default_factory=dict)
    clientgroups: str = ""
    skip: int = 0

    @field_validator("inputs", "outputs", "predata", mode="before")
    @classmethod
    def _io_map_to_list(cls, value: Any) -> Any:
        # The legacy form is a map keyed by filename; Python dicts keep the script's order, Go's did not.
        if isinstance(value, dict):
            items = []
            for filename, io in value.items():
                if not isinstance(io, dict):
                    raise ValueError(f"entry {filename!r} must be an object")
                items.append({**io, "filename": filename})
            return items
        return value

    @model_validator(mode="after")
    def _deliveries(self) -> ScriptTask:
        # Checked here, not at the worker: a location the worker could never write is refused at submit.
        for kind in ("inputs", "predata"):
            for io in getattr(self, kind):
                if io.deliverto:
                    raise ValueError(f"{kind} {io.filename!r}: 'deliverto' is for outputs only")
        for io in self.outputs:
            if not io.deliverto:
                continue
            if io.nofile or io.type:
                raise ValueError(f"output {io.filename!r}: 'deliverto' needs a file (no 'nofile', no 'type')")
            if self.totalwork > 1 or self.maxworksize > 0:
                # Each workunit of a split task writes one part; none holds the whole file to copy.
                raise ValueError(
                    f"output {io.filename!r}: 'deliverto' is refused on a split task (its workunits each "
                    "write one part); deliver it from a following task with one workunit that takes it "
                    "as input"
                )
        return self

    @field_validator("skip")
    @classmethod
    def _skip(cls, value: int) -> int:
        if value != 0:
            raise ValueError(
                "skipping tasks is AWE v0.9.30's and Perdure does not do it; remove 'skip' or set 0"
            )
        return value

    @field_validator("clientgroups")
    @classmethod
    def _clientgroups(cls, value: str) -> str:
        return check_clientgroups(value)

    @field_validator("taskid")
    @classmethod
    def _taskid(cls, value: str) -> str:
        if not TASKID_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("maxworksize")
    @classmethod
    def _maxworksize(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("totalwork")
    @classmethod
    def _totalwork(cls, value: int) -> int:
        if value > MAX_TOTALWORK:
            raise ValueError(f"must be at most {MAX_TOTALWORK}")
        if value < 0:
            raise ValueError("must be at least 1 (0, as in AWE, also means one workunit)")
        return max(value, 1)  # AWE: 0 means one workunit


class Info(_Model):
    server_filled: ClassVar[frozenset[str]] = frozenset({"submittime", "startedtime", "completedtime"})
    refused: ClassVar[dict[str, str]] = {
        "datatoken": "a data token is sent in the Datatoken header of POST /job, not in the script",
    }

    pipeline: str = ""
    name: str = ""
    project: str = ""
    user: str = ""
    xref: str = ""
    service: str = ""
    description: str = ""
    clientgroups: str | list[str] = ""
    priority: int = Field(default=1, ge=-MAX_INT32 - 1, le=MAX_INT32)
    noretry: bool = False
    auth: bool = False
    tracking: bool = False
    userattr: dict[str, Any] = Field(default_factory=dict)
    start_at: str = ""

    @field_validator("pipeline", "name", "project", "user")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("clientgroups")
    @classmethod
    def _clientgroups(cls, value: str | list[str]) -> str | list[str]:
        check_clientgroups(value if isinstance(value, str) else ",".join(value))
        return value


class Script(_Model):
    server_filled: ClassVar[frozenset[str]] = frozenset(
        {
            "id", "state", "registered", "remaintasks", "expiration", "updatetime", "error", "resumed",
            "shockhost", "IsCWL", "cwl_version", "CWL_objects", "CWL_job_input", "workflow_instances",
            "entrypoint",
        }
    )  # fmt: skip

    info: Info = Field(default_factory=Info)
    tasks: list[ScriptTask]


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


#: S3's bucket naming rules: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a
#: letter or digit, no '..', not an IP address.
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
#: S3's longest key, in UTF-8 bytes.
MAX_S3_KEY = 1024


def check_s3_location(value: str) -> str:
    """``s3://bucket/key`` naming one object: a valid bucket name and a key (no trailing '/')."""
    if not value.startswith("s3://"):
        raise ValueError(f"{value!r} is not an s3:// location (s3://bucket/key)")
    bucket, _, key = value[5:].partition("/")
    if not S3_BUCKET.fullmatch(bucket) or ".." in bucket or _IP_ADDRESS.fullmatch(bucket):
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit)"
        )
    if not key:
        raise ValueError(f"{value!r} names no key (s3://bucket/key)")
    if key.endswith("/"):
        raise ValueError(f"{value!r} ends with '/': name the object, e.g. {value}result.txt")
    if CONTROL_CHARACTERS.search(key):
        raise ValueError("the key must not contain control characters (newline, ESC, ...)")
    if len(key.encode()) > MAX_S3_KEY:
        raise ValueError(f"the key must be at most {MAX_S3_KEY} bytes")
    return value


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
