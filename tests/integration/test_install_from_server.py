"""A fresh node installs its worker from the server alone (issue 21, item 3).

A real server on loopback serves the installer and its wheelhouse; the installer runs with ``sh`` in
venv-only mode into a directory of the test's, with no package index reachable (``PIP_NO_INDEX``, and
an index URL on a closed port), and the worker it starts runs from that new virtual environment (not
the repository's), joins with the clientgroup token from its 0600 file, and finishes a job.

The wheelhouse is built once per test session and hard-linked into each server's data directory,
where the server finds it under the same content key and does not build it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import perdure
from perdure import wheelhouse
from tests.integration.cluster import Cluster, sh
from tests.integration.workerprocess import TEST_ENV
from tests.jobs import script
from tests.support import wait_for

#: Where pip would look if it looked: a closed port on loopback.
NO_INDEX = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": ""}


@pytest.fixture(scope="session")
def built_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheelhouse")
    wheelhouse.ensure(root)
    return root


@pytest.fixture
def node(tmp_path: Path, cluster: Cluster) -> Iterator[Path]:
    """The node's install prefix. The worker the installer started is killed before the cluster's
    server stops (which waits for the worker's open long-poll otherwise)."""
    prefix = tmp_path / "node"
    yield prefix
    pid_file = prefix / "etc" / "worker.pid"
    if pid_file.exists():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(int(pid_file.read_text()))
            if str(prefix) in " ".join(process.cmdline()):  # ours, not a reused pid
                process.send_signal(signal.SIGKILL)
                process.wait(10)


def node_environment() -> dict[str, str]:
    """A node's environment: the system's PATH and python3, none of the repository's Python settings;
    the worker the installer starts inherits the test settings (no cloud metadata lookup, short polls)."""
    python_dir = os.path.dirname(shutil.which("python3") or "/usr/bin/python3")
    return {
        "PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        **NO_INDEX,
        **TEST_ENV,
    }


def test_a_node_installs_the_servers_wheel_and_its_worker_finishes_a_job(
    cluster: Cluster, built_wheelhouse: Path, node: Path
) -> None:
    server = cluster.server(start=False)
    shutil.copytree(built_wheelhouse, server.data_dir / "wheelhouse", copy_function=os.link)
    server.start()
    api = cluster.api(server)
    token = api.data("POST", "/cgroup/nodes")["token"]

    reply = api.http.get(
        "/api/v1/scripts/install-worker", params={"group": "nodes", "slots": "2", "apps": "sh"}
    )
    assert reply.status_code == 200, reply.text
    result = subprocess.run(
        ["sh", "-s", "--", "--no-systemd", "--prefix", str(node)],
        input=reply.text,
        capture_output=True,
        text=True,
        env={**node_environment(), "PERDURE_TOKEN": token},
        timeout=110,
        start_new_session=True,  # the worker it starts is not in pytest's process group
    )
    assert result.returncode == 0, result.stderr

    # Both slots join with the group's token, then run a job of that group.
    def joined() -> bool:
        return [c["group"] for c in api.data("GET", "/client")] == ["nodes", "nodes"]

    wait_for(joined, 30, "the installed worker's two slots to register", lambda: log(node))

    # The token is in a file only its owner can read, and not on the worker's command line.
    token_file = node / "etc" / "worker.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == f"{token}\n"
    worker = psutil.Process(int((node / "etc" / "worker.pid").read_text()))
    command = worker.cmdline()
    assert command[:2] == [str(node / "venv" / "bin" / "python"), str(node / "venv" / "bin" / "perdure")]
    assert command[2:] == [
        "worker", "--server", server.url, "--group", "nodes", "--slots", "2",
        "--workpath", str(node / "work"), "--apps", "sh", "--token-file", str(token_file),
    ]  # fmt: skip
    assert token not in " ".join(command)

    job = script(sh("t", "echo installed > out.txt", outputs=[{"filename": "out.txt"}]), clientgroups="nodes")
    job_id = api.submit(job)
    api.wait_job(job_id)
    assert api.download(job_id, "t", "out.txt").content == b"installed\n"

    # What runs is the server's own version, from the new environment, without the server's libraries.
    version = api.http.get("/").json()["version"]
    manifest = api.http.get("/api/v1/scripts/wheelhouse").json()
    assert manifest["version"] == version
    assert manifest["wheels"][0]["filename"] == f"perdure-{version}-py3-none-any.whl"
    python = str(node / "venv" / "bin" / "python")
    code = "import perdure, importlib.metadata as m; print(perdure.__file__, m.version('perdure'))"
    probe = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=node_environment(), timeout=30
    )
    assert probe.returncode == 0, probe.stderr
    module_file, installed_version = probe.stdout.split()
    assert module_file.startswith(str(node / "venv")) and installed_version == version
    server_only = subprocess.run(
        [python, "-c", "import fastapi"], capture_output=True, env=node_environment(), timeout=30
    )
    assert server_only.returncode != 0


def log(node: Path) -> str:
    path = node / "log" / "worker.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no worker log)"


def test_the_wheelhouse_holds_the_running_code_and_the_workers_dependencies_only(
    built_wheelhouse: Path,
) -> None:
    house = wheelhouse.ensure(built_wheelhouse)  # built by the fixture: found again, not rebuilt
    assert [p.name for p in built_wheelhouse.iterdir()] == [house.directory.name]
    names = [w.filename for w in house.wheels]
    assert names[0] == f"perdure-{perdure.__version__}-py3-none-any.whl"
    assert not {n.split("-")[0].lower() for n in names} & {"fastapi", "starlette", "uvicorn", "sqlalchemy"}
    assert any(n.startswith("pydantic_core-") and "-cp" in n for n in names)  # binary, with its tags
    for wheel in house.wheels:
        data = (house.directory / wheel.filename).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (wheel.sha256, wheel.size)

    # perdure's wheel is the imported package, file for file, with its command.
    package = Path(perdure.__file__).parent
    with zipfile.ZipFile(house.directory / names[0]) as wheel_zip:
        inside = {n for n in wheel_zip.namelist() if not n.startswith("perdure-")}
        entry_points = wheel_zip.read(f"perdure-{perdure.__version__}.dist-info/entry_points.txt").decode()
        assert wheel_zip.read("perdure/api/scripts.py") == (package / "api" / "scripts.py").read_bytes()
    on_disk = {
        "perdure/" + p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert inside == on_disk
    assert "perdure = perdure.cli:main" in entry_points
