"""Dispatch over HTTP against a real ``perdure server``: checkout, leases, reports, failure rules, clients.

Every test starts its own server process (on SQLite and on PostgreSQL through ``db_url``) and drives it
with real worker-protocol clients (``clientloop.Worker`` / ``ClientLoop``), as AWE workers would.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.clientloop import ClientLoop, Ledger, Worker, envelope, error_text
from tests.jobs import script, task, upload
from tests.support import ServerProcess

ZERO_TIME = "0001-01-01T00:00:00Z"
NO_WORK = "No eligible workunit found"

StartServer = Callable[..., ServerProcess]


# ---- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def start_server(tmp_path: Path, db_url: str) -> Iterator[StartServer]:
    """Start a real server on the test's database with extra ``PERDURE_*`` settings; stopped afterwards."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        process = ServerProcess(tmp_path / f"server-{len(started)}", db_url, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    """Make registered workers; their connections are closed afterwards."""
    made: list[Worker] = []

    def make(url: str, client_id: str | None = None, *, register: bool = True, **kwargs: Any) -> Worker:
        worker = Worker(url, client_id, **kwargs)
        made.append(worker)
        if register:
            response = worker.register()
            assert response.status_code == 200, response.text
        return worker

    yield make
    for worker in made:
        worker.close()


def is_postgres(db_url: str) -> bool:
    return db_url.startswith("postgresql")


#: For the test's own requests: a fresh connection each time (after a 500 the server drops the
#: connection, which must not fail the next request), but one client (creating one costs ~0.1 s).
_http: httpx.Client | None = None


@pytest.fixture(scope="module", autouse=True)
def _shared_http() -> Iterator[None]:
    global _http
    _http = httpx.Client(timeout=15.0, limits=httpx.Limits(max_keepalive_connections=0))
    yield
    _http.close()
    _http = None


