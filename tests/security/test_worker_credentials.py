"""Issue 17: a user's command never sees the worker's credentials, and reads no local file it was not
allowed to. Real server and worker processes, both databases.

* The command's environment is built from scratch: neither the token's variable nor its value is in
  it, although the worker got its token from the environment; nor are the worker's other settings.
* The token is on no command line (the worker refuses ``--token``), and its value is blanked in the
  worker's own ``/proc/<pid>/environ`` (which a command of the same user, or root, could read).
* A ``--token-file`` must be private (mode 0600) and works.
* ``file://`` inputs are refused without ``--allow-file-root``, and outside the roots given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

from tests.integration.cluster import Cluster, sh
from tests.jobs import script
from tests.support import wait_for

#: The command dumps what it can see of the worker: its environment, the worker's command line and
#: environment through /proc (the worker is its parent).
SNOOP = (
    "env > env.txt; "
    "tr '\\0' ' ' < /proc/$PPID/cmdline > cmdline.txt; "
    "(tr '\\0' '\\n' < /proc/$PPID/environ || echo unreadable) > parent-env.txt 2>/dev/null"
)
#: One failed attempt suspends the job: a refused input cannot succeed on a retry.
ONE_FAILURE = {"PERDURE_MAX_WORK_FAILURE": "1"}
SNOOP_OUTPUTS = [{"filename": name} for name in ("env.txt", "cmdline.txt", "parent-env.txt")]


def secured_server_and_token(cluster: Cluster) -> tuple[object, str]:
    server = cluster.server({"PERDURE_CLIENT_AUTH_REQUIRED": "true"})
    token: str = cluster.api(server).data("POST", "/cgroup/lab")["token"]
    return server, token


def test_the_command_sees_no_worker_token_in_its_environment_argv_or_parent(cluster: Cluster) -> None:
    server, token = secured_server_and_token(cluster)
    api = cluster.api(server)  # type: ignore[arg-type]
    worker = cluster.worker(
        server.url,  # type: ignore[attr-defined]
        group="lab",
        token=token,  # given as PERDURE_WORKER_TOKEN
        env={"PERDURE_TOKEN": token, "UNRELATED_WORKER_SECRET": "not-for-jobs"},
    )
    snoop = sh("snoop", SNOOP, outputs=SNOOP_OUTPUTS)
    snoop["cmd"]["environ"] = {"public": {"JOB_VAR": "mine"}}
    job_id = api.submit(script(snoop, clientgroups="lab"))
    api.wait_job(job_id)
    env = api.download(job_id, "snoop", "env.txt").text
    names = {line.partition("=")[0] for line in env.splitlines()}
    assert token not in env
    assert not names & {"PERDURE_WORKER_TOKEN", "PERDURE_TOKEN", "UNRELATED_WORKER_SECRET"}
    assert not any(n.startswith("PERDURE_WORKER_") for n in names), names  # the worker's settings
    # What the command is documented to get is there.
    assert {"PATH", "PERDURE_JOB_ID", "PERDURE_WORKDIR", "JOB_VAR"} <= names
    assert f"PERDURE_JOB_ID={job_id}" in env.splitlines()
    # The worker's command line (ps, /proc/<pid>/cmdline) has no token, and its environment is sealed.
    cmdline = api.download(job_id, "snoop", "cmdline.txt").text
    assert "perdure" in cmdline and "worker" in cmdline, cmdline
    assert token not in cmdline and "--token" not in cmdline
    parent_env = api.download(job_id, "snoop", "parent-env.txt").text
    assert token not in parent_env  # blanked in place, or unreadable where the command is another user
    assert "UNRELATED_WORKER_SECRET=not-for-jobs" in parent_env or parent_env.strip() == "unreadable"
    assert worker.proc is not None
    assert token not in " ".join(psutil.Process(worker.proc.pid).cmdline())


def test_token_on_the_command_line_is_refused_with_the_way_to_give_it(tmp_path: Path) -> None:
    token = f"name=lab|id={uuid.uuid4()}|sig=abc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    result = subprocess.run(
        [sys.executable, "-m", "perdure", "worker", "--workpath", str(tmp_path), "--token", token],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "300"},
        timeout=60,
    )
    assert result.returncode == 2
    message = " ".join((result.stdout + result.stderr).split())
    assert "--token-file" in message and "PERDURE_WORKER_TOKEN" in message, message
    assert not (tmp_path / "node-id").exists()  # it never started


def test_token_file_must_be_private_and_then_works(cluster: Cluster) -> None:
    server, token = secured_server_and_token(cluster)
    api = cluster.api(server)  # type: ignore[arg-type]
    token_file = cluster.base / "worker.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    url = server.url  # type: ignore[attr-defined]
    loose = cluster.worker(url, "loose", group="lab", extra_args=["--token-file", str(token_file)])
    wait_for(lambda: not loose.alive(), 30, "the worker to refuse its token file", cluster.diagnostics)
    assert loose.returncode() == 2
    assert "chmod 600" in " ".join(loose.log().split())
    token_file.chmod(0o600)
    worker = cluster.worker(url, "private", group="lab", extra_args=["--token-file", str(token_file)])
    job_id = api.submit(
        script(sh("t", "echo ok > o.txt", outputs=[{"filename": "o.txt"}]), clientgroups="lab")
    )
    api.wait_job(job_id)
    assert api.only_workunit(job_id)["client"] in worker.client_ids()


def test_file_inputs_are_refused_without_a_root_and_outside_the_roots(cluster: Cluster) -> None:
    allowed = cluster.base / "shared"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("shared data\n")
    (allowed / "escape").symlink_to(cluster.base)  # a link inside the root leading out of it
    secret = cluster.base / "secret.txt"
    secret.write_text("the worker's own file\n")
    server = cluster.server(ONE_FAILURE, start=False)
    cluster.worker(server.url, "w1", env={"PERDURE_WORKER_ALLOW_FILE_ROOT": str(allowed)})
    server.start()
    api = cluster.api(server)

    def copy(url: str) -> str:
        task = sh("t", "cat in.txt > out.txt", inputs=[{"filename": "in.txt", "url": url}])
        return api.submit(script({**task, "outputs": [{"filename": "out.txt"}]}))

    good = copy(f"file://{allowed}/ok.txt")
    outside = copy(f"file://{secret}")
    worker_log = copy(f"file://{cluster.base}/workers/w1.log")
    through_link = copy(f"file://{allowed}/escape/secret.txt")
    dotdot = copy(f"file://{allowed}/../secret.txt")
    api.wait_job(good)
    assert api.download(good, "t", "out.txt").text == "shared data\n"
    for job_id in (outside, worker_log, through_link, dotdot):
        notes = api.wait_job(job_id, "suspend")["error"]["worknotes"]
        assert "outside the directories this worker may read" in notes, notes
        assert api.data("GET", f"/job/{job_id}/outputs") == []


def test_without_allow_file_root_no_local_file_is_read(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    secret = cluster.base / "secret.txt"
    secret.write_text("the worker's own file\n")
    _, api, _ = cluster.start(ONE_FAILURE)
    task = sh("t", "cat in.txt > out.txt", inputs=[{"filename": "in.txt", "url": f"file://{secret}"}])
    job_id = api.submit(script({**task, "outputs": [{"filename": "out.txt"}]}))
    notes = api.wait_job(job_id, "suspend")["error"]["worknotes"]
    assert "file inputs are refused" in notes, notes
