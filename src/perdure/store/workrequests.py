"""The worker operations the dispatch path takes (checkouts, reports, both with ``&next``), their
outcomes, and the failure limits reports are judged by: the vocabulary shared by ``store.checkout``,
``store.report`` and ``store.work``, and by the API that builds them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from perdure.errors import BadRequest, DomainError, NotFound
from perdure.protocol import (
    LeaseLost,
    Refused,
)
from perdure.spot.records import Preemption
from perdure.states import ReportStatus, WorkunitState

LOG_KINDS = ("stdout", "stderr", "worknotes", "perf")
REPORT_STATUSES = frozenset(s.value for s in ReportStatus)
#: Why a part of an operation was refused: a bad request, or a refusal of the worker protocol.
Failure = DomainError | Refused


@dataclass(frozen=True)
class FailureLimits:
    max_work_failure: int = 3
    max_client_failure: int = 5


@dataclass(frozen=True)
class CheckoutRequest:
    """``GET /work?client=<id>[&available=<bytes>]``."""

    client_id: str
    available: int | None = None


@dataclass(frozen=True)
class ReportRequest:
    """``PUT /work/<id>?status=<status>&client=<id>``, with its files."""

    wu_id: str
    client_id: str
    status: str
    computetime: int = 0
    logs: Mapping[str, str] = field(default_factory=dict)
    preemption: Preemption | None = None


@dataclass(frozen=True)
class Operation:
    """One worker request: a report, a checkout, or (``&next``) a report and then, if it was
    accepted, a checkout."""

    report: ReportRequest | None = None
    checkout: CheckoutRequest | None = None

    @property
    def client_id(self) -> str:
        request = self.report or self.checkout
        return request.client_id if request is not None else ""


@dataclass
class DispatchOutcome:
    """What each part of an operation came to: the report's "ok" or its refusal, the leased
    workunit's document or why there is none. A part not asked for, or a checkout after a refused
    report, stays None."""

    report: str | Failure | None = None
    checkout: dict[str, Any] | Failure | None = None


def decode_workunit_id(raw: str) -> str:
    """AWE workers address workunits as ``base64:<b64 id>`` too."""
    if raw.startswith("base64:"):
        try:
            return base64.b64decode(raw[7:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest("invalid base64 workunit id") from None
    return raw


def held_lease(row: Any, wu_id: str, client_id: str) -> Any:
    """The workunit's ``row`` (with its ``state`` and ``client_id``), if ``client_id`` holds its lease;
    otherwise the refusal a worker is given: NotFound without the row, LeaseLost when it is not
    checked out by that client."""
    if row is None:
        raise NotFound(f"no workunit found with id {wu_id}")
    if row.state != WorkunitState.CHECKOUT or row.client_id != client_id:
        raise LeaseLost(f"workunit {wu_id} is not checked out by client {client_id}")
    return row
