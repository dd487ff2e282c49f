"""Metrics through the API, on both databases: real jobs driven through the worker protocol, then the
definitions, time series, summary and ``/metrics`` checked against what was done.

The metrics clock is the test's (bucket times and retention), the stores' clock is real (runtime and
checkout latency are measured from stored times).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from perdure.api.app import create_app
from perdure.api.metrics import install
from perdure.metrics import clock, queries, storage
from perdure.metrics import levels as lv
from perdure.metrics.clock import ManualClock
from perdure.metrics.definitions import DEFINITIONS
from perdure.metrics.sweep import sweep
from perdure.settings import Settings
from perdure.store.database import Database
from perdure.timeutil import parse_time
from tests.integration.clientloop import ClientLoop, Ledger
from tests.integration.drive import checkout, get_job, report, run_job, submit
from tests.jobs import script, task
from tests.support import ServerProcess

MIN = 60_000_000
T0 = parse_time("2031-03-11T00:00:00Z")
MGMT_ERROR_KEYS = {"statusCode", "errorCode", "message"}


@pytest.fixture
def now() -> Iterator[ManualClock]:
    lv.configure_levels(None)
    manual = ManualClock(T0 - 30_000_000)  # 23:59:30, half a minute before a boundary of every level
    with clock.use_clock(manual):
        yield manual


@pytest.fixture
def api(settings: Settings, now: ManualClock) -> Iterator[TestClient]:
    app = create_app(settings)
    routes = list(app.router.routes)
    install(app)  # create_app installs the metrics routes already: this must change nothing
    assert app.router.routes == routes
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def quiet_api(settings: Settings, now: ManualClock) -> Iterator[TestClient]:
    """The app without a background sweep during the test: only the test's own sweeps sample, so what
    they see does not depend on how fast the test's requests ran."""
    with TestClient(create_app(dataclasses.replace(settings, sweep_interval_s=3600.0))) as test_client:
        yield test_client


def register(client: TestClient, client_id: str, group: str, node: str = "") -> None:
    profile = {"id": client_id, "group": group, "apps": ["*"], "node_id": node}
    response = client.post("/client", files={"profile": ("p.json", json.dumps(profile), "application/json")})
    assert response.status_code == 200, response.text


