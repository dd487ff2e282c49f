"""Worker operations served as one batch (``WorkStore.dispatch``), on SQLite and PostgreSQL: each
operation gets the outcome it would get alone, refusals stay with their own operation, and a batch's
claims follow the queue order and each client's skip list."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from perdure.api.app import create_app
from perdure.errors import BadRequest, NotFound
from perdure.protocol import ClientNotFound, LeaseLost, NoWork, OutputsMissing, Refusal
from perdure.settings import Settings
from perdure.store import work
from perdure.store.work import WorkStore
from perdure.store.workrequests import CheckoutRequest, DispatchOutcome, Operation, ReportRequest
from tests.integration.drive import checkout, get_job, put_job, register, report, submit
from tests.integration.test_spot_api import preempt, reference
from tests.jobs import script, task


@pytest.fixture
def quiet_client(settings: Settings) -> Iterator[TestClient]:
    """The app without its background sweep, which would complete a finished task on its own."""
    with TestClient(create_app(dataclasses.replace(settings, sweep_interval_s=3600.0))) as test_client:
        yield test_client


def store(client: TestClient) -> WorkStore:
    work: WorkStore = client.app.state.ctx.work  # type: ignore[attr-defined]
    return work


def done(wu_id: str, client_id: str, *, then_next: bool = False) -> Operation:
    return Operation(
        report=ReportRequest(wu_id, client_id, "done", computetime=3),
        checkout=CheckoutRequest(client_id) if then_next else None,
    )


def post_checkpoint(client: TestClient, wu_id: str, client_id: str, ref: dict[str, Any]) -> int:
    response = client.post(f"/work/{wu_id}/checkpoints?client={client_id}", json={"ok": True, **ref})
    return response.status_code


def workunit(client: TestClient, wu_id: str) -> dict[str, Any]:
    document: dict[str, Any] = client.get(f"/work/{wu_id}").json()["data"]
    return document


def test_each_operation_of_a_batch_gets_its_own_outcome(client: TestClient) -> None:
    for name in ("c1", "c2", "c3", "c4", "c5"):
        register(client, name)
    job_id = submit(client, script(task("t", totalwork=8)))["id"]
    held = {name: checkout(client, name) for name in ("c1", "c2", "c3", "c4")}
    wu = {name: document["id"] for name, document in held.items() if document is not None}
    assert len(set(wu.values())) == 4

    outcomes = store(client).dispatch(
        [
            done(wu["c1"], "c1", then_next=True),
            done(wu["c2"], "c2"),
            done(wu["c3"], "c5", then_next=True),  # c5 does not hold it
            Operation(report=ReportRequest(wu["c4"], "c4", "finished")),  # no such status
            done(f"{job_id}_0_99", "c4"),  # no such workunit
            Operation(checkout=CheckoutRequest("c5")),  # c5's second operation: a round of its own
            Operation(checkout=CheckoutRequest("nobody")),
        ]
    )

    assert outcomes[0].report == "ok" and isinstance(outcomes[0].checkout, dict)
    assert outcomes[1].report == "ok" and outcomes[1].checkout is None
    assert isinstance(outcomes[2].report, LeaseLost) and outcomes[2].checkout is None  # nothing leased
    assert isinstance(outcomes[3].report, BadRequest) and isinstance(outcomes[4].report, NotFound)
    assert isinstance(outcomes[5].checkout, dict)
    assert isinstance(outcomes[6].checkout, ClientNotFound)
    assert outcomes[6].checkout.code == Refusal.CLIENT_NOT_FOUND
    given = {outcomes[0].checkout["id"], outcomes[5].checkout["id"]}
    assert len(given) == 2 and not given & set(wu.values())
    assert outcomes[0].checkout["client"] == "c1" and outcomes[5].checkout["client"] == "c5"

    assert [workunit(client, wu[n])["state"] for n in ("c1", "c2", "c3", "c4")] == [
        "done",
        "done",
        "checkout",
        "checkout",
    ]
    assert workunit(client, wu["c1"])["computetime"] == 3
    states = get_job(client, job_id)["tasks"][0]
    assert states["remainwork"] == 6 and states["computetime"] == 6
    # Checkouts are counted on the clients, done reports too.
    c1 = client.get("/client/c1").json()["data"]
    assert c1["total_checkout"] == 2 and c1["total_completed"] == 1


def test_a_batchs_done_reports_across_tasks_are_checked_each_with_their_logs(client: TestClient) -> None:
    """On PostgreSQL one statement checks and applies a batch's ``done`` reports: each refusal is
    still its own (outputs not uploaded, lease not held), and only the accepted reports' logs and
    counts are kept, task by task."""
    names = ("c1", "c2", "c3", "c4", "c5")
    for name in names:
        register(client, name)
    declared = [{"filename": "b.txt"}, {"filename": "a.txt"}]
    job_id = submit(client, script(task("a", totalwork=2, outputs=declared), task("b", totalwork=3)))["id"]
    held = {name: checkout(client, name) for name in names}
    by_task: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for name, document in held.items():
        assert document is not None
        by_task[document["task_name"]].append((name, document["id"]))
    (a1_by, a1), (a2_by, a2) = by_task["a"]
    (b1_by, b1), (b2_by, b2), (b3_by, b3) = by_task["b"]
    work_store = store(client)
    work_store.record_output(a1, a1_by, "a.txt", "k1", 1, "0" * 64)
    for filename in ("a.txt", "b.txt"):
        work_store.record_output(a2, a2_by, filename, f"k2{filename}", 1, "0" * 64)

    def done_with(wu_id: str, client_id: str, text: str) -> Operation:
        return Operation(report=ReportRequest(wu_id, client_id, "done", 3, {"stdout": text}))

    outcomes = work_store.dispatch(
        [
            done_with(a1, a1_by, "a1"),  # b.txt not uploaded
            done_with(a2, a2_by, "a2"),
            done_with(b1, b1_by, "b1"),
            done_with(b2, b3_by, "b2"),  # not the lease holder (its own workunit is b3)
        ]
    )

    assert isinstance(outcomes[0].report, OutputsMissing)
    assert str(outcomes[0].report).endswith("without uploading outputs: b.txt")
    assert outcomes[1].report == "ok" and outcomes[2].report == "ok"
    assert isinstance(outcomes[3].report, LeaseLost)
    states = {wu_id: workunit(client, wu_id)["state"] for wu_id in (a1, a2, b1, b2, b3)}
    assert states == {a1: "checkout", a2: "done", b1: "done", b2: "checkout", b3: "checkout"}
    assert work_store.log(a2, "stdout") == "a2" and work_store.log(b1, "stdout") == "b1"
    for refused in (a1, b2):
        with pytest.raises(BadRequest):
            work_store.log(refused, "stdout")
    tasks_left = get_job(client, job_id)["tasks"]
    left = {t["taskid"].rsplit("_", 1)[1]: (t["remainwork"], t["computetime"]) for t in tasks_left}
    assert left == {"a": (1, 3), "b": (2, 3)}
    completed = {name: client.get(f"/client/{name}").json()["data"]["total_completed"] for name in names}
    assert completed == {a1_by: 0, a2_by: 1, b1_by: 1, b2_by: 0, b3_by: 0}


def test_a_repeated_report_in_one_batch_is_applied_once(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, script(task("t", totalwork=3)))["id"]
    first = checkout(client, "c1")
    assert first is not None
    outcomes = store(client).dispatch([done(first["id"], "c1"), done(first["id"], "c1")])
    assert [o.report for o in outcomes] == ["ok", "ok"]
    assert get_job(client, job_id)["tasks"][0]["remainwork"] == 2


def test_a_batch_that_completes_a_task_hands_out_the_next_tasks_work(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    job_id = submit(client, script(task("a", totalwork=2), task("b", depends=["a"])))["id"]
    one, two = checkout(client, "c1"), checkout(client, "c2")
    assert one is not None and two is not None

    outcomes = store(client).dispatch(
        [done(one["id"], "c1", then_next=True), done(two["id"], "c2", then_next=True)]
    )

    assert [o.report for o in outcomes] == ["ok", "ok"]
    given = [o.checkout for o in outcomes if isinstance(o.checkout, dict)]
    assert [w["task_name"] for w in given] == ["b"]  # the reports came first, in their own transaction
    assert sum(isinstance(o.checkout, NoWork) for o in outcomes) == 1
    job = get_job(client, job_id)
    assert [t["state"] for t in job["tasks"]] == ["completed", "in-progress"]
    report(client, given[0]["id"], given[0]["client"])
    assert get_job(client, job_id)["state"] == "completed"


def test_a_batchs_claims_follow_priority_and_each_clients_skip_list(client: TestClient) -> None:
    for name in ("c1", "c2", "c3", "c4"):
        register(client, name)
    low = submit(client, script(task("t", totalwork=3), priority=1))["id"]
    failed = checkout(client, "c1")
    assert failed is not None and failed["jobid"] == low
    report(client, failed["id"], "c1", status="fail")  # back in the queue; c1 skips it from now on
    high = submit(client, script(task("t", totalwork=2), priority=9))["id"]

    outcomes = store(client).dispatch(
        [Operation(checkout=CheckoutRequest(n)) for n in ("c2", "c3", "c1", "c4")]
    )

    given = {name: o.checkout for name, o in zip(("c2", "c3", "c1", "c4"), outcomes, strict=True)}
    assert all(isinstance(w, dict) for w in given.values())
    jobs = {name: w["jobid"] for name, w in given.items()}  # type: ignore[index]
    assert sorted(jobs.values()).count(high) == 2  # the higher priority first, whoever asked
    assert given["c1"]["id"] != failed["id"]  # type: ignore[index]
    assert len({w["id"] for w in given.values()}) == 4  # type: ignore[index]


def test_a_batchs_claims_give_preempted_work_first_and_respect_groups_and_apps(client: TestClient) -> None:
    for name in ("c1", "c2", "c3"):
        register(client, name)
    register(client, "other", group="gpu")
    register(client, "blast", apps=["blast"])
    old = submit(client, script(task("t"), priority=1))["id"]
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == old
    ref = reference()
    assert post_checkpoint(client, work["id"], "c1", ref) == 200
    preempt(client, work["id"], "c1", {"outcome": "final", "checkpoint": ref, "detail": "final taken"})
    newer = submit(client, script(task("t", totalwork=3), priority=50))["id"]
    gpu = submit(client, script(task("t"), priority=99, clientgroups="gpu"))["id"]
    names = ("c2", "other", "c3", "blast", "c1")

    outcomes = store(client).dispatch([Operation(checkout=CheckoutRequest(n)) for n in names])

    given = dict(zip(names, (o.checkout for o in outcomes), strict=True))
    assert given["c2"]["id"] == work["id"]  # type: ignore[index]  # the preempted work first
    assert given["c2"]["checkpoint"]["name"] == ref["name"]  # type: ignore[index]
    assert given["other"]["jobid"] == gpu  # type: ignore[index]  # its group's work, only there
    assert given["c3"]["jobid"] == newer and given["c1"]["jobid"] == newer  # type: ignore[index]
    assert given["c3"]["rank"] < given["c1"]["rank"]  # type: ignore[index]  # in queue order
    assert isinstance(given["blast"], NoWork)  # no job runs its app
    counts = {c["id"]: c["total_checkout"] for c in client.get("/client").json()["data"]}
    assert counts == {"c1": 2, "c2": 1, "c3": 1, "other": 1, "blast": 0}
    assert get_job(client, newer)["state"] == "in-progress"
    assert get_job(client, newer)["tasks"][0]["state"] == "in-progress"


def test_only_the_reports_that_finish_a_task_wait_for_its_completion(client: TestClient) -> None:
    for name in ("c1", "c2", "c3"):
        register(client, name)
    first = submit(client, script(task("a"), task("b", depends=["a"])))["id"]
    submit(client, script(task("x", totalwork=3)))
    a, x, y = checkout(client, "c1"), checkout(client, "c2"), checkout(client, "c3")
    assert a is not None and a["task_name"] == "a"
    assert x is not None and x["task_name"] == "x" and y is not None and y["task_name"] == "x"
    answered: list[int] = []

    def answer(index: int, outcome: DispatchOutcome) -> None:
        answered.append(index)

    outcomes = store(client).dispatch(
        [done(a["id"], "c1", then_next=True), done(x["id"], "c2", then_next=True), done(y["id"], "c3")],
        answer,
    )

    # c3, with nothing to check out, is answered once the reports are committed; c2 once its claim
    # is, before task a completes, so it cannot get b's work, queued ahead of x's; c1 is answered
    # after, and gets it.
    assert answered == [2, 1, 0]
    assert outcomes[2].report == "ok" and outcomes[2].checkout is None
    assert isinstance(outcomes[1].checkout, dict) and outcomes[1].checkout["task_name"] == "x"
    assert isinstance(outcomes[0].checkout, dict) and outcomes[0].checkout["task_name"] == "b"
    assert [t["state"] for t in get_job(client, first)["tasks"]] == ["completed", "in-progress"]


def test_a_task_finished_by_a_batch_completes_even_when_its_claims_fail(
    quiet_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(quiet_client, "c1")
    register(quiet_client, "c2")
    job_id = submit(quiet_client, script(task("a"), task("b", depends=["a"])))["id"]
    a = checkout(quiet_client, "c1")
    assert a is not None

    def lost_connection(db: Any, requests: Any) -> Any:
        raise OperationalError("claim", {}, Exception("server closed the connection"))

    with monkeypatch.context() as patched:
        patched.setattr(work, "checkout_batch", lost_connection)
        with pytest.raises(OperationalError):
            store(quiet_client).dispatch([done(a["id"], "c1"), Operation(checkout=CheckoutRequest("c2"))])

    # The report was committed before the claims failed: its task is complete, b's work is queued.
    assert [t["state"] for t in get_job(quiet_client, job_id)["tasks"]] == ["completed", "queued"]


def finish_task_without_completing_it(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A job whose task a has no work left but is not complete, as a server stopped between a
    batch's reports and the task's completion leaves it. Returns the job id and a's workunit id."""
    register(client, "c1")
    job_id = submit(client, script(task("a"), task("b", depends=["a"])))["id"]
    a = checkout(client, "c1")
    assert a is not None
    with monkeypatch.context() as patched:
        patched.setattr(WorkStore, "_advance_jobs", lambda self, job_ids: None)  # stopped here
        report(client, a["id"], "c1")
    tasks = get_job(client, job_id)["tasks"]
    assert [(t["state"], t["remainwork"]) for t in tasks] == [("in-progress", 0), ("pending", 1)]
    return job_id, a["id"]


