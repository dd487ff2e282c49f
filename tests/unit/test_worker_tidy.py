"""A slot tidies a done workunit's directory once the next workunit's command runs (issue 22: the tidy
thread then overlaps the command, not the slot's setting up of it), and never leaves one untidied."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from perdure.states import ReportStatus
from perdure.worker.api import Stopped
from perdure.worker.node import Slot
from perdure.worker.runner import Outcome


class Api:
    """Checks out ``wu-0``; each report brings the next of ``count`` workunits."""

    def __init__(self, count: int, events: list[str]) -> None:
        self.count = count
        self.events = events
        self.checkouts = 0

    def register(self, profile: dict[str, Any], **_: Any) -> dict[str, Any]:
        return profile

    def retrying(self, what: str, call: Any, **_: Any) -> Any:
        return call()

    def checkout(self, client_id: str, wait_s: float, available: int) -> dict[str, Any] | None:
        self.checkouts += 1
        if self.checkouts > 1:
            raise Stopped("no more work")
        return workunit(0)

    def report(self, wu_id: str, client_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        self.events.append(f"report {wu_id}")
        index = int(wu_id.split("-")[1]) + 1
        return workunit(index) if index < self.count and kwargs.get("then_next") else None


def workunit(index: int) -> dict[str, Any]:
    return {"id": f"wu-{index}", "cmd": {"name": "true"}}


class Runner:
    """Starts the command (calling ``while_running``) unless the workunit is in ``unstarted``."""

    current = None

    def __init__(self, events: list[str], unstarted: set[str]) -> None:
        self.events = events
        self.unstarted = unstarted

    def run(self, wu: dict[str, Any], while_running: Any = None) -> Outcome:
        self.events.append(f"start {wu['id']}")
        if wu["id"] not in self.unstarted and while_running is not None:
            while_running()
        self.events.append(f"end {wu['id']}")
        return Outcome(ReportStatus.DONE, 0, perf={"workdir": wu["id"]})


def run_slot(
    tmp_path: Path,
    api: Api,
    events: list[str],
    draining: threading.Event | None = None,
    unstarted: frozenset[str] = frozenset(),
) -> None:
    node = SimpleNamespace(
        node_id="n",
        api=api,
        workdir=tmp_path / "work",
        workpath=tmp_path,
        spot=None,
        facts={},
        config=SimpleNamespace(
            name="w",
            group="g",
            apps=["*"],
            checkout_wait_s=0.0,
            allow_file_root=[],
            transfer_tries=5,
            transfer_timeout_s=300.0,
        ),
        containers=None,
        stop=threading.Event(),
        draining=draining or threading.Event(),
        handover_deadline=None,
        free_bytes=lambda: -1,
        fail=lambda reason: None,
        tidy=lambda outcome: events.append(f"tidy {outcome.perf['workdir']}"),
    )
    slot = Slot(node, 0)  # type: ignore[arg-type]
    slot.runner = Runner(events, set(unstarted))  # type: ignore[assignment]
    slot._loop()


def test_a_done_workunit_is_tidied_while_the_next_command_runs(tmp_path: Path) -> None:
    events: list[str] = []
    run_slot(tmp_path, Api(3, events), events)
    assert events == [
        "start wu-0",
        "end wu-0",
        "report wu-0",
        "start wu-1",
        "tidy wu-0",  # the next command has started
        "end wu-1",
        "report wu-1",
        "start wu-2",
        "tidy wu-1",
        "end wu-2",
        "report wu-2",
        "tidy wu-2",  # the last one, with nothing after it: at once
    ]


def test_a_next_workunit_that_runs_no_command_still_has_the_last_one_tidied(tmp_path: Path) -> None:
    events: list[str] = []
    run_slot(tmp_path, Api(2, events), events, unstarted=frozenset({"wu-1"}))
    assert events.index("tidy wu-0") == events.index("end wu-1") + 1
    assert events[-1] == "tidy wu-1"


def test_a_next_workunit_handed_back_on_a_notice_still_has_the_last_one_tidied(tmp_path: Path) -> None:
    events: list[str] = []
    api = Api(2, events)
    draining = threading.Event()
    original = api.report

    def report(wu_id: str, client_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        following = original(wu_id, client_id, status, *args, **kwargs)
        draining.set()  # the notice comes with the answer that brings wu-1
        return following

    api.report = report  # type: ignore[method-assign]
    run_slot(tmp_path, api, events, draining)
    assert "start wu-1" not in events
    assert events[-2:] == ["report wu-1", "tidy wu-0"]  # wu-1 handed back, then wu-0 tidied
