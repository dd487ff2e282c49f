"""The management commands as a user runs them: ``perdure config|security|logs|login`` in subprocesses.

Each command runs as ``python -m perdure ...`` against a real server, with a private login file
(``PERDURE_LOGIN_FILE`` in the test's directory) and none of the caller's ``PERDURE_SERVER`` /
``PERDURE_TOKEN`` / ``PERDURE_CA_FILE`` / ``COLUMNS``. Output is checked as text a user reads and a
script parses: JSON stays JSON, a value is printed as is, an error is one line on stderr with a non-zero
exit code.

* ``config get``, ``config get <key>``, ``config set k=v ...`` (and its 422, printed as one line);
* ``logs`` and ``logs --access``; ``security show``;
* ``login`` writes a 0600 file that later commands use for the server and token; with security on,
  ``security enable`` / ``config set`` / ``security disable`` with an admin's and a non-admin's login;
* the server down: one clear error line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.idp import Issuer
from tests.integration.clientloop import Worker
from tests.jobs import script, task, upload
from tests.support import ServerProcess, free_port

pytestmark = pytest.mark.timeout(600)

CLEARED_ENV = ("PERDURE_SERVER", "PERDURE_TOKEN", "PERDURE_CA_FILE", "COLUMNS", "LINES")


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"perdure {' '.join(self.args)} -> {self.code}\nstdout: {self.out!r}\nstderr: {self.err!r}"


class Cli:
    """Runs ``perdure`` commands with a private environment and login file."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.login_file = home / "perdure" / "login.json"
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        self.env.update(PERDURE_LOGIN_FILE=str(self.login_file), XDG_CONFIG_HOME=str(home))

    def __call__(self, *args: str, **env: str) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "perdure", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=180,
            check=False,
        )
        return Run(args, proc.returncode, proc.stdout, proc.stderr)


def ok(run: Run) -> str:
    assert run.code == 0, run
    return run.out


def error_text(run: Run) -> str:
    """A failure's message: non-zero exit, nothing on stdout, stderr starting "error:" (lines joined)."""
    assert run.code != 0, run
    assert run.out == "", run
    assert run.err.startswith("error: "), run
    return " ".join(run.err.split())


