"""Task containers end to end: a real ``perdure server``, real ``perdure worker`` processes, real podman
(runc) and real CRIU, on a busybox image made here without any registry.

* a container task runs with its inputs, outputs, exit codes, logs and perf, sees only the command's
  own environment, and its container is gone afterwards;
* an image that cannot be obtained fails the job with the image named; an image archive given by URL
  is loaded;
* a worker that cannot run containers never runs a container task: a capable worker does;
* a container whose program keeps its state only in memory is drained on worker A, restored by the
  ``podman`` engine on worker B (another work path), and its output is that of an uninterrupted run.

Containers run with ``--network none``. Without podman, runc or CRIU these tests are skipped with the
reason, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Api, Cluster, sh
from tests.integration.test_worker_e2e import file_server
from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRIU = ROOT / ".cache" / "criu" / "criu"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "echo", "sleep", "seq", "awk", "wc", "env", "ls", "head", "true")
WAIT_S = 90.0
INTERVAL_S = 4.0
WORKER_ENV = {
    "PERDURE_WORKER_CONTAINER_NETWORK": "none",
    "PERDURE_WORKER_CRIU_PATH": str(CRIU),
    "PERDURE_WORKER_CHECKPOINT_ENGINE": "workdir",
    "PERDURE_WORKER_LEAKED_SECRET": "from-the-worker",
}
#: One failure suspends a job: a failing container task is not retried by the only worker.
SERVER_ENV = {"PERDURE_NODE_TTL_S": "60", "PERDURE_SWEEP_INTERVAL_S": "0.3", "PERDURE_MAX_WORK_FAILURE": "1"}


def _missing() -> str:
    if shutil.which("podman") is None:
        return "podman is not installed"
    if shutil.which("runc") is None:
        return "runc is not installed"
    if not BUSYBOX.is_file():
        return "busybox-static (/bin/busybox) is not installed"
    if not os.access(CRIU, os.X_OK):
        return f"CRIU is not installed in {CRIU.parent} (make install-system)"
    if os.geteuid() != 0:
        return "podman checkpoints need root"
    return ""


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{CRIU.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A busybox image of this test module's own (unique name), removed afterwards."""
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"containers cannot be tested: {missing}")
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "tmp").mkdir()
    name = f"localhost/perdure-test-{uuid.uuid4().hex[:12]}:1"
    with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(
            ["podman", "import", "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert imported.returncode == 0, imported.stderr
    try:
        yield name
    finally:
        for line in podman("ps", "-a", "-q", "--filter", f"ancestor={name}", check=False).stdout.split():
            podman("rm", "-f", "--time", "0", line, check=False)
        podman("rmi", "-f", name, check=False)


def containers_of(image: str) -> list[str]:
    return podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"ancestor={image}").stdout.split()


def start(cluster: Cluster, *workers: tuple[str, dict[str, str]]) -> tuple[Api, list[WorkerProcess]]:
    server = cluster.server(SERVER_ENV, start=False)
    started = [cluster.worker(server.url, label, env={**WORKER_ENV, **env}) for label, env in workers]
    server.start()
    return cluster.api(server), started


def in_container(image: str, taskid: str, command: str, **extra: Any) -> dict[str, Any]:
    task = sh(taskid, command, **extra)
    task["cmd"]["Dockerimage"] = image
    return task


# ---- running ----------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_container_task_runs_with_inputs_outputs_exit_codes_logs_and_perf(
    cluster: Cluster, image: str
) -> None:
    """A host task's output is the container task's input (through the data store); the container
    writes its output in the bind-mounted work directory, its stdout and stderr are the workunit's
    logs, it sees the job's variables but not the worker's, its CPU and memory are in the perf report,
    and no container is left. Exit 42 is failed-permanent, another exit code a failure."""
    api, (worker,) = start(cluster, ("w1", {}))
    job_id = api.submit(
        script(
            sh("numbers", "seq 1 1000 > numbers.txt", outputs=[{"filename": "numbers.txt"}]),
            in_container(
                image,
                "sum",
                "echo to-stdout; echo to-stderr >&2;"
                " awk '{ s += $1 } END { print s }' @numbers.txt > sum.txt;"
                " env > env.txt; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
                inputs=[{"filename": "numbers.txt", "origin": "numbers"}],
                outputs=[{"filename": "sum.txt"}, {"filename": "env.txt"}],
            ),
        )
    )
    api.wait_job(job_id, "completed", timeout=WAIT_S)
    assert api.download(job_id, "sum", "sum.txt").content == b"500500\n"
    seen = api.download(job_id, "sum", "env.txt").text
    assert "PERDURE_TASK_ID=sum" in seen
    assert "from-the-worker" not in seen and "LEAKED_SECRET" not in seen, seen
    work = next(w for w in api.workunits(job_id) if w["id"].endswith("_sum_0"))
    assert api.data("GET", f"/work/{work['id']}?report=stdout") == "to-stdout\n"
    assert api.data("GET", f"/work/{work['id']}?report=stderr") == "to-stderr\n"
    perf = api.data("GET", f"/job/{job_id}?perf")["work_stats"][work["id"]]
    assert perf["exit_code"] == 0
    assert perf["image"] == image
    assert perf["cpu_time"] > 0, perf
    assert perf["max_memory_total_rss"] > 0, perf
    assert containers_of(image) == []

    permanent = api.submit(script(in_container(image, "t", "echo permanent >&2; exit 42")))
    job = api.wait_job(permanent, "failed-permanent", timeout=WAIT_S)
    assert "permanent" in job["error"]["apperror"]
    failing = api.submit(script(in_container(image, "t", "echo boom >&2; exit 3")))
    api.wait_job(failing, "suspend", timeout=WAIT_S)
    assert "exited with 3" in api.job(failing)["error"]["worknotes"]
    assert containers_of(image) == []
    assert worker.alive()


