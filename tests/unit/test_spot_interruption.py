"""Interruption notices: the IMDSv2 spot notice (with its token dance and deadline), the rebalance
recommendation, and drain requests left by `perdure worker drain`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure.spot.interruption import (
    DRAIN_FILE,
    PID_FILE,
    ImdsWatcher,
    Notice,
    request_drain,
    take_drain_request,
)
from tests.imds import TOKEN, ImdsStandIn


@pytest.fixture
def imds() -> Iterator[ImdsStandIn]:
    with ImdsStandIn() as service:
        yield service


def watch(imds: ImdsStandIn, stop: threading.Event) -> tuple[list[Notice], list[str], ImdsWatcher]:
    notices: list[Notice] = []
    rebalances: list[str] = []
    watcher = ImdsWatcher(imds.url, notices.append, rebalances.append, stop, poll_s=0.05, deadline_s=120)
    watcher.start()
    return notices, rebalances, watcher


def test_spot_notice_with_a_deadline_before_the_stop_time(imds: ImdsStandIn) -> None:
    stop = threading.Event()
    notices, rebalances, watcher = watch(imds, stop)
    time.sleep(0.3)
    assert notices == [] and watcher.is_alive()
    imds.recommend_rebalance()
    time.sleep(0.3)
    assert len(rebalances) == 1 and "noticeTime" in rebalances[0]  # once, however often it is seen
    imds.interrupt(in_s=60)
    watcher.join(5)
    assert not watcher.is_alive()
    (notice,) = notices
    assert notice.source == "spot" and "terminate" in notice.detail and not notice.finish
    left = notice.deadline - time.monotonic()
    assert 40 < left < 55  # 60 s to the stop, less the safety margin: sooner than the 120 s default
    assert [method for method, *_ in imds.seen].count("PUT") == 1  # the session token is reused
    assert all(token == TOKEN for method, _, token in imds.seen if method == "GET")
    stop.set()


def test_an_unreadable_action_still_gives_a_notice_with_the_default_deadline(imds: ImdsStandIn) -> None:
    imds.announce("not json")
    notices, _, watcher = watch(imds, threading.Event())
    watcher.join(5)
    (notice,) = notices
    assert 110 < notice.deadline - time.monotonic() <= 120


def test_no_metadata_service_means_no_polling() -> None:
    stop = threading.Event()
    watcher = ImdsWatcher("http://127.0.0.1:9", lambda n: None, lambda r: None, stop, poll_s=0.01)
    watcher.start()
    watcher.join(10)
    assert not watcher.is_alive()  # gave up after a few refused connections, as off AWS


def test_drain_request_reaches_the_worker_once(tmp_path: Path) -> None:
    (tmp_path / PID_FILE).write_text(f"{os.getpid()}\n")
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        assert request_drain(tmp_path, finish=True, deadline_s=30) == os.getpid()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == [signal.SIGUSR1]
    notice = take_drain_request(tmp_path, 120)
    assert notice is not None and notice.finish and notice.source == "drain"
    assert 25 < notice.deadline - time.monotonic() <= 30
    assert take_drain_request(tmp_path, 120) is None
    assert not (tmp_path / DRAIN_FILE).exists()


def test_drain_without_a_worker_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProcessLookupError, match="no worker"):
        request_drain(tmp_path, finish=False, deadline_s=30)
    (tmp_path / PID_FILE).write_text("999999999\n")
    with pytest.raises(ProcessLookupError, match="gone"):
        request_drain(tmp_path, finish=False, deadline_s=30)
    assert not (tmp_path / DRAIN_FILE).exists()
