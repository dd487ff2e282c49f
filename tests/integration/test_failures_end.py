"""Failures that end and explain themselves (issue 18), with real server and worker processes, on
both databases: work that no live client will retry suspends its job, saying why and what to do."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from perdure.cli import app
from tests.integration.cluster import Cluster, sh
from tests.integration.drive import register
from tests.jobs import script, task, upload
from tests.support import ServerProcess, free_port, wait_for


def test_a_failing_task_on_one_two_slot_worker_suspends_instead_of_waiting_for_ever(cluster: Cluster) -> None:
    # make run's setup: one worker of 2 slots, the default maxWorkFailure of 3. After a failure on each
    # slot no client will take the workunit again: it counts as failed out.
    _, api, (worker,) = cluster.start(workers=(("w1", 2),))
    job_id = api.submit(script(sh("t", "echo boom >&2; exit 3")))

    job = api.wait_job(job_id, "suspend", timeout=60)
    error = job["error"]
    work = api.only_workunit(job_id)
    assert (work["state"], work["failed"]) == ("suspend", 2)
    assert error["workfailed"] == work["id"]
    assert "on every live client that can run it" in error["servernotes"]
    assert f"perdure job resume {job_id}" in error["servernotes"]
    assert "exited with 3" in error["worknotes"]
    assert "boom" in error["apperror"]
    for client_id in worker.client_ids():
        assert client_id in error["servernotes"]

    # After a fix, resume gives it to the same clients again (their skip lists forget it): it runs
    # twice more and is suspended again, rather than waiting for ever.
    api.data("PUT", f"/job/{job_id}?resume")
    again = api.wait_job(job_id, "suspend", timeout=60)
    assert again["resumed"] == 1
    assert api.only_workunit(job_id)["failed"] == 2


def test_delete_zombie_catches_failed_work_the_sweep_has_not_yet(cluster: Cluster) -> None:
    # A sweep far away: only DELETE /job?zombie can end the job.
    _, api, _ = cluster.start({"PERDURE_SWEEP_INTERVAL_S": "3600"}, workers=(("w1", 2),))
    job_id = api.submit(script(sh("t", "exit 3")))
    wait_for(
        lambda: (w := api.only_workunit(job_id))["failed"] == 2 and w["state"] == "queued",
        60,
        "the workunit to fail on both slots",
        cluster.diagnostics,
    )
    assert api.job(job_id)["state"] in ("queued", "in-progress")

    # Once it has sat queued for the TTL (2 s here) since it failed, it counts as stranded.
    reply = wait_for(
        lambda: (r := api.data("DELETE", "/job?zombie")) != "deleted 0 zombie jobs" and r,
        30,
        "DELETE /job?zombie to catch the stranded job",
        cluster.diagnostics,
    )
    assert reply == "deleted 0 zombie jobs; suspended 1 job(s) whose failed work no live client can retry"
    job = api.job(job_id)
    assert job["state"] == "suspend"
    assert f"perdure job resume {job_id}" in job["error"]["servernotes"]


def test_an_input_url_that_refuses_connections_fails_the_workunit_within_its_bound(cluster: Cluster) -> None:
    server = cluster.server()
    api = cluster.api(server)
    bounds = {"PERDURE_WORKER_TRANSFER_TRIES": "3", "PERDURE_WORKER_TRANSFER_TIMEOUT_S": "5"}
    cluster.worker(server.url, "w1", 1, env=bounds)
    refused = f"http://127.0.0.1:{free_port()}/reads.fna"  # nothing listens there
    job_id = api.submit(script(sh("t", "cat reads.fna", inputs=[{"filename": "reads.fna", "url": refused}])))

    # One worker of one slot: its failure leaves no client to retry, so the job ends (no endless retry).
    started = time.monotonic()
    job = api.wait_job(job_id, "suspend", timeout=60)
    assert time.monotonic() - started < 30
    error = job["error"]
    assert refused in error["apperror"]
    assert "3 tries" in error["apperror"]
    assert "could not fetch" in error["worknotes"]


def test_a_deleted_job_stops_its_workunit_retrying_a_download_at_the_next_heartbeat(cluster: Cluster) -> None:
    server = cluster.server()
    api = cluster.api(server)
    patient = {"PERDURE_WORKER_TRANSFER_TRIES": "1000", "PERDURE_WORKER_TRANSFER_TIMEOUT_S": "600"}
    worker = cluster.worker(server.url, "w1", 1, env=patient)
    refused = f"http://127.0.0.1:{free_port()}/reads.fna"
    job_id = api.submit(script(sh("t", "cat reads.fna", inputs=[{"filename": "reads.fna", "url": refused}])))
    wait_for(
        lambda: "try 2 of 1000" in worker.log(), 30, "the worker to retry the download", cluster.diagnostics
    )

    api.data("DELETE", f"/job/{job_id}")
    wait_for(
        lambda: "workunit discarded while fetching" in worker.log(),
        15,
        "the worker to stop retrying the deleted job's download",
        cluster.diagnostics,
    )
    (client_id,) = worker.client_ids()
    wait_for(
        lambda: api.data("GET", f"/client/{client_id}")["current_work"]["data"] == [],
        15,
        "the slot to be free again",
        cluster.diagnostics,
    )


# ---- explained at submit -----------------------------------------------------------------------


def test_a_clientgroups_typo_is_warned_of_at_submit_and_the_job_is_still_accepted(client: TestClient) -> None:
    register(client, "c1", group="gpu", apps=["*"])
    register(client, "c2", group="cpu", apps=["sh", "python3"])

    typo = client.post("/job", files=upload(script(sh("t", "true"), clientgroups="gpux"))).json()
    assert typo["status"] == 200 and typo["data"]["state"] == "queued"
    (warning,) = typo["warnings"]
    assert "no registered client is in clientgroups 'gpux'" in warning
    assert "registered groups: cpu, gpu" in warning
    assert "warnings" not in client.get(f"/job/{typo['data']['id']}").json()  # said once, not stored

    no_app = client.post("/job", files=upload(script(task("t", name="blast"), clientgroups="cpu"))).json()
    (warning,) = no_app["warnings"]
    assert "runs app 'blast'" in warning

    served = client.post("/job", files=upload(script(sh("t", "true"), clientgroups="cpu"))).json()
    assert "warnings" not in served


def test_perdure_submit_prints_the_warning_on_stderr(server: ServerProcess, tmp_path: Path) -> None:
    profile = {"id": "c1", "group": "gpu", "apps": ["*"]}
    httpx.post(f"{server.url}/client", files={"profile": ("p", json.dumps(profile), "application/json")})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(script(sh("t", "true"), clientgroups="gpux")))
    result = CliRunner().invoke(app, ["submit", str(path)], env={"PERDURE_SERVER": server.url})
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip()) == 36  # the job id, alone on stdout for scripts
    assert "warning: no registered client is in clientgroups 'gpux'" in result.stderr


# ---- the worker ends promptly ---------------------------------------------------------------------


def test_a_worker_whose_server_is_unreachable_exits_promptly_on_sigterm(sqlite_cluster: Cluster) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: registration retries for ever
    worker = sqlite_cluster.worker(nowhere, "w1", 2)
    wait_for(lambda: "register failed" in worker.log(), 30, "the worker to retry registering", worker.log)

    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert worker.wait(15) == 0, worker.log()
    assert time.monotonic() - started < 10, worker.log()  # not the 120 s hand-over deadline


def test_a_worker_whose_server_went_away_exits_promptly_on_sigterm(cluster: Cluster) -> None:
    server, api, (worker,) = cluster.start()
    (client_id,) = worker.client_ids()
    wait_for(lambda: client_id in api.client_ids(), 30, "the worker to register", cluster.diagnostics)
    server.stop()
    wait_for(lambda: "checkout failed" in worker.log(), 30, "the worker to retry its checkout", worker.log)

    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert worker.wait(15) == 0, worker.log()
    assert time.monotonic() - started < 10, worker.log()
