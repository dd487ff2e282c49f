"""Typed views of what the server answers. Each keeps the document it came from as ``raw``, so a field
the model does not name is still one ``raw["..."]`` away and nothing the server says is lost."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from perdure.states import JobState

T = TypeVar("T")

#: Job states from which a job will not move on by itself.
FINAL_JOB_STATES = frozenset(
    {JobState.COMPLETED, JobState.SUSPEND, JobState.FAILED_PERMANENT, JobState.DELETED}
)


def _str(document: dict[str, Any], key: str, default: str = "") -> str:
    value = document.get(key, default)
    return default if value is None else str(value)


def _int(document: dict[str, Any], key: str) -> int:
    value = document.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, and where it sits in the whole."""

    items: list[T]
    total: int
    limit: int
    offset: int

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]


@dataclass(frozen=True)
class TaskStatus:
    """One task of a job document: how far it is (workunits done of total) and in what state."""

    id: str
    name: str
    state: str
    totalwork: int
    remainwork: int
    depends_on: list[str]
    raw: dict[str, Any] = field(repr=False)

    @property
    def done(self) -> int:
        return max(0, self.totalwork - self.remainwork)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> TaskStatus:
        return cls(
            id=_str(document, "taskid"),
            name=_str(document, "task_name"),
            state=_str(document, "state"),
            totalwork=_int(document, "totalwork"),
            remainwork=_int(document, "remainwork"),
            depends_on=[str(d) for d in document.get("dependsOn") or []],
            raw=document,
        )


@dataclass(frozen=True)
class OutputFile:
    """A task's output in the server's data store; ``parts`` are the workunits' pieces, in rank order."""

    task: str
    filename: str
    size: int
    sha256: str | None
    url: str
    parts: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> OutputFile:
        return cls(
            task=_str(document, "task"),
            filename=_str(document, "filename"),
            size=_int(document, "size"),
            sha256=document.get("sha256"),
            url=_str(document, "url"),
            parts=list(document.get("parts") or []),
            raw=document,
        )


@dataclass(frozen=True)
class Workunit:
    id: str
    job_id: str
    task: str
    rank: int
    totalwork: int
    state: str
    failed: int
    attempt: int
    client: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Workunit:
        return cls(
            id=_str(document, "id"),
            job_id=_str(document, "jobid"),
            task=_str(document, "task_name"),
            rank=_int(document, "rank"),
            totalwork=_int(document, "totalwork"),
            state=_str(document, "state"),
            failed=_int(document, "failed"),
            attempt=_int(document, "attempt"),
            client=_str(document, "client"),
            raw=document,
        )


@dataclass(frozen=True)
class WorkunitReport:
    """A workunit as ``GET /job/<id>?report`` shows it, with its stdout/stderr/worknotes."""

    id: str
    rank: int
    state: str
    failed: int
    logs: dict[str, str]


@dataclass(frozen=True)
class TaskReport:
    id: str
    state: str
    totalwork: int
    workunits: list[WorkunitReport]


@dataclass(frozen=True)
class JobReport:
    """A job's workunits with their logs, and its event history (AWE's JobLog)."""

    id: str
    state: str
    error: Any
    tasks: list[TaskReport]
    events: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> JobReport:
        tasks = [
            TaskReport(
                id=_str(t, "taskid"),
                state=_str(t, "state"),
                totalwork=_int(t, "totalwork"),
                workunits=[
                    WorkunitReport(
                        id=_str(w, "wuid"),
                        rank=_int(w, "rank"),
                        state=_str(w, "state"),
                        failed=_int(w, "failed"),
                        logs={str(k): str(v) for k, v in (w.get("logs") or {}).items()},
                    )
                    for w in t.get("workunits") or []
                ],
            )
            for t in document.get("tasks") or []
        ]
        return cls(
            id=_str(document, "id"),
            state=_str(document, "state"),
            error=document.get("error"),
            tasks=tasks,
            events=list(document.get("events") or []),
            raw=document,
        )


@dataclass(frozen=True)
class ClientInfo:
    """A client: one slot of a worker node, as the server sees it."""

    id: str
    name: str
    group: str
    hostname: str
    node_id: str
    status: str
    busy: bool
    suspended: bool
    current_work: list[str]
    total_completed: int
    total_failed: int
    last_heartbeat: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ClientInfo:
        current = document.get("current_work") or {}
        work = current.get("data") if isinstance(current, dict) else current
        return cls(
            id=_str(document, "id"),
            name=_str(document, "name"),
            group=_str(document, "group"),
            hostname=_str(document, "hostname"),
            node_id=_str(document, "node_id"),
            status=_str(document, "Status"),
            busy=bool(document.get("busy")),
            suspended=bool(document.get("suspended")),
            current_work=[str(w) for w in work or []],
            total_completed=_int(document, "total_completed"),
            total_failed=_int(document, "total_failed"),
            last_heartbeat=_str(document, "last_heartbeat"),
            raw=document,
        )


