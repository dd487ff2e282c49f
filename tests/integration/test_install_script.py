"""``/api/v1/scripts/install-worker``: a valid POSIX script that cannot be made to run anything else.

The script is also run for real against stand-ins for python3, pip, systemctl and the installed
``perdure`` command, so what it writes and starts is checked, not just its syntax.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from perdure import __version__
from perdure.api.app import create_app
from perdure.api.scripts import install_worker
from perdure.errors import BadRequest
from perdure.settings import Settings


@pytest.fixture
def client(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The script does not touch the database: one backend is enough."""
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", db_url=sqlite_url))) as test_client:
        yield test_client


TOKEN = "name=g1|id=0b7c5f9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b|sig=AbC-dEf_123"


def script(client: TestClient, **params: str) -> str:
    reply = client.get("/api/v1/scripts/install-worker", params=params)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/x-shellscript")
    return reply.text


def syntax_ok(text: str, tmp_path: Path) -> None:
    path = tmp_path / "install.sh"
    path.write_text(text)
    for shell in ("sh", "bash"):
        if shutil.which(shell):
            result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr


def test_default_script_is_valid_posix_shell(client: TestClient, tmp_path: Path) -> None:
    text = script(client)
    syntax_ok(text, tmp_path)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert next(line for line in lines if line and not line.startswith("#")) == "set -eu"
    assert "python3 -m venv" in text
    assert f'"${{PERDURE_PIP_SPEC:-perdure=={__version__}}}"' in text
    # The server as the request reached it, and the default group.
    assert "server=http://testserver\n" in text
    assert "group=default\n" in text


def test_query_values_are_used(client: TestClient, tmp_path: Path) -> None:
    text = script(client, server="https://perdure.example.com:8443/base", group="g1", token=TOKEN)
    syntax_ok(text, tmp_path)
    assert "server=https://perdure.example.com:8443/base\n" in text
    assert "group=g1\n" in text
    assert f"token={shlex.quote(TOKEN)}\n" in text


@pytest.mark.parametrize(
    "params",
    [
        {"group": "x;touch /tmp/pwned"},
        {"group": "$(touch /tmp/pwned)"},
        {"group": "a'b"},
        {"group": "a\nb"},
        {"group": "-rf"},
        {"server": "http://x;touch /tmp/pwned"},
        {"server": "http://x/$(touch /tmp/pwned)"},
        {"server": "http://x/`id`"},
        {"server": "http://x/a'b"},
        {"server": "http://x/a%20b"},
        {"server": "http://x\nrm -rf /"},
        {"server": "ftp://x"},
        {"server": "file:///etc/passwd"},
        {"server": "javascript:alert(1)"},
        {"server": "http://"},
        {"server": "http://user:pw@x"},
        {"token": "a'; touch /tmp/pwned; '"},
        {"token": "a b"},
        {"token": "$(id)"},
    ],
)
def test_injection_attempts_are_refused(client: TestClient, params: dict[str, str]) -> None:
    reply = client.get("/api/v1/scripts/install-worker", params=params)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["statusCode"] == 400 and isinstance(body["errorCode"], int) and body["message"]


@pytest.mark.parametrize("host", ["x$(touch /tmp/pwned)", "x;id", "x'y", "a b"])
def test_a_hostile_host_header_is_refused(host: str) -> None:
    """The default server URL comes from the Host header, which the sender controls: refused or unused."""
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/scripts/install-worker",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "server": ("127.0.0.1", 8001),
    }
    try:
        text = bytes(install_worker(Request(scope)).body).decode()
    except BadRequest:
        return  # refused
    # Or neutralised: Starlette ignores a malformed Host and the script names the listening address.
    assert host not in text
    assert "server=http://127.0.0.1:8001\n" in text


