"""Spot protection end to end: a real ``perdure server``, real ``perdure worker`` processes and a long-running
program that saves its own state (``tests/programs/counter.py``), checkpointed by the ``workdir`` engine.

An interruption notice (a spot ``instance-action`` from a local IMDSv2 stand-in, SIGTERM to the worker,
or ``perdure worker drain``) makes the worker hand its work over with a final checkpoint, and the next
worker restores it and goes on where it stopped. Every test checks the user-visible outcome: the output is
byte-for-byte that of an uninterrupted run, the step log shows how much work was done twice, and the
job's ``?report`` events, its ``spot`` summary and the metrics API say what happened.

The first test runs on SQLite and PostgreSQL (``db_url``); the others, which exercise the worker side,
on SQLite only.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.imds import TOKEN, ImdsStandIn
from tests.integration.cluster import Api, Cluster, server_time
from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script
from tests.support import ServerProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
COUNTER = ROOT / "tests" / "programs" / "counter.py"
STEP_S = 0.1
INTERVAL_S = 2.0
STEPS_PER_INTERVAL = round(INTERVAL_S / STEP_S)
#: A long TTL: these tests hand work over on notices, never by losing a client.
SERVER_ENV = {"PERDURE_NODE_TTL_S": "30", "PERDURE_SWEEP_INTERVAL_S": "0.3"}
#: No `criu check` at start-up (CRIU is not usable here), and a quick metadata poll.
WORKER_ENV = {"PERDURE_WORKER_CHECKPOINT_ENGINE": "workdir", "PERDURE_WORKER_IMDS_POLL_S": "0.5"}
WAIT_S = 60.0


# ---- the counter program -----------------------------------------------------------------------------------


def expected_output(steps: int) -> bytes:
    """What counter.py writes when it runs uninterrupted: the fold of every step into a SHA-256."""
    digest = hashlib.sha256(b"start").hexdigest()
    for step in range(1, steps + 1):
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
    return f"{steps} {digest}\n".encode()


def counter_job(
    steps: int,
    step_log: Path,
    *,
    userattr: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    task = {
        "taskid": "count",
        "cmd": {
            "name": sys.executable,
            "args_array": [str(COUNTER), str(steps), str(STEP_S), "out.txt"],
            "environ": {"public": {"COUNTER_STEP_LOG": str(step_log), **(environ or {})}},
        },
        "outputs": [{"filename": "out.txt"}],
    }
    return script(task, userattr={"ckptInterval": f"{INTERVAL_S:g}s", **(userattr or {})})


def read_steps(step_log: Path) -> list[tuple[int, int]]:
    """(step, pid) of every step executed, in order."""
    if not step_log.exists():
        return []
    steps = []
    for line in step_log.read_text().splitlines():
        words = line.split()
        if len(words) == 3:
            steps.append((int(words[0]), int(words[2])))
    return steps


def runs(step_log: Path) -> list[tuple[int, list[int]]]:
    """The steps of each run of the program (one process each), in the order they ran."""
    by_pid: dict[int, list[int]] = {}
    for step, pid in read_steps(step_log):
        by_pid.setdefault(pid, []).append(step)
    return list(by_pid.items())


def redone(step_log: Path) -> int:
    """Steps executed more than once: work lost to the interruptions."""
    steps = [step for step, _ in read_steps(step_log)]
    return len(steps) - len(set(steps))


def check_steps(step_log: Path, total: int, program_runs: int) -> list[list[int]]:
    """Every step ran, in ``program_runs`` processes each going on from where the last one stopped (or
    from the checkpoint before); the steps of each run."""
    found = runs(step_log)
    assert len(found) == program_runs, found
    assert {step for step, _ in read_steps(step_log)} == set(range(1, total + 1))
    for _, steps in found:
        assert steps == list(range(steps[0], steps[0] + len(steps))), steps
    return [steps for _, steps in found]


def run_steps(step_log: Path, run: int, cluster: Cluster, at_least: int = 1) -> None:
    """Wait until the ``run``-th process of the program (0 = the first) has done ``at_least`` steps."""
    wait_for(
        lambda: len(found := runs(step_log)) > run and len(found[run][1]) >= at_least,
        WAIT_S,
        f"run {run} of the program to do {at_least} step(s)",
        cluster.diagnostics,
    )


# ---- the cluster -------------------------------------------------------------------------------------------


@pytest.fixture
def imds() -> Iterator[ImdsStandIn]:
    with ImdsStandIn() as stand_in:
        yield stand_in


def start(
    cluster: Cluster, server_env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None
) -> tuple[ServerProcess, Api, WorkerProcess]:
    """A server and its first worker (started together: their start-ups overlap)."""
    server = cluster.server({**SERVER_ENV, **(server_env or {})}, start=False)
    first = add_worker(cluster, server, "w1", worker_env)
    server.start()
    return server, cluster.api(server), first


def add_worker(
    cluster: Cluster, server: ServerProcess, label: str, env: dict[str, str] | None = None
) -> WorkerProcess:
    return cluster.worker(server.url, label, env={**WORKER_ENV, **(env or {})})


def registered(api: Api, worker: WorkerProcess, cluster: Cluster) -> None:
    wait_for(
        lambda: set(worker.client_ids()) <= api.client_ids(),
        WAIT_S,
        f"worker {worker.label} to register",
        cluster.diagnostics,
    )


def the_workunit(api: Api, job_id: str, cluster: Cluster) -> str:
    work = wait_for(lambda: api.workunits(job_id), WAIT_S, f"the workunit of {job_id}", cluster.diagnostics)
    assert len(work) == 1, work
    return str(work[0]["id"])


def running_on(api: Api, wu_id: str, worker: WorkerProcess, cluster: Cluster) -> float:
    """Wait until the worker holds the workunit; when it checked it out (epoch seconds, the server's
    clock, which is this machine's): the program's run time so far is at most the time since."""

    def check() -> dict[str, Any] | None:
        work = api.workunit(wu_id)
        return work if work["state"] == "checkout" and work["client"] in worker.client_ids() else None

    work = wait_for(check, WAIT_S, f"{wu_id} to run on worker {worker.label}", cluster.diagnostics)
    return server_time(work["checkout_time"])


def checkpointed(api: Api, wu_id: str, cluster: Cluster, kind: str = "iterative") -> dict[str, Any]:
    """The checkpoint the server would restore the workunit from, once there is one of this kind."""
    reference: dict[str, Any] = wait_for(
        lambda: (c := api.workunit(wu_id)["checkpoint"]) and c.get("kind") == kind and c,
        WAIT_S,
        f"a {kind} checkpoint of {wu_id}",
        cluster.diagnostics,
    )
    return reference


def drain(worker: WorkerProcess, deadline_s: float = 20.0) -> tuple[float, float]:
    """``perdure worker drain``; the worker was asked between the two times returned (epoch seconds: the
    command's start-up and exit take a while on a loaded machine)."""
    command = [sys.executable, "-m", "perdure", "worker", "drain", "--workpath", str(worker.workpath)]
    before = time.time()
    result = subprocess.run(
        [*command, "--deadline", str(deadline_s)], capture_output=True, text=True, timeout=60, check=False
    )
    after = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert f"asked worker {worker.pid} " in said, said
    return before, after


def left(worker: WorkerProcess, cluster: Cluster) -> None:
    """The worker handed its work over, deregistered and exited cleanly."""
    wait_for(lambda: not worker.alive(), WAIT_S, f"worker {worker.label} to leave", cluster.diagnostics)
    assert worker.returncode() == 0, cluster.diagnostics()
    assert "drained and left" in worker.log()


def report(api: Api, job_id: str) -> dict[str, Any]:
    document: dict[str, Any] = api.data("GET", f"/job/{job_id}?report")
    return document


def messages(document: dict[str, Any], code: str) -> list[str]:
    return [str(e["message"]) for e in document["events"] if e["code"] == code]


def summary_by_queue(api: Api) -> dict[str, dict[str, float]]:
    """``GET /api/v1/metrics/summary``: metric -> queue -> value."""
    response = api.http.get("/api/v1/metrics/summary")
    assert response.status_code == 200, response.text
    return {
        name: {e["metaData"]["queueName"]: e["point"]["value"] for e in entries}
        for name, entries in response.json()["items"].items()
    }


def checkpoint_name(message: str, pattern: str) -> str:
    found = re.search(pattern, message)
    assert found, f"{pattern!r} not in {message!r}"
    return found.group(1)


def store_files(root: Path, kind: str) -> list[Path]:
    """The ``chunks`` or ``manifests`` files under a checkpoint store directory."""
    return sorted(p for p in root.rglob("*") if p.is_file() and kind in p.relative_to(root).parts)


# ---- 1. the spot notice from instance metadata -------------------------------------------------------------


@pytest.mark.timeout(240)
def test_spot_notice_hands_work_over_with_a_final_checkpoint_and_it_finishes_elsewhere(
    cluster: Cluster, imds: ImdsStandIn
) -> None:
    """An EC2 spot interruption notice on worker 1's instance: worker 1 stops taking work, has the program
    save and exit, takes a final checkpoint, reports the workunit preempted and leaves; worker 2 (which
    has no metadata service) restores it and finishes. Nothing but the step the notice interrupted is
    lost, the output is that of an uninterrupted run, and the protection and the run time it saved are
    counted in the job's report and in the metrics of the job's queue."""
    steps = 150
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster, worker_env={"PERDURE_WORKER_IMDS_ENDPOINT": imds.url})
    job_id = api.submit(counter_job(steps, step_log))
    wu_id = the_workunit(api, job_id, cluster)
    checked_out = running_on(api, wu_id, w1, cluster)
    w2 = add_worker(cluster, server, "w2")  # PERDURE_WORKER_IMDS_ENDPOINT="" (TEST_ENV)
    iterative = checkpointed(api, wu_id, cluster)
    assert (iterative["engine"], iterative["attempt"]) == ("workdir", 1)
    registered(api, w2, cluster)
    assert imds.polls() >= 1, "worker 1 is not polling the instance metadata"

    imds.interrupt(in_s=120)
    wait_for(lambda: not w1.alive(), WAIT_S, "worker 1 to hand over and leave", cluster.diagnostics)
    assert imds.notice_served_at is not None
    worked = imds.notice_served_at - checked_out
    api.wait_job(job_id, timeout=WAIT_S)

    # The output is that of an uninterrupted run; the step log shows who did what.
    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    first, second = check_steps(step_log, steps, program_runs=2)
    assert second[0] > 1, "worker 2 started from zero instead of restoring"
    assert redone(step_log) < STEPS_PER_INTERVAL
    work = api.workunit(wu_id)
    assert work["state"] == "done" and work["client"] in w2.client_ids()

    # Worker 1 handed over because of the notice, then deregistered and exited.
    left(w1, cluster)
    assert "spot interruption notice: terminate" in w1.log()
    assert not set(w1.client_ids()) & api.client_ids()
    assert all(token == TOKEN for method, _, token in imds.seen if method == "GET")  # IMDSv2 sessions

    # The job's report: one preemption with a final checkpoint, restored from that very checkpoint.
    document = report(api, job_id)
    (preempted,) = messages(document, "SP")
    assert "(final)" in preempted and "final checkpoint" in preempted, preempted
    assert w1.client_ids()[0] in preempted
    final = checkpoint_name(preempted, r"will restore from checkpoint (\S+)")
    (restored,) = messages(document, "SR")
    assert checkpoint_name(restored, r"restored from checkpoint (\S+)") == final
    assert w2.client_ids()[0] in restored
    assert not messages(document, "SF") and not messages(document, "CF")
    spot = document["spot"]
    assert spot["preemptions"] == 1 and spot["spotProtection"] == 1, spot
    assert spot["checkpoints"] >= 2 and spot["checkpointFailures"] == 0 and spot["restoreFailures"] == 0
    assert spot["checkpointBytesWritten"] > 0
    # The run time saved is what worker 1 had done when the notice came (plus the step it finished).
    assert len(first) * STEP_S <= spot["timeSaved"] <= worked + 1.0, (spot, worked)
    assert spot["timeSaved"] >= worked - INTERVAL_S - 0.5, (spot, worked)

    # The metrics of the job's queue say the same.
    metrics = summary_by_queue(api)
    assert metrics["spotProtection"]["default"] == 1.0
    assert metrics["timeSaved"]["default"] == pytest.approx(spot["timeSaved"], abs=0.01)

    # The job completed without diagnosisMode: its checkpoints are gone from the server's store.
    wait_for(
        lambda: not (server.data_dir / "checkpoints" / job_id).exists(),
        10,
        "the job's checkpoints to be deleted",
        cluster.diagnostics,
    )


# ---- 2. a notice before the first checkpoint ---------------------------------------------------------------


def _sigterm_early(cluster: Cluster, steps: int, userattr: dict[str, Any]) -> tuple[Api, str, Path, float]:
    """Worker 1 runs the counter (no iterative checkpoint yet) and is sent SIGTERM after 10 steps;
    worker 2 takes the work over. The API, job id, step log, and how long worker 1 had held the work
    when the SIGTERM came (an upper bound of the program's run time)."""
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster)
    job_id = api.submit(counter_job(steps, step_log, userattr=userattr))
    wu_id = the_workunit(api, job_id, cluster)
    checked_out = running_on(api, wu_id, w1, cluster)
    w2 = add_worker(cluster, server, "w2")
    run_steps(step_log, 0, cluster, at_least=10)
    registered(api, w2, cluster)
    assert api.workunit(wu_id)["checkpoint"] is None
    assert w1.proc is not None
    held = time.time() - checked_out
    w1.proc.send_signal(signal.SIGTERM)
    api.wait_job(job_id, timeout=WAIT_S)
    left(w1, cluster)
    assert "SIGTERM received" in w1.log()
    assert api.workunit(wu_id)["client"] in w2.client_ids()
    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    return api, job_id, step_log, held


