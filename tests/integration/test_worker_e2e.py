"""End to end: real ``perdure server`` and real ``perdure worker`` processes (awe.md §5.3, §1.5).

Every test runs once on SQLite and once on PostgreSQL (``db_url``). Workers heartbeat every 0.5 s and
long-poll for 1 s; servers sweep every 0.3 s with a 2 s client TTL unless a test says otherwise. Waits
poll with deadlines. Commands that outlive a killed worker write their process group id to a file the
``cluster`` fixture kills at teardown.

* the squares example: a 3-task DAG whose middle task is split 4 ways; the parts concatenate in rank
  order, and the output listing's sizes and sha256 match the bytes served;
* failure rules: exit != 0 is retried on another client and suspends the job after
  PERDURE_MAX_WORK_FAILURE failures (stderr in ``error.apperror`` and in the workunit's report), exit 42
  is failed-permanent, a missing or empty-but-``nonzero`` output fails with a worknote naming the file;
* a job suspended while its workunit runs: the heartbeat's ``discard`` kills the process group and no
  report is sent;
* a worker SIGKILLed mid-run: its workunit is re-run by another worker after the TTL;
* a worker started before its server: it keeps retrying, then joins and runs a job;
* a worker SIGTERMed mid-run: it kills its command and deregisters, so the work moves at once;
* a server restarted on its database: running work goes on and is delivered; a different server (new
  ``server-uuid``) on the same address: the worker drops its work and joins afresh;
* a deleted client is told to ``stop`` and stays deleted;
* staging: ``file://`` and ``http://`` inputs, gzip inputs, ``@file`` and ``${VAR}`` in args, public and
  private environment, ``PERDURE_*`` variables, ``userattr.json``, the data token sent to http inputs,
  secrets in no API response, predata fetched once per node.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.cluster import (
    HEARTBEAT_S,
    Api,
    Cluster,
    group_alive,
    read_pids,
    server_time,
    sh,
)
from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
SQUARES = ROOT / "examples" / "squares.json"
SQUARES_TOTAL = 333338333350000


class FileServer:
    """A loopback HTTP server for inputs and predata. It counts the requests for each path and records
    their ``Authorization`` headers; a path in ``tokens`` needs that exact header (else 401)."""

    def __init__(
        self, files: dict[str, bytes], delay_s: float = 0.0, tokens: dict[str, str] | None = None
    ) -> None:
        self.files = files
        self.tokens = tokens or {}
        self.requests: Counter[str] = Counter()
        self.authorization: dict[str, list[str | None]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                owner.requests[path] += 1
                owner.authorization.setdefault(path, []).append(self.headers.get("Authorization"))
                if delay_s:
                    time.sleep(delay_s)
                body = owner.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                if path in owner.tokens and self.headers.get("Authorization") != owner.tokens[path]:
                    self.send_error(401)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@contextlib.contextmanager
def file_server(
    files: dict[str, bytes], delay_s: float = 0.0, tokens: dict[str, str] | None = None
) -> Iterator[FileServer]:
    server = FileServer(files, delay_s, tokens)
    try:
        yield server
    finally:
        server.close()


def long_once(pidfile: Path, marker: Path, output: str = "out.txt") -> str:
    """A command that records its process group, hangs on its first run, and finishes on any later run."""
    return (
        f"echo $$ >> {pidfile}; "
        f"if [ ! -e {marker} ]; then touch {marker}; sleep 300; fi; "
        f"echo ran-again > {output}"
    )


# ---- (a) the squares example ----------------------------------------------------------------------


def test_squares_example_splits_and_concatenates_parts_in_rank_order(cluster: Cluster) -> None:
    _, api, (worker,) = cluster.start(workers=(("w1", 2),))
    job_id = api.submit(json.loads(SQUARES.read_text()))
    job = api.wait_job(job_id, timeout=60)

    tasks = {t["task_name"]: t for t in job["tasks"]}
    assert {name: t["state"] for name, t in tasks.items()} == dict.fromkeys(
        ("generate", "square", "sum"), "completed"
    )
    assert tasks["square"]["totalwork"] == 4
    assert tasks["square"]["remainwork"] == 0

    total = api.download(job_id, "sum", "total.txt").content
    assert int(total) == SQUARES_TOTAL

    # The split: ranks 1..4, contiguous ranges of numbers.txt cut at line starts.
    numbers = api.download(job_id, "generate", "numbers.txt").content
    assert numbers == b"".join(b"%d\n" % i for i in range(1, 100_001))
    square_work = [w for w in api.workunits(job_id) if w["task_name"] == "square"]
    assert [w["rank"] for w in square_work] == [1, 2, 3, 4]
    assert all(w["state"] == "done" for w in square_work)
    offset = 0
    for work in square_work:
        part = work["part"]
        assert part["input"] == "numbers.txt"
        assert part["offset"] == offset
        assert part["offset"] == 0 or numbers[part["offset"] - 1 : part["offset"]] == b"\n"
        offset += part["length"]
    assert offset == len(numbers)

    squares = api.download(job_id, "square", "squares.txt").content
    assert squares == b"".join(b"%d\n" % (i * i) for i in range(1, 100_001))

    # The listing: sizes and sha256 match what the server serves, file by file and part by part.
    listing = {(o["task"], o["filename"]): o for o in api.data("GET", f"/job/{job_id}/outputs")}
    assert set(listing) == {("generate", "numbers.txt"), ("square", "squares.txt"), ("sum", "total.txt")}
    for (taskid, filename), entry in listing.items():
        response = api.download(job_id, taskid, filename)
        body = response.content
        assert entry["size"] == len(body) == int(response.headers["X-Total-Size"])
        assert entry["url"] == f"/job/{job_id}/output/{taskid}/{filename}"
        assert sum(p["size"] for p in entry["parts"]) == len(body)
        position = 0
        for part in entry["parts"]:
            chunk = api.download(job_id, taskid, filename, offset=position, length=part["size"]).content
            assert chunk == body[position : position + part["size"]]
            assert part["sha256"] == hashlib.sha256(chunk).hexdigest()
            position += part["size"]
        if len(entry["parts"]) == 1:
            assert entry["sha256"] == hashlib.sha256(body).hexdigest()
            assert response.headers["X-Checksum-Sha256"] == entry["sha256"]
    assert [p["rank"] for p in listing[("square", "squares.txt")]["parts"]] == [1, 2, 3, 4]
    assert [p["rank"] for p in listing[("generate", "numbers.txt")]["parts"]] == [0]

    # Every workunit sent its perf record from one of this worker's slots.
    perf = api.data("GET", f"/job/{job_id}?perf")
    stats = perf["work_stats"]
    assert len(stats) == 6
    for record in stats.values():
        assert record["client_id"] in worker.client_ids()
        assert record["exit_code"] == 0
        assert record["runtime"] >= 0
    squares_parts = [stats[w["id"]]["size_outfile"] for w in square_work]
    assert squares_parts == [p["size"] for p in listing[("square", "squares.txt")]["parts"]]

    # Work directories are removed after success.
    workdirs = worker.workpath / "work"
    wait_for(
        lambda: not any(workdirs.iterdir()), 10, "the work directories to be removed", cluster.diagnostics
    )


# ---- (b) failure rules ------------------------------------------------------------------------------


def test_failures_retry_on_another_client_then_suspend_or_fail_permanently(cluster: Cluster) -> None:
    # Two failures suspend a workunit's job; a client is only suspended after 10 in a row (not here).
    env = {"PERDURE_MAX_WORK_FAILURE": "2", "PERDURE_MAX_CLIENT_FAILURE": "10"}
    _, api, (worker,) = cluster.start(env, workers=(("w1", 2),))
    boom = api.submit(script(sh("t", "echo boom >&2; exit 3")))
    permanent = api.submit(script(sh("t", "echo permanent >&2; exit 42")))
    missing = api.submit(script(sh("t", "echo nothing", outputs=[{"filename": "result.txt"}])))
    empty = api.submit(
        script(sh("t", ": > result.txt", outputs=[{"filename": "result.txt", "nonzero": True}]))
    )

    # exit 3: failed on both clients (never twice on one), then the job is suspended.
    job = api.wait_job(boom, "suspend")
    error = job["error"]
    assert "boom" in error["apperror"]
    work = api.only_workunit(boom)
    assert error["servernotes"] == (
        f"workunit {work['id']} failed 2 time(s) (last exit code 3)."
        f" Fix the cause, then: perdure job resume {boom}"
    )
    assert error["status"] == "suspend"
    assert "exited with 3" in error["worknotes"]
    assert (work["state"], work["failed"]) == ("suspend", 2)
    assert error["workfailed"] == work["id"]
    assert error["clientfailed"] in worker.client_ids()
    assert "boom" in api.data("GET", f"/work/{work['id']}?report=stderr")
    for client_id in worker.client_ids():
        assert work["id"] in api.data("GET", f"/client/{client_id}")["skip_work"]
    # The work directories of failed attempts are kept for inspection.
    for attempt in (1, 2):
        kept = worker.workpath / "work" / f"{work['id']}-{attempt}" / "awe_stderr.txt"
        assert kept.read_text() == "boom\n"

    # exit 42: failed-permanent at once, no retry.
    job = api.wait_job(permanent, "failed-permanent")
    assert job["error"]["status"] == "failed-permanent"
    assert "permanent" in job["error"]["apperror"]
    assert [t["state"] for t in job["tasks"]] == ["failed-permanent"]
    work = api.only_workunit(permanent)
    assert (work["state"], work["failed"]) == ("failed-permanent", 1)

    # A declared output that was not produced, or is empty though marked nonzero: the workunit fails.
    for job_id, words in ((missing, "not produced"), (empty, "empty")):
        job = api.wait_job(job_id, "suspend")
        notes = job["error"]["worknotes"]
        assert "result.txt" in notes and words in notes, notes
        work = api.only_workunit(job_id)
        assert work["failed"] == 2
        assert "result.txt" in api.data("GET", f"/work/{work['id']}?report=worknotes")
        assert api.data("GET", f"/job/{job_id}/outputs") == []

    # The worker is still healthy and takes new work.
    ok = api.submit(script(sh("t", "echo fine > ok.txt", outputs=[{"filename": "ok.txt"}])))
    api.wait_job(ok)
    assert api.download(ok, "t", "ok.txt").content == b"fine\n"


# ---- (c) discard on suspend -------------------------------------------------------------------------


def test_suspending_a_job_kills_its_running_command_and_nothing_is_reported(cluster: Cluster) -> None:
    _, api, (worker,) = cluster.start()
    pidfile = cluster.pidfile("discard")
    job_id = api.submit(script(sh("t", f"echo $$ >> {pidfile}; sleep 300")))
    pids = wait_for(lambda: read_pids(pidfile), 30, "the command to start", cluster.diagnostics)
    pgid = pids[0]
    assert group_alive(pgid)
    wu_id = api.only_workunit(job_id)["id"]

    api.data("PUT", f"/job/{job_id}?suspend")
    suspended_at = time.monotonic()
    wait_for(
        lambda: not group_alive(pgid), 2 * HEARTBEAT_S + 1.0, "the command to be killed", cluster.diagnostics
    )
    assert time.monotonic() - suspended_at <= 2 * HEARTBEAT_S + 1.0

    wait_for(
        lambda: f"{wu_id} was discarded by the server; not reporting it" in worker.log(),
        10,
        "the worker to drop the workunit",
        cluster.diagnostics,
    )
    job = api.job(job_id)
    assert job["state"] == "suspend"
    assert job["error"]["servernotes"] == "manually suspended"
    report = api.data("GET", f"/job/{job_id}?report")
    (work,) = report["tasks"][0]["workunits"]
    assert (work["state"], work["failed"], work["logs"]) == ("suspend", 0, {})
    assert not [e for e in report["events"] if "fail" in e["message"] or "re-queued" in e["message"]]
    response = api.http.get(f"/work/{wu_id}?report=stderr")
    assert response.status_code == 400
    (client_id,) = worker.client_ids()
    client = api.data("GET", f"/client/{client_id}")
    assert (client["total_failed"], client["total_completed"]) == (0, 0)
    assert client["current_work"]["data"] == []

    # The slot is free again.
    after = api.submit(script(sh("t", "echo next > n.txt", outputs=[{"filename": "n.txt"}])))
    api.wait_job(after)
    assert worker.alive()


# ---- (d) a worker killed mid-run ----------------------------------------------------------------------


def start_two_and_run_long(
    cluster: Cluster, env: dict[str, str], name: str
) -> tuple[Api, str, str, int, WorkerProcess, WorkerProcess]:
    """Two one-slot workers and a one-workunit job that hangs on its first run: returns the API, the job
    and workunit ids, the command's process group, the worker running it and the idle one."""
    _, api, workers = cluster.start(env, workers=(("w1", 1), ("w2", 1)))
    by_client = {w.client_ids()[0]: w for w in workers}
    wait_for(lambda: set(by_client) <= api.client_ids(), 30, "both workers to register", cluster.diagnostics)
    pidfile = cluster.pidfile(name)
    marker = cluster.base / f"{name}.marker"
    job_id = api.submit(script(sh("t", long_once(pidfile, marker), outputs=[{"filename": "out.txt"}])))
    pgid = wait_for(lambda: read_pids(pidfile), 30, "the command to start", cluster.diagnostics)[0]
    work = api.only_workunit(job_id)
    running = by_client[work["client"]]
    (idle,) = (w for w in workers if w is not running)
    return api, job_id, work["id"], pgid, running, idle


