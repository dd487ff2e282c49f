"""A job may name another job's data as an input only when its submitter may read that job (issue 17).

A worker fetches a server-relative input (``/job/<id>/output/<task>/<file>``) with its client-group
token, which may read every job's outputs; without this check a user's job could name another user's
output and copy it into its own. At submit, every server-relative input and predata URL must name a
job output, without dot segments, of a job the submitter may read (an admin reads every job; a user
reads their own). Absolute http(s) URLs are fetched without the worker's token, and ``file://`` URLs
are the worker's to allow (``--allow-file-root``), so neither is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

from starlette.requests import Request

from perdure.api.auth import principal
from perdure.api.context import ctx
from perdure.errors import Forbidden
from perdure.jobscript import JobSpec

_OUTPUT = re.compile(r"^/job/(?P<job>[^/?#]+)/output/[^?#]+$")


def check_references(spec: JobSpec, may_read: Callable[[str], bool]) -> None:
    """Refuse (403) an input or predata of ``spec`` that names server data ``may_read`` denies."""
    for task in spec.tasks:
        for kind, ios in (("input", task.inputs), ("predata", task.predata)):
            for io in ios:
                url = str(io.get("url") or "")
                if not url.startswith("/"):
                    continue
                where = f"task {task.taskid!r} {kind} {io.get('filename')!r}"
                match = _OUTPUT.match(url)
                segments = unquote(url.split("?", 1)[0]).split("/")
                if match is None or any(s in (".", "..") for s in segments) or url.startswith("//"):
                    raise Forbidden(
                        f"{where}: a server path must name a job output (/job/<id>/output/<task>/<file>)"
                    )
                if not may_read(unquote(match["job"])):
                    raise Forbidden(f"{where}: names the data of a job you may not read")


def check_submitted_references(request: Request, spec: JobSpec) -> None:
    """:func:`check_references` for the caller of ``request``."""
    caller = principal(request)
    if caller.admin:
        may_read: Callable[[str], bool] = lambda _job_id: True  # noqa: E731 - one short rule
    else:
        jobs = ctx(request).jobs
        may_read = lambda job_id: jobs.owner_of(job_id) == caller.user  # noqa: E731
    check_references(spec, may_read)


__all__ = ["check_references", "check_submitted_references"]
