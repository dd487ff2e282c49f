"""The worker protocol's refusals, as codes the server, the SDK and the worker share.

A refusal on ``/work`` and ``/client`` answers in AWE's envelope with the code next to the message:
``{"status": 400, "data": null, "error": ["Client suspended"], "code": "client-suspended"}`` (and in a
report's ``next_error``). AWE workers read ``error`` and ignore ``code``; Perdure's worker branches on
``code`` and never on the text. The store raises ``Refused`` errors, which carry a code and no HTTP
status: ``perdure.api.errors`` decides the status.

This module imports nothing of Perdure's, so the SDK and the worker can use it without the server.
"""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    #: The client id is not registered: register (again) and retry.
    CLIENT_NOT_FOUND = "client-not-found"
    #: The client was deleted on the server: the worker should stop.
    CLIENT_DELETED = "client-deleted"
    #: The client is suspended: it gets no work until resumed.
    CLIENT_SUSPENDED = "client-suspended"
    #: A ``done`` report without every declared output uploaded: report a failure instead.
    OUTPUTS_MISSING = "outputs-missing"
    #: The client does not hold this workunit (any more): drop the result.
    LEASE_LOST = "lease-lost"
    #: Nothing eligible for this client now: ask again later.
    NO_WORK = "no-work"


class Refused(Exception):
    """The store's refusal of a worker's request: a code and a message, no HTTP status."""

    code: Refusal

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientNotFound(Refused):
    code = Refusal.CLIENT_NOT_FOUND


class ClientDeleted(Refused):
    code = Refusal.CLIENT_DELETED


class ClientSuspended(Refused):
    code = Refusal.CLIENT_SUSPENDED


class OutputsMissing(Refused):
    code = Refusal.OUTPUTS_MISSING


class LeaseLost(Refused):
    code = Refusal.LEASE_LOST


class NoWork(Refused):
    code = Refusal.NO_WORK


def refusal_code(value: object) -> Refusal | None:
    """The code of an answer's ``code`` field, or None when it has none (or one this version does not
    know: a newer server may add codes)."""
    try:
        return Refusal(value) if isinstance(value, str) else None
    except ValueError:
        return None


__all__ = [
    "ClientDeleted",
    "ClientNotFound",
    "ClientSuspended",
    "LeaseLost",
    "NoWork",
    "OutputsMissing",
    "Refusal",
    "Refused",
    "refusal_code",
]