def call(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    assert _http is not None
    return _http.request(method, url + path, **kwargs)


def data(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return envelope(response)["data"]


def submit(url: str, document: dict[str, Any]) -> str:
    job_id: str = data(call(url, "POST", "/job", files=upload(document)))["id"]
    return job_id


def get_job(url: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = data(call(url, "GET", f"/job/{job_id}"))
    return job


def get_work(url: str, wu_id: str) -> dict[str, Any]:
    wu: dict[str, Any] = data(call(url, "GET", f"/work/{wu_id}"))
    return wu


def task_of(job: dict[str, Any], taskid: str) -> dict[str, Any]:
    for t in job["tasks"]:
        if t["task_name"] == taskid:
            result: dict[str, Any] = t
            return result
    raise AssertionError(f"no task {taskid} in job {job['id']}")


def client_ids(url: str, query: str = "") -> set[str]:
    return {c["id"] for c in data(call(url, "GET", f"/client{query}"))}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_no_work(worker: Worker, **kwargs: Any) -> None:
    response = worker.checkout(**kwargs)
    assert response.status_code == 400, response.text
    assert error_text(response) == NO_WORK


# ---- 1. several client loops drain a job ------------------------------------------------------------


def test_client_loops_drain_a_split_job_completing_every_workunit_exactly_once(
    start_server: StartServer,
) -> None:
    server = start_server()
    job_id = submit(
        server.url,
        script(
            task("0", totalwork=20),
            task("1", depends=["0"], totalwork=3),
            task("2", depends=["0"]),
            task("3", depends=["1", "2"], totalwork=2),
        ),
    )
    expected = (
        {f"{job_id}_0_{rank}" for rank in range(1, 21)}
        | {f"{job_id}_1_{rank}" for rank in range(1, 4)}
        | {f"{job_id}_2_0"}
        | {f"{job_id}_3_{rank}" for rank in range(1, 3)}
    )
    ledger = Ledger()
    loops = [ClientLoop(server.url, ledger, run_seconds=0.02, wait=0.5) for _ in range(4)]
    for loop in loops:
        loop.start()
    try:
        wait_until(lambda: get_job(server.url, job_id)["state"] == "completed", 90, "the job to complete")
    finally:
        for loop in loops:
            loop.stop()
        for loop in loops:
            loop.join(15)
    assert not any(loop.is_alive() for loop in loops)
    assert ledger.errors == []

    # Every workunit was handed out once and completed once: no duplicate claim, no lost one.
    assert ledger.done_accepted == Counter(expected)
    assert ledger.checkouts == Counter(expected)

    job = get_job(server.url, job_id)
    assert job["state"] == "completed"
    assert job["info"]["completedtime"] != ZERO_TIME
    assert job["remaintasks"] == 0
    assert job["error"] is None
    for t in job["tasks"]:
        assert t["state"] == "completed", t
        assert t["remainwork"] == 0, t
        assert t["completeddate"] != ZERO_TIME

    clients = data(call(server.url, "GET", "/client"))
    assert sum(c["total_completed"] for c in clients) == len(expected)
    assert sum(c["total_failed"] for c in clients) == 0
    assert len([c for c in clients if c["total_completed"] > 0]) >= 2, "the work was not shared"
    listing = call(server.url, "GET", "/work", params={"state": "done", "limit": 100})
    assert envelope(listing)["total_count"] == len(expected)

    # Dependents were queued only after their dependencies completed, in the job's event history
    # (ordered as committed; the event and task timestamps are not compared, see the report) ...
    deps = {"1": ["0"], "2": ["0"], "3": ["1", "2"]}
    history = [
        e["message"] for e in data(call(server.url, "GET", f"/job/{job_id}", params={"report": ""}))["events"]
    ]
    for taskid, parents in deps.items():
        assert history.count(f"task {taskid} queued") == 1, history
        for parent in parents:
            assert history.index(f"task {parent} completed") < history.index(f"task {taskid} queued"), history
    # ... and as the clients saw it: no dependent workunit was received before the last done report
    # of its dependencies was sent.
    for taskid, parents in deps.items():
        first_checkout = min(
            e.received
            for e in ledger.events
            if e.kind == "checkout" and e.wu_id.startswith(f"{job_id}_{taskid}_")
        )
        for parent in parents:
            last_done_sent = max(
                e.sent
                for e in ledger.events
                if e.kind == "done" and e.wu_id.startswith(f"{job_id}_{parent}_")
            )
            assert first_checkout > last_done_sent, (taskid, parent)


# ---- 2. checkout ordering and matching ---------------------------------------------------------------


def test_checkout_orders_by_priority_then_submit_time_and_matches_groups_apps_and_space(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url

    # Priority descending, then submit time ascending.
    low = submit(url, script(task("0"), name="low", priority=1))
    high_first = submit(url, script(task("0"), name="high-1", priority=5))
    high_second = submit(url, script(task("0"), name="high-2", priority=5))
    any_worker = workers(url)
    order = []
    for _ in range(3):
        wu = data(any_worker.checkout())
        order.append(wu["jobid"])
        assert data(any_worker.report(wu["id"])) == "ok"
    assert order == [high_first, high_second, low]
    assert_no_work(any_worker)

    # Client groups: a job for g1 is not given to a g2 client; an empty clientgroups matches anyone.
    g1 = workers(url, group="g1")
    g2 = workers(url, group="g2")
    only_g1 = submit(url, script(task("0"), clientgroups="g1"))
    assert_no_work(g2)
    assert_no_work(any_worker)  # group "default"
    g3_or_g1 = submit(url, script(task("0"), clientgroups="g3,g1"))
    assert_no_work(g2)
    open_job = submit(url, script(task("0")))
    wu = data(g2.checkout())
    assert wu["jobid"] == open_job
    assert data(g2.report(wu["id"])) == "ok"
    assert_no_work(g2)
    for expected_job in (only_g1, g3_or_g1):
        wu = data(g1.checkout())
        assert wu["jobid"] == expected_job
        assert data(g1.report(wu["id"])) == "ok"
    assert_no_work(g1)

    # Apps: a client listing "echo" gets only cmd.name echo, even when other work comes first;
    # "*" gets anything; an empty list gets nothing.
    echo_only = workers(url, apps=["echo"])
    no_apps = workers(url, apps=[])
    apps_job = submit(url, script(task("0", name="cat"), task("1", name="echo")))
    assert_no_work(no_apps)
    wu = data(echo_only.checkout())
    assert (wu["id"], wu["cmd"]["name"]) == (f"{apps_job}_1_0", "echo")
    assert data(echo_only.report(wu["id"])) == "ok"
    assert_no_work(echo_only)
    wu = data(any_worker.checkout())
    assert (wu["id"], wu["cmd"]["name"]) == (f"{apps_job}_0_0", "cat")
    assert data(any_worker.report(wu["id"])) == "ok"

    # Available space: work whose inputs are larger than `available` is skipped, not blocking the rest.
    sized = submit(
        url,
        script(
            task("big", inputs=[{"filename": "big.dat", "size": 1000}]),
            task("small", inputs=[{"filename": "a.dat", "size": 100}, {"filename": "b.dat", "size": 50}]),
        ),
    )
    wu = data(any_worker.checkout(available=500))
    assert wu["id"] == f"{sized}_small_0"
    assert data(any_worker.report(wu["id"])) == "ok"
    assert_no_work(any_worker, available=999)
    wu = data(any_worker.checkout(available=-1))  # negative: no limit
    assert wu["id"] == f"{sized}_big_0"
    assert data(any_worker.report(wu["id"])) == "ok"
    assert get_job(url, sized)["state"] == "completed"


# ---- 3 and 5. idempotent checkout and report ---------------------------------------------------------


def test_checkout_and_report_are_idempotent(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    job_id = submit(server.url, script(task("0", totalwork=3)))
    first = workers(server.url)
    second = workers(server.url)

    # The same client checking out twice without reporting gets the same workunit, not a second one.
    a = data(first.checkout())
    again = data(first.checkout())
    assert again["id"] == a["id"]
    assert again["attempt"] == a["attempt"] == 1
    assert again["client"] == first.id
    assert first.info()["total_checkout"] == 1
    assert first.info()["current_work"]["data"] == [a["id"]]
    b = data(second.checkout())
    assert b["id"] != a["id"]
    assert data(first.checkout())["id"] == a["id"]

    # The same report twice: both "ok", applied once.
    assert data(first.report(a["id"], "done", computetime=7)) == "ok"
    assert data(first.report(a["id"], "done", computetime=7)) == "ok"
    job = get_job(server.url, job_id)
    assert task_of(job, "0")["remainwork"] == 2
    assert task_of(job, "0")["computetime"] == 7
    assert first.info()["total_completed"] == 1
    # A different report for the same attempt is not a repeat: the lease is gone.
    assert first.report(a["id"], "fail").status_code == 409
    assert task_of(get_job(server.url, job_id), "0")["remainwork"] == 2
    assert first.info()["total_failed"] == 0
    assert get_work(server.url, a["id"])["state"] == "done"

    assert data(second.report(b["id"])) == "ok"
    assert data(first.report(first.checkout_id())) == "ok"
    job = get_job(server.url, job_id)
    assert job["state"] == "completed"
    assert task_of(job, "0")["remainwork"] == 0


def report_next(worker: Worker, wu_id: str, status: str = "done", **extra: Any) -> httpx.Response:
    """Perdure's extension: report, and check out the next workunit, in one request."""
    params = {"status": status, "client": worker.id, "next": "", **extra}
    return worker.http.put(
        f"/work/{wu_id}", params=params, headers=worker.headers(), timeout=worker.timeout + 5
    )


def test_report_with_next_checks_out_the_next_workunit_in_the_same_request(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    job_id = submit(server.url, script(task("0", totalwork=3)))
    worker = workers(server.url)
    other = workers(server.url)

    a = worker.checkout_id()
    answer = envelope(report_next(worker, a))
    assert (answer["status"], answer["data"], answer["error"]) == (200, "ok", None)
    assert answer["next_error"] is None
    b = answer["next"]
    assert b["id"] != a and b["jobid"] == job_id
    assert (b["state"], b["client"], b["attempt"]) == ("checkout", worker.id, 1)
    assert "ckpt" in b  # the same document a checkout answers
    assert get_work(server.url, a)["state"] == "done"
    assert worker.info()["total_checkout"] == 2
    assert worker.info()["total_completed"] == 1

    # A repeated report is "ok" again, and the workunit already held is handed out again.
    again = envelope(report_next(worker, a))
    assert (again["data"], again["next"]["id"]) == ("ok", b["id"])
    assert worker.info()["total_checkout"] == 2

    # A report that is refused checks nothing out: it is answered as without ``next``.
    refused = report_next(other, b["id"])
    assert refused.status_code == 409
    assert "next" not in envelope(refused)
    assert other.info()["total_checkout"] == 0

    c = envelope(report_next(worker, b["id"]))["next"]["id"]
    last = envelope(report_next(worker, c))
    assert (last["data"], last["next"]) == ("ok", None)
    assert last["next_error"] == {"status": 400, "error": [NO_WORK], "code": "no-work"}
    job = get_job(server.url, job_id)
    assert job["state"] == "completed"
    assert task_of(job, "0")["remainwork"] == 0

    # With ``wait`` the next checkout long-polls like GET /work?wait=.
    d = data(call(server.url, "POST", "/job", files=upload(script(task("0", totalwork=1)))))["id"]
    waited = worker.checkout_id()
    assert waited.startswith(d)
    started = time.monotonic()
    empty = envelope(report_next(worker, waited, wait="1"))
    assert empty["next_error"] == {"status": 400, "error": [NO_WORK], "code": "no-work"}
    assert 0.9 <= time.monotonic() - started < 3.0


# ---- 4. lease fencing and lost clients ---------------------------------------------------------------


def test_reports_are_fenced_by_the_lease_and_a_lost_clients_work_completes_once_elsewhere(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    ttl = 2.0
    server = start_server(PERDURE_NODE_TTL_S=str(ttl), PERDURE_SWEEP_INTERVAL_S="0.3")
    job_id = submit(server.url, script(task("0")))
    holder = workers(server.url)
    other = workers(server.url)
    wu_id = holder.checkout_id()

    # Only the lease holder may report.
    for status in ("done", "fail", "failed-permanent"):
        refused = other.report(wu_id, status)
        assert refused.status_code == 409, refused.text
    wu = get_work(server.url, wu_id)
    assert (wu["state"], wu["client"], wu["failed"]) == ("checkout", holder.id, 0)

    # Heartbeats keep the lease alive past the TTL.
    # Between beats, the other client long-polls for 0.4 s: the interval of the beats, and proof that
    # the workunit is not handed out meanwhile.
    keep_until = time.monotonic() + ttl + 1.0
    while time.monotonic() < keep_until:
        assert "discard" not in holder.instructions([wu_id])
        assert_no_work(other, wait=0.4)
    assert not {"discard", "stop"} & set(holder.instructions([wu_id]))
    last_heartbeat = time.monotonic()

    # The holder goes silent: after the TTL its workunit goes back to the queue and another client,
    # long-polling, gets it. Losing a client is not a failure of the workunit.
    response = other.checkout(wait=ttl * 4)
    got_it = time.monotonic()
    assert response.status_code == 200, response.text
    assert envelope(response)["data"]["id"] == wu_id
    assert got_it - last_heartbeat >= ttl * 0.9
    wu = get_work(server.url, wu_id)
    assert (wu["state"], wu["client"], wu["failed"], wu["attempt"]) == ("checkout", other.id, 0, 2)

    # The first client's late report is refused, and it is told to drop the workunit.
    late = holder.report(wu_id, "done")
    assert late.status_code == 409, late.text
    assert wu_id in holder.instructions([wu_id]).get("discard", "").split(",")
    assert data(other.report(wu_id, "done")) == "ok"
    late = holder.report(wu_id, "done")
    assert late.status_code == 409, late.text
    assert data(other.report(wu_id, "done")) == "ok"  # the winner's repeat is harmless

    job = get_job(server.url, job_id)
    assert job["state"] == "completed"
    assert task_of(job, "0")["remainwork"] == 0
    wu = get_work(server.url, wu_id)
    assert (wu["state"], wu["failed"]) == ("done", 0)
    assert (holder.info()["total_completed"], holder.info()["total_failed"]) == (0, 0)
    assert (other.info()["total_completed"], other.info()["total_failed"]) == (1, 0)


# ---- 6. failure rules --------------------------------------------------------------------------------


def test_failures_skip_the_client_requeue_and_suspend_the_job_at_the_limit(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0")))
    first, second, third = (workers(url) for _ in range(3))
    wu_id = first.checkout_id()
    assert data(first.report(wu_id, "fail", stderr="first stderr\n")) == "ok"

    info = first.info()
    assert info["skip_work"] == [wu_id]
    assert (info["total_failed"], info["last_failed"], info["suspended"]) == (1, 1, False)
    wu = get_work(url, wu_id)
    assert (wu["state"], wu["failed"], wu["client"]) == ("queued", 1, "")
    assert data(call(url, "GET", f"/work/{wu_id}", params={"report": "stderr"})) == "first stderr\n"
    assert_no_work(first)  # never handed to the client that failed it
    assert get_job(url, job_id)["state"] == "in-progress"

    assert second.checkout_id() == wu_id
    assert data(second.report(wu_id, "fail", stderr="second\n")) == "ok"
    assert get_job(url, job_id)["state"] == "in-progress"
    assert get_work(url, wu_id)["failed"] == 2

    stderr = "".join(f"stderr line {i:05d}\n" for i in range(600))  # 10,800 chars
    assert len(stderr) > 5000
    assert third.checkout_id() == wu_id
    assert data(third.report(wu_id, "fail", stderr=stderr, worknotes="command exited with 3")) == "ok"

    job = get_job(url, job_id)
    assert job["state"] == "suspend"
    error = job["error"]
    assert error["clientfailed"] == third.id
    assert error["workfailed"] == wu_id
    assert error["taskfailed"] == f"{job_id}_0"
    # The error names the last exit code (from the worker's notes) and the next step.
    assert error["servernotes"] == (
        f"workunit {wu_id} failed 3 time(s) (last exit code 3)."
        f" Fix the cause, then: perdure job resume {job_id}"
    )
    assert error["apperror"] == stderr[-5000:]
    assert len(error["apperror"]) == 5000
    assert error["worknotes"] == "command exited with 3"
    assert error["status"] == "suspend"
    assert task_of(job, "0")["state"] == "suspend"
    wu = get_work(url, wu_id)
    assert (wu["state"], wu["failed"]) == ("suspend", 3)
    assert data(call(url, "GET", f"/work/{wu_id}", params={"report": "stderr"})) == stderr
    assert data(call(url, "GET", f"/work/{wu_id}", params={"report": "worknotes"})) == "command exited with 3"

    # info.noretry: the first failure suspends.
    noretry_job = submit(url, script(task("0"), noretry=True))
    fourth = workers(url)
    wu_id = fourth.checkout_id()
    assert wu_id == f"{noretry_job}_0_0"
    assert data(fourth.report(wu_id, "fail", stderr="boom")) == "ok"
    job = get_job(url, noretry_job)
    assert job["state"] == "suspend"
    assert job["error"]["servernotes"] == (
        f"workunit {wu_id} failed 1 time(s). Fix the cause, then: perdure job resume {noretry_job}"
    )
    assert job["error"]["apperror"] == "boom"
    assert get_work(url, wu_id)["state"] == "suspend"

    # failed-permanent: job, task and workunit are failed-permanent, and resume is refused.
    permanent_job = submit(url, script(task("0", totalwork=2), task("1", depends=["0"])))
    fifth = workers(url)
    wu_id = fifth.checkout_id()
    assert wu_id == f"{permanent_job}_0_1"
    assert data(fifth.report(wu_id, "failed-permanent", stderr="exit 42\n")) == "ok"
    job = get_job(url, permanent_job)
    assert job["state"] == "failed-permanent"
    assert job["error"]["status"] == "failed-permanent"
    assert job["error"]["servernotes"] == "exit code 42 encountered"
    assert job["error"]["clientfailed"] == fifth.id
    assert task_of(job, "0")["state"] == "failed-permanent"
    assert task_of(job, "1")["state"] == "pending"
    assert get_work(url, wu_id)["state"] == "failed-permanent"
    assert get_work(url, f"{permanent_job}_0_2")["state"] == "suspend"
    resumed = call(url, "PUT", f"/job/{permanent_job}", params={"resume": ""})
    assert resumed.status_code == 400, resumed.text
    assert "suspend" in error_text(resumed)
    assert get_job(url, permanent_job)["state"] == "failed-permanent"
    assert_no_work(workers(url))


# ---- 7. client failure limit -------------------------------------------------------------------------


def test_a_client_failing_max_client_failure_times_in_a_row_is_suspended_until_resumed(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server(PERDURE_MAX_CLIENT_FAILURE="2")
    url = server.url
    job_id = submit(url, script(task("0", totalwork=8)))

    # Failures separated by a success are not consecutive.
    steady = workers(url)
    assert data(steady.report(steady.checkout_id(), "fail")) == "ok"
    assert data(steady.report(steady.checkout_id(), "done")) == "ok"
    assert steady.info()["last_failed"] == 0
    assert data(steady.report(steady.checkout_id(), "fail")) == "ok"
    info = steady.info()
    assert (info["suspended"], info["last_failed"], info["total_failed"]) == (False, 1, 2)

    flaky = workers(url)
    first = flaky.checkout_id()
    assert data(flaky.report(first, "fail")) == "ok"
    assert flaky.info()["suspended"] is False
    second = flaky.checkout_id()
    assert second != first
    failed_before = get_work(url, second)["failed"]
    assert data(flaky.report(second, "fail")) == "ok"
    info = flaky.info()
    assert info["suspended"] is True
    assert "MAX_CLIENT_FAILURE" in info["suspend_reason"]
    assert info["Status"] == "suspended"
    refused = flaky.checkout()
    assert refused.status_code == 400
    assert error_text(refused) == "Client suspended"
    assert envelope(refused)["code"] == "client-suspended"  # what perdure worker acts on
    wu = get_work(url, second)
    assert (wu["state"], wu["failed"], wu["client"]) == ("queued", failed_before + 1, "")
    assert get_job(url, job_id)["state"] == "in-progress"

    assert data(call(url, "PUT", f"/client/{flaky.id}", params={"resume": ""})) == "client resumed"
    info = flaky.info()
    assert (info["suspended"], info["suspend_reason"], info["last_failed"]) == (False, "", 0)
    third = flaky.checkout_id()
    assert third not in (first, second)
    assert data(flaky.report(third, "done")) == "ok"


# ---- 8. client suspend / resume ----------------------------------------------------------------------


def test_client_suspend_resume_and_the_all_variants(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0", totalwork=2)))
    holder, second, third = (workers(url) for _ in range(3))
    wu_id = holder.checkout_id()

    assert data(call(url, "PUT", f"/client/{holder.id}", params={"suspend": ""})) == "client suspended"
    wu = get_work(url, wu_id)
    assert (wu["state"], wu["client"], wu["failed"]) == ("queued", "", 0)
    assert wu_id in holder.instructions([wu_id]).get("discard", "").split(",")
    assert holder.report(wu_id, "done").status_code == 409
    refused = holder.checkout()
    assert (refused.status_code, error_text(refused)) == (400, "Client suspended")
    again = call(url, "PUT", f"/client/{holder.id}", params={"suspend": ""})
    assert again.status_code == 400
    assert error_text(again) == "Client already suspended"
    info = holder.info()
    assert (info["suspended"], info["Status"], info["suspend_reason"]) == (
        True,
        "suspended",
        "manually suspended",
    )

    assert data(call(url, "PUT", f"/client/{holder.id}", params={"resume": ""})) == "client resumed"
    again = call(url, "PUT", f"/client/{holder.id}", params={"resume": ""})
    assert (again.status_code, error_text(again)) == (400, "Client not suspended")

    assert data(call(url, "PUT", "/client", params={"suspendall": ""})) == "3 clients suspended"
    assert client_ids(url, "?status=suspended") == {holder.id, second.id, third.id}
    assert data(call(url, "PUT", "/client", params={"suspendall": ""})) == "0 clients suspended"
    assert data(call(url, "PUT", "/client", params={"resumeall": ""})) == "3 suspended clients resumed"
    assert data(call(url, "PUT", "/client", params={"resumeall": ""})) == "0 suspended clients resumed"
    assert client_ids(url, "?status=suspended") == set()

    missing = call(url, "PUT", "/client/nobody", params={"suspend": ""})
    assert missing.status_code in (400, 404)
    assert error_text(missing) == "Client not found"
    assert call(url, "PUT", f"/client/{holder.id}", params={"frobnicate": ""}).status_code == 501
    assert call(url, "PUT", "/client", params={"frobnicate": ""}).status_code == 501

    for worker in (second, third):
        assert data(worker.report(worker.checkout_id(), "done")) == "ok"
    assert get_job(url, job_id)["state"] == "completed"


# ---- 9. discard on job suspend -----------------------------------------------------------------------


def test_suspending_a_job_tells_its_running_client_to_discard_and_resume_requeues(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0", totalwork=2)))
    holder = workers(url)
    other = workers(url)
    wu_id = holder.checkout_id()

    assert data(call(url, "PUT", f"/job/{job_id}", params={"suspend": ""})) == f"job suspended: {job_id}"
    assert holder.instructions([wu_id]).get("discard") == wu_id
    legacy = data(call(url, "GET", f"/client/{holder.id}", params={"heartbeat": ""}))
    assert legacy.get("discard") == wu_id
    assert "discard" not in other.instructions([])
    assert get_work(url, wu_id)["state"] == "suspend"
    late = holder.report(wu_id, "done")
    assert late.status_code == 409, late.text
    assert_no_work(other)
    assert task_of(get_job(url, job_id), "0")["remainwork"] == 2

    assert data(call(url, "PUT", f"/job/{job_id}", params={"resume": ""})) == f"job resumed: {job_id}"
    wu = get_work(url, wu_id)
    assert (wu["state"], wu["client"], wu["failed"]) == ("queued", "", 0)
    assert "discard" not in holder.instructions([])
    done: Counter[str] = Counter()
    for worker in (other, holder):
        got = worker.checkout_id()
        assert data(worker.report(got, "done")) == "ok"
        done[got] += 1
    assert done == Counter({f"{job_id}_0_1": 1, f"{job_id}_0_2": 1})
    job = get_job(url, job_id)
    assert job["state"] == "completed"
    assert task_of(job, "0")["remainwork"] == 0


# ---- 10. deleting a client ---------------------------------------------------------------------------


def test_deleting_a_client_requeues_its_work_and_tells_it_to_stop(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0")))
    doomed = workers(url)
    other = workers(url)
    wu_id = doomed.checkout_id()

    assert data(call(url, "DELETE", f"/client/{doomed.id}")) == f"client deleted: {doomed.id}"
    wu = get_work(url, wu_id)
    assert (wu["state"], wu["client"], wu["failed"]) == ("queued", "", 0)
    assert doomed.instructions([wu_id]).get("stop") == doomed.id
    refused = doomed.checkout()
    # Distinct from "Client not found" (which makes a worker re-register): this one makes it stop.
    assert (refused.status_code, error_text(refused)) == (400, "Client deleted: the worker should stop")
    assert envelope(refused)["code"] == "client-deleted"
    lost = doomed.report(wu_id, "done")
    assert (lost.status_code, envelope(lost)["code"]) == (409, "lease-lost")
    assert doomed.id not in client_ids(url)

    assert other.checkout_id() == wu_id
    assert data(other.report(wu_id, "done")) == "ok"
    assert get_job(url, job_id)["state"] == "completed"

    # A worker its operator starts again registers afresh, and is welcome back.
    assert doomed.register().status_code == 200
    assert "stop" not in doomed.instructions([])
    assert doomed.id in client_ids(url)


# ---- 11. clientgroup tokens --------------------------------------------------------------------------


def _bad_authorizations(other_group_token: str, own_token: str) -> dict[str, dict[str, str]]:
    return {
        "no token": {},
        "token of another group": {"Authorization": f"CG_TOKEN {other_group_token}"},
        "garbage token": {"Authorization": "CG_TOKEN not-a-real-token"},
        "bad scheme": {"Authorization": f"Bearer {own_token}"},
        "scheme only": {"Authorization": "CG_TOKEN"},
        "no scheme": {"Authorization": own_token},
    }


def test_client_auth_required_refuses_every_worker_call_without_the_groups_token(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server(PERDURE_CLIENT_AUTH_REQUIRED="true")
    url = server.url
    created = data(call(url, "POST", "/cgroup/g1"))
    token = created["token"]
    other_token = data(call(url, "POST", "/cgroup/g2"))["token"]
    assert token and other_token and token != other_token
    assert call(url, "POST", "/cgroup/g1").status_code == 400  # exists
    shown = data(call(url, "GET", "/cgroup/g1"))
    assert shown["has_token"] is True
    assert "token" not in shown

    worker = workers(url, group="g1", token=token, register=False)
    bad = _bad_authorizations(other_token, token)
    for label, headers in bad.items():
        response = worker.register(headers=headers)
        assert response.status_code == 401, (label, response.text)
    assert data(worker.register())["id"] == worker.id

    job_id = submit(url, script(task("0")))
    for label, headers in bad.items():
        for response in (
            worker.heartbeat([], headers=headers),
            call(url, "GET", f"/client/{worker.id}", params={"heartbeat": ""}, headers=headers),
            worker.checkout(headers=headers),
        ):
            assert response.status_code == 401, (label, response.request.url, response.text)
    assert get_job(url, job_id)["state"] == "queued"  # nothing was handed out
    wu_id = worker.checkout_id()
    assert "server-uuid" in worker.instructions([wu_id])
    for label, headers in bad.items():
        response = worker.report(wu_id, "done", headers=headers)
        assert response.status_code == 401, (label, response.text)
    assert get_work(url, wu_id)["state"] == "checkout"
    assert data(worker.report(wu_id, "done")) == "ok"
    assert get_job(url, job_id)["state"] == "completed"

    # A revoked token stops working; a new one works and the old one stays refused.
    assert data(call(url, "DELETE", "/cgroup/g1/token")) == "token revoked for client group g1"
    assert worker.heartbeat([]).status_code == 401
    new_token = data(call(url, "PUT", "/cgroup/g1/token"))["token"]
    assert new_token != token
    assert worker.heartbeat([], headers={"Authorization": f"CG_TOKEN {token}"}).status_code == 401
    worker.token = new_token
    assert worker.heartbeat([]).status_code == 200


def test_without_auth_required_a_token_is_optional_but_a_wrong_one_is_refused(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    token = data(call(url, "POST", "/cgroup/g1"))["token"]
    other_token = data(call(url, "POST", "/cgroup/g2"))["token"]
    worker = workers(url, group="g1", register=False)
    wrong = {k: v for k, v in _bad_authorizations(other_token, token).items() if k != "no token"}

    for label, headers in wrong.items():
        response = worker.register(headers=headers)
        assert response.status_code == 401, (label, response.text)
    assert worker.register().status_code == 200
    assert worker.register(headers={"Authorization": f"CG_TOKEN {token}"}).status_code == 200

    submit(url, script(task("0")))
    for label, headers in wrong.items():
        for response in (worker.heartbeat([], headers=headers), worker.checkout(headers=headers)):
            assert response.status_code == 401, (label, response.request.url, response.text)
    assert worker.heartbeat([]).status_code == 200
    wu_id = worker.checkout_id()
    for label, headers in wrong.items():
        response = worker.report(wu_id, "done", headers=headers)
        assert response.status_code == 401, (label, response.text)
    assert data(worker.report(wu_id, "done")) == "ok"


# ---- 12. long-poll -----------------------------------------------------------------------------------


def test_long_poll_returns_work_submitted_while_waiting_and_times_out_on_an_empty_queue(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    worker = workers(server.url)

    started = time.monotonic()
    empty = worker.checkout(wait=1)
    elapsed = time.monotonic() - started
    assert (empty.status_code, error_text(empty)) == (400, NO_WORK)
    assert 0.9 <= elapsed < 3.0, elapsed

    # The job is submitted once the poll is on the wire (an event, not a sleep): the poll can only
    # answer with it by having waited for it, and a woken poll answers well before its 5 s are up.
    outcome: dict[str, Any] = {}
    sent = threading.Event()
    worker.http.event_hooks["request"].append(lambda request: sent.set())

    def poll() -> None:
        try:
            outcome["response"] = worker.checkout(wait=5)
        except Exception as exc:  # reported by the assertion below, not as a thread exception
            outcome["error"] = exc
        outcome["received"] = time.monotonic()

    waiter = threading.Thread(target=poll, daemon=True)
    waiter.start()
    assert sent.wait(10), "the poll was never sent"
    submitted = time.monotonic()
    job_id = submit(server.url, script(task("0")))
    waiter.join(10)
    assert not waiter.is_alive()
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert envelope(response)["data"]["jobid"] == job_id
    assert outcome["received"] - submitted < 2.0, outcome["received"] - submitted


# ---- 13. queue counts and listings -------------------------------------------------------------------


def test_queue_counts_client_filters_and_workunit_listing(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0", name="echo", totalwork=3), task("1", depends=["0"])))
    busy = workers(url, group="ga", apps=["echo"])
    idle = workers(url, group="gb", apps=["*"])
    resting = workers(url, group="ga", apps=["cat"])
    held = busy.checkout_id()
    assert data(call(url, "PUT", f"/client/{resting.id}", params={"suspend": ""})) == "client suspended"

    summary = data(call(url, "GET", "/queue", params={"json": ""}))
    assert (summary["jobs"]["total"], summary["jobs"]["active"], summary["jobs"]["suspended"]) == (1, 1, 0)
    assert summary["tasks"]["total"] == 2
    assert summary["tasks"]["in-progress"] == 1
    assert summary["tasks"]["pending"] == 1
    work = summary["workunits"]
    assert (work["total"], work["queued"], work["checkout"], work["suspend"]) == (3, 2, 1, 0)
    clients = summary["clients"]
    assert (clients["total"], clients["busy"], clients["suspended"], clients["idle"]) == (3, 1, 1, 1)
    assert clients["offline"] == 0
    text = data(call(url, "GET", "/queue"))
    assert isinstance(text, str)
    assert "total jobs" in text

    assert client_ids(url) == {busy.id, idle.id, resting.id}
    assert client_ids(url, "?busy") == {busy.id}
    assert client_ids(url, "?group=ga") == {busy.id, resting.id}
    assert client_ids(url, "?group=gb") == {idle.id}
    assert client_ids(url, "?group=nosuchgroup") == set()
    assert client_ids(url, "?status=suspended") == {resting.id}
    assert client_ids(url, "?status=busy") == {busy.id}
    assert client_ids(url, "?status=online") == {idle.id}
    assert client_ids(url, "?app=echo") == {busy.id, idle.id}
    assert client_ids(url, "?app=cat") == {idle.id, resting.id}
    assert client_ids(url, "?app=nothing-lists-this") == {idle.id}
    listed = {c["id"]: c for c in data(call(url, "GET", "/client"))}
    assert listed[busy.id]["current_work"]["data"] == [held]
    assert listed[busy.id]["Status"] == "busy"

    queued = envelope(call(url, "GET", "/work", params={"state": "queued"}))
    assert queued["total_count"] == 2
    assert {w["id"] for w in queued["data"]} == {f"{job_id}_0_{r}" for r in (1, 2, 3)} - {held}
    assert all(w["state"] == "queued" for w in queued["data"])
    checked_out = envelope(call(url, "GET", "/work", params={"state": "checkout"}))
    assert (checked_out["total_count"], [w["id"] for w in checked_out["data"]]) == (1, [held])
    assert envelope(call(url, "GET", "/work", params={"state": "queued,checkout"}))["total_count"] == 3
    assert envelope(call(url, "GET", "/work"))["total_count"] == 3
    first_page = envelope(call(url, "GET", "/work", params={"state": "queued", "limit": 1}))
    second_page = envelope(call(url, "GET", "/work", params={"state": "queued", "limit": 1, "offset": 1}))
    assert (first_page["limit"], first_page["total_count"], len(first_page["data"])) == (1, 2, 1)
    assert first_page["data"][0]["id"] != second_page["data"][0]["id"]


# ---- 14. bad input never 500 -------------------------------------------------------------------------


def test_bad_worker_input_is_refused_with_4xx_never_500(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    submit(url, script(task("0", totalwork=2)))
    worker = workers(url)
    wu_id = worker.checkout_id()

    def profile(raw: str | bytes) -> httpx.Response:
        return call(url, "POST", "/client", files={"profile": ("profile.json", raw, "application/json")})

    cases: list[tuple[str, httpx.Response, int, str | None]] = [
        ("checkout without client id", call(url, "GET", "/work?client="), 400, None),
        ("checkout by unknown client", call(url, "GET", "/work?client=nobody"), 400, "Client not found"),
        ("available not a number", call(url, "GET", f"/work?client={worker.id}&available=lots"), 400, None),
        ("wait not a number", call(url, "GET", f"/work?client={worker.id}&wait=soon"), 400, None),
        ("negative wait", call(url, "GET", f"/work?client={worker.id}&wait=-1"), 400, None),
        ("NaN wait", call(url, "GET", f"/work?client={worker.id}&wait=nan"), 400, None),
        ("infinite wait", call(url, "GET", f"/work?client={worker.id}&wait=inf"), 400, None),
        ("unknown status", worker.report(wu_id, "finished"), 400, None),
        ("report without client", worker.report(wu_id, "done", client=""), 400, None),
        ("report without status", call(url, "PUT", f"/work/{wu_id}?client={worker.id}"), 400, None),
        (
            "computetime not a number",
            call(url, "PUT", f"/work/{wu_id}?status=done&client={worker.id}&computetime=x"),
            400,
            None,
        ),
        (
            "malformed multipart report",
            call(
                url,
                "PUT",
                f"/work/{wu_id}?status=done&client={worker.id}",
                content=b"--nope\r\ngarbage",
                headers={"Content-Type": "multipart/form-data; boundary=zzz"},
            ),
            400,
            None,
        ),
        ("report on unknown workunit", worker.report("no-such-workunit", "done"), 404, None),
        ("get unknown workunit", call(url, "GET", "/work/no-such-workunit"), 404, None),
        ("log of unknown workunit", call(url, "GET", "/work/no-such-workunit?report=stderr"), 404, None),
        ("unknown log type", call(url, "GET", f"/work/{wu_id}?report=diary"), 400, None),
        ("log never sent", call(url, "GET", f"/work/{wu_id}?report=stderr"), 400, None),
        ("bad base64 workunit id", call(url, "GET", "/work/base64:!!!"), 400, None),
        ("listing limit 0", call(url, "GET", "/work?limit=0"), 400, None),
        ("listing limit not a number", call(url, "GET", "/work?limit=many"), 400, None),
        ("listing negative offset", call(url, "GET", "/work?offset=-1"), 400, None),
        ("profile not JSON", profile("this is not json"), 400, None),
        ("profile a JSON array", profile("[1, 2]"), 400, None),
        ("profile cores as string", profile('{"id": "c1", "cores": "4"}'), 400, None),
        ("profile apps a number", profile('{"id": "c2", "apps": 5}'), 400, None),
        ("profile bad id", profile('{"id": "../etc"}'), 400, None),
        ("profile bad group", profile('{"id": "c3", "group": "no spaces allowed"}'), 400, None),
        ("profile negative cores", profile('{"id": "c4", "cores": -1}'), 400, None),
        ("profile not UTF-8", profile(b'{"id": "\xff\xfe"}'), 400, None),
        ("no profile field", call(url, "POST", "/client", files={"other": ("x", b"{}")}), 400, None),
        ("no multipart at all", call(url, "POST", "/client", content=b"id=1"), 400, None),
        (
            "heartbeat body not JSON",
            call(url, "PUT", f"/client/{worker.id}?heartbeat", content=b"<xml/>"),
            400,
            None,
        ),
        (
            "heartbeat body a list",
            call(url, "PUT", f"/client/{worker.id}?heartbeat", content=b"[1]"),
            400,
            None,
        ),
        (
            "heartbeat current_work not a list",
            call(url, "PUT", f"/client/{worker.id}?heartbeat", content=b'{"current_work": {"data": 7}}'),
            400,
            None,
        ),
        (
            "heartbeat unknown client",
            call(url, "PUT", "/client/nobody?heartbeat", content=b"{}"),
            400,
            "Client not found",
        ),
        (
            "legacy heartbeat unknown client",
            call(url, "GET", "/client/nobody?heartbeat"),
            400,
            "Client not found",
        ),
        ("get unknown client", call(url, "GET", "/client/nobody"), 404, "Client not found"),
        ("delete unknown client", call(url, "DELETE", "/client/nobody"), 404, "Client not found"),
    ]
    problems = []
    for label, response, status, message in cases:
        if response.status_code != status or (message is not None and error_text(response) != message):
            problems.append(f"{label}: {response.status_code} {response.text[:200]}")
        elif envelope(response)["error"] in (None, []):
            problems.append(f"{label}: no error message in {response.text[:200]}")
    assert problems == []
    # None of it disturbed the lease.
    assert data(worker.report(wu_id, "done")) == "ok"
    assert worker.info()["total_completed"] == 1


# ---- hostile input from workers ------------------------------------------------------------


def test_out_of_range_numbers_from_a_worker_are_refused_not_500(
    start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    submit(url, script(task("0")))
    worker = workers(url)
    huge = str(10**30)
    responses = {
        "profile cores 2**31": call(
            url, "POST", "/client", files={"profile": ("p.json", '{"id": "c1", "cores": 2147483648}')}
        ),
        "profile cores 2**70": call(
            url, "POST", "/client", files={"profile": ("p.json", f'{{"id": "c2", "cores": {2**70}}}')}
        ),
        "available 10**30": call(url, "GET", f"/work?client={worker.id}&available={huge}"),
        "listing offset 10**30": call(url, "GET", f"/work?offset={huge}"),
    }
    wu_id = worker.checkout_id()
    responses["computetime 1e30"] = call(
        url, "PUT", f"/work/{wu_id}?status=done&client={worker.id}&computetime=1e30"
    )
    server_errors = {label: r.status_code for label, r in responses.items() if r.status_code >= 500}
    assert server_errors == {}


def test_worker_logs_containing_nul_bytes_are_accepted(
    request: pytest.FixtureRequest, db_url: str, start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    job_id = submit(url, script(task("0", totalwork=2)))
    worker = workers(url)
    wu_id = worker.checkout_id()
    failed = worker.report(wu_id, "fail", stderr="core dumped\x00\x00 binary tail", worknotes="a\x00b")
    assert failed.status_code == 200, failed.text
    assert get_work(url, wu_id)["failed"] == 1
    assert "core dumped" in data(call(url, "GET", f"/work/{wu_id}", params={"report": "stderr"}))
    other = worker.checkout_id()
    done = worker.report(other, "done", stdout="out\x00put")
    assert done.status_code == 200, done.text
    assert task_of(get_job(url, job_id), "0")["remainwork"] == 1


def test_nul_characters_in_worker_supplied_text_are_refused_not_500(
    request: pytest.FixtureRequest, db_url: str, start_server: StartServer, workers: Callable[..., Worker]
) -> None:
    server = start_server()
    url = server.url
    worker = workers(url)

    def profile(document: str) -> httpx.Response:
        return call(url, "POST", "/client", files={"profile": ("p.json", document)})

    responses = {
        "profile name": profile('{"id": "n1", "name": "x\\u0000y"}'),
        "profile hostname": profile('{"id": "n2", "hostname": "h\\u0000"}'),
        "profile extra key": profile('{"id": "n3", "location": "rack\\u00001"}'),
        "checkout client id": call(url, "GET", "/work?client=a%00b"),
        "client id in path": call(url, "GET", "/client/a%00b"),
        "heartbeat client id": call(url, "PUT", "/client/a%00b?heartbeat", content=b"{}"),
        "workunit id": call(url, "GET", "/work/a%00b"),
        "report workunit id": call(url, "PUT", f"/work/a%00b?status=done&client={worker.id}"),
        "client group filter": call(url, "GET", "/client?group=a%00b"),
        "workunit state filter": call(url, "GET", "/work?state=a%00b"),
    }
    server_errors = {label: r.status_code for label, r in responses.items() if r.status_code >= 500}
    assert server_errors == {}
