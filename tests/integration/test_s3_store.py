"""Data and checkpoints in an S3 bucket (issue 21), end to end: a real server configured with
``store.s3.*`` and real workers, against moto's S3 in server mode on loopback (started here; nothing
leaves the machine: every client is pointed at it, with dummy credentials and instance metadata off).

The server hands workers presigned URLs, so inputs and outputs go between the workers and the bucket
directly: the server's data directory holds no blob afterwards, and its data-store counters
(``GET /api/v1/store``) show it received no upload and read only the small windows the splitter scans
to cut an input on record boundaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.integration import test_spot_e2e as spot
from tests.integration.cluster import Api, Cluster, sh, squares_job
from tests.jobs import script, upload
from tests.support import ServerProcess, wait_for

BUCKET = "perdure-test"
PREFIX = "perdure"
#: Dummy credentials, no instance metadata: boto3 never reaches real AWS nor 169.254.169.254.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
#: What the splitter may read of the input at each cut (split.py's scan window).
SCAN_BYTES = 64 * 1024
WAIT_S = 90.0


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for bucket in (BUCKET, "user-inputs"):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
    return client


def server_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **AWS_ENV,
        "PERDURE_CFG_store__s3__bucket": BUCKET,
        "PERDURE_CFG_store__s3__prefix": PREFIX,
        "PERDURE_CFG_store__s3__endpoint": endpoint,
        "PERDURE_CFG_store__s3__region": "us-east-1",
        **extra,
    }


def worker_env(endpoint: str) -> dict[str, str]:
    return {**AWS_ENV, "PERDURE_WORKER_S3_ENDPOINT": endpoint}


def s3_cluster(
    cluster: Cluster, endpoint: str, slots: int = 1, **server_extra: str
) -> tuple[ServerProcess, Api]:
    """A server whose data store is the bucket, and one worker ``w1`` with its own S3 credentials."""
    server, api, _ = cluster.start(
        server_env(endpoint, **server_extra), (("w1", slots),), worker_env(endpoint)
    )
    return server, api


def objects(s3: Any, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


def keys(s3: Any, prefix: str) -> list[str]:
    """The keys alone: a running worker replaces its checkpoints, so a key listed may be gone by the
    time its body would be read."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def store_status(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/store", timeout=10.0)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def test_a_split_dag_runs_with_its_data_only_in_the_bucket(
    cluster: Cluster, moto_endpoint: str, s3: Any
) -> None:
    server, api = s3_cluster(cluster, moto_endpoint, slots=2)
    count = 200_000
    job_id = api.submit(squares_job(count))
    api.wait_job(job_id, timeout=WAIT_S)

    stored = objects(s3, f"{PREFIX}/jobs/{job_id}/")
    by_task: dict[str, list[tuple[str, bytes]]] = {}
    for key, data in stored.items():
        task = key.split("/")[3]
        by_task.setdefault(task, []).append((key, data))
    assert len(by_task["square"]) == 4  # one part per workunit, each a ranged read of numbers.txt
    squares = b"".join(data for _, data in sorted(by_task["square"], key=lambda kd: int(kd[0].split("/")[4])))
    assert squares == b"".join(f"{n * n}\n".encode() for n in range(1, count + 1))
    (total,) = [data for _, data in by_task["sum"]]
    assert int(total) == sum(n * n for n in range(1, count + 1))

    # The server's outputs listing points at the bucket's bytes (sizes and checksums as recorded).
    listed = {o["filename"]: o for o in api.data("GET", f"/job/{job_id}/outputs")}
    assert listed["total.txt"]["size"] == len(total)

    # No blob in the server's data directory, no upload received, and of numbers.txt (1.3 MB) only
    # the windows at the three cuts were read, by ranged GETs (split.py scans 64 KiB for a line end).
    data_dir = server.data_dir
    assert not (data_dir / "blobs" / "jobs").exists(), files_under(data_dir)
    assert not [name for name in files_under(data_dir) if name.endswith(".txt")], files_under(data_dir)
    # Nor was any data route used: the workers only recorded what they put into the bucket.
    access = (data_dir / "logs" / "perdure-access.log").read_text()
    assert access.count('"POST /work/') == 6, access  # numbers.txt, 4 parts of squares.txt, total.txt
    assert not re.findall(r'"(?:GET|PUT) /(?:job|work)/[^"]*/output/', access), access
    status = store_status(server.url)
    assert status["kind"] == "s3" and status["bucket"] == BUCKET
    assert status["bytesReceived"] == 0
    numbers_size = len(dict(by_task["generate"]).popitem()[1])
    assert status["bytesRead"] <= 1 + 3 * SCAN_BYTES < numbers_size  # its first byte: the record kind