@dataclass(frozen=True)
class ClientGroup:
    """A client group; ``token`` is set only in the answer that created or renewed it."""

    id: str
    name: str
    has_token: bool
    created_on: str
    token: str | None = None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ClientGroup:
        token = document.get("token")
        return cls(
            id=_str(document, "id"),
            name=_str(document, "name"),
            has_token=bool(document.get("has_token", token is not None)),
            created_on=_str(document, "created_on"),
            token=str(token) if token else None,
        )


@dataclass(frozen=True)
class Node:
    """A worker machine (management API): its host facts and when it was last heard from."""

    id: str
    hostname: str
    ips: list[str]
    cores: int
    memory_mb: int
    cloud: str
    instance: dict[str, Any]
    last_heartbeat: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Node:
        return cls(
            id=_str(document, "id"),
            hostname=_str(document, "hostName"),
            ips=[str(ip) for ip in document.get("ips") or []],
            cores=_int(document, "cores"),
            memory_mb=_int(document, "memoryInMB"),
            cloud=_str(document, "cloud"),
            instance=dict(document.get("instance") or {}),
            last_heartbeat=_str(document, "lastHeartbeat"),
            raw=document,
        )


@dataclass(frozen=True)
class QueueSummary:
    """``GET /queue?json``: counts of jobs, tasks, workunits and clients by state."""

    jobs: dict[str, Any]
    tasks: dict[str, Any]
    workunits: dict[str, Any]
    clients: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> QueueSummary:
        return cls(
            jobs=dict(document.get("jobs") or {}),
            tasks=dict(document.get("tasks") or {}),
            workunits=dict(document.get("workunits") or {}),
            clients=dict(document.get("clients") or {}),
            raw=document,
        )


@dataclass(frozen=True)
class Config:
    """The server's configuration document; ``get("node.ttl")`` reads one dotted key."""

    document: dict[str, Any]

    def get(self, key: str) -> Any:
        value: Any = self.document
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(key)
            value = value[part]
        return value


@dataclass(frozen=True)
class LogConfig:
    level: str
    max_size_mb: int
    max_backups: int

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LogConfig:
        return cls(_str(document, "level"), _int(document, "maxSizeMB"), _int(document, "maxBackups"))


@dataclass(frozen=True)
class SecuritySettings:
    """Token security as ``GET /api/v1/security/cognito`` shows it (secrets never appear)."""

    enabled: bool
    client_id: str
    region: str
    user_pool_id: str
    admin_groups: list[str]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> SecuritySettings:
        groups = document.get("adminGroups") or []
        if isinstance(groups, str):
            groups = [g for g in groups.split(",") if g]
        return cls(
            enabled=bool(document.get("enabled", True)),
            client_id=_str(document, "clientID"),
            region=_str(document, "region"),
            user_pool_id=_str(document, "userPoolID"),
            admin_groups=[str(g) for g in groups],
            raw=document,
        )


@dataclass(frozen=True)
class MetricPoint:
    time: str
    value: float | None


@dataclass(frozen=True)
class MetricSeries:
    """One metric of one object over time; ``interval`` is the level's, as Go prints durations."""

    id: str
    points: list[MetricPoint]
    metadata: dict[str, Any]
    interval: str

    @classmethod
    def from_document(cls, document: dict[str, Any], interval: str) -> MetricSeries:
        return cls(
            id=_str(document, "id"),
            points=[MetricPoint(_str(p, "time"), p.get("value")) for p in document.get("points") or []],
            metadata=dict(document.get("metaData") or {}),
            interval=interval,
        )


@dataclass(frozen=True)
class ServerInfo:
    """``GET /``: what the server says about itself."""

    version: str
    url: str
    database: str
    uptime_seconds: float
    jobs: dict[str, int]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ServerInfo:
        uptime = document.get("uptime_seconds")
        return cls(
            version=_str(document, "version"),
            url=_str(document, "url"),
            database=_str(document, "database"),
            uptime_seconds=float(uptime) if isinstance(uptime, (int, float)) else 0.0,
            jobs={str(k): int(v) for k, v in (document.get("jobs") or {}).items()},
            raw=document,
        )


def tasks_of(document: dict[str, Any]) -> list[TaskStatus]:
    tasks: Sequence[dict[str, Any]] = document.get("tasks") or []
    return [TaskStatus.from_document(t) for t in tasks]