def test_notice_before_the_first_checkpoint_still_takes_a_final_one(sqlite_cluster: Cluster) -> None:
    """A notice that comes before any iterative checkpoint (interval 1h): the program saves and exits on
    SIGTERM, so the final checkpoint alone is enough; the work goes on elsewhere with nothing redone."""
    steps = 80
    api, job_id, step_log, held = _sigterm_early(sqlite_cluster, steps, {"ckptInterval": "1h"})
    first, second = check_steps(step_log, steps, program_runs=2)
    assert second[0] == first[-1] + 1
    assert redone(step_log) == 0
    document = report(api, job_id)
    (preempted,) = messages(document, "SP")
    assert "(final)" in preempted, preempted
    assert len(messages(document, "SR")) == 1
    spot = document["spot"]
    assert (spot["preemptions"], spot["spotProtection"], spot["checkpoints"]) == (1, 1, 1), spot
    assert len(first) * STEP_S <= spot["timeSaved"] <= held + 1.0, (spot, held)


def test_with_checkpointing_off_a_notice_restarts_the_work_from_zero(sqlite_cluster: Cluster) -> None:
    """ckptMode none: on the notice the program is stopped without a checkpoint; the work starts again
    from zero elsewhere (the event says so), no protection is counted, and the output is still right."""
    steps = 60
    cluster = sqlite_cluster
    api, job_id, step_log, _ = _sigterm_early(cluster, steps, {"ckptMode": "none"})
    first, second = check_steps(step_log, steps, program_runs=2)
    assert second[0] == 1 and redone(step_log) == len(first)
    document = report(api, job_id)
    (preempted,) = messages(document, "SP")
    assert "from zero" in preempted, preempted
    assert not messages(document, "SR") and not messages(document, "SF")
    spot = document["spot"]
    assert (spot["preemptions"], spot["spotProtection"], spot["timeSaved"], spot["checkpoints"]) == (
        1,
        0,
        0.0,
        0,
    ), spot
    assert summary_by_queue(api)["spotProtection"]["default"] == 0.0
    assert not (cluster.servers[0].data_dir / "checkpoints" / job_id).exists()


