"""The shape of an AWE job script: the pydantic models of what ``POST /job`` receives, and the checks
each field makes on its own (names, paths, client groups, S3 locations; AWE's keys that Perdure drops
or refuses, and a hint for a misspelt one). Checks across fields and tasks, and the compilation into a
``JobSpec``, are ``perdure.jobscript``'s.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

#: Task ids become part of workunit ids and URLs, so they are kept to URL-safe characters.
TASKID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: One task may be split into at most this many workunits; more is almost always a typo.
MAX_TOTALWORK = 100_000
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


#: Why a script may not carry a data token (IO and info both refuse the key).
DATATOKEN_IN_HEADER = "a data token is sent in the Datatoken header of POST /job, not in the script"


class IO(_Model):
    refused: ClassVar[dict[str, str]] = {
        "optional": "AWE never reads 'optional' from a job script; every declared output must be written",
        "md5": "Perdure does not check downloads against an md5; remove the key",
        "datatoken": DATATOKEN_IN_HEADER,
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
        "datatoken": DATATOKEN_IN_HEADER,
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