def series(client: TestClient, object_id: str, metric: str, **params: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/metricValue/{object_id}/metricDef-{metric}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def total(client: TestClient, object_id: str, metric: str, statistic: str = "sum") -> float:
    points = series(client, object_id, metric, interval="24h", statistic=statistic)["points"]
    return sum(p["value"] for p in points)


def drain(client: TestClient, client_ids: list[str]) -> int:
    """Each client checks out and completes work in turn until none of them gets any."""
    done = 0
    while True:
        progressed = False
        for client_id in client_ids:
            workunit = checkout(client, client_id)
            if workunit is not None:
                report(client, workunit["id"], client_id)
                done += 1
                progressed = True
        if not progressed:
            return done


def run_seconds(client: TestClient, job_id: str) -> float:
    info = get_job(client, job_id)["info"]
    return (parse_time(info["completedtime"]) - parse_time(info["startedtime"])) / 1e6


def test_counts_sums_and_the_summary_follow_the_jobs_run(api: TestClient, now: ManualClock) -> None:
    register(api, "ca", "qa", node="n1")
    register(api, "cb", "qb", node="n2")
    two_tasks = [task("0"), task("1", depends=["0"])]
    before = [submit(api, script(*two_tasks, clientgroups="qa"))["id"] for _ in range(2)]
    before.append(submit(api, script(task("0"), clientgroups="qb"))["id"])
    now.set(T0 + 15_000_000)  # after the boundary: a new minute, half hour and day
    after = [submit(api, script(*two_tasks, clientgroups="qa"))["id"]]
    after.append(submit(api, script(task("0"), clientgroups="qb"))["id"])
    both = submit(api, script(task("0"), clientgroups="qa,qb"))["id"]  # counts in both queues
    drain(api, ["ca", "cb"])
    assert {get_job(api, j)["state"] for j in [*before, *after, both]} == {"completed"}

    # Counts, per object and in total.
    assert total(api, "system-total", "jobSubmitted") == 6
    assert total(api, "queue-qa", "jobSubmitted") == 4
    assert total(api, "queue-qb", "jobSubmitted") == 3
    assert total(api, "system-total", "jobCompleted") == 6
    assert total(api, "system-total", "workunitsCompleted") == 3 * 2 + 2 + 1
    assert total(api, "queue-qa", "workunitsCompleted") == 7
    # Nodes: ca (n1) ran qa's 6, cb (n2) qb's 2, and one of them the job both queues share.
    assert total(api, "node-n1", "workunitsCompleted") in (6, 7)
    assert total(api, "node-n1", "workunitsCompleted") + total(api, "node-n2", "workunitsCompleted") == 9
    assert total(api, "system-total", "checkoutLatency", "count") == 9
    assert total(api, "system-total", "checkoutLatency", "min") >= 0

    # Runtime is the sum of each job's first checkout to completion.
    runtimes = {j: run_seconds(api, j) for j in [*before, *after, both]}
    assert total(api, "system-total", "runtime") == pytest.approx(sum(runtimes.values()), abs=1e-5)
    qa_jobs = [*before[:2], after[0], both]
    assert total(api, "queue-qa", "runtime") == pytest.approx(sum(runtimes[j] for j in qa_jobs), abs=1e-5)

    # The boundary: submissions before it in 23:59, after it in 00:00, at every level.
    minute = series(api, "system-total", "jobSubmitted", interval="1m")
    assert minute["id"] == "metricDef-jobSubmitted.system-total"
    assert minute["metaData"] == {}
    assert minute["points"] == [
        {"time": "2031-03-10T23:59:00Z", "value": 3.0},
        {"time": "2031-03-11T00:00:00Z", "value": 3.0},
    ]
    assert [p["time"] for p in series(api, "system-total", "jobSubmitted", interval="30m")["points"]] == [
        "2031-03-10T23:30:00Z",
        "2031-03-11T00:00:00Z",
    ]
    day = series(api, "queue-qb", "jobSubmitted", interval="24h0m0s")
    assert day["metaData"] == {"queueName": "qb"}
    assert day["points"] == [
        {"time": "2031-03-10T00:00:00Z", "value": 1.0},
        {"time": "2031-03-11T00:00:00Z", "value": 2.0},
    ]

    # The summary: per queue, over the range asked for.
    body = api.get("/api/v1/metrics/summary").json()
    assert set(body["items"]) == {"jobSubmitted", "runtime", "spotProtection", "timeSaved"}
    by_queue = {
        name: {e["metaData"]["queueName"]: e["point"]["value"] for e in entries}
        for name, entries in body["items"].items()
    }
    assert by_queue["jobSubmitted"] == {"qa": 4.0, "qb": 3.0}
    assert by_queue["spotProtection"] == {"qa": 0.0, "qb": 0.0}
    assert by_queue["timeSaved"] == {"qa": 0.0, "qb": 0.0}
    assert by_queue["runtime"]["qa"] == pytest.approx(sum(runtimes[j] for j in qa_jobs), abs=1e-5)
    entry = body["items"]["jobSubmitted"][0]
    assert set(entry) == {"id", "point", "metaData"} and entry["id"] == "jobSubmitted"
    assert set(entry["point"]) == {"time", "value"}
    since_boundary = api.get("/api/v1/metrics/summary", params={"start": "2031-03-11T00:00:00Z"}).json()
    assert {
        e["metaData"]["queueName"]: e["point"]["value"] for e in since_boundary["items"]["jobSubmitted"]
    } == {
        "qa": 2.0,
        "qb": 2.0,
    }
    until_boundary = api.get("/api/v1/metrics/summary", params={"end": "2031-03-10T23:59:59Z"}).json()
    assert {
        e["metaData"]["queueName"]: e["point"]["value"] for e in until_boundary["items"]["jobSubmitted"]
    } == {
        "qa": 2.0,
        "qb": 1.0,
    }


def test_failures_count_workunits_and_the_jobs_they_fail(api: TestClient) -> None:
    register(api, "c1", "q1", node="n1")
    retried = submit(api, script(task("0"), clientgroups="q1"))["id"]
    wu = checkout(api, "c1")
    assert wu is not None and wu["jobid"] == retried
    report(api, wu["id"], "c1", status="fail")  # 1 of 3: re-queued, the job goes on
    register(api, "c2", "q1", node="n1")  # c1 may not take it again
    noretry = submit(api, script(task("0"), clientgroups="q1", noretry=True))["id"]
    for _ in range(2):
        wu = checkout(api, "c2")
        assert wu is not None
        report(api, wu["id"], "c2", status="fail" if wu["jobid"] == noretry else "done")
    assert get_job(api, noretry)["state"] == "suspend"
    register(api, "c3", "q1")
    permanent = submit(api, script(task("0"), clientgroups="q1"))["id"]
    wu = checkout(api, "c3")
    assert wu is not None and wu["jobid"] == permanent
    report(api, wu["id"], "c3", status="failed-permanent")

    assert total(api, "system-total", "workunitsFailed") == 3
    assert total(api, "queue-q1", "workunitsFailed") == 3
    assert total(api, "node-n1", "workunitsFailed") == 2  # c3 did not say which node it is on
    assert total(api, "system-total", "jobFailed") == 2  # the noretry job and the permanent failure
    assert total(api, "system-total", "jobCompleted") == 1  # the retried job, done by c2
    assert total(api, "system-total", "workunitsCompleted") == 1


def test_definitions_list_every_metric_for_every_object(api: TestClient) -> None:
    register(api, "c1", "gpu", node="n7")
    submit(api, script(task("0")))  # no client groups: the default queue
    body = api.get("/api/v1/metric").json()
    ids = {entry["id"] for entry in body}
    for metric in DEFINITIONS:
        assert f"metricDef-{metric.name}.system-total" in ids
        assert f"metricDef-{metric.name}.queue-gpu" in ids
    assert "metricDef-jobSubmitted.queue-default" in ids
    assert "metricDef-workunitsCompleted.node-n7" in ids
    assert "metricDef-jobSubmitted.node-n7" not in ids  # jobs are not a node's
    needed = {"jobSubmitted", "jobCompleted", "jobFailed", "runtime", "workunitsCompleted"}
    needed |= {"workunitsFailed", "checkoutLatency", "queueLength", "activeNodes", "activeClients"}
    needed |= {"spotProtection", "timeSaved", "checkpointDuration", "checkpointSize", "restoreDuration"}
    needed |= {"checkpointFailures", "restoreFailures"}
    assert {e["definition"]["id"].removeprefix("metricDef-") for e in body} == needed
    runtime = next(e for e in body if e["id"] == "metricDef-runtime.system-total")
    assert runtime == {
        "name": "Total runtime of jobs",
        "id": "metricDef-runtime.system-total",
        "definition": {
            "id": "metricDef-runtime",
            "description": "Total runtime of jobs",
            "labels": ["duration"],
        },
        "object": {"id": "system-total", "type": "system-total", "name": "system-total"},
        "levels": [
            {"interval": "1m0s", "retention": "168h0m0s"},
            {"interval": "30m0s", "retention": "2160h0m0s"},
            {"interval": "24h0m0s", "retention": "18000h0m0s"},
        ],
    }
    gpu = next(e for e in body if e["id"] == "metricDef-queueLength.queue-gpu")
    assert gpu["object"] == {"id": "queue-gpu", "type": "queue", "name": "gpu"}


def test_level_selection_and_ranges(api: TestClient, now: ManualClock) -> None:
    submit(api, script(task("0")))

    def level(**params: str) -> str:
        response = api.get("/api/v1/metricValue/system-total/metricDef-jobSubmitted", params=params)
        assert response.status_code == 200, response.text
        return response.headers["X-Perdure-Interval"]

    assert level() == "1m0s"
    assert level(start="2031-03-09T00:00:00Z") == "1m0s"
    assert level(start="2031-02-20T00:00:00Z") == "30m0s"  # older than a week
    assert level(start="2030-01-01T00:00:00Z") == "24h0m0s"
    assert level(interval="30m", start="2031-03-10T23:00:00Z") == "30m0s"
    # A range far beyond retention answers what exists, at once.
    started = time.perf_counter()
    huge = series(
        api,
        "system-total",
        "jobSubmitted",
        interval="1m",
        start="1970-01-01T00:00:00Z",
        end="2999-01-01T00:00:00Z",
    )
    assert [p["value"] for p in huge["points"]] == [1.0]
    assert time.perf_counter() - started < 2.0
    # A range with nothing in it is empty, not an error.
    assert (
        series(api, "system-total", "jobSubmitted", start="2031-03-12T00:00:00Z", end="2031-03-13T00:00:00Z")[
            "points"
        ]
        == []
    )
    # start == end is one instant: the bucket holding it.
    assert (
        len(
            series(
                api,
                "system-total",
                "jobSubmitted",
                interval="1m",
                start="2031-03-10T23:59:30Z",
                end="2031-03-10T23:59:30Z",
            )["points"]
        )
        == 1
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?start=yesterday", 400),
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?end=2031-13-01T00:00:00Z", 400),
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?start=2031-03-10T00:00:00", 400),  # no zone
        (
            "/api/v1/metricValue/system-total/metricDef-jobSubmitted"
            "?start=2031-03-11T00:00:00Z&end=2031-03-10T00:00:00Z",
            400,
        ),
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?interval=5m", 400),
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?interval=soon", 400),
        ("/api/v1/metricValue/system-total/metricDef-jobSubmitted?statistic=p99", 400),
        ("/api/v1/metricValue/system-total/metricDef-volumeAttachTime", 404),
        ("/api/v1/metricValue/queue-nosuchqueue/metricDef-jobSubmitted", 404),
        ("/api/v1/metricValue/galaxy-7/metricDef-jobSubmitted", 404),
        ("/api/v1/metricValue/node-n1/metricDef-jobSubmitted", 404),  # not kept for nodes
        ("/api/v1/metrics/summary?start=not-a-time", 400),
        ("/api/v1/metrics/summary?start=2031-03-11T00:00:00Z&end=2031-03-10T00:00:00Z", 400),
    ],
)
def test_bad_input_answers_in_the_management_error_shape(api: TestClient, path: str, status: int) -> None:
    register(api, "c1", "q1", node="n1")
    response = api.get(path)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= MGMT_ERROR_KEYS
    assert body["statusCode"] == status
    assert body["errorCode"] == (1003 if status == 400 else 1004)
    assert body["message"]


