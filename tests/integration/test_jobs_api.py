"""Submitting jobs and running them to completion: what users see in ``/job`` replies."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from perdure.settings import Settings
from tests.integration.drive import (
    RFC3339_UTC,
    ZERO_TIME,
    checkout,
    get_job,
    put_job,
    queued_workunits,
    register,
    report,
    run_job,
    submit,
    task_states,
    total_jobs,
)
from tests.jobs import diamond, script, task, upload

SECRET = "s3cr3t-private-env-value-7f1c"
TOKEN = "datatoken-value-never-shown-91ab"


def test_submit_then_get_shows_the_job_queued_with_its_first_task_queued(client: TestClient) -> None:
    submitted = client.post("/job", files=upload(diamond()))
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["data"]
    fetched = client.get(f"/job/{job['id']}").json()["data"]
    assert fetched["state"] == "queued"
    assert [t["state"] for t in fetched["tasks"]] == ["queued", "pending", "pending", "pending"]
    assert fetched["tasks"][3]["dependsOn"] == [f"{job['id']}_1", f"{job['id']}_2"]


# ---- submit: the document ----------------------------------------------------------------------


def _legacy_io_job() -> dict[str, Any]:
    """Task 0 writes out.txt; task 1 reads it through ``origin`` (an implicit dependency), IO as maps."""
    return script(
        task(
            "0",
            inputs={"reads.fna": {"host": "http://shock:7445", "node": "n-1"}},
            outputs={"out.txt": {"host": "http://shock:7445"}},
            totalwork=3,
        ),
        task("1", inputs={"out.txt": {"host": "http://shock:7445", "origin": "0"}}),
        name="shape",
        project="proj",
        user="alice",
        clientgroups="g1, g2",
        priority=3,
        userattr={"k": "v"},
    )


def test_submitted_document_has_awe_shape(client: TestClient) -> None:
    response = client.post("/job", files=upload(_legacy_io_job()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200 and body["error"] is None
    job = body["data"]
    job_id = job["id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert job["state"] == "queued"
    assert job["registered"] is True
    assert job["remaintasks"] == 2
    assert job["error"] is None
    assert job["resumed"] == 0
    assert job["expiration"] == ZERO_TIME

    info = job["info"]
    assert re.match(RFC3339_UTC, info["submittime"]) and info["submittime"] != ZERO_TIME
    assert info["startedtime"] == ZERO_TIME
    assert info["completedtime"] == ZERO_TIME
    assert (info["name"], info["project"], info["user"], info["pipeline"]) == (
        "shape",
        "proj",
        "alice",
        "test",
    )
    assert info["clientgroups"] == "g1,g2"
    assert info["priority"] == 3
    assert info["userattr"] == {"k": "v"}
    assert re.match(RFC3339_UTC, job["updatetime"])

    first, second = job["tasks"]
    assert first["taskid"] == f"{job_id}_0" and first["task_name"] == "0"
    assert second["taskid"] == f"{job_id}_1"
    assert second["dependsOn"] == [f"{job_id}_0"], "an input's origin is an implicit dependency"
    assert first["inputs"] == [
        {**first["inputs"][0], "filename": "reads.fna", "host": "http://shock:7445", "node": "n-1"}
    ]
    assert isinstance(first["outputs"], list) and first["outputs"][0]["filename"] == "out.txt"
    assert second["inputs"][0]["filename"] == "out.txt" and second["inputs"][0]["origin"] == "0"
    assert (first["state"], first["totalwork"], first["remainwork"]) == ("queued", 3, 3)
    assert (second["state"], second["totalwork"], second["remainwork"]) == ("pending", 1, 1)
    assert re.match(RFC3339_UTC, first["createddate"])
    assert first["completeddate"] == ZERO_TIME

    assert get_job(client, job_id) == job


def test_raw_json_body_is_accepted_like_an_upload(client: TestClient) -> None:
    response = client.post(
        "/job", content=json.dumps(diamond()), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    job = response.json()["data"]
    assert job["state"] == "queued"
    assert [t["task_name"] for t in job["tasks"]] == ["0", "1", "2", "3"]
    assert get_job(client, job["id"])["id"] == job["id"]


def _private_env_job() -> dict[str, Any]:
    return script(
        {
            "taskid": "0",
            "cmd": {
                "name": "true",
                "args": "",
                "environ": {"public": {"PUBLIC_VAR": "visible"}, "private": {"SECRET_VAR": SECRET}},
            },
        }
    )


def test_private_env_and_datatoken_never_appear_in_any_reply(client: TestClient) -> None:
    register(client, "c1")
    submitted = client.post("/job", files=upload(_private_env_job()), headers={"Datatoken": TOKEN})
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["data"]
    job_id = job["id"]
    assert job["info"]["auth"] is True
    cmd = job["tasks"][0]["cmd"]
    assert cmd["environ"]["public"] == {"PUBLIC_VAR": "visible"}
    assert cmd["has_private_env"] is True

    queued = client.get("/work?state=queued&limit=100")
    workunit = checkout(client, "c1")
    assert workunit is not None
    replies = [
        submitted,
        client.get(f"/job/{job_id}"),
        client.get("/job"),
        client.get("/job?verbosity=minimal"),
        client.get(f"/job/{job_id}?report"),
        client.get(f"/job/{job_id}?perf"),
        client.get(f"/work/{workunit['id']}"),
        queued,
        client.get("/work?state=checkout&limit=100"),
    ]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        text = reply.text + json.dumps(dict(reply.headers))
        assert SECRET not in text, f"private env leaked by {reply.request.url}"
        assert TOKEN not in text, f"data token leaked by {reply.request.url}"
    # Only the lease holder gets the secrets, and only in response headers.
    private = client.get(f"/work/{workunit['id']}?privateenv&client=c1")
    assert json.loads(private.headers["Privateenv"]) == {"SECRET_VAR": SECRET}
    assert client.get(f"/work/{workunit['id']}?datatoken&client=c1").headers["Datatoken"] == TOKEN


def test_submit_without_upload_field_is_refused_and_stores_nothing(client: TestClient) -> None:
    before = total_jobs(client)
    response = client.post("/job", files={"script": ("job.json", json.dumps(diamond()), "application/json")})
    assert response.status_code == 400
    assert response.json() == {"status": 400, "data": None, "error": ["No job script or awf is submitted"]}
    not_multipart = client.post("/job", content=b"x", headers={"Content-Type": "text/plain"})
    assert not_multipart.status_code == 400
    assert not_multipart.json()["error"] == ["No job file is submitted"]
    assert total_jobs(client) == before


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"info": {}, "tasks": []}),
        json.dumps(script(task("0", depends=["9"]))),
        json.dumps(script(task("0", depends=["1"]), task("1", depends=["0"]))),
        json.dumps(script(task("0"), task("0"))),
    ],
    ids=["not-json", "not-object", "no-tasks", "unknown-dependency", "cycle", "duplicate-taskid"],
)
def test_invalid_job_script_is_refused_and_stores_nothing(client: TestClient, body: str) -> None:
    before = total_jobs(client)
    response = client.post("/job", files=upload(body))
    assert response.status_code == 400, response.text
    assert response.json()["data"] is None and response.json()["error"][0]
    assert total_jobs(client) == before


class TestUploadLimit:
    LIMIT = 4096

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        settings.max_upload_bytes = self.LIMIT
        return settings

    @staticmethod
    def _padded(size: int) -> str:
        document = script(task("0"), description="")
        padding = size - len(json.dumps(document))
        document["info"]["description"] = "x" * padding
        text = json.dumps(document)
        assert len(text) == size
        return text

    def test_script_at_the_limit_is_accepted(self, client: TestClient) -> None:
        response = client.post("/job", files=upload(self._padded(self.LIMIT)))
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * 100], ids=["just-over", "far-over"])
    def test_oversized_upload_is_refused_and_stores_nothing(self, client: TestClient, size: int) -> None:
        before = total_jobs(client)
        response = client.post("/job", files=upload(self._padded(size)))
        assert response.status_code == 400, response.text
        assert "larger than the limit" in response.json()["error"][0]
        assert total_jobs(client) == before

    @pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * 100], ids=["just-over", "far-over"])
    def test_oversized_raw_json_body_is_refused_and_stores_nothing(
        self, client: TestClient, size: int
    ) -> None:
        before = total_jobs(client)
        response = client.post(
            "/job", content=self._padded(size), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "larger than the limit" in response.json()["error"][0]
        assert total_jobs(client) == before


def test_split_task_gets_ranks_1_to_n_and_single_task_rank_0(client: TestClient) -> None:
    job = submit(client, script(task("split", totalwork=4), task("single")))
    work = queued_workunits(client, job["id"])
    ranks = {w["task_name"]: [] for w in work}
    for w in work:
        ranks[w["task_name"]].append(w["rank"])
        assert w["id"] == f"{job['id']}_{w['task_name']}_{w['rank']}"
    assert sorted(ranks["split"]) == [1, 2, 3, 4]
    assert ranks["single"] == [0]
    assert all(w["totalwork"] == (4 if w["task_name"] == "split" else 1) for w in work)

    register(client, "c1")
    seen = set()
    for _ in range(5):
        workunit = checkout(client, "c1")
        assert workunit is not None
        seen.add(workunit["id"])
        report(client, workunit["id"], "c1")
    assert seen == {f"{job['id']}_split_{r}" for r in (1, 2, 3, 4)} | {f"{job['id']}_single_0"}
    assert get_job(client, job["id"])["state"] == "completed"


def test_nonpositive_totalwork_means_one_workunit_of_rank_0(client: TestClient) -> None:
    job = submit(client, script(task("0", totalwork=0)))
    assert job["tasks"][0]["totalwork"] == 1
    assert [w["rank"] for w in queued_workunits(client, job["id"])] == [0]


# ---- a full run ----------------------------------------------------------------------------------


def test_diamond_runs_to_completion_through_every_state_in_order(client: TestClient) -> None:
    register(client, "c1")
    job = submit(client, diamond())
    job_id = job["id"]
    history: dict[str, list[str]] = {t["task_name"]: [t["state"]] for t in job["tasks"]}
    job_states = [job["state"]]
    started: list[str] = []

    def watch(event: str, _work_id: str) -> None:
        current = get_job(client, job_id)
        if current["state"] != job_states[-1]:
            job_states.append(current["state"])
        if event == "checkout" and not started:
            started.append(current["info"]["startedtime"])
            assert current["state"] == "in-progress"
        for t in current["tasks"]:
            if history[t["task_name"]][-1] != t["state"]:
                history[t["task_name"]].append(t["state"])

    run = run_job(client, job_id, "c1", after_each=watch)

    assert run[0] == f"{job_id}_0_0" and run[-1] == f"{job_id}_3_0"
    assert set(run) == {f"{job_id}_{t}_0" for t in "0123"}
    assert history["0"] == ["queued", "in-progress", "completed"]
    for name in ("1", "2", "3"):
        assert history[name] == ["pending", "queued", "in-progress", "completed"], name
    assert job_states == ["queued", "in-progress", "completed"]

    done = get_job(client, job_id)
    assert done["state"] == "completed"
    assert done["remaintasks"] == 0
    assert done["registered"] is False
    assert done["info"]["startedtime"] == started[0] != ZERO_TIME
    assert re.match(RFC3339_UTC, done["info"]["completedtime"])
    assert done["info"]["completedtime"] != ZERO_TIME
    assert done["info"]["completedtime"] >= done["info"]["startedtime"] >= done["info"]["submittime"]
    assert all(t["remainwork"] == 0 and t["completeddate"] != ZERO_TIME for t in done["tasks"])
    assert checkout(client, "c1") is None


def test_report_lists_each_tasks_workunits_and_the_job_events(client: TestClient) -> None:
    register(client, "c1")
    job = submit(client, script(task("0", totalwork=2), task("1", depends=["0"])))
    job_id = job["id"]
    first = checkout(client, "c1")
    assert first is not None
    report(client, first["id"], "c1", files={"stdout": ("stdout.txt", "hello out", "text/plain")})
    run_job(client, job_id, "c1")

    data = get_job(client, job_id, "?report")
    assert data["id"] == job_id and data["state"] == "completed"
    assert data["resumed"] == 0 and data["error"] is None
    assert [t["taskid"] for t in data["tasks"]] == [f"{job_id}_0", f"{job_id}_1"]
    split, single = data["tasks"]
    assert split["totalwork"] == 2 and split["state"] == "completed"
    assert [w["wuid"] for w in split["workunits"]] == [f"{job_id}_0_1", f"{job_id}_0_2"]
    assert [w["rank"] for w in split["workunits"]] == [1, 2]
    assert [w["wuid"] for w in single["workunits"]] == [f"{job_id}_1_0"]
    assert all(w["state"] == "done" for t in data["tasks"] for w in t["workunits"])
    logs = {w["wuid"]: w["logs"] for w in split["workunits"]}
    assert logs[first["id"]] == {"stdout": "hello out"}
    assert split["completeddate"] != ZERO_TIME

    events = data["events"]
    assert events and all(re.match(RFC3339_UTC, e["time"]) and e["code"] and e["message"] for e in events)
    messages = [e["message"] for e in events]
    assert messages[0] == "job submitted"
    assert messages[-1] == "job completed"
    assert "task 0 completed" in messages and "task 1 queued" in messages


def test_perf_shows_task_stats_and_the_workers_perf_reports(client: TestClient) -> None:
    register(client, "c1")
    job = submit(client, script(task("0"), task("1", depends=["0"])))
    job_id = job["id"]
    workunit = checkout(client, "c1")
    assert workunit is not None
    perf = {"queued": 1, "done": 2, "deliver": 3, "predata": 0.5}
    report(client, workunit["id"], "c1", files={"perf": ("perf.json", json.dumps(perf), "application/json")})
    run_job(client, job_id, "c1")

    data = get_job(client, job_id, "?perf")
    assert data["id"] == job_id
    assert set(data["task_stats"]) == {f"{job_id}_0", f"{job_id}_1"}
    for stats in data["task_stats"].values():
        assert stats["end"] >= stats["start"] >= stats["queued"] > 0
    assert data["work_stats"] == {workunit["id"]: perf}
    assert data["end"] >= data["start"] >= data["queued"] > 0
    # perf files are not logs: the report does not show them
    assert get_job(client, job_id, "?report")["tasks"][0]["workunits"][0]["logs"] == {}


def test_position_counts_active_jobs_ahead_by_priority_submit_order_and_group(client: TestClient) -> None:
    a = submit(client, script(task("0"), clientgroups="g1"))["id"]
    b = submit(client, script(task("0"), clientgroups="g1"))["id"]
    c = submit(client, script(task("0"), clientgroups="g1", priority=5))["id"]
    d = submit(client, script(task("0"), clientgroups="g2"))["id"]
    e = submit(client, script(task("0"), clientgroups="g2,g1"))["id"]
    anywhere = submit(client, script(task("0")))["id"]

    def position(job_id: str) -> int:
        data = get_job(client, job_id, "?position")
        assert set(data) == {"position"}
        return int(data["position"])

    assert position(c) == 1  # highest priority
    assert position(a) == 2  # behind c
    assert position(b) == 3  # behind c and a (same priority, earlier)
    assert position(d) == 1  # nobody ahead shares g2
    assert position(e) == 5  # c, a, b (g1) and d (g2) are ahead
    assert position(anywhere) == 6  # no group: competes with everyone

    put_job(client, b, "priority=9")
    assert position(b) == 1
    assert position(a) == 3  # b and c now ahead


@pytest.mark.parametrize("state", ["completed", "suspend", "deleted"])
def test_position_is_refused_for_a_job_no_longer_queued(client: TestClient, state: str) -> None:
    register(client, "c1")
    job = submit(client, script(task("0")))
    if state == "completed":
        run_job(client, job["id"], "c1")
    elif state == "suspend":
        assert put_job(client, job["id"], "suspend").status_code == 200
    else:
        assert client.delete(f"/job/{job['id']}").status_code == 200
    assert get_job(client, job["id"])["state"] == state
    response = client.get(f"/job/{job['id']}?position")
    assert response.status_code == 400
    assert response.json()["data"] is None
    assert "not in the queue" in response.json()["error"][0]


def test_in_progress_job_still_has_a_position(client: TestClient) -> None:
    register(client, "c1")
    job = submit(client, script(task("0", totalwork=2)))
    assert checkout(client, "c1") is not None
    assert get_job(client, job["id"])["state"] == "in-progress"
    assert get_job(client, job["id"], "?position") == {"position": 1}
    assert task_states(client, job["id"]) == {"0": "in-progress"}


def test_a_userattr_integer_beyond_64_bits_comes_back_exactly_in_the_submit_reply(client: TestClient) -> None:
    # The reply is encoded by orjson, which refuses such integers; the standard encoder takes over.
    job = submit(client, script(task("0"), userattr={"big": 2**70, "small": 1}))
    assert job["info"]["userattr"] == {"big": 2**70, "small": 1}
    assert get_job(client, job["id"])["info"]["userattr"]["big"] == 2**70


def test_submits_sent_at_once_each_get_their_own_reply_or_refusal(client: TestClient) -> None:
    """Submits that arrive together are stored together; each still answers for its own job."""

    def send(n: int) -> tuple[int, Any]:
        document: Any = script(task("a"), task("b", depends=["a"]), name=f"job-{n}")
        if n % 5 == 0:
            document["tasks"][1]["dependsOn"] = ["missing"]
        response = client.post("/job", files=upload(document))
        return n, response

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(30)))
    for n, response in answers:
        if n % 5 == 0:
            assert response.status_code == 400
            assert "dependsOn unknown task 'missing'" in response.json()["error"][0]
            continue
        assert response.status_code == 200, response.text
        job = response.json()["data"]
        assert job["info"]["name"] == f"job-{n}"
        assert get_job(client, job["id"]) == job
    assert total_jobs(client) == 24
