"""The Python SDK against a real server process and a real worker: every ``Client`` method once, with
what a caller sees (typed objects, one exception family, outputs byte for byte).

One server (SQLite) and one two-slot worker serve the module; jobs meant to stay queued go to a client
group no worker serves, so tests do not wait on each other.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from perdure import Client, Workflow
from perdure.sdk import ApiError, BadRequestError, Job, NotFoundError, PerdureError, ServerUnavailable
from tests.integration.workerprocess import WorkerProcess
from tests.support import ServerProcess, free_port

pytestmark = pytest.mark.timeout(300)

#: A group no worker of the module serves: jobs sent there stay queued.
PARKED = "parked"


@dataclass
class Stack:
    server: ServerProcess
    worker: WorkerProcess
    client: Client


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("sdk")
    server = ServerProcess(base / "server", f"sqlite:///{base / 'p.db'}").start()
    worker = WorkerProcess(base, server.url, slots=2).start()
    client = Client(server.url)
    try:
        deadline = time.monotonic() + 60
        while len(client.clients(group="default")) < 2:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        yield Stack(server, worker, client)
    finally:
        client.close()
        worker.stop()
        server.stop()


def squares(name: str = "squares", n: int = 1000) -> Workflow:
    flow = Workflow(name, project="sdk-test", pipeline="squares", user="tester")
    gen = flow.task("generate", "sh", "-c", f"seq 1 {n} > numbers.txt", outputs=["numbers.txt"])
    square = flow.task(
        "square",
        "sh",
        "-c",
        "awk '{ print $1 * $1 }' numbers.txt > squares.txt; echo squared >&2",
        inputs=[gen.output("numbers.txt")],
        outputs=["squares.txt"],
        split=3,
    )
    flow.task(
        "sum",
        "sh",
        "-c",
        "awk '{ s += $1 } END { print s }' squares.txt > total.txt; echo summed",
        inputs=[square.output("squares.txt")],
        outputs=["total.txt"],
    )
    return flow


def parked_job(client: Client, name: str = "parked") -> Job:
    flow = Workflow(name, project="sdk-parked", clientgroups=PARKED)
    flow.task("only", "true")
    return client.submit(flow)


# ---- the server --------------------------------------------------------------------------------------


def test_info_and_openapi(stack: Stack) -> None:
    info = stack.client.info()
    assert info.database == "sqlite" and info.version and info.uptime_seconds > 0
    assert "/job" in stack.client.openapi()["paths"]


# ---- a job from start to finish ----------------------------------------------------------------------


def test_a_workflow_runs_and_its_outputs_download(stack: Stack, tmp_path: Path) -> None:
    client = stack.client
    seen: list[tuple[str, tuple[int, ...]]] = []
    job = client.submit(squares("run-me"))
    assert job.state in ("queued", "in-progress", "init") and [t.name for t in job.tasks] == [
        "generate",
        "square",
        "sum",
    ]
    final = job.wait(120, poll=0.2, progress=lambda j: seen.append((j.state, tuple(t.done for t in j.tasks))))
    assert final.completed_ok and final.finished
    assert seen[-1] == ("completed", (1, 3, 1))
    assert final.task("square").totalwork == 3

    expected = sum(i * i for i in range(1, 1001))
    outputs = {(o.task, o.filename): o for o in final.outputs()}
    assert set(outputs) == {("generate", "numbers.txt"), ("square", "squares.txt"), ("sum", "total.txt")}
    assert len(outputs["square", "squares.txt"].parts) == 3
    assert client.read_output(job.id, "sum", "total.txt") == f"{expected}\n".encode()
    assert client.read_output(job.id, "generate", "numbers.txt", offset=2, length=3) == b"2\n3"
    buffer = io.BytesIO()
    size = client.download_output(job.id, "square", "squares.txt", buffer)
    assert size == outputs["square", "squares.txt"].size == len(buffer.getvalue())
    assert buffer.getvalue().split() == [str(i * i).encode() for i in range(1, 1001)]

    paths = final.download(tmp_path / "all")
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in paths) == [
        "generate/numbers.txt",
        "square/squares.txt",
        "sum/total.txt",
    ]
    assert (tmp_path / "all" / "sum" / "total.txt").read_text() == f"{expected}\n"
    assert final.download(tmp_path / "one", task="sum") == [tmp_path / "one" / "sum" / "total.txt"]
    with pytest.raises(PerdureError, match="no output"):
        final.download(tmp_path / "none", filename="missing.txt")

    # Logs, by task and rank or by workunit id, and the job's report and timings.
    assert final.logs("sum") == "summed\n"
    assert client.task_log(job.id, "square", rank=2, kind="stderr") == "squared\n"
    report = final.report()
    assert [t.state for t in report.tasks] == ["completed"] * 3
    assert {w.rank for w in report.tasks[1].workunits} == {1, 2, 3}
    assert report.tasks[2].workunits[0].logs["stdout"] == "summed\n"
    assert report.events
    perf = client.job_perf(job.id)
    assert set(perf["task_stats"]) == {t.id for t in final.tasks}
    workunit = client.workunit(f"{job.id}_square_2")
    assert (workunit.job_id, workunit.task, workunit.rank, workunit.state) == (job.id, "square", 2, "done")
    assert client.workunit_log(workunit.id, "stderr") == "squared\n"
    done = client.workunits(states=["done"], limit=1000)
    assert workunit.id in {w.id for w in done} and done.total >= 5

    # Listing: query filters, minimal documents, distinct values.
    page = client.jobs(project="sdk-test", states=["completed"], limit=50)
    assert job.id in {j.id for j in page} and all(j.project == "sdk-test" for j in page)
    assert page.total == len(page.items)
    minimal = client.jobs(project="sdk-test", minimal=True)
    assert next(j for j in minimal if j.id == job.id).state == "completed"
    assert "sdk-test" in client.distinct("project")
    assert client.jobs(name="no-such-job-name").items == []


def test_a_failing_job_says_which_task_failed_and_can_be_run_again(stack: Stack) -> None:
    client = stack.client
    flow = Workflow("fails", project="sdk-test")
    flow.task("ok", "true")
    flow.task("boom", "sh", "-c", "echo it broke >&2; exit 42", after=[flow.tasks[0]])
    final = client.submit(flow).wait(60, poll=0.2)
    assert final.state == "failed-permanent" and not final.completed_ok
    failed = final.failed_task()
    assert failed is not None and failed.name == "boom"
    assert "it broke" in final.error["apperror"]
    assert client.task_log(final.id, "boom", kind="stderr") == "it broke\n"
    # Resubmit and recompute put the job back in the queue; it fails the same way again.
    events = len(final.report().events)
    assert client.resubmit_job(final.id)
    assert client.job(final.id).wait(60, poll=0.2).state == "failed-permanent"
    assert len(final.report().events) > events
    events = len(final.report().events)
    client.recompute_task(final.id, "boom")
    assert client.job(final.id).task("ok").state == "completed"  # only boom (and after) runs again
    assert client.job(final.id).wait(60, poll=0.2).state == "failed-permanent"
    assert len(final.report().events) > events


def test_operations_on_a_queued_job(stack: Stack) -> None:
    client = stack.client
    job = parked_job(client)
    assert client.job_position(job.id) >= 1
    client.suspend_job(job.id)
    assert client.job(job.id).state == "suspend"
    assert job.id in {j.id for j in client.jobs(suspended=True, limit=100)}
    assert job.id not in {j.id for j in client.jobs(active=True, limit=100)}
    resumed = client.job(job.id).resume()
    assert resumed.state in ("queued", "in-progress")
    client.set_priority(job.id, 7)
    client.set_pipeline(job.id, "renamed")
    client.set_clientgroup(job.id, f"{PARKED},{PARKED}-2")
    with pytest.raises(BadRequestError, match="expiration applies to completed"):
        client.set_expiration(job.id, "3D")
    client.set_datatoken(job.id, "secret-token-value")
    changed = client.job(job.id)
    assert changed.pipeline == "renamed"
    assert changed.raw["info"]["priority"] == 7
    assert changed.raw["info"]["clientgroups"] == f"{PARKED},{PARKED}-2"
    assert "secret-token-value" not in json.dumps(changed.raw)
    assert job.id in {j.id for j in client.jobs(registered=True, limit=100)}
    client.delete_job(job.id)
    assert client.job(job.id).state == "deleted"
    client.set_expiration(job.id, "3D")
    assert client.job(job.id).raw["expiration"] != changed.raw["expiration"]
    client.delete_job(job.id, full=True)
    with pytest.raises(NotFoundError) as caught:
        client.job(job.id)
    assert caught.value.status == 404 and caught.value.payload["error"]

    # The operations on every job answer with the server's message.
    other = parked_job(client, "to-suspend")
    other.suspend()
    assert isinstance(client.resume_all_jobs(), str)
    assert client.job(other.id).state != "suspend"
    assert isinstance(client.recover_all_jobs(), str)
    other.suspend()
    assert isinstance(client.delete_suspended_jobs(), str)
    assert client.job(other.id).state == "deleted"
    assert isinstance(client.delete_zombie_jobs(), str)


def test_submit_takes_a_file_text_bytes_or_a_document(stack: Stack, tmp_path: Path) -> None:
    client = stack.client
    document = Workflow("forms", project="sdk-forms", clientgroups=PARKED)
    document.task("t", "true")
    path = document.save(tmp_path / "job.json")
    jobs = [
        client.submit(path),
        client.submit(path.read_text()),
        client.submit(path.read_bytes()),
        client.submit(document.to_dict()),
        client.submit(str(path)),
    ]
    assert {j.name for j in jobs} == {"forms"} and len({j.id for j in jobs}) == 5
    with pytest.raises(BadRequestError, match="no tasks"):
        client.submit({"info": {"name": "empty"}, "tasks": []})
    with pytest.raises(PerdureError, match="cannot read job script"):
        client.submit(tmp_path / "missing.json")
    for job in jobs:
        job.delete(full=True)


# ---- clients, client groups, the queue -------------------------------------------------------------


def test_clients_and_client_groups(stack: Stack) -> None:
    client = stack.client
    slots = client.clients(group="default")
    ids = set(stack.worker.client_ids())
    assert {c.id for c in slots} == ids
    one = client.client(sorted(ids)[0])
    assert (
        one.group == "default" and one.node_id == stack.worker.node_id() and one.status in ("online", "busy")
    )
    client.suspend_client(one.id)
    assert client.client(one.id).suspended
    assert one.id in {c.id for c in client.clients(status="suspended")}
    client.resume_client(one.id)
    assert not client.client(one.id).suspended
    assert isinstance(client.suspend_all_clients(), str)
    assert all(c.suspended for c in client.clients())
    assert isinstance(client.resume_all_clients(), str)
    assert not any(c.suspended for c in client.clients())

    group = client.create_clientgroup("sdk-group")
    assert group.name == "sdk-group" and group.token
    assert "sdk-group" in {g.name for g in client.clientgroups()}
    assert client.clientgroup("sdk-group").has_token and client.clientgroup("sdk-group").token is None
    renewed = client.new_clientgroup_token(group.id)
    assert renewed.token and renewed.token != group.token
    client.revoke_clientgroup_token("sdk-group")
    assert not client.clientgroup("sdk-group").has_token
    client.delete_clientgroup("sdk-group")
    with pytest.raises(NotFoundError):
        client.clientgroup("sdk-group")

    summary = client.queue()
    assert summary.clients["total"] >= 2 and "total" in summary.jobs
    assert "total clients" in client.queue_text()


def test_the_worker_protocol(stack: Stack, tmp_path: Path) -> None:
    client = stack.client
    proto = client.worker
    group = "sdk-proto"
    registered = proto.register({"id": "sdk-proto-1", "name": "proto", "group": group, "apps": ["*"]})
    assert registered["id"] == "sdk-proto-1"
    assert proto.checkout("sdk-proto-1", wait_s=0.2) is None  # nothing for this group yet
    flow = Workflow("proto", project="sdk-test", clientgroups=group)
    flow.task("t", "true", outputs=["out.txt"])
    job = client.submit(flow, datatoken="the-data-token")
    workunit = proto.checkout("sdk-proto-1", wait_s=5, available=10**9)
    assert workunit is not None and workunit["jobid"] == job.id
    assert proto.secret(workunit["id"], "sdk-proto-1", "datatoken") == "the-data-token"
    assert json.loads(proto.secret(workunit["id"], "sdk-proto-1", "privateenv")) == {}
    instructions = proto.heartbeat("sdk-proto-1", [workunit["id"]])
    assert {"ckpt", "heartbeat", "ttl"} <= set(instructions)
    output = tmp_path / "out.txt"
    output.write_bytes(b"made by the protocol\n")
    stored = proto.upload_output(workunit["id"], "sdk-proto-1", "out.txt", output)
    assert stored["size"] == output.stat().st_size
    stdout = tmp_path / "stdout.txt"
    stdout.write_text("hello from stdout\n")
    proto.report(workunit["id"], "sdk-proto-1", "done", 3, {"stdout": stdout, "stderr": b"err\n"})
    finished = client.job(job.id).wait(30, poll=0.2)
    assert finished.completed_ok
    assert client.read_output(job.id, "t", "out.txt") == b"made by the protocol\n"
    assert client.workunit_log(workunit["id"], "stdout") == "hello from stdout\n"
    assert client.workunit_log(workunit["id"], "stderr") == "err\n"

    node = proto.put_node("sdk-node-1", {"hostName": "proto-host", "cores": 3}, ["/var/log/proto.log"])
    assert node["hostName"] == "proto-host"
    proto.put_node_file("sdk-node-1", "/var/log/proto.log", b"line one\nline two\n")
    assert client.node_files("sdk-node-1") == ["/nodes/sdk-node-1/var/log/proto.log"]
    assert client.node_file("sdk-node-1", "/var/log/proto.log") == "line one\nline two\n"
    assert client.node_file("sdk-node-1", "/nodes/sdk-node-1/var/log/proto.log") == "line one\nline two\n"
    with pytest.raises(NotFoundError):
        client.node_file("sdk-node-1", "/etc/passwd")

    proto.deregister("sdk-proto-1")
    with pytest.raises(NotFoundError):
        client.client("sdk-proto-1")
    other = proto.register({"id": "sdk-proto-2", "group": group})
    assert client.delete_client(other["id"])
    with pytest.raises(NotFoundError):
        client.client("sdk-proto-2")


def test_nodes(stack: Stack) -> None:
    client = stack.client
    node_id = stack.worker.node_id()
    nodes = {n.id: n for n in client.nodes()}
    assert node_id in nodes and nodes[node_id].cores > 0 and nodes[node_id].hostname
    log_path = f"/nodes/{node_id}{stack.worker.workpath / 'logs' / 'worker.log'}"
    assert log_path in client.node_files(node_id)
    deadline = time.monotonic() + 30
    while True:
        try:
            text = client.node_file(node_id, log_path)
            break
        except NotFoundError:
            assert time.monotonic() < deadline, "the worker shipped no log"
            time.sleep(0.3)
    assert isinstance(text, str)


# ---- configuration, security, logs, metrics -----------------------------------------------------


def test_configuration_security_and_logs(stack: Stack) -> None:
    client = stack.client
    assert client.config().get("node.heartbeat") == "30s"
    changed = client.set_config({"job.diskSizeGB": "123"})
    assert changed.get("job.diskSizeGB") == 123 == client.config().get("job.diskSizeGB")
    with pytest.raises(BadRequestError) as refused:
        client.set_config({"bogus.key": "1"})
    assert refused.value.status == 422 and "bogus.key" in refused.value.fields
    with pytest.raises(KeyError):
        client.config().get("no.such.key")

    assert client.log_config().level
    updated = client.set_log_config(max_backups=4, level="info")
    assert (updated.max_backups, updated.level) == (4, "info") == (client.log_config().max_backups, "info")

    security = client.security()
    assert security.enabled is False and security.admin_groups == ["admin"]
    with pytest.raises(BadRequestError) as no_token:
        client.enable_security(client_id="app", region="us-west-1", user_pool_id="us-west-1_x")
    assert "token" in no_token.value.fields
    assert client.disable_security().get("security.cognito.enabled") is False

    assert "PUT /api/v1/configKV" in client.server_log(access=True)
    assert isinstance(client.server_log(), str)


def test_metrics(stack: Stack) -> None:
    client = stack.client
    client.submit(squares("for-metrics", 10)).wait(60, poll=0.2)
    definitions = client.metric_definitions()
    assert any(d["id"] == "metricDef-jobSubmitted.system-total" for d in definitions)
    series = client.metric_values("system-total", "metricDef-jobSubmitted", interval="1m")
    assert series.interval == "1m0s" and sum(p.value or 0 for p in series.points) >= 1
    summary = client.metrics_summary()
    assert "jobSubmitted" in summary["items"]
    assert "perdure_" in client.prometheus()
    with pytest.raises(NotFoundError):
        client.metric_values("system-total", "metricDef-noSuchMetric")


def test_install_worker_script(stack: Stack) -> None:
    script = stack.client.install_worker_script(group="gpu")
    assert script.startswith("#!/bin/sh") and "gpu" in script
    with pytest.raises(BadRequestError):
        stack.client.install_worker_script(group="bad group!")


# ---- failures -------------------------------------------------------------------------------------


def test_errors_are_one_family(stack: Stack) -> None:
    client = stack.client
    with pytest.raises(NotFoundError, match="404"):
        client.job("00000000-0000-0000-0000-000000000000")
    with pytest.raises(PerdureError, match="invalid job id"):
        client.job("../queue")
    with pytest.raises(ApiError) as bad:
        client.jobs(limit=0)
    assert bad.value.status == 400 and "limit" in bad.value.message
    nowhere = Client(f"http://127.0.0.1:{free_port()}", retries=1)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="cannot reach") as down:
        nowhere.info()
    assert down.value.retryable and time.monotonic() - started < 5
    nowhere.close()


def test_from_config_reads_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("PERDURE_LOGIN_FILE", raising=False)
    monkeypatch.setenv("PERDURE_SERVER", stack.server.url)
    with Client.from_config() as client:
        assert client.url == stack.server.url and client.info().database == "sqlite"
    assert httpx.get(stack.server.url + "/", timeout=30).status_code == 200