# ---- 3. the final checkpoint fails -------------------------------------------------------------------------


def test_failed_final_checkpoint_falls_back_to_the_last_iterative_one(sqlite_cluster: Cluster) -> None:
    """A program that ignores SIGTERM and a grace (30 s) longer than the worker's hand-over deadline (6 s):
    the worker gives it 60% of the time left, kills it, counts the final checkpoint as failed, and hands
    the work over with the last iterative checkpoint, within the deadline. The work redone is at most one
    interval plus the grace, and the output is still right."""
    cluster = sqlite_cluster
    steps, handover_s = 150, 6.0
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster, worker_env={"PERDURE_WORKER_HANDOVER_DEADLINE_S": f"{handover_s:g}"})
    environ = {"COUNTER_IGNORE_TERM": "1", "PERDURE_CHECKPOINT_GRACE": "30"}
    job_id = api.submit(counter_job(steps, step_log, environ=environ))
    wu_id = the_workunit(api, job_id, cluster)
    running_on(api, wu_id, w1, cluster)
    w2 = add_worker(cluster, server, "w2")
    checkpointed(api, wu_id, cluster)
    registered(api, w2, cluster)
    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGTERM)
    noticed = time.monotonic()
    wait_for(
        lambda: api.workunit(wu_id)["client"] not in w1.client_ids(),
        WAIT_S,
        "worker 1 to hand the work over",
        cluster.diagnostics,
    )
    assert time.monotonic() - noticed < handover_s + 3.0, "the hand-over overran its deadline"
    api.wait_job(job_id, timeout=WAIT_S)
    left(w1, cluster)

    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    _, second = check_steps(step_log, steps, program_runs=2)
    assert second[0] > 1, "worker 2 started from zero instead of the iterative checkpoint"
    # What ran after the iterative checkpoint was lost: more than nothing (the program kept going through
    # its grace), at most an interval plus the grace (60% of the 6 s deadline), with slack for the load.
    grace_s = handover_s * 0.6
    assert 0 < redone(step_log) <= (INTERVAL_S + grace_s + 1.5) / STEP_S, redone(step_log)

    document = report(api, job_id)
    (preempted,) = messages(document, "SP")
    assert "(iterative)" in preempted and "final checkpoint failed" in preempted, preempted
    assert "did not exit within" in preempted, preempted
    used = checkpoint_name(preempted, r"using checkpoint (\S+)")
    assert used.endswith("-a1")
    assert checkpoint_name(preempted, r"will restore from checkpoint (\S+)") == used
    (restored,) = messages(document, "SR")
    assert checkpoint_name(restored, r"restored from checkpoint (\S+)") == used
    spot = document["spot"]
    assert spot["checkpointFailures"] >= 1, spot
    assert (spot["preemptions"], spot["spotProtection"], spot["restoreFailures"]) == (1, 1, 0), spot


