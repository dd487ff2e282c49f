"""``/api/v1/scripts/install-worker``: a valid POSIX script that cannot be made to run anything else.

The script is also run for real against stand-ins for python3, curl, pip, systemctl and the installed
``perdure`` command, and a small wheelhouse of made-up wheels, so what it downloads, checks, writes and
starts is checked, not just its syntax. (``test_install_from_server.py`` installs the real wheels.)
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from perdure import __version__, wheelhouse
from perdure.api.app import create_app
from perdure.api.scripts import install_worker
from perdure.errors import BadRequest
from perdure.settings import Settings
from tests.integration.test_security import Issuer, enable

FAKE_WHEELS = {
    f"perdure-{__version__}-py3-none-any.whl": b"perdure wheel",
    "httpx-0.29.0-py3-none-any.whl": b"httpx wheel",
    "pip-26.3-py3-none-any.whl": b"pip wheel",
}


@pytest.fixture
def house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> wheelhouse.Wheelhouse:
    """A wheelhouse of made-up wheels, served instead of building the real one."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    wheels = []
    for name, data in FAKE_WHEELS.items():
        (directory / name).write_bytes(data)
        wheels.append(wheelhouse.Wheel(name, hashlib.sha256(data).hexdigest(), len(data)))
    made = wheelhouse.Wheelhouse(directory, __version__, wheelhouse.python_version(), tuple(wheels))
    monkeypatch.setattr(wheelhouse, "ensure", lambda root: made)
    return made


@pytest.fixture
def client(sqlite_url: str, tmp_path: Path, house: wheelhouse.Wheelhouse) -> Iterator[TestClient]:
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
    assert "-m venv --clear --without-pip" in text
    assert "--no-index --no-deps" in text
    # Every wheel with its checksum, perdure's first.
    sums = [f"{hashlib.sha256(data).hexdigest()}  {name}" for name, data in FAKE_WHEELS.items()]
    assert "wheels='" + "\n".join(sums) + "'\n" in text
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
        {"slots": "0"},
        {"slots": "1025"},
        {"slots": "-1"},
        {"slots": "2;id"},
        {"slots": "1e3"},
        {"workpath": "relative/dir"},
        {"workpath": "/var/lib/../etc"},
        {"workpath": "/a b"},
        {"workpath": "/a$(id)"},
        {"workpath": "/a%n"},
        {"apps": "sh;id"},
        {"apps": "a,,b"},
        {"apps": "* ,sh"},
        {"apps": "$(id)"},
    ],
)
def test_injection_attempts_are_refused(client: TestClient, params: dict[str, str]) -> None:
    reply = client.get("/api/v1/scripts/install-worker", params=params)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["statusCode"] == 400 and isinstance(body["errorCode"], int) and body["message"]


@pytest.mark.parametrize("host", ["x$(touch /tmp/pwned)", "x;id", "x'y", "a b"])
def test_a_hostile_host_header_is_refused(host: str, house: wheelhouse.Wheelhouse, tmp_path: Path) -> None:
    """The default server URL comes from the Host header, which the sender controls: refused or unused."""
    settings = SimpleNamespace(data_dir=tmp_path)
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/scripts/install-worker",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "server": ("127.0.0.1", 8001),
        # what the route reads of the app: where the (made-up) wheelhouse lives
        "app": SimpleNamespace(state=SimpleNamespace(ctx=SimpleNamespace(settings=settings))),
    }
    try:
        text = bytes(install_worker(Request(scope)).body).decode()
    except BadRequest:
        return  # refused
    # Or neutralised: Starlette ignores a malformed Host and the script names the listening address.
    assert host not in text
    assert "server=http://127.0.0.1:8001\n" in text