def test_s3_inputs_are_staged_by_the_worker_with_its_own_credentials(
    cluster: Cluster, moto_endpoint: str, s3: Any
) -> None:
    """An input and a predata file (reference data, fetched once per node) named by s3:// URLs."""
    s3.put_object(Bucket="user-inputs", Key="reads/sample.txt", Body=b"alpha\nbeta\ngamma\n")
    s3.put_object(Bucket="user-inputs", Key="ref/ref.txt", Body=b"ref\n")
    _, api = s3_cluster(cluster, moto_endpoint)
    job_id = api.submit(
        script(
            sh(
                "count",
                "cat ref.txt sample.txt | wc -l > lines.txt",
                inputs=[{"filename": "sample.txt", "url": "s3://user-inputs/reads/sample.txt"}],
                predata=[{"filename": "ref.txt", "url": "s3://user-inputs/ref/ref.txt"}],
                outputs=[{"filename": "lines.txt"}],
            )
        )
    )
    api.wait_job(job_id, timeout=WAIT_S)
    (lines,) = objects(s3, f"{PREFIX}/jobs/{job_id}/count/").values()
    assert lines.strip() == b"4"


def test_a_missing_s3_input_fails_the_work_with_a_clear_message(
    cluster: Cluster, moto_endpoint: str, s3: Any
) -> None:
    _, api = s3_cluster(cluster, moto_endpoint, PERDURE_MAX_WORK_FAILURE="1")
    job_id = api.submit(
        script(
            sh(
                "count",
                "wc -l < in.txt",
                inputs=[{"filename": "in.txt", "url": "s3://user-inputs/no/such/key.txt"}],
            )
        )
    )
    job = wait_for(
        lambda: (j := api.job(job_id))["state"] in ("suspend", "failed-permanent") and j,
        WAIT_S,
        "the job to be suspended",
        cluster.diagnostics,
    )
    assert "s3://user-inputs/no/such/key.txt" in json.dumps(job["error"]), job["error"]


def register(url: str, client_id: str) -> None:
    profile = {"id": client_id, "group": "default", "apps": ["*"]}
    files = {"profile": ("p.json", json.dumps(profile), "application/json")}
    response = httpx.post(f"{url}/client", files=files, timeout=10.0)
    assert response.status_code == 200, response.text


def test_presigned_urls_are_bound_to_the_lease(cluster: Cluster, moto_endpoint: str, s3: Any) -> None:
    """A checkout carries URLs to the bucket; what is put there is part of the job only if the server
    records it while the lease holds. After the lease ends, recording and renewing are refused (409)."""
    server = cluster.server(server_env(moto_endpoint, PERDURE_CFG_store__s3__presignExpiry="60"))
    api = cluster.api(server)
    job_id = api.submit(script(sh("make", "true", outputs=[{"filename": "out.txt"}])))
    register(server.url, "c1")
    http = httpx.Client(base_url=server.url, timeout=10.0)
    reply = http.get("/work", params={"client": "c1"})
    assert reply.status_code == 200, reply.text
    wu = reply.json()["data"]
    presigned = wu["presigned"]
    assert presigned["expires_in"] == 60  # store.s3.presignExpiry: S3 refuses the URL after that
    target = presigned["outputs"]["out.txt"]
    assert target["key"].startswith(f"jobs/{job_id}/make/0/@")
    assert target["url"].startswith(moto_endpoint) and "X-Amz-Expires=60&" in target["url"]

    # The bytes go to the bucket, not the server.
    data = b"hello\n"
    digest = hashlib.sha256(data).hexdigest()
    assert httpx.put(target["url"], content=data).status_code == 200
    path = f"/work/{wu['id']}/output/out.txt"
    record = {"client": "c1", "key": target["key"], "size": str(len(data)), "sha256": digest}

    # Bad records are 4xx, never 500: a key not handed out, a wrong size, a missing object, bad digest.
    for bad, status in (
        ({"key": f"jobs/{job_id}/other/0/@{'0' * 32}/out.txt"}, 400),
        ({"key": f"jobs/{job_id}/make/0/out.txt"}, 400),
        ({"size": "5"}, 400),
        ({"sha256": "xyz"}, 400),
        ({"key": f"jobs/{job_id}/make/0/@{'1' * 32}/out.txt"}, 404),
        ({"client": "someone-else"}, 409),
    ):
        answer = http.post(path, params={**record, **bad})
        assert answer.status_code == status, (bad, answer.text)
        assert answer.json()["error"], answer.text  # AWE's envelope

    renewed = http.get(f"/work/{wu['id']}/presigned", params={"client": "c1"})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["data"]["outputs"]["out.txt"]["key"] != target["key"]  # a fresh key each time

    # The lease ends (the client leaves; the work is queued again): the upload can no longer be recorded.
    assert http.delete("/client/c1").status_code == 200
    late = http.post(path, params=record)
    assert late.status_code == 409, late.text
    assert http.get(f"/work/{wu['id']}/presigned", params={"client": "c1"}).status_code in (409, 404)
    assert api.data("GET", f"/job/{job_id}/outputs") == []

    # A new holder gets its own key: the stale upload cannot overwrite what it will record.
    register(server.url, "c2")
    again = http.get("/work", params={"client": "c2"}).json()["data"]
    assert again["presigned"]["outputs"]["out.txt"]["key"] != target["key"]
    http.close()


