"""Which jobs a page or a ``?query`` asks for: the field paths, their types, and the WHERE clauses.

Kept apart from the store's operations so the API can import the names it validates against (the
field lists) and the page query can be read, and indexed for, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.sql.elements import KeyedColumnElement

from perdure.errors import BadRequest
from perdure.store.commalist import comma_list_contains
from perdure.store.schema import jobs
from perdure.timeutil import parse_time

#: ``order=`` and ``?query`` field paths that are real columns.
FIELD_COLUMNS: dict[str, KeyedColumnElement[Any]] = {
    "id": jobs.c.id,
    "state": jobs.c.state,
    "updatetime": jobs.c.updatetime,
    "expiration": jobs.c.expiration,
    "remaintasks": jobs.c.remaintasks,
    "resumed": jobs.c.resumed,
    "info.name": jobs.c.name,
    "info.pipeline": jobs.c.pipeline,
    "info.project": jobs.c.project,
    "info.user": jobs.c.username,
    "info.clientgroups": jobs.c.clientgroups,
    "info.priority": jobs.c.priority,
    "info.submittime": jobs.c.submittime,
    "info.startedtime": jobs.c.startedtime,
    "info.completedtime": jobs.c.completedtime,
    "info.start_at": jobs.c.start_at,
    "owner": jobs.c.owner,  # issue 17: the verified submitter (``?query&owner=``), not ``info.user``
}
TIME_FIELDS = frozenset(
    {"updatetime", "expiration", "info.submittime", "info.startedtime", "info.completedtime", "info.start_at"}
)
INT_FIELDS = frozenset({"remaintasks", "resumed", "info.priority"})
#: AWE's list for ``?distinct=``.
DISTINCT_FIELDS = frozenset(
    {
        "name",
        "submittime",
        "completedtime",
        "pipeline",
        "clientgroups",
        "project",
        "service",
        "user",
        "priority",
        "userattr.submission",
    }
)
MAX_PAGE = 1000


@dataclass
class JobQuery:
    limit: int = 25
    offset: int = 0
    order: str = "updatetime"
    descending: bool = True
    states: frozenset[str] | None = None
    #: field path -> accepted values (any of)
    fields: dict[str, list[str]] = field(default_factory=dict)
    date_start: int | None = None
    date_end: int | None = None
    #: Only jobs submitted by this user (non-admins, with security on).
    owner: str | None = None


def field_expression(path: str) -> ColumnElement[Any]:
    """The SQL expression for a job field path: a column, or a JSON path inside ``info``."""
    if path in FIELD_COLUMNS:
        return FIELD_COLUMNS[path]
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "info" and all(p and p.replace("_", "").isalnum() for p in parts[1:]):
        expr: ColumnElement[Any] = jobs.c.info[tuple(parts[1:])].as_string()
        return expr
    raise BadRequest(f"unknown job field {path!r}")


def field_filter(path: str, values: Sequence[str]) -> ColumnElement[bool]:
    expr = field_expression(path)
    if path in TIME_FIELDS:
        try:
            return expr.in_([parse_time(v) for v in values])
        except ValueError as exc:
            raise BadRequest(f"{path}: {exc}") from None
    if path in INT_FIELDS:
        try:
            return expr.in_([int(v) for v in values])
        except ValueError:
            raise BadRequest(f"{path} must be an integer") from None
    if path == "info.clientgroups":
        # clientgroups is a comma list: match jobs that name any of the given groups.
        return or_(*(comma_list_contains(expr, group) for group in values))
    return expr.in_(list(values))


def where_clauses(query: JobQuery) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if query.owner is not None:
        clauses.append(jobs.c.owner == query.owner)
    if query.states is not None:
        clauses.append(jobs.c.state.in_(sorted(query.states)))
    for path, values in query.fields.items():
        clauses.append(field_filter(path, values))
    if query.date_start is not None or query.date_end is not None:
        ranges = []
        for column in (jobs.c.submittime, jobs.c.completedtime):
            bounds = [column > 0]  # an unset time (0) is in no range
            if query.date_start is not None:
                bounds.append(column >= query.date_start)
            if query.date_end is not None:
                bounds.append(column < query.date_end)
            ranges.append(and_(*bounds))
        clauses.append(or_(*ranges))
    return clauses


def share_groups(mine: set[str], other: str) -> bool:
    theirs = set(filter(None, other.split(",")))
    return not mine or not theirs or bool(mine & theirs)