def test_workunit_of_a_killed_worker_is_rerun_elsewhere_after_the_ttl(cluster: Cluster) -> None:
    api, job_id, wu_id, _, victim, rescuer = start_two_and_run_long(cluster, {}, "killed")
    (victim_client,) = victim.client_ids()
    (rescuer_client,) = rescuer.client_ids()

    victim.kill()
    last_heartbeat = server_time(api.data("GET", f"/client/{victim_client}")["last_heartbeat"])
    wait_for(
        lambda: api.workunit(wu_id)["client"] == rescuer_client,
        20,
        "the workunit to move to the other worker",
        cluster.diagnostics,
    )
    api.wait_job(job_id)
    work = api.workunit(wu_id)
    assert (work["state"], work["client"], work["attempt"], work["failed"]) == ("done", rescuer_client, 2, 0)
    assert api.download(job_id, "t", "out.txt").content == b"ran-again\n"
    # Re-queued by the sweep once the client had been silent for the TTL (2 s), not before.
    (requeued,) = [
        e for e in api.data("GET", f"/job/{job_id}?report")["events"] if "re-queued" in e["message"]
    ]
    assert f"client {victim_client} lost" in requeued["message"]
    assert server_time(requeued["time"]) - last_heartbeat >= 2.0


def test_worker_restarted_after_a_crash_takes_its_work_back_at_once(cluster: Cluster) -> None:
    server, api, (worker,) = cluster.start({"PERDURE_NODE_TTL_S": "60"})
    node_id = worker.node_id()
    (client_id,) = worker.client_ids()
    pidfile = cluster.pidfile("crashed")
    marker = cluster.base / "crashed.marker"
    job_id = api.submit(script(sh("t", long_once(pidfile, marker), outputs=[{"filename": "out.txt"}])))
    wait_for(lambda: read_pids(pidfile), 30, "the command to start", cluster.diagnostics)
    wu_id = api.only_workunit(job_id)["id"]

    worker.kill()
    # The same workpath: the node id (and so the client id) survives, and re-registering without the
    # workunit in current_work hands it back at once instead of after the 60 s TTL.
    restarted = cluster.worker(server.url, worker.label)
    assert restarted.node_id() == node_id
    api.wait_job(job_id, timeout=30)
    work = api.workunit(wu_id)
    assert (work["state"], work["client"], work["attempt"], work["failed"]) == ("done", client_id, 2, 0)
    assert api.download(job_id, "t", "out.txt").content == b"ran-again\n"


