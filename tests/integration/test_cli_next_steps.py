"""CLI errors name the next step, and ``submit --wait`` outlives a server restart (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from perdure.cli import app
from tests.integration.cluster import Cluster, sh
from tests.jobs import script
from tests.support import ServerProcess, free_port, wait_for

CLEARED = {"PERDURE_SERVER": None, "PERDURE_TOKEN": None, "PERDURE_CA_FILE": None, "COLUMNS": "200"}


def perdure(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=CLEARED, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_an_unreachable_server_names_the_setting_to_check() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = perdure("jobs", "--server", nowhere)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert f"cannot reach {nowhere}" in line
    assert "check --server or PERDURE_SERVER" in line


def test_https_to_a_plain_http_server_is_called_a_tls_mismatch(server: ServerProcess) -> None:
    code, _, err = perdure("jobs", "--server", server.url.replace("http://", "https://"))
    assert code == 1
    (line,) = err.splitlines()
    assert "TLS mismatch" in line and "http://" in line


def test_a_url_that_is_not_a_perdure_server_is_said_to_be_so(tmp_path: Path) -> None:
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: perdure("jobs", "--server", url)[0] == 1, 20, "the other server to answer")
        _, _, err = perdure("jobs", "--server", url)
        assert "did not answer like a Perdure server" in err
    finally:
        other.terminate()
        other.wait(10)


def test_a_state_that_is_no_job_state_is_refused_listing_the_states() -> None:
    code, _, err = perdure("jobs", "--state", "queued,runing", "--server", "http://127.0.0.1:1")
    assert code == 2
    assert "'runing' is no job state" in err
    assert "in-progress" in err


def test_db_upgrade_with_an_unreachable_database_prints_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/nothing"
    code, out, err = perdure("db", "upgrade", "--data-dir", str(tmp_path), "--db", url)
    text = (out + err).strip()
    assert code == 2
    assert len(text.splitlines()) == 1, text
    assert "cannot use database" in text and "Traceback" not in text
    assert "hunter2" not in text  # the password is masked


def test_submit_wait_survives_a_server_restart(cluster: Cluster, tmp_path: Path) -> None:
    server, api, _ = cluster.start()
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(script(sh("t", "sleep 6; echo done > out.txt", outputs=[{"filename": "out.txt"}])))
    )
    waiting = subprocess.Popen(
        [sys.executable, "-m", "perdure", "submit", str(path), "--wait", "--server", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: any(j["state"] == "in-progress" for j in api.data("GET", "/job")),
            30,
            "the job to start",
            cluster.diagnostics,
        )
        server.stop()
        server.start()
        out, err = waiting.communicate(timeout=90)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    (job_id,) = out.split()
    assert api.job(job_id)["state"] == "completed"
