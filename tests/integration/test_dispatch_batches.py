"""Worker operations served as one batch (``WorkStore.dispatch``), on SQLite and PostgreSQL: each
operation gets the outcome it would get alone, refusals stay with their own operation, and a batch's
claims follow the queue order and each client's skip list."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from perdure.errors import BadRequest, NotFound
from perdure.store.work import CheckoutRequest, LeaseLost, NoWork, Operation, ReportRequest, WorkStore
from tests.integration.drive import checkout, get_job, register, report, submit
from tests.jobs import script, task


def store(client: TestClient) -> WorkStore:
    work: WorkStore = client.app.state.ctx.work  # type: ignore[attr-defined]
    return work


def done(wu_id: str, client_id: str, *, then_next: bool = False) -> Operation:
    return Operation(
        report=ReportRequest(wu_id, client_id, "done", computetime=3),
        checkout=CheckoutRequest(client_id) if then_next else None,
    )


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
    assert isinstance(outcomes[6].checkout, BadRequest) and "Client not found" in outcomes[6].checkout.message
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