def test_the_wheelhouse_is_served_by_name_only(client: TestClient, house: wheelhouse.Wheelhouse) -> None:
    manifest = client.get("/api/v1/scripts/wheelhouse").json()
    assert manifest["version"] == __version__
    assert [w["filename"] for w in manifest["wheels"]] == list(FAKE_WHEELS)
    name = f"perdure-{__version__}-py3-none-any.whl"
    assert client.get(f"/api/v1/scripts/wheelhouse/{name}").content == FAKE_WHEELS[name]
    for other in ("manifest.json", "..%2Fmanifest.json", "six-1.0-py3-none-any.whl"):
        reply = client.get(f"/api/v1/scripts/wheelhouse/{other}")
        assert reply.status_code == 404 and reply.json()["statusCode"] == 404, reply.text


# ---- running it -------------------------------------------------------------------------------


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def sandbox(tmp_path: Path, house: wheelhouse.Wheelhouse) -> dict[str, Path]:
    """Stand-ins on PATH: python3 makes a venv whose python (running pip) and perdure record their
    arguments; curl copies the wheel a URL names from the made-up wheelhouse."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.mkdir()
    q_calls = shlex.quote(str(calls))
    perdure_stub = f'printf "%s\\n" "$@" > {q_calls}/perdure.args\n'
    pip_stub = f'printf "%s\\n" "$@" > {q_calls}/pip.args\n'
    _stub(
        bin_dir / "python3",
        'case "$1 $2" in\n'
        # the version check: the right version once "installed" (see apt-get), unless told otherwise
        f'  "-c "*) [ -z "${{STUB_PYTHON_MISSING:-}}" ] || [ -e {q_calls}/installed ]; exit $? ;;\n'
        '  "-m venv")\n'
        "    for dir; do :; done\n"
        '    mkdir -p "$dir/bin"\n'
        f"    cat > \"$dir/bin/python\" <<'EOF'\n#!/bin/sh\n{pip_stub}EOF\n"
        f"    cat > \"$dir/bin/perdure\" <<'EOF'\n#!/bin/sh\n{perdure_stub}EOF\n"
        '    chmod +x "$dir/bin/python" "$dir/bin/perdure"\n'
        "    exit 0 ;;\n"
        "esac\n"
        "exit 1\n",
    )
    _stub(
        bin_dir / "curl",
        "while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift ;; http*) url=$1 ;; esac; shift; done\n"
        f'printf "%s\\n" "$url" >> {q_calls}/curl.urls\n'
        f'cp {shlex.quote(str(house.directory))}/"${{url##*/}}" "$out"\n',
    )
    _stub(bin_dir / "systemctl", f'printf "%s\\n" "$*" >> {q_calls}/systemctl.calls\n')
    # ... also under the versioned name the script looks for first (not the machine's python3.X).
    (bin_dir / f"python{wheelhouse.python_version()}").symlink_to(bin_dir / "python3")
    # The OS's package managers: record, and "install" python (never the machine's own apt-get).
    for manager in ("apt-get", "dnf", "yum"):
        _stub(
            bin_dir / manager,
            f'printf "%s\\n" "$*" >> {q_calls}/{manager}.calls\ntouch {q_calls}/installed\n',
        )
    return {"root": tmp_path, "bin": bin_dir, "calls": calls}


def _run(text: str, sandbox: dict[str, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    root = sandbox["root"]
    environment = {
        "PATH": f"{sandbox['bin']}:/usr/bin:/bin",  # the stand-ins first
        "PERDURE_PYTHON": str(sandbox["bin"] / "python3"),  # not a python3.X of the machine's
        "PERDURE_PREFIX": str(root / "opt"),
        "PERDURE_ETC_DIR": str(root / "etc"),
        "PERDURE_LOG_DIR": str(root / "log"),
        "PERDURE_UNIT_DIR": str(root / "units"),
        **env,
    }
    return subprocess.run(
        ["sh", "-s", "--", *args], input=text, capture_output=True, text=True, env=environment, timeout=60
    )


def _wait_for(path: Path) -> str:
    """The stand-in perdure runs in the background (nohup): wait for the file it writes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_without_systemd_the_worker_starts_with_exact_arguments(
    client: TestClient, sandbox: dict[str, Path]
) -> None:
    root = sandbox["root"]
    text = script(
        client, server="http://10.0.0.5:8001", group="g1", token=TOKEN, slots="8", workpath=str(root / "w")
    )
    result = _run(text, sandbox, PERDURE_INIT="nohup")
    assert result.returncode == 0, result.stderr
    args = _wait_for(sandbox["calls"] / "perdure.args").splitlines()
    token_file = root / "etc" / "worker.token"
    assert args == [
        "worker", "--server", "http://10.0.0.5:8001", "--group", "g1", "--slots", "8",
        "--workpath", str(root / "w"), "--token-file", str(token_file),
    ]  # fmt: skip
    # Every wheel but pip's, from the wheelhouse just downloaded, with no index and no resolver.
    wheels = root / "opt" / "wheelhouse"
    assert (sandbox["calls"] / "pip.args").read_text().splitlines() == [
        str(wheels / "pip-26.3-py3-none-any.whl" / "pip"),
        "install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check",
        str(wheels / f"perdure-{__version__}-py3-none-any.whl"),
        str(wheels / "httpx-0.29.0-py3-none-any.whl"),
    ]  # fmt: skip
    assert (sandbox["calls"] / "curl.urls").read_text().splitlines() == [
        f"http://10.0.0.5:8001/api/v1/scripts/wheelhouse/{name}" for name in FAKE_WHEELS
    ]
    # The token is in a file of mode 0600, never on the worker's command line (ps shows that).
    assert token_file.read_text() == f"{TOKEN}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert TOKEN not in " ".join(args)