def one_error_line(run: Run) -> str:
    """A failure: non-zero exit, nothing on stdout, exactly one line on stderr starting "error:"."""
    assert run.code != 0, run
    assert run.out == "", run
    lines = run.err.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("error: "), run
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One open server (security off) for the module. A 1 s TTL lets a test make it log a warning."""
    base = tmp_path_factory.mktemp("cli")
    process = ServerProcess(
        base / "server",
        f"sqlite:///{base / 'p.db'}",
        env={"PERDURE_NODE_TTL_S": "1", "PERDURE_SWEEP_INTERVAL_S": "0.3"},
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def api_config(server: ServerProcess) -> dict[str, object]:
    document: dict[str, object] = httpx.get(server.url + "/api/v1/config", timeout=60).json()
    return document


# ---- config -----------------------------------------------------------------------------------------


def test_config_get_whole_and_by_key(server: ServerProcess, cli: Cli) -> None:
    assert json.loads(ok(cli("config", "get", "--server", server.url))) == api_config(server)
    assert ok(cli("config", "get", "ckpt.ckptInterval", "--server", server.url)) == "1h0m0s\n"
    assert json.loads(ok(cli("config", "get", "node", "--server", server.url))) == {
        "heartbeat": "30s",
        "ttl": "1s",
    }
    assert json.loads(ok(cli("config", "get", "ckpt.rootFSDiff", "--server", server.url))) is True
    # PERDURE_SERVER names the server as well as --server does.
    assert ok(cli("config", "get", "job.diskType", PERDURE_SERVER=server.url)) == "gp3\n"
    line = one_error_line(cli("config", "get", "node.tll", "--server", server.url))
    assert "node.tll" in line


def test_config_set_applies_and_prints_the_new_values(server: ServerProcess, cli: Cli) -> None:
    run = cli(
        "config",
        "set",
        "job.diskSizeGB=300",
        "job.customTags=owner:name,team:engineer",
        "--server",
        server.url,
    )
    assert ok(run).splitlines() == [
        "job.diskSizeGB = 300",
        'job.customTags = {"owner": "name", "team": "engineer"}',
    ]
    job = api_config(server)["job"]
    assert isinstance(job, dict)
    assert (job["diskSizeGB"], job["customTags"]) == (300, {"owner": "name", "team": "engineer"})


def test_config_set_refused_is_one_line_and_changes_nothing(server: ServerProcess, cli: Cli) -> None:
    before = api_config(server)
    line = one_error_line(cli("config", "set", "job.diskType=io2", "bogus=1", "--server", server.url))
    assert line == "error: 422: Invalid argument (bogus: unknown configuration key)"
    assert api_config(server) == before
    malformed = cli("config", "set", "job.diskType", "--server", server.url)
    assert "KEY=VALUE" in one_error_line(malformed) and malformed.code == 2
    assert api_config(server) == before


def test_a_long_config_set_error_is_still_one_line(server: ServerProcess, cli: Cli) -> None:
    run = cli("config", "set", "node.ttl=soon", "job.diskSizeGB=zero", "bogus=1", "--server", server.url)
    line = one_error_line(run)
    for key in ("node.ttl", "job.diskSizeGB", "bogus"):
        assert key in line


def test_config_get_prints_a_long_value_unchanged(server: ServerProcess, cli: Cli) -> None:
    folder = "/srv/perdure/" + "web-" * 30 + "static"
    assert (
        httpx.put(
            server.url + "/api/v1/configKV", json={"kvMap": {"staticFolder": folder}}, timeout=60
        ).status_code
        == 200
    )
    assert ok(cli("config", "get", "staticFolder", "--server", server.url)) == folder + "\n"


# ---- logs and security show -------------------------------------------------------------------------


def test_logs_and_access_logs(server: ServerProcess, cli: Cli) -> None:
    # Give the server log something to say: a client that goes silent past the 1 s TTL.
    job = httpx.post(server.url + "/job", files=upload(script(task("0"), name="cli-logs")), timeout=60)
    assert job.status_code == 200
    worker = Worker(server.url, timeout=60)
    try:
        assert worker.register().status_code == 200
        worker.checkout_id()
    finally:
        worker.close()
    deadline = time.monotonic() + 60
    while "re-queued" not in httpx.get(server.url + "/perdure.log", timeout=60).text:
        assert time.monotonic() < deadline, "the server logged no re-queue"
        time.sleep(0.3)

    server_log = ok(cli("logs", "--server", server.url))
    assert "re-queued" in server_log and "WARNING" in server_log
    access_log = ok(cli("logs", "--access", "--server", server.url))
    assert '"POST /job"' in access_log
    assert '"GET /api/v1/config"' in access_log  # the command's own look-up of log.file


def test_logs_prints_the_log_file_unchanged(server: ServerProcess, cli: Cli) -> None:
    long_path = "/job?query&info.project=" + "p" * 120
    assert httpx.get(server.url + long_path, timeout=60).status_code == 200
    printed = ok(cli("logs", "--access", "--server", server.url))
    served = httpx.get(server.url + "/perdure-access.log", timeout=60).text
    assert long_path in printed
    assert served.startswith(printed)


def test_security_show(server: ServerProcess, cli: Cli) -> None:
    shown = json.loads(ok(cli("security", "show", "--server", server.url)))
    assert shown == httpx.get(server.url + "/api/v1/security/cognito", timeout=60).json()
    assert shown["enabled"] is False and shown["adminGroups"] == ["admin"]


def test_server_down_is_one_clear_error_line(cli: Cli) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (("config", "get"), ("config", "set", "node.ttl=2m"), ("security", "show"), ("logs",)):
        line = one_error_line(cli(*args, "--server", nowhere))
        assert f"cannot reach {nowhere}" in line, line


# ---- login, and the CLI with security on ------------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


def test_login_file_is_private_and_used_by_later_commands(tmp_path: Path, cli: Cli, issuer: Issuer) -> None:
    server = ServerProcess(tmp_path / "secured", f"sqlite:///{tmp_path / 's.db'}").start()
    try:
        admin, user = issuer.token("root", ("admin",)), issuer.token("alice", ("users",))
        out = ok(cli("login", "--token", admin, "--server", server.url))
        assert str(cli.login_file) in out and admin not in out
        assert cli.login_file.stat().st_mode & 0o777 == 0o600
        assert json.loads(cli.login_file.read_text()) == {"server": server.url, "token": admin, "ca_file": ""}

        # Security on, with the login's token (which must verify against the new settings).
        run = cli(
            "security", "enable", "--client-id", issuer.client_id, "--region", "us-west-1",
            "--user-pool-id", "us-west-1_perdureTest", "--jwks-url", issuer.jwks_url,
        )  # fmt: skip
        enabled = json.loads(ok(run))
        assert enabled["token"] == "****" and admin not in run.out
        assert httpx.get(server.url + "/api/v1/config", timeout=60).status_code == 401
        assert json.loads(ok(cli("security", "show")))["enabled"] is True

        # The login's server and token serve every command.
        assert ok(cli("config", "set", "node.ttl=3m")) == 'node.ttl = "3m0s"\n'
        assert ok(cli("config", "get", "node.ttl")) == "3m0s\n"
        assert "PUT /api/v1/configKV" in ok(cli("logs", "--access"))

        # A non-admin may neither read the configuration (admin-only, issue 17) nor change it: refused in
        # one line; PERDURE_TOKEN wins over the login file.
        for command in (("config", "get", "node.ttl"), ("config", "set", "node.ttl=9m")):
            message = error_text(cli(*command, PERDURE_TOKEN=user))
            assert message.startswith("error: 403: User is not privileged"), message
            assert "groupsInToken" in message
        # A bad token: login refuses it and keeps the old file.
        expired = issuer.token("root", ("admin",), exp=int(time.time()) - 3600)
        assert "401" in one_error_line(cli("login", "--token", expired, "--server", server.url))
        assert json.loads(cli.login_file.read_text())["token"] == admin
        assert "401" in one_error_line(cli("config", "get", "--token", expired))

        # The non-admin logs in (security on: the token is checked); disabling then needs the admin.
        ok(cli("login", "--token", user, "--server", server.url))
        assert json.loads(cli.login_file.read_text())["token"] == user
        assert "403" in error_text(cli("security", "disable"))
        assert ok(cli("security", "disable", "--token", admin)) == "token security disabled\n"
        assert httpx.get(server.url + "/api/v1/config", timeout=60).json()["node"]["ttl"] == "3m0s"

        # Nothing printed or logged the tokens.
        for path in [*(server.data_dir / "logs").glob("*.log"), server.log_path]:
            text = path.read_text(errors="replace")
            assert admin not in text and user not in text, path
    finally:
        server.stop()