def test_gauges_are_sampled_by_the_sweep(quiet_api: TestClient, settings: Settings, now: ManualClock) -> None:
    api = quiet_api
    register(api, "c1", "q1", node="n1")
    register(api, "c2", "q1", node="n1")
    register(api, "c3", "q2", node="n2")
    for _ in range(3):
        submit(api, script(task("0"), clientgroups="q1"))
    submit(api, script(task("0"), clientgroups="q3"))  # no client serves q3 yet
    db = Database(settings.database_url)
    try:
        assert sweep(db, force=True).sampled
        now.advance(60)
        assert checkout(api, "c1") is not None
        assert sweep(db, force=True).sampled
    finally:
        db.dispose()

    def points(object_id: str, metric: str) -> list[float]:
        return [p["value"] for p in series(api, object_id, metric, interval="1m")["points"]]

    assert points("system-total", "queueLength") == [4.0, 3.0]
    assert points("queue-q1", "queueLength") == [3.0, 2.0]
    assert points("queue-q3", "queueLength") == [1.0, 1.0]
    assert points("system-total", "activeClients") == [3.0, 3.0]
    assert points("system-total", "activeNodes") == [2.0, 2.0]
    assert points("queue-q1", "activeNodes") == [1.0, 1.0]
    assert points("node-n1", "activeClients") == [2.0, 2.0]
    # Averages over the 30-minute bucket that holds both samples.
    assert series(api, "queue-q1", "queueLength", interval="30m")["points"][-1]["value"] == 2.0