# ---- running it -------------------------------------------------------------------------------


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """Stand-ins on PATH: python3 makes a venv whose pip and perdure record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.mkdir()
    perdure_stub = f'printf "%s\\n" "$@" > {shlex.quote(str(calls))}/perdure.args\n'
    pip_stub = f'printf "%s\\n" "$@" > {shlex.quote(str(calls))}/pip.args\n'
    _stub(
        bin_dir / "python3",
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        '  mkdir -p "$3/bin"\n'
        f"  cat > \"$3/bin/pip\" <<'EOF'\n#!/bin/sh\n{pip_stub}EOF\n"
        f"  cat > \"$3/bin/perdure\" <<'EOF'\n#!/bin/sh\n{perdure_stub}EOF\n"
        '  chmod +x "$3/bin/pip" "$3/bin/perdure"\n'
        "  exit 0\n"
        "fi\n"
        "exit 1\n",
    )
    _stub(bin_dir / "systemctl", f'printf "%s\\n" "$*" >> {shlex.quote(str(calls))}/systemctl.calls\n')
    return {"root": tmp_path, "bin": bin_dir, "calls": calls}


def _run(text: str, sandbox: dict[str, Path], **env: str) -> subprocess.CompletedProcess[str]:
    root = sandbox["root"]
    environment = {
        "PATH": f"{sandbox['bin']}:/usr/bin:/bin",
        "PERDURE_PREFIX": str(root / "opt"),
        "PERDURE_ETC_DIR": str(root / "etc"),
        "PERDURE_LOG_DIR": str(root / "log"),
        "PERDURE_UNIT_DIR": str(root / "units"),
        **env,
    }
    return subprocess.run(["sh"], input=text, capture_output=True, text=True, env=environment, timeout=60)


def _wait_for(path: Path) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_without_systemd_the_worker_starts_with_exact_arguments(
    client: TestClient, sandbox: dict[str, Path]
) -> None:
    text = script(client, server="http://10.0.0.5:8001", group="g1", token=TOKEN)
    result = _run(text, sandbox, PERDURE_INIT="nohup")
    assert result.returncode == 0, result.stderr
    args = _wait_for(sandbox["calls"] / "perdure.args").splitlines()
    token_file = sandbox["root"] / "etc" / "worker.token"
    assert args == [
        "worker",
        "--server",
        "http://10.0.0.5:8001",
        "--group",
        "g1",
        "--token-file",
        str(token_file),
    ]
    assert _wait_for(sandbox["calls"] / "pip.args").splitlines() == [
        "install",
        "--quiet",
        "--upgrade",
        f"perdure=={__version__}",
    ]
    # The token is in a file of mode 0600, never on the worker's command line (ps shows that).
    assert token_file.read_text() == f"{TOKEN}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert TOKEN not in " ".join(args)


def test_environment_overrides_token_and_pip_spec(client: TestClient, sandbox: dict[str, Path]) -> None:
    text = script(client, group="g1")
    result = _run(
        text, sandbox, PERDURE_INIT="nohup", PERDURE_TOKEN="from-env", PERDURE_PIP_SPEC="perdure[x]"
    )
    assert result.returncode == 0, result.stderr
    args = _wait_for(sandbox["calls"] / "perdure.args").splitlines()
    token_file = sandbox["root"] / "etc" / "worker.token"
    assert args == [
        "worker",
        "--server",
        "http://testserver",
        "--group",
        "g1",
        "--token-file",
        str(token_file),
    ]
    assert token_file.read_text() == "from-env\n"
    assert _wait_for(sandbox["calls"] / "pip.args").splitlines()[-1] == "perdure[x]"


def test_with_systemd_a_unit_is_written_and_started(client: TestClient, sandbox: dict[str, Path]) -> None:
    text = script(client, server="https://mgmt.example.com", group="gpu.nodes", token=TOKEN)
    result = _run(text, sandbox, PERDURE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    root = sandbox["root"]
    unit = (root / "units" / "perdure-worker.service").read_text()
    assert (
        f"ExecStart={root}/opt/bin/perdure worker --server https://mgmt.example.com --group gpu.nodes "
        f"--token-file {root}/etc/worker.token\n"
    ) in unit
    assert "EnvironmentFile" not in unit  # the worker's environment carries no token
    assert TOKEN not in unit  # the secret stays in the 0600 token file
    assert (root / "etc" / "worker.token").read_text() == f"{TOKEN}\n"
    assert "[Install]\nWantedBy=multi-user.target\n" in unit
    # systemd stops the worker alone, and gives it longer than its hand-over deadline to checkpoint.
    assert "KillMode=mixed\nTimeoutStopSec=150\n" in unit
    calls = (sandbox["calls"] / "systemctl.calls").read_text().splitlines()
    assert calls == ["daemon-reload", "enable perdure-worker.service", "restart perdure-worker.service"]


def test_without_a_token_none_is_passed(client: TestClient, sandbox: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PERDURE_TOKEN"}
    assert "PERDURE_TOKEN" not in env
    result = _run(script(client), sandbox, PERDURE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    unit = (sandbox["root"] / "units" / "perdure-worker.service").read_text()
    assert "--token" not in unit
    assert "--group default\n" in unit
