from __future__ import annotations

from fastapi.testclient import TestClient

from tests.jobs import diamond, upload


def test_submit_then_get_shows_the_job_queued_with_its_first_task_queued(client: TestClient) -> None:
    submitted = client.post("/job", files=upload(diamond()))
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["data"]
    fetched = client.get(f"/job/{job['id']}").json()["data"]
    assert fetched["state"] == "queued"
    assert [t["state"] for t in fetched["tasks"]] == ["queued", "pending", "pending", "pending"]
    assert fetched["tasks"][3]["dependsOn"] == [f"{job['id']}_1", f"{job['id']}_2"]
