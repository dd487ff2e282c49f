"""The Python SDK: ``Client`` for every API call, ``Job`` handles, and the ``Workflow`` builder."""

from __future__ import annotations

from perdure.sdk.client import Client
from perdure.sdk.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    NotFoundError,
    PerdureError,
    ServerUnavailable,
    WaitTimeout,
)
from perdure.sdk.job import Job
from perdure.sdk.workflow import Output, Remote, Task, Workflow

__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "Client",
    "Job",
    "NotFoundError",
    "Output",
    "PerdureError",
    "Remote",
    "ServerUnavailable",
    "Task",
    "WaitTimeout",
    "Workflow",
]