def test_a_task_left_finished_by_a_stopped_server_is_completed_by_the_sweep(
    quiet_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, a = finish_task_without_completing_it(quiet_client, monkeypatch)
    report(quiet_client, a, "c1")  # the worker's retry of its report is answered "ok", as before
    jobs = quiet_client.app.state.ctx.jobs  # type: ignore[attr-defined]

    assert jobs.advance_finished() == 1
    assert [t["state"] for t in get_job(quiet_client, job_id)["tasks"]] == ["completed", "queued"]
    assert jobs.advance_finished() == 0
    b = checkout(quiet_client, "c1")
    assert b is not None and b["task_name"] == "b"
    report(quiet_client, b["id"], "c1")
    assert get_job(quiet_client, job_id)["state"] == "completed"


def test_a_job_suspended_before_its_finished_task_completed_completes_it_when_resumed(
    quiet_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = finish_task_without_completing_it(quiet_client, monkeypatch)
    put_job(quiet_client, job_id, "suspend")
    assert [t["state"] for t in get_job(quiet_client, job_id)["tasks"]] == ["suspend", "pending"]
    jobs = quiet_client.app.state.ctx.jobs  # type: ignore[attr-defined]
    assert jobs.advance_finished() == 0  # the sweep leaves a suspended job as it is

    put_job(quiet_client, job_id, "resume")

    assert [t["state"] for t in get_job(quiet_client, job_id)["tasks"]] == ["completed", "queued"]
    b = checkout(quiet_client, "c1")
    assert b is not None and b["task_name"] == "b"