def test_venv_only_mode_installs_under_the_prefix_and_prints_the_command(
    client: TestClient, sandbox: dict[str, Path]
) -> None:
    root = sandbox["root"]
    text = script(client, group="g1", apps="sh,python3")
    environment = {"PERDURE_TOKEN": "from-env", "PERDURE_ETC_DIR": "", "PERDURE_LOG_DIR": ""}
    result = _run(text, sandbox, "--no-systemd", "--prefix", str(root / "node"), "--no-start", **environment)
    assert result.returncode == 0, result.stderr
    node = root / "node"
    token_file = node / "etc" / "worker.token"
    assert result.stdout.split() == [
        f"{node}/venv/bin/perdure", "worker", "--server", "http://testserver", "--group", "g1",
        "--slots", "1", "--workpath", f"{node}/work", "--apps", "sh,python3", "--token-file", str(token_file),
    ]  # fmt: skip
    assert token_file.read_text() == "from-env\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not (sandbox["calls"] / "perdure.args").exists()  # --no-start
    assert not (root / "units").exists()


def test_a_wheel_whose_checksum_differs_is_not_installed(
    client: TestClient, sandbox: dict[str, Path], house: wheelhouse.Wheelhouse
) -> None:
    text = script(client)
    (house.directory / "httpx-0.29.0-py3-none-any.whl").write_bytes(b"something else")
    result = _run(text, sandbox, "--no-systemd")
    assert result.returncode == 1
    assert "httpx-0.29.0-py3-none-any.whl: its SHA-256 is not the one the server announced" in result.stderr
    assert not (sandbox["calls"] / "pip.args").exists()
    assert not (sandbox["calls"] / "perdure.args").exists()


def test_unknown_options_are_refused(client: TestClient, sandbox: dict[str, Path]) -> None:
    result = _run(script(client), sandbox, "--no-systemd", "--slots", "4")
    assert result.returncode == 2
    assert "unknown option --slots" in result.stderr
    result = _run(script(client), sandbox, "--no-systemd", "--prefix", "/tmp/a b")
    assert result.returncode == 2 and "--prefix must be a path" in result.stderr