# ---- 4. two interruptions in a row, with a shared checkpoint directory -------------------------------------


@pytest.mark.timeout(240)
def test_two_interruptions_in_a_row_through_a_shared_checkpoint_directory(sqlite_cluster: Cluster) -> None:
    """ckpt.ckptImagePath names a directory every worker sees: checkpoints go there, not to the server.
    Worker 1 is drained, worker 2 restores and is drained in turn, worker 3 restores and finishes. Both
    protections count, the time saved is the sum of both restores' run time, the output is right, and
    the checkpoints are deleted from the shared directory when the work completes."""
    cluster = sqlite_cluster
    steps = 200
    shared = cluster.base / "shared-checkpoints"
    shared.mkdir()
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster, server_env={"PERDURE_CFG_ckpt__ckptImagePath": str(shared)})
    job_id = api.submit(counter_job(steps, step_log))
    wu_id = the_workunit(api, job_id, cluster)
    checked_out1 = running_on(api, wu_id, w1, cluster)
    w2 = add_worker(cluster, server, "w2")
    checkpointed(api, wu_id, cluster)
    assert store_files(shared / job_id, "manifests"), "no checkpoint in the shared directory"
    assert store_files(shared / job_id, "chunks")
    assert not (server.data_dir / "checkpoints" / job_id).exists()
    registered(api, w2, cluster)
    asked1 = drain(w1)

    checked_out2 = running_on(api, wu_id, w2, cluster)
    w3 = add_worker(cluster, server, "w3")
    run_steps(step_log, 1, cluster, at_least=STEPS_PER_INTERVAL // 2)
    left(w1, cluster)
    registered(api, w3, cluster)
    asked2 = drain(w2)
    api.wait_job(job_id, timeout=WAIT_S)
    left(w2, cluster)

    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    first, second, third = check_steps(step_log, steps, program_runs=3)
    assert second[0] > 1 and third[0] > second[0]
    assert redone(step_log) < 2 * STEPS_PER_INTERVAL
    assert api.workunit(wu_id)["client"] in w3.client_ids()

    document = report(api, job_id)
    preempted = messages(document, "SP")
    restored = messages(document, "SR")
    assert len(preempted) == 2 and len(restored) == 2, document["events"]
    assert all("(final)" in m for m in preempted), preempted
    names = [checkpoint_name(m, r"restored from checkpoint (\S+)") for m in restored]
    assert names[0].endswith("-a1") and names[1].endswith("-a2"), names
    spot = document["spot"]
    assert (spot["preemptions"], spot["spotProtection"], spot["restoreFailures"]) == (2, 2, 0), spot
    # The first restore saved worker 1's run time; the second that and worker 2's own.
    low = 2 * (asked1[0] - checked_out1) + (asked2[0] - checked_out2)
    high = 2 * (asked1[1] - checked_out1) + (asked2[1] - checked_out2)
    assert low - 3.0 <= spot["timeSaved"] <= high + 2.0, (spot, low, high)
    assert spot["timeSaved"] >= (2 * len(first) + len(second)) * STEP_S, (spot, len(first), len(second))
    metrics = summary_by_queue(api)
    assert metrics["spotProtection"]["default"] == 2.0
    assert metrics["timeSaved"]["default"] == pytest.approx(spot["timeSaved"], abs=0.01)

    wait_for(
        lambda: not (shared / job_id).exists(),
        10,
        "the checkpoints to be deleted from the shared directory",
        cluster.diagnostics,
    )
    assert not (server.data_dir / "checkpoints" / job_id).exists()


# ---- 5. diagnosisMode --------------------------------------------------------------------------------------


def test_diagnosis_mode_keeps_the_checkpoints_after_completion_and_sweeps(sqlite_cluster: Cluster) -> None:
    """With diagnosisMode the checkpoints stay in the server's store after the work completes, and the
    server's sweep (which does delete those of jobs that are gone) leaves them; deleting the job deletes
    them."""
    cluster = sqlite_cluster
    steps = 60
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster)
    job_id = api.submit(counter_job(steps, step_log, userattr={"diagnosisMode": True}))
    wu_id = the_workunit(api, job_id, cluster)
    running_on(api, wu_id, w1, cluster)
    w2 = add_worker(cluster, server, "w2")
    checkpointed(api, wu_id, cluster)
    registered(api, w2, cluster)
    drain(w1)
    api.wait_job(job_id, timeout=WAIT_S)
    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    check_steps(step_log, steps, program_runs=2)
    assert report(api, job_id)["spot"]["spotProtection"] == 1

    store = server.data_dir / "checkpoints"
    kept = store_files(store / job_id, "manifests") + store_files(store / job_id, "chunks")
    assert store_files(store / job_id, "manifests"), "diagnosisMode: the checkpoints were deleted"
    assert store_files(store / job_id, "chunks")

    # A sweep runs (it collects the checkpoints of a job that does not exist) and keeps this job's.
    stray = store / str(uuid.uuid4()) / "wu" / "manifests" / "000001-a1.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    wait_for(lambda: not stray.exists(), 30, "a sweep to collect stray checkpoints", cluster.diagnostics)
    assert store_files(store / job_id, "manifests") + store_files(store / job_id, "chunks") == kept

    api.data("DELETE", f"/job/{job_id}")
    wait_for(
        lambda: not (store / job_id).exists(), 30, "the deleted job's checkpoints to go", cluster.diagnostics
    )


