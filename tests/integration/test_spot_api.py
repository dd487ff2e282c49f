"""Spot protection on the server, through the HTTP API (SQLite and PostgreSQL): preempted work goes
back ahead of new work with its checkpoint, reports are fenced by the lease and checked at the door,
restores and refusals are accounted per job, and the server's checkpoint store keeps only what is
still of use."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from perdure.api.app import create_app
from perdure.settings import Settings
from perdure.spot.manifest import Identity
from perdure.spot.snapshot import Snapshotter
from tests.integration.drive import checkout, get_job, register, report, submit
from tests.jobs import script, task


def reference(name: str = "000001-a1", progress: float = 42.0) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "workdir",
        "kind": "iterative",
        "created": time.time(),
        "progress_s": progress,
        "size": 1000,
        "checksum": "a" * 64,
        "attempt": 1,
    }


def preempt(client: TestClient, wu_id: str, client_id: str, preemption: dict[str, Any]) -> None:
    files = {"preemption": ("p.json", json.dumps(preemption), "application/json")}
    response = client.put(f"/work/{wu_id}?status=preempted&client={client_id}", files=files)
    assert response.status_code == 200, response.text


def post(client: TestClient, path: str, client_id: str, record: Any) -> Any:
    body = record if isinstance(record, str) else json.dumps(record)
    return client.post(f"{path}?client={client_id}", content=body)


def events(client: TestClient, job_id: str) -> list[tuple[str, str]]:
    return [(e["code"], e["message"]) for e in get_job(client, job_id, "?report")["events"]]


def test_preempted_work_goes_back_ahead_of_new_work_with_its_checkpoint(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    old = submit(client, script(task("t"), priority=1))["id"]
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == old and work["checkpoint"] is None
    assert work["ckpt"]["ckptMode"] == "iterative"  # the system's settings come with the work
    newer = submit(client, script(task("t"), priority=50))["id"]

    ref = reference()
    assert post(client, f"/work/{work['id']}/checkpoints", "c1", {"ok": True, **ref}).status_code == 200
    preempt(client, work["id"], "c1", {"outcome": "final", "checkpoint": ref, "detail": "final taken"})
    assert get_job(client, old)["state"] == "in-progress"
    listed = client.get("/work?state=preempted").json()["data"]
    assert [w["id"] for w in listed] == [work["id"]]

    again = checkout(client, "c2")
    assert again is not None and again["id"] == work["id"]  # before the newer, higher-priority job
    assert again["checkpoint"]["name"] == "000001-a1" and again["attempt"] == 2
    restored = {"ok": True, "name": "000001-a1", "saved_s": 42.0, "duration_s": 0.5, "size": 1000}
    assert post(client, f"/work/{work['id']}/restores", "c2", restored).status_code == 200
    report(client, work["id"], "c2")
    assert get_job(client, old)["state"] == "completed"
    assert checkout(client, "c1")["jobid"] == newer  # type: ignore[index]

    summary = get_job(client, old, "?report")["spot"]
    assert summary["preemptions"] == 1 and summary["spotProtection"] == 1
    assert summary["timeSaved"] == 42.0 and summary["restoreFailures"] == 0
    codes = [code for code, _ in events(client, old)]
    assert "SP" in codes and "SR" in codes


def test_preemption_without_a_checkpoint_restarts_from_zero_and_is_not_a_failure(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, script(task("t")))["id"]
    work = checkout(client, "c1")
    assert work is not None
    post(client, f"/work/{work['id']}/checkpoints", "c1", {"ok": True, **reference()})
    preempt(client, work["id"], "c1", {"outcome": "none", "detail": "ckptMode none"})
    again = checkout(client, "c1")
    assert again is not None and again["checkpoint"] is None and again["failed"] == 0
    assert any("from zero" in message for code, message in events(client, job_id) if code == "SP")


def test_a_refused_checkpoint_is_never_offered_again(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, script(task("t")))["id"]
    work = checkout(client, "c1")
    assert work is not None
    preempt(client, work["id"], "c1", {"outcome": "final", "checkpoint": reference(), "detail": "taken"})
    checkout(client, "c1")
    refused = {"ok": False, "name": "000001-a1", "reason": "chunk 1234 is corrupt"}
    assert post(client, f"/work/{work['id']}/restores", "c1", refused).status_code == 200
    assert client.get(f"/work/{work['id']}").json()["data"]["checkpoint"] is None
    assert get_job(client, job_id, "?report")["spot"]["restoreFailures"] == 1
    assert any(code == "SF" and "corrupt" in message for code, message in events(client, job_id))


def test_a_failure_drops_the_checkpoint_so_the_retry_starts_clean(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    submit(client, script(task("t")))
    work = checkout(client, "c1")
    assert work is not None
    post(client, f"/work/{work['id']}/checkpoints", "c1", {"ok": True, **reference()})
    assert client.get(f"/work/{work['id']}").json()["data"]["checkpoint"]["name"] == "000001-a1"
    report(client, work["id"], "c1", status="fail")
    retry = checkout(client, "c2")
    assert retry is not None and retry["id"] == work["id"] and retry["checkpoint"] is None


def test_only_the_lease_holder_may_report_checkpoints(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    submit(client, script(task("t")))
    work = checkout(client, "c1")
    assert work is not None
    path = f"/work/{work['id']}/checkpoints"
    assert post(client, path, "c2", {"ok": True, **reference()}).status_code == 409
    assert post(client, f"/work/{work['id']}/restores", "c2", {"ok": True}).status_code == 409
    assert post(client, "/work/nope_t_0/checkpoints", "c1", {"ok": False}).status_code == 404
    assert client.post(path, content="{}").status_code == 400  # no client


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("not json", "invalid checkpoint record"),
        ({"ok": True, "name": "../../x"}, "name"),
        ({"ok": True, "size": -1}, "size"),
        ({"ok": True, "duration_s": "NaN"}, "duration_s"),
        ({"ok": True, "surprise": 1}, "surprise"),
        ([1, 2], "invalid checkpoint record"),
    ],
)
def test_bad_checkpoint_records_are_refused_with_a_reason(
    client: TestClient, record: Any, message: str
) -> None:
    register(client, "c1")
    submit(client, script(task("t")))
    work = checkout(client, "c1")
    assert work is not None
    response = post(client, f"/work/{work['id']}/checkpoints", "c1", record)
    assert response.status_code == 400
    assert message in response.json()["error"][0]
    assert client.get(f"/work/{work['id']}").json()["data"]["checkpoint"] is None


def test_a_bad_preemption_report_changes_nothing(client: TestClient) -> None:
    register(client, "c1")
    submit(client, script(task("t")))
    work = checkout(client, "c1")
    assert work is not None
    files = {"preemption": ("p.json", '{"outcome": "vanished"}', "application/json")}
    response = client.put(f"/work/{work['id']}?status=preempted&client=c1", files=files)
    assert response.status_code == 400 and "outcome" in response.json()["error"][0]
    assert client.get(f"/work/{work['id']}").json()["data"]["state"] == "checkout"


@pytest.fixture
def quick_ttl(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "ttl", db_url=db_url, sweep_interval_s=0.2, node_ttl_s=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_work_of_a_lost_node_is_restored_from_its_last_checkpoint(quick_ttl: TestClient) -> None:
    """No notice at all (the machine just vanished): the iterative checkpoint still saves the work."""
    client = quick_ttl
    register(client, "c1")
    submit(client, script(task("t")))
    work = checkout(client, "c1")
    assert work is not None
    post(client, f"/work/{work['id']}/checkpoints", "c1", {"ok": True, **reference()})
    deadline = time.monotonic() + 15
    while client.get(f"/work/{work['id']}").json()["data"]["state"] != "preempted":
        assert time.monotonic() < deadline, "the lost client's work was not handed back"
        time.sleep(0.2)
    register(client, "c2")
    again = checkout(client, "c2")
    assert again is not None and again["checkpoint"]["name"] == "000001-a1"


# ---- the server's checkpoint store ----------------------------------------------------------------


def store_path(client: TestClient) -> Path:
    return Path(client.app.state.ctx.checkpoints.root)  # type: ignore[attr-defined]


class HttpStoreForTest:
    """The worker's view of the server's store, over the test client."""

    def __init__(self, client: TestClient, client_id: str) -> None:
        self.client, self.client_id = client, client_id

    def has_chunk(self, job_id: str, workunit: str, digest: str) -> bool:
        return self.client.head(f"/work/{workunit}/ckpt/chunks/{digest}?client={self.client_id}").is_success

    def put_chunk(self, job_id: str, workunit: str, digest: str, data: bytes) -> int:
        response = self.client.put(
            f"/work/{workunit}/ckpt/chunks/{digest}?client={self.client_id}", content=data
        )
        assert response.status_code == 200, response.text
        return int(response.json()["data"]["written"])

    def put_manifest(self, job_id: str, workunit: str, manifest: Any) -> int:
        data = manifest.to_bytes()
        url = f"/work/{workunit}/ckpt/manifests/{manifest.name}?client={self.client_id}"
        assert self.client.put(url, content=data).status_code == 200
        return len(data)


def test_the_server_store_checks_what_it_keeps_and_serves_only_the_lease_holder(
    client: TestClient, tmp_path: Path
) -> None:
    register(client, "c1")
    register(client, "c2")
    job_id = submit(client, script(task("t")))["id"]
    work = checkout(client, "c1")
    assert work is not None
    wu = work["id"]
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "state.bin").write_bytes(b"state" * 1000)
    identity = Identity(job_id, "t", 0, wu, 1)
    taken = Snapshotter(HttpStoreForTest(client, "c1"), identity, "workdir").take(  # type: ignore[arg-type]
        tmp_path / "w", kind="iterative", progress_s=3
    )
    digest = next(iter(taken.manifest.chunks))
    base = f"/work/{wu}/ckpt"
    assert client.get(f"{base}/chunks/{digest}?client=c1").content == b"state" * 1000
    assert client.get(f"{base}/chunks/{digest}?client=c2").status_code == 409
    assert client.get(f"{base}/chunks/{'0' * 64}?client=c1").status_code == 404
    wrong = client.put(f"{base}/chunks/{'0' * 64}?client=c1", content=b"not that")
    assert wrong.status_code == 400 and "digest" in wrong.json()["error"][0]
    assert client.put(f"{base}/chunks/xyz?client=c1", content=b"x").status_code == 400
    manifest = client.get(f"{base}/manifests/{taken.manifest.name}?client=c1")
    assert manifest.status_code == 200 and json.loads(manifest.content)["name"] == taken.manifest.name
    tampered = manifest.content.replace(b'"progress_s":3', b'"progress_s":4')
    bad = client.put(f"{base}/manifests/{taken.manifest.name}?client=c1", content=tampered)
    assert bad.status_code == 400 and "checksum" in bad.json()["error"][0]
    assert hashlib.sha256(b"state" * 1000).hexdigest() == digest

    assert client.delete(f"{base}?client=c1").status_code == 200
    assert client.get(f"{base}/manifests/{taken.manifest.name}?client=c1").status_code == 404


def test_the_sweep_deletes_checkpoints_of_finished_jobs_unless_kept_to_diagnose(
    client: TestClient,
) -> None:
    register(client, "c1")
    kept = submit(client, script(task("t"), userattr={"diagnosisMode": "true"}))["id"]
    dropped = submit(client, script(task("t")))["id"]
    running = submit(client, script(task("t")))["id"]
    root = store_path(client)
    for job_id in (kept, dropped, running, "00000000-0000-0000-0000-000000000000"):
        (root / job_id / "w").mkdir(parents=True)
    for _ in range(2):
        work = checkout(client, "c1")
        assert work is not None
        report(client, work["id"], "c1")
    deadline = time.monotonic() + 10
    while (root / dropped).exists() or (root / "00000000-0000-0000-0000-000000000000").exists():
        assert time.monotonic() < deadline, "the sweep left checkpoints of finished or unknown jobs"
        time.sleep(0.1)
    assert (root / kept).exists() and (root / running).exists()
    assert client.delete(f"/job/{kept}?full").status_code == 200
    assert not (root / kept).exists()


def test_nodes_learn_which_jobs_checkpoints_are_of_no_more_use(client: TestClient) -> None:
    """What a node collecting a shared checkpoint store asks before deleting anything."""
    register(client, "c1")
    kept = submit(client, script(task("t"), userattr={"diagnosisMode": True}))["id"]
    done = submit(client, script(task("t")))["id"]
    waiting = submit(client, script(task("t")))["id"]
    for _ in range(2):
        work = checkout(client, "c1")
        assert work is not None
        report(client, work["id"], "c1")
    unknown = "00000000-0000-0000-0000-000000000000"
    jobs = ",".join([kept, done, waiting, unknown])
    response = client.get(f"/checkpoints/collectable?jobs={jobs}")
    assert response.status_code == 200
    assert sorted(response.json()["data"]) == sorted([done, unknown])
    too_many = ",".join(["x"] * 501)
    assert client.get(f"/checkpoints/collectable?jobs={too_many}").status_code == 400