def test_s3_settings_are_validated(cluster: Cluster, moto_endpoint: str, s3: Any) -> None:
    """``store.s3.*`` goes through configKV like any setting: bad values are refused with a 4xx."""
    server = cluster.server(server_env(moto_endpoint))
    for key, value in (
        ("store.s3.presignExpiry", "5"),
        ("store.s3.presignExpiry", "86400"),
        ("store.s3.endpoint", "ftp://x"),
        ("store.s3.bucket", "Not A Bucket"),
        ("store.s3.prefix", "a/../b"),
    ):
        response = httpx.put(f"{server.url}/api/v1/configKV", json={"kvMap": {key: value}}, timeout=10.0)
        assert 400 <= response.status_code < 500, (key, value, response.text)
    config = httpx.get(f"{server.url}/api/v1/config", timeout=10.0).json()
    assert config["store"]["s3"]["bucket"] == BUCKET
    assert "secret" not in json.dumps(config["store"]).lower()


def test_an_output_is_delivered_to_the_users_bucket_by_the_worker(
    cluster: Cluster, moto_endpoint: str, s3: Any
) -> None:
    """``deliverto``: the worker copies the recorded output to the user's own location (the server
    keeps its data directory store and has no AWS credentials); a bad location is refused at submit."""
    server = cluster.server(start=False)
    cluster.worker(server.url, "w1", env=worker_env(moto_endpoint))
    server.start()
    api = cluster.api(server)
    url = "s3://user-inputs/results/run 1/result.txt"
    job_id = api.submit(
        script(
            sh(
                "make",
                "seq 1 1000 > result.txt",
                outputs=[{"filename": "result.txt", "deliverto": url}],
            )
        )
    )
    api.wait_job(job_id, timeout=WAIT_S)
    expected = b"".join(f"{n}\n".encode() for n in range(1, 1001))
    body = s3.get_object(Bucket="user-inputs", Key="results/run 1/result.txt")["Body"].read()
    assert body == expected
    assert api.download(job_id, "make", "result.txt").content == expected  # recorded as always
    work = api.only_workunit(job_id)
    perf = api.data("GET", f"/job/{job_id}?perf")["work_stats"][work["id"]]
    assert perf["delivered_to"] == {"result.txt": url}, perf
    notes = httpx.get(f"{server.url}/work/{work['id']}", params={"report": "worknotes"}, timeout=10.0)
    assert url in notes.text, notes.text

    for location, says in (
        ("s3://Bad_Bucket/x.txt", "not a valid S3 bucket name"),
        ("s3://user-inputs/", "names no key"),
        ("https://user-inputs/x.txt", "not an s3:// location"),
    ):
        bad = script(sh("make", "true", outputs=[{"filename": "r.txt", "deliverto": location}]))
        response = httpx.post(f"{server.url}/job", files=upload(bad), timeout=10.0)
        assert response.status_code == 400, response.text
        answer = response.json()
        assert answer["status"] == 400 and answer["data"] is None, answer
        assert "deliverto" in answer["error"][0] and says in answer["error"][0], answer


