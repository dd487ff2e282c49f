"""The one retry policy (perdure.retry) as the SDK, the worker and the direct transfers use it: a
transient failure is tried again until it passes, a refusal never is, and a stop condition always ends
it. Against scripted servers (httpx.MockTransport), no network; waits are milliseconds."""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from perdure.retry import Policy, TransientError, retry_after_seconds, retry_call
from perdure.sdk import ApiError, Client, ServerUnavailable
from perdure.worker import api as worker_api
from perdure.worker import direct
from perdure.worker.api import REPORT_TRIES_ON_500, ServerAPI, ServerRefused, Stopped
from tests.scripted import scripted_client


class Flaky(TransientError):
    pass


def failing(times: int, then: Any = "ok") -> tuple[Any, list[float]]:
    """A call that fails transiently ``times`` times, then returns ``then``; and when each try began."""
    tries: list[float] = []

    def call() -> Any:
        tries.append(time.monotonic())
        if len(tries) <= times:
            raise Flaky(f"try {len(tries)}")
        return then

    return call, tries


FAST = Policy(attempts=5, first_wait_s=0.001, max_wait_s=0.002)


def test_a_transient_failure_is_tried_again_until_it_passes() -> None:
    call, tries = failing(2)
    assert retry_call(call, FAST) == "ok" and len(tries) == 3


def test_a_refusal_is_raised_at_once() -> None:
    tries: list[int] = []

    def refused() -> None:
        tries.append(1)
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        retry_call(refused, FAST)
    assert len(tries) == 1


def test_attempts_end_it_with_the_last_transient_error() -> None:
    call, tries = failing(10)
    with pytest.raises(Flaky, match="try 5"):
        retry_call(call, FAST)
    assert len(tries) == 5


def test_the_total_time_ends_it_without_starting_a_wait_past_it() -> None:
    call, tries = failing(1000)
    started = time.monotonic()
    with pytest.raises(Flaky):
        retry_call(call, Policy(within_s=0.2, first_wait_s=0.05, max_wait_s=0.05))
    assert 1 < len(tries) < 10 and time.monotonic() - started < 0.2 + 0.1


def test_an_event_or_give_up_ends_a_long_wait_at_once() -> None:
    stop = threading.Event()
    call, tries = failing(1000)

    def stopping() -> None:
        if not tries:  # the server is away; then, while the worker waits to try again, it is told to stop
            threading.Timer(0.05, stop.set).start()
        call()

    started = time.monotonic()
    with pytest.raises(Flaky, match="try 1"):
        retry_call(stopping, Policy(first_wait_s=60.0, max_wait_s=60.0), stop=stop)
    assert len(tries) == 1 and time.monotonic() - started < 5.0  # a wait of 30 s or more, cut short
    flag: list[bool] = []
    call, tries = failing(1000)

    def giving_up() -> None:
        flag.append(True)
        call()

    with pytest.raises(Flaky, match="try 3"):
        retry_call(giving_up, FAST, give_up=lambda: len(flag) >= 3)
    assert len(tries) == 3


def test_a_retry_without_a_stop_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a stop condition"):
        retry_call(lambda: None, Policy())


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = time.time()
    later = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=120), usegmt=True)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(later, now=now) == pytest.approx(120, abs=1)
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


# ---- the SDK -------------------------------------------------------------------------------------


def sdk(answers: list[httpx.Response | Exception]) -> tuple[Client, list[httpx.Request]]:
    return scripted_client(answers)


QUEUE = httpx.Response(
    200, json={"status": 200, "data": {"jobs": {}, "clients": {"total": 1}}, "error": None}
)


def test_the_sdk_waits_as_long_as_a_429_asks_and_does_not_retry_a_429_that_does_not_say() -> None:
    client, seen = sdk([httpx.Response(429, headers={"Retry-After": "0"}), QUEUE])
    assert client.queue().clients == {"total": 1} and len(seen) == 2
    assert Policy().wait(1, ServerUnavailable("u", "429", retry_after=7.0)) == 7.0
    # capped: a server asking for hours is not waited on for hours
    assert Policy().wait(1, ServerUnavailable("u", "429", retry_after=10_000.0)) == 300.0
    client, seen = sdk([httpx.Response(429, json={"status": 429, "data": None, "error": ["slow down"]})])
    with pytest.raises(ApiError, match="slow down"):
        client.queue()
    assert len(seen) == 1