def test_prometheus_exposition_parses_and_is_labelled_by_queue(api: TestClient) -> None:
    register(api, "c1", "qa", node="n1")
    register(api, "c2", "qb")
    job = submit(api, script(task("0"), clientgroups="qa"))["id"]
    run_job(api, job, "c1")
    submit(api, script(task("0"), clientgroups="qb"))
    submit(api, script(task("0"), clientgroups="qb"))
    api.get("/job/nosuchjob")

    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("perdure_jobs_submitted_total", ())] == 3
    assert samples[("perdure_queue_jobs_submitted_total", (("queue", "qa"),))] == 1
    assert samples[("perdure_queue_jobs_submitted_total", (("queue", "qb"),))] == 2
    assert samples[("perdure_queue_jobs_completed_total", (("queue", "qa"),))] == 1
    assert samples[("perdure_queue_jobs_completed_total", (("queue", "qb"),))] == 0
    assert samples[("perdure_node_workunits_completed_total", (("node", "n1"),))] == 1
    assert samples[("perdure_checkout_latency_seconds_count", ())] == 1
    assert samples[("perdure_job_runtime_seconds_total", ())] > 0
    assert samples[("perdure_queued_workunits", ())] == 2
    assert samples[("perdure_queue_queued_workunits", (("queue", "qb"),))] == 2
    assert samples[("perdure_queue_queued_workunits", (("queue", "qa"),))] == 0
    assert samples[("perdure_active_clients", ())] == 2
    assert samples[("perdure_spot_protections_total", ())] == 0
    # HTTP metrics: by route template (never a raw id), method and status, and this process.
    http = {labels: v for (name, labels), v in samples.items() if name == "perdure_http_requests_total"}
    routes = {dict(labels)["route"] for labels in http}
    assert "/job/{jid}" in routes or any(r.startswith("/job/{") for r in routes)
    assert not any("nosuchjob" in r for r in routes)
    assert all("process" in dict(labels) for labels in http)
    assert any(dict(labels)["status"] == "404" for labels in http)
    assert any(name == "perdure_http_request_duration_seconds_bucket" for name, _l in samples)

    # Each request counts once (counters are per process: compare before and after).
    def listed() -> float:
        for family in text_string_to_metric_families(api.get("/metrics").text):
            for sample in family.samples:
                wanted = {"route": "/api/v1/metric", "method": "GET", "status": "200"}
                if sample.name == "perdure_http_requests_total" and wanted.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0

    before = listed()
    for _ in range(3):
        assert api.get("/api/v1/metric").status_code == 200
    assert listed() - before == 3