def test_a_delivery_to_a_missing_bucket_fails_the_work_with_s3s_message(
    cluster: Cluster, moto_endpoint: str, s3: Any
) -> None:
    server = cluster.server({"PERDURE_MAX_WORK_FAILURE": "1"}, start=False)
    cluster.worker(server.url, "w1", env=worker_env(moto_endpoint))
    server.start()
    api = cluster.api(server)
    url = "s3://no-such-bucket-here/result.txt"
    job_id = api.submit(
        script(sh("make", "echo hi > result.txt", outputs=[{"filename": "result.txt", "deliverto": url}]))
    )
    job = wait_for(
        lambda: (j := api.job(job_id))["state"] in ("suspend", "failed-permanent") and j,
        WAIT_S,
        "the job to be suspended",
        cluster.diagnostics,
    )
    error = json.dumps(job["error"])
    assert url in error and "NoSuchBucket" in error, job["error"]
    # The output was recorded before the copy was tried, and stays in Perdure's store.
    assert api.download(job_id, "make", "result.txt").content == b"hi\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x"]))


@pytest.mark.timeout(240)
# Pairwise, not all four: the bucket path does not depend on the database (the hand-over's database
# side is test_spot_e2e's, on both), and each run is a 30 s program.
@pytest.mark.parametrize(
    ("db_url", "through"),
    [("sqlite", "server"), pytest.param("postgresql", "worker", marks=pytest.mark.postgres)],
    indirect=["db_url"],
)
def test_a_hand_over_checkpoint_goes_through_the_bucket(
    cluster: Cluster, moto_endpoint: str, s3: Any, through: str
) -> None:
    """Worker 1 is drained: its final checkpoint goes into the bucket, and worker 2 restores it from
    there and finishes; the server keeps no checkpoint on disk. ``server``: the workers send checkpoints
    to the server, whose checkpoint store is the bucket; ``worker``: ``ckpt.ckptImagePath`` is
    ``s3://bucket/prefix`` and the workers write the bucket themselves (the server sees no chunk)."""
    steps = 300  # 30 s: the drain comes well before the program could finish on a loaded machine
    step_log = cluster.base / "steps.log"
    extra = {"PERDURE_CFG_ckpt__ckptImagePath": f"s3://{BUCKET}/{PREFIX}"} if through == "worker" else {}
    server = cluster.server({**spot.SERVER_ENV, **server_env(moto_endpoint, **extra)}, start=False)
    w1 = cluster.worker(server.url, "w1", env={**spot.WORKER_ENV, **worker_env(moto_endpoint)})
    server.start()
    api = cluster.api(server)
    job_id = api.submit(spot.counter_job(steps, step_log))
    wu_id = spot.the_workunit(api, job_id, cluster)
    spot.running_on(api, wu_id, w1, cluster)
    spot.checkpointed(api, wu_id, cluster)
    manifests = [k for k in keys(s3, f"{PREFIX}/checkpoints/{job_id}/") if "/manifests/" in k]
    assert manifests, "the iterative checkpoint is not in the bucket"
    w2 = cluster.worker(server.url, "w2", env={**spot.WORKER_ENV, **worker_env(moto_endpoint)})
    spot.registered(api, w2, cluster)

    spot.drain(w1)
    spot.left(w1, cluster)
    api.wait_job(job_id, timeout=spot.WAIT_S)
    _first, second = spot.check_steps(step_log, steps, program_runs=2)
    assert second[0] > 1, "worker 2 started from zero instead of restoring"
    (out,) = objects(s3, f"{PREFIX}/jobs/{job_id}/count/").values()
    assert out == spot.expected_output(steps)
    assert not (server.data_dir / "checkpoints").exists()
    document = spot.report(api, job_id)
    (restored,) = spot.messages(document, "SR")
    assert "restored from checkpoint" in restored
    chunk_routes = re.findall(
        r'"\w+ /work/[^"]*/ckpt/chunks/', (server.data_dir / "logs" / "perdure-access.log").read_text()
    )
    assert bool(chunk_routes) == (through == "server"), chunk_routes