@pytest.mark.timeout(240)
def test_an_image_that_cannot_be_had_fails_the_job_naming_it_and_an_archive_url_is_loaded(
    sqlite_cluster: Cluster, image: str, tmp_path: Path
) -> None:
    cluster = sqlite_cluster
    api, _ = start(cluster, ("w1", {}))
    missing = f"localhost/perdure-missing-{uuid.uuid4().hex[:8]}:1"
    job_id = api.submit(script(in_container(missing, "t", "echo never")))
    job = api.wait_job(job_id, "failed-permanent", timeout=WAIT_S)
    assert missing in job["error"]["worknotes"], job["error"]

    # An image archive served over HTTP: loaded, then run.
    archived = f"localhost/perdure-archive-{uuid.uuid4().hex[:8]}:1"
    archive = tmp_path / "image.tar"
    podman("tag", image, archived)
    try:
        podman("save", "--output", str(archive), archived)
        podman("rmi", archived)
        with file_server({"/image.tar": archive.read_bytes()}) as files:
            loaded = api.submit(
                script(
                    in_container(
                        f"{files.url}/image.tar",
                        "t",
                        "echo loaded > out.txt",
                        outputs=[{"filename": "out.txt"}],
                    )
                )
            )
            api.wait_job(loaded, "completed", timeout=WAIT_S)
            assert files.requests["/image.tar"] == 1
            # An archive that is not there: the job fails naming it.
            broken = api.submit(script(in_container(f"{files.url}/gone.tar", "t", "echo never")))
            notes = api.wait_job(broken, "failed-permanent", timeout=WAIT_S)["error"]["worknotes"]
            assert f"{files.url}/gone.tar" in notes, notes
        assert api.download(loaded, "t", "out.txt").content == b"loaded\n"
        assert podman("image", "exists", archived, check=False).returncode == 0
    finally:
        podman("rmi", "-f", archived, check=False)


@pytest.mark.timeout(240)
def test_a_container_task_waits_for_a_worker_that_can_run_containers(cluster: Cluster, image: str) -> None:
    """Worker 1 has containers off: it runs host work submitted after the container task, never the
    container task (not on the host either); its node record says why. Worker 2 runs it."""
    # (Log shipping often: the node record is sent with it, and retried only then.)
    api, (w1,) = start(
        cluster, ("w1", {"PERDURE_WORKER_CONTAINERS": "off", "PERDURE_WORKER_LOG_SHIP_S": "0.5"})
    )
    boxed = api.submit(
        script(in_container(image, "t", "echo boxed > out.txt", outputs=[{"filename": "out.txt"}]))
    )
    host = api.submit(script(sh("t", "echo host > out.txt", outputs=[{"filename": "out.txt"}])))
    api.wait_job(host, "completed", timeout=WAIT_S)
    assert api.only_workunit(boxed)["state"] == "queued"
    node_id = w1.node_id()
    node = wait_for(
        lambda: next((n for n in api.http.get("/api/v1/node").json() if n["id"] == node_id), None),
        WAIT_S,
        "worker 1's node record",
        cluster.diagnostics,
    )
    assert (node["containers"], node["containerProblem"]) == (
        False,
        "containers are off in the worker settings",
    )
    w2 = cluster.worker(w1.server_url, "w2", env=WORKER_ENV)
    api.wait_job(boxed, "completed", timeout=WAIT_S)
    assert api.download(boxed, "t", "out.txt").content == b"boxed\n"
    assert api.only_workunit(boxed)["client"] in w2.client_ids()


# ---- checkpoint and restore ---------------------------------------------------------------------------


STEPS = 300
STEP_S = 0.1


def expected(steps: int) -> bytes:
    acc = 7
    for i in range(1, steps + 1):
        acc = (acc * 31 + i) % 1000003
    return f"{acc}\n".encode()


def memory_only_program(steps: int) -> str:
    """A shell loop whose state (the step and the accumulator) lives only in memory; it says each step
    on stderr and writes its result only at the end."""
    return (
        f"acc=7; i=0; while [ $i -lt {steps} ]; do i=$((i+1)); acc=$(( (acc * 31 + i) % 1000003 ));"
        f" echo step $i >&2; sleep {STEP_S}; done; echo $acc > result.txt"
    )