def test_second_worker_on_a_workpath_in_use_refuses_to_start(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    server, _, (first,) = cluster.start()
    first.node_id()
    second = WorkerProcess(cluster.base / "workers", server.url, label=first.label)
    second.log_path = cluster.base / "second.log"
    cluster.workers.append(second)
    second.start()
    wait_for(lambda: not second.alive(), 6, "the second worker to refuse the workpath", cluster.diagnostics)
    assert second.returncode() != 0
    assert first.alive()


# ---- (e) a worker started before its server -------------------------------------------------------------


def test_worker_started_before_the_server_joins_when_it_comes_up(cluster: Cluster) -> None:
    server = cluster.server(start=False)
    worker = cluster.worker(server.url)
    wait_for(
        lambda: worker.log().count("register failed") >= 2,
        20,
        "the worker to retry registering",
        cluster.diagnostics,
    )
    assert worker.alive()
    server.start()
    api = cluster.api(server)
    job_id = api.submit(script(sh("t", "echo late > late.txt", outputs=[{"filename": "late.txt"}])))
    api.wait_job(job_id, timeout=60)
    assert api.download(job_id, "t", "late.txt").content == b"late\n"
    assert api.only_workunit(job_id)["client"] in worker.client_ids()


# ---- (f) SIGTERM hands work back at once --------------------------------------------------------------


def test_sigterm_kills_the_command_and_requeues_its_workunit_at_once(cluster: Cluster) -> None:
    api, job_id, wu_id, pgid, leaver, other = start_two_and_run_long(
        cluster, {"PERDURE_NODE_TTL_S": "60"}, "sigterm"
    )
    (leaver_client,) = leaver.client_ids()
    (other_client,) = other.client_ids()

    terminated_at = time.monotonic()
    assert leaver.stop() == 0, cluster.diagnostics()
    assert not group_alive(pgid), "the worker left its command running"
    wait_for(
        lambda: api.workunit(wu_id)["client"] == other_client,
        10,
        "the workunit to move to the other worker",
        cluster.diagnostics,
    )
    assert time.monotonic() - terminated_at < 10  # far below the 60 s TTL
    api.wait_job(job_id)
    work = api.workunit(wu_id)
    assert (work["state"], work["attempt"], work["failed"]) == ("done", 2, 0)
    assert leaver_client not in api.client_ids()  # deregistered
    assert api.download(job_id, "t", "out.txt").content == b"ran-again\n"


# ---- server restarts, server replacement, client deletion ------------------------------------------------


def test_running_work_survives_a_server_restart_but_not_a_different_server(cluster: Cluster) -> None:
    env = {"PERDURE_NODE_TTL_S": "30"}  # longer than the outage: the lease must survive it
    server, api, (worker,) = cluster.start(env)
    (client_id,) = worker.client_ids()
    pidfile = cluster.pidfile("restart")
    slow = f"echo $$ >> {pidfile}; sleep 3; echo survived > out.txt"
    job_id = api.submit(script(sh("t", slow, outputs=[{"filename": "out.txt"}])))
    wait_for(lambda: read_pids(pidfile), 30, "the command to start", cluster.diagnostics)

    # The same installation (database) comes back on the same port: the work goes on and is delivered.
    server.kill()
    restarted = cluster.server(env, port_of=server)
    api = cluster.api(restarted)
    api.wait_job(job_id)
    work = api.only_workunit(job_id)
    assert (work["state"], work["client"], work["attempt"], work["failed"]) == ("done", client_id, 1, 0)
    assert api.download(job_id, "t", "out.txt").content == b"survived\n"

    # A different installation on that port: the worker drops the work it holds and joins afresh.
    pidfile = cluster.pidfile("replaced")
    job_id = api.submit(script(sh("t", f"echo $$ >> {pidfile}; sleep 300")))
    pgid = wait_for(lambda: read_pids(pidfile), 30, "the command to start", cluster.diagnostics)[0]
    restarted.stop()
    other_db = f"sqlite:///{cluster.base / 'other.db'}"
    other = cluster.server(env, data_dir="other-server", db_url=other_db, port_of=server)
    api = cluster.api(other)
    wait_for(lambda: not group_alive(pgid), 20, "the old command to be killed", cluster.diagnostics)
    assert "server identity changed" in worker.log()
    job_id = api.submit(script(sh("t", "echo fresh > f.txt", outputs=[{"filename": "f.txt"}])))
    api.wait_job(job_id)
    assert api.only_workunit(job_id)["client"] == client_id
    assert worker.alive()


def test_deleted_client_is_told_to_stop_and_stays_deleted(cluster: Cluster) -> None:
    # The default heartbeat (10 s) is longer than the checkout long-poll's re-check (1 s); 3 s is enough.
    server = cluster.server(start=False)
    worker = cluster.worker(
        server.url, env={"PERDURE_WORKER_HEARTBEAT_S": "3", "PERDURE_WORKER_CHECKOUT_WAIT_S": "20"}
    )
    server.start()
    api = cluster.api(server)
    (client_id,) = worker.client_ids()
    wait_for(lambda: client_id in api.client_ids(), 30, "the worker to register", cluster.diagnostics)

    assert api.data("DELETE", f"/client/{client_id}") == f"client deleted: {client_id}"
    wait_for(lambda: not worker.alive(), 7, "the deleted worker to stop", cluster.diagnostics)
    assert client_id not in api.client_ids()


# ---- clientgroup tokens and the --config file -----------------------------------------------------------


def test_worker_with_a_clientgroup_token_from_its_config_file(cluster: Cluster) -> None:
    server = cluster.server({"PERDURE_CLIENT_AUTH_REQUIRED": "true"})
    api = cluster.api(server)
    token = api.data("POST", "/cgroup/lab")["token"]
    config = cluster.base / "worker.toml"
    config.write_text(f'[worker]\ngroup = "lab"\ntoken = "{token}"\napps = ["sh"]\n')
    worker = cluster.worker(server.url, group=None, apps=None, config=config)
    (client_id,) = worker.client_ids()
    wait_for(lambda: client_id in api.client_ids(), 30, "the worker to register", cluster.diagnostics)
    client = api.data("GET", f"/client/{client_id}")
    assert (client["group"], client["apps"]) == ("lab", ["sh"])
    job_id = api.submit(
        script(sh("t", "echo lab > l.txt", outputs=[{"filename": "l.txt"}]), clientgroups="lab")
    )
    api.wait_job(job_id)
    assert api.only_workunit(job_id)["client"] == client_id
    assert api.download(job_id, "t", "l.txt").content == b"lab\n"


def test_worker_refused_by_the_server_exits_with_an_error(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    server = cluster.server({"PERDURE_CLIENT_AUTH_REQUIRED": "true"})
    api = cluster.api(server)
    api.data("POST", "/cgroup/lab")
    wrong = cluster.worker(server.url, "wrong", group="lab", token="not-the-token")
    missing = cluster.worker(server.url, "missing", group="lab")
    for worker, message in ((wrong, "Invalid clientgroup token"), (missing, "No Authorization")):
        wait_for(lambda w=worker: not w.alive(), 30, f"worker {worker.label} to give up", cluster.diagnostics)
        assert message in worker.log()
        assert worker.returncode() != 0, f"worker {worker.label} exited with status 0"


# ---- (g) staging: inputs, args, environment, predata ---------------------------------------------------

STAGE_SCRIPT = (
    'for a in "$@"; do echo "$a"; done > args.txt; '
    "cat local.txt remote.txt packed.txt ref.db > out.txt; "
    'echo "$GREETING" > greeting.txt; '
    'printf %s "$SECRET" | sha256sum | cut -c1-64 > secret.txt; '
    'echo "$PERDURE_JOB_ID $PERDURE_TASK_ID $PERDURE_RANK $PERDURE_TOTALWORK" > ids.txt'
)
#: After the script (``$0`` is "sh"): inputs, an input behind a prefix, predata, a non-input, a variable.
STAGE_ARGS = "@local.txt --in=@remote.txt @ref.db @unknown.txt ${GREETING}"
STAGE_OUTPUTS = ("args.txt", "out.txt", "greeting.txt", "secret.txt", "ids.txt", "userattr.json")


def test_inputs_args_environment_and_predata(cluster: Cluster) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    datatoken = f"tok-{uuid.uuid4().hex}"
    local = cluster.base / "local.txt"
    local.write_text("from a file url\n")
    packed = cluster.base / "packed.gz"
    packed.write_bytes(gzip.compress(b"was gzipped\n"))
    files = {
        "/remote.txt": b"from http\n",
        "/ref.db": b"reference data\n",
        "/private.txt": b"for token holders\n",
    }
    with file_server(files, tokens={"/private.txt": f"OAuth {datatoken}"}) as http:
        # file:// inputs are read only below the roots the worker was given (issue 17).
        server = cluster.server(start=False)
        worker = cluster.worker(server.url, env={"PERDURE_WORKER_ALLOW_FILE_ROOT": str(cluster.base)})
        server.start()
        api = cluster.api(server)
        predata = [{"filename": "ref.db", "url": f"{http.url}/ref.db"}]
        staged = {
            "taskid": "stage",
            "cmd": {
                "name": "sh",
                "args": f"-c '{STAGE_SCRIPT}' sh {STAGE_ARGS}",
                "environ": {"public": {"GREETING": "hello-public"}, "private": {"SECRET": secret}},
            },
            "inputs": [
                {"filename": "local.txt", "url": f"file://{local}"},
                {"filename": "remote.txt", "url": f"{http.url}/remote.txt"},
                {"filename": "packed.txt", "url": f"file://{packed}", "uncompress": "gzip"},
            ],
            "predata": predata,
            "userattr": {"sample": "s1", "shared": "task"},
            "outputs": [{"filename": n} for n in STAGE_OUTPUTS],
        }
        again = sh("again", "cat ref.db > copy.txt", predata=predata, outputs=[{"filename": "copy.txt"}])
        job_id = api.submit(script(staged, again, userattr={"project": "p1", "shared": "job"}))
        # A job with a data token: its http inputs are fetched with "Authorization: OAuth <token>".
        fetch = sh(
            "fetch",
            "cat private.txt > p.txt",
            inputs=[{"filename": "private.txt", "url": f"{http.url}/private.txt"}],
            outputs=[{"filename": "p.txt"}],
        )
        token_job = api.submit(script(fetch), datatoken=datatoken)
        api.wait_job(job_id)
        api.wait_job(token_job)

        def output(taskid: str, name: str) -> str:
            return api.download(job_id, taskid, name).text

        assert output("stage", "out.txt") == "from a file url\nfrom http\nwas gzipped\nreference data\n"
        assert output("again", "copy.txt") == "reference data\n"
        args = output("stage", "args.txt").splitlines()
        assert len(args) == 5, args
        workdir = Path(args[0]).parent
        assert workdir.is_relative_to(worker.workpath / "work")
        assert args[0] == str(workdir / "local.txt")
        assert args[1] == f"--in={workdir / 'remote.txt'}"
        assert args[2] == str(workdir / "ref.db")
        assert args[3] == "@unknown.txt"  # not an input: left alone
        assert args[4] == "hello-public"  # ${VAR} expanded by the worker, not by sh
        assert output("stage", "greeting.txt") == "hello-public\n"
        assert output("stage", "secret.txt").strip() == hashlib.sha256(secret.encode()).hexdigest()
        assert output("stage", "ids.txt") == f"{job_id} stage 0 1\n"
        assert json.loads(output("stage", "userattr.json")) == {
            "project": "p1",
            "sample": "s1",
            "shared": "task",
        }
        assert api.download(token_job, "fetch", "p.txt").content == b"for token holders\n"
        assert http.authorization["/private.txt"] == [f"OAuth {datatoken}"]
        assert http.authorization["/remote.txt"] == [None]  # no token without one on the job
        # Predata once per node, although two workunits used it; inputs once per workunit.
        assert http.requests == Counter({"/ref.db": 1, "/remote.txt": 1, "/private.txt": 1})

    # The private environment and the data token reached the worker but show in no API response.
    stage_task = next(t for t in api.job(job_id)["tasks"] if t["task_name"] == "stage")
    assert stage_task["cmd"]["has_private_env"] is True
    assert "private" not in stage_task["cmd"]["environ"]
    assert api.job(token_job)["info"]["auth"] is True
    node_id = worker.node_id()
    paths = [
        "/",
        "/job?limit=100",
        "/work?limit=1000",
        "/client",
        "/queue",
        "/queue?json",
        "/api/v1/node",
        f"/api/v1/nodes/{node_id}/files",
        f"/nodes/{node_id}{worker.workpath / 'logs' / 'worker.log'}",
    ]
    for job in (job_id, token_job):
        paths += [f"/job/{job}", f"/job/{job}?report", f"/job/{job}?perf", f"/job/{job}/outputs"]
        for work in api.workunits(job):
            paths += [f"/work/{work['id']}"]
            paths += [f"/work/{work['id']}?report={kind}" for kind in ("stdout", "stderr", "worknotes")]
        paths += [entry["url"] for entry in api.data("GET", f"/job/{job}/outputs")]
    paths += [f"/client/{client_id}" for client_id in worker.client_ids()]
    for path in paths:
        response = api.http.get(path)
        for hidden in (secret, datatoken):
            assert hidden not in response.text, path
            assert all(hidden not in value for value in response.headers.values()), path


def test_predata_is_fetched_once_per_node_even_by_concurrent_slots(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    # The reply is slow, so both slots are staging the reference data at the same time.
    with file_server({"/ref.db": b"reference data\n"}, delay_s=1.5) as http:
        _, api, _ = cluster.start(workers=(("w1", 2),))
        predata = [{"filename": "ref.db", "url": f"{http.url}/ref.db"}]
        job_id = api.submit(
            script(
                *(
                    sh(t, "cat ref.db > copy.txt", predata=predata, outputs=[{"filename": "copy.txt"}])
                    for t in ("a", "b")
                )
            )
        )
        api.wait_job(job_id)
        for taskid in ("a", "b"):
            assert api.download(job_id, taskid, "copy.txt").content == b"reference data\n"
        assert http.requests["/ref.db"] == 1