def test_several_server_processes_sharing_the_database_count_everything_once(
    tmp_path: Any, db_url: str
) -> None:
    """Two real servers on one database, client loops on both: every job and workunit counted once."""
    servers = [ServerProcess(tmp_path / "s1", db_url).start()]
    servers.append(ServerProcess(tmp_path / "s2", db_url).start())
    ledger = Ledger()
    loops = [
        ClientLoop(servers[i % 2].url, ledger, group="q1" if i < 2 else "q2", wait=0.2) for i in range(4)
    ]
    jobs: list[str] = []
    try:
        for loop in loops:
            loop.start()
        for n in range(24):
            document = script(task("0"), task("1", depends=["0"]), clientgroups="q1" if n % 3 else "q2")
            response = httpx.post(
                servers[n % 2].url + "/job",
                files={"upload": ("job.json", json.dumps(document), "application/json")},
                timeout=15.0,
            )
            assert response.status_code == 200, response.text
            jobs.append(response.json()["data"]["id"])
        deadline = time.monotonic() + 60
        while sum(ledger.done_accepted.values()) < 48 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for loop in loops:
            loop.stop()
        for loop in loops:
            loop.join(10)
        for server in servers:
            server.stop()
    assert ledger.errors == []
    assert sum(ledger.done_accepted.values()) == 48
    db = Database(db_url)
    try:
        for fold in (False, True):  # as recorded, then folded into the levels
            if fold:
                storage.fold(db, lv.levels())
            with db.read() as conn:
                names = ["jobSubmitted", "jobCompleted", "workunitsCompleted", "checkoutLatency"]
                totals = storage.all_time(conn, names)
                by_day = queries.range_totals(conn, ["jobSubmitted"], 0, 2**62, clock.now())
            assert totals[("jobSubmitted", "system-total")].total == 24
            assert totals[("jobSubmitted", "queue-q1")].total == 16
            assert totals[("jobSubmitted", "queue-q2")].total == 8
            assert totals[("jobCompleted", "system-total")].total == 24
            assert totals[("workunitsCompleted", "system-total")].total == 48
            assert totals[("checkoutLatency", "system-total")].samples == 48
            assert by_day[("jobSubmitted", "system-total")].total == 24
    finally:
        db.dispose()