def test_the_sdk_never_repeats_a_500_or_a_4xx() -> None:
    for answer in (httpx.Response(500, text="boom"), httpx.Response(404, text="no")):
        client, seen = sdk([answer])
        with pytest.raises(ApiError):
            client.job("j")
        assert len(seen) == 1


# ---- the worker ----------------------------------------------------------------------------------


def worker(answers: list[httpx.Response | Exception]) -> tuple[ServerAPI, list[httpx.Request]]:
    api = ServerAPI("http://perdure.test", stop=threading.Event())
    client, seen = sdk(answers)
    api.client.transport = client.transport
    api.client.transport.retries = 0  # as the worker creates it: its own policy decides
    api.client.worker.transport = client.transport
    return api, seen


def test_the_worker_outlasts_an_outage_then_gets_its_answer() -> None:
    api, seen = worker([httpx.ConnectError("refused"), httpx.Response(503), QUEUE])
    answer = api.retrying("queue", api.client.queue, max_delay=0.001)
    assert answer.clients == {"total": 1} and len(seen) == 3


def test_the_worker_does_not_retry_a_refusal() -> None:
    refusal = httpx.Response(400, json={"status": 400, "data": None, "error": ["client suspended"]})
    api, seen = worker([refusal])
    with pytest.raises(ServerRefused, match="client suspended"):
        api.retrying("queue", api.client.queue, max_delay=0.001)
    assert len(seen) == 1


def test_a_report_answered_500_is_tried_again_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_api, "Policy", functools.partial(Policy, first_wait_s=0.001))
    boom = httpx.Response(500, json={"status": 500, "data": None, "error": ["database is locked"]})
    accepted = httpx.Response(200, json={"status": 200, "data": None, "error": None})
    api, seen = worker([boom, accepted])
    api.report("wu1", "c1", "done", 1, {}, deadline=time.monotonic() + 30)
    assert len(seen) == 2  # the result was not dropped on a momentary database failure
    api, seen = worker([boom] * 10)
    with pytest.raises(ServerRefused, match="database is locked"):
        api.report("wu1", "c1", "done", 1, {}, deadline=time.monotonic() + 30)
    assert len(seen) == REPORT_TRIES_ON_500  # a 500 that persists is a bug: the tries end


def test_the_worker_stops_at_its_deadline_and_when_the_node_stops() -> None:
    api, seen = worker([httpx.ConnectError("refused")] * 100)
    with pytest.raises(Stopped, match="out of time"):
        api.retrying("report", api.client.queue, max_delay=0.01, deadline=time.monotonic() + 0.1)
    assert 1 < len(seen) < 100
    api.stop.set()
    with pytest.raises(Stopped):
        api.retrying("checkout", api.client.queue)


# ---- direct transfers ----------------------------------------------------------------------------


def test_an_input_from_the_object_store_is_fetched_again_after_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [httpx.Response(503), httpx.Response(200, content=b"whole\n"), httpx.Response(403)]
    monkeypatch.setattr(direct, "TRANSFER_POLICY", FAST)
    monkeypatch.setattr(
        direct,
        "_plain_http",
        lambda: httpx.Client(transport=httpx.MockTransport(lambda request: answers.pop(0))),
    )
    api: Any = type("Api", (), {"stop": threading.Event()})()
    segment = {"url": "http://store.test/in", "offset": 0, "length": 6, "size": 6}
    data = direct.DirectData(
        api, {"id": "w", "presigned": {"expires_in": 900, "inputs": {"in": [segment]}}}, "c1"
    )
    assert data.stage("in", tmp_path / "in") == 6 and (tmp_path / "in").read_bytes() == b"whole\n"
    with pytest.raises(direct.DirectError, match="answered 403"):  # a refusal: once, and the workunit fails
        data.stage("in", tmp_path / "in")
    assert answers == []
