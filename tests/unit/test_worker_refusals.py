"""The worker acts on the refusal codes of the protocol (``perdure.protocol``), never on message text:
the SDK reads the code from AWE's envelope, the worker's API keeps it, and a slot stops, registers
again, waits or reports a failure by the code alone."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perdure.protocol import Refusal
from perdure.sdk import errors as sdk_errors
from perdure.worker.api import ServerRefused, Stopped, _refusal
from perdure.worker.node import Slot
from perdure.worker.runner import Outcome
from tests.unit.fakenode import fake_node


def awe_refusal(message: str, code: str | None) -> sdk_errors.ApiError:
    body: dict[str, Any] = {"status": 400, "data": None, "error": [message]}
    if code is not None:
        body["code"] = code
    return sdk_errors.error_for(400, body, "")


def test_the_sdk_reads_the_code_of_a_refusal() -> None:
    assert awe_refusal("Client suspended", "client-suspended").refusal == Refusal.CLIENT_SUSPENDED
    assert awe_refusal("Client suspended", None).refusal is None  # an AWE server sends none
    assert awe_refusal("x", "a-code-from-a-newer-server").refusal is None


def test_the_workers_api_keeps_the_code() -> None:
    def refused() -> None:
        raise awe_refusal("whatever the text", "lease-lost")

    with pytest.raises(ServerRefused) as caught:
        _refusal(refused)
    assert (caught.value.status, caught.value.refusal) == (400, Refusal.LEASE_LOST)


class Waits(threading.Event):
    """A stop event whose waits return at once, recording how long the slot meant to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout or 0.0)
        self.set()  # one pause is enough to see the decision; then the slot stops
        return True


class FakeApi:
    def __init__(self, checkouts: list[ServerRefused]) -> None:
        self.checkouts = checkouts
        self.registered = 0
        self.reports: list[str] = []
        self.stop: threading.Event | None = None

    def register(self, profile: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.registered += 1
        return profile

    def retrying(self, what: str, call: Any, **_: Any) -> Any:
        return call()

    def checkout(self, client_id: str, wait_s: float, available: int) -> dict[str, Any] | None:
        if not self.checkouts:
            raise Stopped("no more answers")
        raise self.checkouts.pop(0)

    def report(self, wu_id: str, client_id: str, status: str, *args: Any, **kwargs: Any) -> None:
        self.reports.append(status)
        if len(self.reports) == 1:
            raise ServerRefused(400, "the server says no", Refusal.OUTPUTS_MISSING)


def slot(tmp_path: Path, api: FakeApi) -> tuple[Slot, SimpleNamespace]:
    node = fake_node(tmp_path, api, stop=Waits())
    return Slot(node, 0), node  # type: ignore[arg-type]


@pytest.mark.parametrize("message", ["Client deleted: the worker should stop", "gone"])
def test_a_deleted_client_stops_whatever_the_message(tmp_path: Path, message: str) -> None:
    api = FakeApi([ServerRefused(400, message, Refusal.CLIENT_DELETED)])
    s, node = slot(tmp_path, api)
    s._loop()
    assert node.draining.is_set()
    assert node.stop.waited == []


def test_an_unknown_client_registers_again(tmp_path: Path) -> None:
    api = FakeApi([ServerRefused(400, "no such thing", Refusal.CLIENT_NOT_FOUND)])
    s, node = slot(tmp_path, api)
    s._loop()
    assert api.registered == 2  # at start, and again after the refusal
    assert not node.draining.is_set()


def test_a_suspended_client_waits_and_asks_again(tmp_path: Path) -> None:
    api = FakeApi([ServerRefused(400, "on hold", Refusal.CLIENT_SUSPENDED)])
    s, node = slot(tmp_path, api)
    s._loop()
    assert node.stop.waited == [30]
    assert not node.draining.is_set()


def test_message_text_alone_decides_nothing(tmp_path: Path) -> None:
    """An AWE server's refusal has no code: the text that once meant "stop" is just a refusal."""
    api = FakeApi([ServerRefused(400, "Client deleted: the worker should stop", None)])
    s, node = slot(tmp_path, api)
    s._loop()
    assert not node.draining.is_set()
    assert api.registered == 1
    assert node.stop.waited == [10]


def test_a_done_report_refused_for_missing_outputs_is_reported_as_a_failure(tmp_path: Path) -> None:
    api = FakeApi([])
    s, node = slot(tmp_path, api)
    node.draining.set()  # no next checkout with the report
    s._report("wu", Outcome("done", 1))
    assert api.reports == ["done", "fail"]