@pytest.mark.timeout(300)
def test_container_drained_on_one_worker_is_restored_on_another_and_finishes_identically(
    cluster: Cluster, image: str
) -> None:
    api, (w1,) = start(cluster, ("w1", {}))
    job_id = api.submit(
        script(
            in_container(image, "count", memory_only_program(STEPS), outputs=[{"filename": "result.txt"}]),
            userattr={"ckptInterval": f"{INTERVAL_S:g}s"},
        )
    )
    work = wait_for(lambda: api.workunits(job_id), WAIT_S, "the workunit", cluster.diagnostics)
    wu_id = work[0]["id"]
    reference = wait_for(
        lambda: (c := api.workunit(wu_id)["checkpoint"]) and c.get("kind") == "iterative" and c,
        WAIT_S,
        "an iterative checkpoint",
        cluster.diagnostics,
    )
    assert reference["engine"] == "podman", reference
    w2 = cluster.worker(w1.server_url, "w2", env=WORKER_ENV)
    command = [
        sys.executable,
        "-m",
        "perdure",
        "worker",
        "drain",
        "--workpath",
        str(w1.workpath),
        "--deadline",
        "60",
    ]
    drained = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    wait_for(lambda: not w1.alive(), WAIT_S, "worker 1 to leave", cluster.diagnostics)
    assert w1.returncode() == 0, cluster.diagnostics()
    job = api.wait_job(job_id, "completed", timeout=120)
    assert job["state"] == "completed"
    assert api.download(job_id, "count", "result.txt").content == expected(STEPS)
    final = api.only_workunit(job_id)
    assert final["client"] in w2.client_ids()
    steps = [int(line.split()[1]) for line in api.data("GET", f"/work/{wu_id}?report=stderr").splitlines()]
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps
    redone = len(steps) - len(set(steps))
    assert redone < INTERVAL_S / STEP_S, f"{redone} steps were done twice"
    document = api.data("GET", f"/job/{job_id}?report")
    codes = [e["code"] for e in document["events"]]
    said = "\n".join(f"{e['code']} {e['message']}" for e in document["events"])
    assert "SP" in codes and "SR" in codes and "SF" not in codes, said
    assert document["spot"]["spotProtection"] == 1, document["spot"]
    assert document["spot"]["timeSaved"] > 0, document["spot"]
    assert containers_of(image) == []


@pytest.mark.timeout(300)
def test_a_corrupt_container_checkpoint_is_refused_and_the_work_starts_from_zero(
    sqlite_cluster: Cluster, image: str
) -> None:
    """Worker 1 hands the container over with a final checkpoint; its chunks in the server's store are
    then damaged: worker 2 refuses it (an SF event naming the checkpoint), starts the program from the
    beginning, and the job still completes with the right output."""
    cluster = sqlite_cluster
    steps = 150
    api, (w1,) = start(cluster, ("w1", {}))
    job_id = api.submit(
        script(
            in_container(image, "count", memory_only_program(steps), outputs=[{"filename": "result.txt"}]),
            userattr={"ckptInterval": f"{INTERVAL_S:g}s"},
        )
    )
    work = wait_for(lambda: api.workunits(job_id), WAIT_S, "the workunit", cluster.diagnostics)
    wu_id = work[0]["id"]
    wait_for(
        lambda: (c := api.workunit(wu_id)["checkpoint"]) and c.get("kind") == "iterative",
        WAIT_S,
        "an iterative checkpoint",
        cluster.diagnostics,
    )
    command = [sys.executable, "-m", "perdure", "worker", "drain", "--workpath", str(w1.workpath)]
    drained = subprocess.run(
        [*command, "--deadline", "60"], capture_output=True, text=True, timeout=90, check=False
    )
    assert drained.returncode == 0, drained.stdout + drained.stderr
    wait_for(lambda: not w1.alive(), WAIT_S, "worker 1 to leave", cluster.diagnostics)
    assert api.workunit(wu_id)["state"] == "preempted"
    chunks = [p for p in (cluster.base / "server-data").rglob("*") if p.is_file() and "chunks" in p.parts]
    assert chunks, "no checkpoint chunks in the server's store"
    for chunk in chunks:
        chunk.write_bytes(b"damaged")
    w2 = cluster.worker(w1.server_url, "w2", env=WORKER_ENV)
    api.wait_job(job_id, "completed", timeout=120)
    assert api.download(job_id, "count", "result.txt").content == expected(steps)
    assert api.only_workunit(job_id)["client"] in w2.client_ids()
    document = api.data("GET", f"/job/{job_id}?report")
    said = "\n".join(f"{e['code']} {e['message']}" for e in document["events"])
    codes = [e["code"] for e in document["events"]]
    assert "SF" in codes and "SR" not in codes, said
    assert document["spot"]["spotProtection"] == 0, document["spot"]
    # Started from the beginning: every step once, from step 1, in one run on worker 2.
    logged = [int(line.split()[1]) for line in api.data("GET", f"/work/{wu_id}?report=stderr").splitlines()]
    assert logged == list(range(1, steps + 1))
    assert containers_of(image) == []
