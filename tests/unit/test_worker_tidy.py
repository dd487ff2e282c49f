"""A slot has a done workunit's directory tidied once its report has been read from it and before the
report is sent (issue 22: the tidy thread then works while the slot waits for the answer, not while
it sets up the next workunit)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from perdure.states import ReportStatus
from perdure.worker.api import Stopped
from perdure.worker.node import Slot
from perdure.worker.runner import Outcome
from tests.unit.fakenode import fake_node


class Api:
    """Checks out ``wu-0``; each report brings the next of ``count`` workunits."""

    def __init__(self, count: int, events: list[str]) -> None:
        self.count = count
        self.events = events
        self.checkouts = 0
        self.stdout: dict[str, bytes] = {}

    def register(self, profile: dict[str, Any], **_: Any) -> dict[str, Any]:
        return profile

    def retrying(self, what: str, call: Any, **_: Any) -> Any:
        return call()

    def checkout(self, client_id: str, wait_s: float, available: int) -> dict[str, Any] | None:
        self.checkouts += 1
        if self.checkouts > 1:
            raise Stopped("no more work")
        return workunit(0)

    def report(
        self, wu_id: str, client_id: str, status: str, computetime: int, files: Any, **kwargs: Any
    ) -> Any:
        self.events.append(f"report {wu_id}")
        self.stdout[wu_id] = files.get("stdout", b"")
        index = int(wu_id.split("-")[1]) + 1
        return workunit(index) if index < self.count and kwargs.get("then_next") else None


def workunit(index: int) -> dict[str, Any]:
    return {"id": f"wu-{index}", "cmd": {"name": "true"}}


class Runner:
    """Runs a workunit in a work directory of its own, its stdout saying its id."""

    current = None

    def __init__(self, workdir: Path, events: list[str], status: str) -> None:
        self.workdir = workdir
        self.events = events
        self.status = status

    def run(self, wu: dict[str, Any]) -> Outcome:
        self.events.append(f"run {wu['id']}")
        workdir = self.workdir / wu["id"]
        workdir.mkdir(parents=True)
        stdout = workdir / "awe_stdout.txt"
        stdout.write_text(f"this is {wu['id']}\n")
        return Outcome(self.status, 0, perf={"workdir": str(workdir)}, stdout=stdout)


def run_slot(tmp_path: Path, count: int, status: str = ReportStatus.DONE) -> tuple[list[str], Api]:
    events: list[str] = []
    api = Api(count, events)

    def tidy(outcome: Outcome) -> None:
        events.append(f"tidy {Path(outcome.perf['workdir']).name}")
        shutil.rmtree(outcome.perf["workdir"])  # as the tidy thread may, at once

    node = fake_node(tmp_path, api, tidy=tidy)
    slot = Slot(node, 0)  # type: ignore[arg-type]
    slot.runner = Runner(tmp_path / "work", events, status)  # type: ignore[assignment]
    slot._loop()
    return events, api


def test_a_done_workunit_is_tidied_before_its_report_is_sent_but_after_it_is_read(tmp_path: Path) -> None:
    events, api = run_slot(tmp_path, 2)
    assert events == ["run wu-0", "tidy wu-0", "report wu-0", "run wu-1", "tidy wu-1", "report wu-1"]
    assert api.stdout == {"wu-0": b"this is wu-0\n", "wu-1": b"this is wu-1\n"}


def test_the_node_decides_what_is_tidied(tmp_path: Path) -> None:
    """Every outcome is offered (the node keeps a failure's directory a while); only a run's report."""
    events, api = run_slot(tmp_path, 1, status=ReportStatus.FAIL)
    assert events == ["run wu-0", "tidy wu-0", "report wu-0"]
    assert api.stdout == {"wu-0": b"this is wu-0\n"}
