"""Drive jobs through the worker protocol over the in-process TestClient.

A worker registers with ``POST /client`` (multipart ``profile``), checks out one workunit at a time with
``GET /work?client=<id>`` (400 when there is nothing for it) and reports with ``PUT /work/<id>?status=``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.jobs import upload

ZERO_TIME = "0001-01-01T00:00:00Z"
#: Go's RFC3339Nano in UTC, as AWE prints it.
RFC3339_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"


def submit(client: TestClient, document: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POST /job and return the job document; fails the test on any rejection."""
    response = client.post("/job", files=upload(document), **kwargs)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["data"]
    return job


def get_job(client: TestClient, job_id: str, query: str = "") -> Any:
    response = client.get(f"/job/{job_id}{query}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def put_job(client: TestClient, job_id: str, op: str, **kwargs: Any) -> Any:
    """PUT /job/<id>?<op>; returns the response (callers check the status)."""
    return client.put(f"/job/{job_id}?{op}", **kwargs)


def task_states(client: TestClient, job_id: str) -> dict[str, str]:
    """Short task id -> state."""
    return {t["task_name"]: t["state"] for t in get_job(client, job_id)["tasks"]}


def total_jobs(client: TestClient) -> int:
    response = client.get("/job?limit=1")
    assert response.status_code == 200, response.text
    return int(response.json()["total_count"])


def register(
    client: TestClient, client_id: str = "c1", group: str = "default", apps: list[str] | None = None
) -> dict[str, Any]:
    profile = {"id": client_id, "group": group, "apps": apps or ["*"]}
    response = client.post("/client", files={"profile": ("p.json", json.dumps(profile), "application/json")})
    assert response.status_code == 200, response.text
    registered: dict[str, Any] = response.json()["data"]
    return registered


def checkout(client: TestClient, client_id: str = "c1") -> dict[str, Any] | None:
    """One workunit for this client, or None when the server has nothing for it (400)."""
    response = client.get(f"/work?client={client_id}")
    if response.status_code == 400:
        return None
    assert response.status_code == 200, response.text
    workunit: dict[str, Any] = response.json()["data"]
    return workunit


def report(
    client: TestClient,
    work_id: str,
    client_id: str = "c1",
    status: str = "done",
    files: dict[str, Any] | None = None,
) -> None:
    """PUT /work/<id>?status=...; with ``files`` the report is multipart (perf, stdout, stderr, ...)."""
    query = f"status={status}&client={client_id}" + ("&report" if files else "")
    response = client.put(f"/work/{work_id}?{query}", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == "ok"


def queued_workunits(client: TestClient, job_id: str | None = None) -> list[dict[str, Any]]:
    response = client.get("/work?state=queued&limit=1000")
    assert response.status_code == 200, response.text
    work: list[dict[str, Any]] = response.json()["data"]
    return [w for w in work if job_id is None or w["jobid"] == job_id]


def run_job(
    client: TestClient,
    job_id: str,
    client_id: str = "c1",
    *,
    after_each: Callable[[str, str], None] | None = None,
    max_steps: int = 1000,
) -> list[str]:
    """Check out and complete workunits until the job is completed; returns the workunit ids run.

    ``after_each(event, work_id)`` is called after every checkout (``"checkout"``) and report
    (``"done"``), so a test can watch states change. The client must be registered.
    """
    done: list[str] = []
    for _ in range(max_steps):
        if get_job(client, job_id)["state"] == "completed":
            return done
        workunit = checkout(client, client_id)
        assert workunit is not None, f"job {job_id} is not completed but no work is available"
        if after_each:
            after_each("checkout", workunit["id"])
        report(client, workunit["id"], client_id)
        done.append(workunit["id"])
        if after_each:
            after_each("done", workunit["id"])
    raise AssertionError(f"job {job_id} did not complete within {max_steps} workunits")


def complete_job(client: TestClient, document: dict[str, Any], client_id: str = "c1") -> dict[str, Any]:
    """Submit a job and run it to completion with a (possibly already registered) client."""
    register(client, client_id)
    job = submit(client, document)
    run_job(client, job["id"], client_id)
    return get_job(client, job["id"])