# ---- 6. a corrupt checkpoint -------------------------------------------------------------------------------


def test_corrupt_checkpoint_is_refused_and_the_work_restarts_from_zero(sqlite_cluster: Cluster) -> None:
    """A checkpoint damaged in the store after the hand-over: the next worker checks every chunk against its
    digest, refuses it (event SF, one restore failure, no protection counted), starts the work from zero
    with a clean work directory, and the output is still right."""
    cluster = sqlite_cluster
    steps = 60
    step_log = cluster.base / "steps.log"
    server, api, w1 = start(cluster)
    job_id = api.submit(counter_job(steps, step_log))
    wu_id = the_workunit(api, job_id, cluster)
    running_on(api, wu_id, w1, cluster)
    checkpointed(api, wu_id, cluster)
    drain(w1)
    left(w1, cluster)
    work = api.workunit(wu_id)
    assert work["state"] == "preempted" and work["checkpoint"]["kind"] == "final", work

    chunks = store_files(server.data_dir / "checkpoints" / job_id, "chunks")
    assert chunks, "no checkpoint chunks in the server's store"
    for chunk in chunks:
        data = bytearray(chunk.read_bytes())
        data[0] ^= 0xFF
        chunk.write_bytes(bytes(data))

    w2 = add_worker(cluster, server, "w2")
    api.wait_job(job_id, timeout=WAIT_S)
    assert api.workunit(wu_id)["client"] in w2.client_ids()
    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    first, second = check_steps(step_log, steps, program_runs=2)
    assert second[0] == 1 and redone(step_log) == len(first), "worker 2 used the corrupt checkpoint"

    document = report(api, job_id)
    (refused,) = messages(document, "SF")
    assert "corrupt" in refused and "starting from zero" in refused, refused
    assert not messages(document, "SR")
    spot = document["spot"]
    assert (spot["preemptions"], spot["spotProtection"], spot["restoreFailures"]) == (1, 0, 1), spot
