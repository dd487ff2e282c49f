"""What workers tell the server about checkpoints, restores and preemptions: checked at the door."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perdure.errors import BadRequest

_NAME = r"^[0-9]{6}-a[0-9]{1,9}$"
_TEXT = 4000
Stats = dict[str, int | float | str]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CheckpointRef(_Record):
    """What the server keeps on a workunit to restore it from (``Manifest.reference``)."""

    name: str = Field(pattern=_NAME)
    engine: str = Field(min_length=1, max_length=32)
    kind: Literal["iterative", "final"]
    created: float = Field(ge=0)
    progress_s: float = Field(ge=0)
    size: int = Field(ge=0)
    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    attempt: int = Field(ge=0)


class CheckpointTaken(_Record):
    """An iterative checkpoint finished (``ok``), or failed (``error``)."""

    ok: bool
    kind: Literal["iterative", "final"] = "iterative"
    name: str | None = Field(default=None, pattern=_NAME)
    engine: str | None = Field(default=None, max_length=32)
    created: float = Field(default=0, ge=0)
    progress_s: float = Field(default=0, ge=0)
    size: int = Field(default=0, ge=0)
    checksum: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    attempt: int = Field(default=0, ge=0)
    restorable: bool = True
    written: int = Field(default=0, ge=0)
    duration_s: float = Field(default=0, ge=0)
    error: str = Field(default="", max_length=_TEXT)
    stats: Stats = Field(default_factory=dict)

    def reference(self) -> dict[str, Any] | None:
        if not (self.ok and self.restorable and self.name and self.engine and self.checksum):
            return None
        return CheckpointRef(
            name=self.name,
            engine=self.engine,
            kind=self.kind,
            created=self.created,
            progress_s=self.progress_s,
            size=self.size,
            checksum=self.checksum,
            attempt=self.attempt,
        ).model_dump()


class RestoreResult(_Record):
    ok: bool
    name: str = Field(default="", max_length=64)
    saved_s: float = Field(default=0, ge=0)
    duration_s: float = Field(default=0, ge=0)
    size: int = Field(default=0, ge=0)
    engine: str = Field(default="", max_length=32)
    reason: str = Field(default="", max_length=_TEXT)
    stats: Stats = Field(default_factory=dict)


class FinalCheckpoint(_Record):
    ok: bool
    duration_s: float = Field(default=0, ge=0)
    size: int = Field(default=0, ge=0)
    written: int = Field(default=0, ge=0)
    error: str = Field(default="", max_length=_TEXT)
    stats: Stats = Field(default_factory=dict)


class Preemption(_Record):
    """Sent with ``status=preempted``: how the work left the reclaimed node."""

    outcome: Literal["final", "iterative", "none", "returned"]
    checkpoint: CheckpointRef | None = None
    detail: str = Field(default="", max_length=_TEXT)
    final: FinalCheckpoint | None = None


T = TypeVar("T", bound=BaseModel)


def parse(model: type[T], data: bytes | str, what: str) -> T:
    """A record from a request body, or a 400 naming the first problem."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"invalid {what}: {where}: {first['msg']}") from None