def test_with_systemd_a_unit_is_written_and_started(client: TestClient, sandbox: dict[str, Path]) -> None:
    root = sandbox["root"]
    text = script(
        client,
        server="https://mgmt.example.com",
        group="gpu.nodes",
        token=TOKEN,
        slots="4",
        workpath=str(root / "work"),
        apps="*",
    )
    result = _run(text, sandbox, PERDURE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    unit = (root / "units" / "perdure-worker.service").read_text()
    assert (
        f"ExecStart={root}/opt/venv/bin/perdure worker --server https://mgmt.example.com --group gpu.nodes "
        f"--slots 4 --workpath {root}/work --apps * --token-file {root}/etc/worker.token\n"
    ) in unit
    assert "EnvironmentFile" not in unit  # the worker's environment carries no token
    assert TOKEN not in unit  # the secret stays in the 0600 token file
    assert (root / "etc" / "worker.token").read_text() == f"{TOKEN}\n"
    assert "[Install]\nWantedBy=multi-user.target\n" in unit
    # systemd stops the worker alone, and gives it longer than its hand-over deadline to checkpoint.
    assert "KillMode=mixed\nTimeoutStopSec=150\n" in unit
    calls = (sandbox["calls"] / "systemctl.calls").read_text().splitlines()
    assert calls == [
        "is-active --quiet perdure-worker.service",  # the stand-in says it is: stopped before the new venv
        "stop perdure-worker.service",
        "daemon-reload",
        "enable perdure-worker.service",
        "restart perdure-worker.service",
    ]


def test_without_a_token_none_is_passed(client: TestClient, sandbox: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PERDURE_TOKEN"}
    assert "PERDURE_TOKEN" not in env
    root = sandbox["root"]
    result = _run(script(client, workpath=str(root / "work")), sandbox, PERDURE_INIT="systemd")
    assert result.returncode == 0, result.stderr
    unit = (root / "units" / "perdure-worker.service").read_text()
    assert "--token" not in unit
    assert f"--group default --slots 1 --workpath {root}/work\n" in unit


def test_a_node_without_the_servers_python_gets_it_from_the_os_packages(
    client: TestClient, sandbox: dict[str, Path]
) -> None:
    result = _run(script(client), sandbox, "--no-systemd", "--no-start", STUB_PYTHON_MISSING="1")
    assert result.returncode == 0, result.stderr
    version = wheelhouse.python_version()
    assert (sandbox["calls"] / "apt-get.calls").read_text().splitlines() == [
        "update -q",
        f"install -y -q python{version} python{version}-venv",
    ]
    assert (sandbox["calls"] / "pip.args").exists()  # then installed as usual


def test_with_security_on_a_fresh_node_gets_the_installer_and_wheels_without_a_token(
    client: TestClient,
) -> None:
    issuer = Issuer()
    try:
        enable(client, issuer, issuer.token("root", ("admin",)))
        assert client.get("/api/v1/config").status_code == 401
        assert client.get("/api/v1/scripts/install-worker").status_code == 200
        assert client.get("/api/v1/scripts/wheelhouse").status_code == 200
        name = f"perdure-{__version__}-py3-none-any.whl"
        assert client.get(f"/api/v1/scripts/wheelhouse/{name}").content == FAKE_WHEELS[name]
        assert client.put(f"/api/v1/scripts/wheelhouse/{name}", content=b"x").status_code == 401
    finally:
        issuer.close()


def test_installing_again_stops_the_worker_it_started_before(
    client: TestClient, sandbox: dict[str, Path]
) -> None:
    """Without systemd: the worker of the pid file, running from this prefix's venv, gets SIGTERM (its
    hand-over) before its environment is made anew; the new worker then starts."""
    root = sandbox["root"]
    old_worker = root / "opt" / "venv" / "bin" / "perdure"
    old_worker.parent.mkdir(parents=True)
    _stub(old_worker, "trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n")
    process = subprocess.Popen(["sh", str(old_worker)], start_new_session=True)
    try:
        (root / "etc").mkdir()
        (root / "etc" / "worker.pid").write_text(f"{process.pid}\n")
        result = _run(script(client, workpath=str(root / "work")), sandbox, PERDURE_INIT="nohup")
        assert result.returncode == 0, result.stderr
        assert process.wait(timeout=10) == 0  # ended by its TERM trap, not killed
        assert "stopping the worker started before" in result.stderr
        assert _wait_for(sandbox["calls"] / "perdure.args").startswith("worker\n")
    finally:
        process.kill()
        process.wait()
