"""HTTPS with ``perdure server --self-signed``: the certificate made in ``<data-dir>/tls/server.crt``.

* with the generated certificate as the CA, HTTPS verifies (by IP and by ``localhost``) and the
  configuration names the certificate and key and an ``https://`` address;
* without it, verification fails, and plain HTTP to the port gets no answer;
* a real ``perdure worker --ca-file <cert>`` runs a job to completion over HTTPS, while a worker
  without it never gets in;
* a restart reuses the certificate (clients keep trusting the same one).

One server process (SQLite in its data directory) serves the whole module.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.integration.workerprocess import WorkerProcess
from tests.jobs import script, upload
from tests.support import free_port
from tests.support import wait_for as _wait_for

START_TIMEOUT_S = 120.0
pytestmark = pytest.mark.timeout(300)


#: Each poll here asks a server something, so polls are spaced out.
wait_for = partial(_wait_for, interval=0.25)


class TlsServer:
    """``perdure server --self-signed`` on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = data_dir / "tls" / "server.crt"
        self.key = data_dir / "tls" / "server.key"
        self.log_path = data_dir.parent / f"tls-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "perdure", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--self-signed", "--log-level", "warning"]
        env = {**os.environ, "PERDURE_SWEEP_INTERVAL_S": "0.5"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if self.cert.exists():
                try:
                    if httpx.get(self.url + "/", verify=self.trust(), timeout=2.0).status_code == 200:
                        return
                except (httpx.HTTPError, ssl.SSLError):
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"HTTPS server did not start within {START_TIMEOUT_S}s:\n{self.log()}")

    def trust(self) -> ssl.SSLContext:
        """Verification that trusts the generated certificate (httpx's ``verify=<path>`` is deprecated)."""
        return ssl.create_default_context(cafile=str(self.cert))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    process = TlsServer(tmp_path_factory.mktemp("tls") / "server-data").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def https(server: TlsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, verify=server.trust(), timeout=60.0) as client:
        yield client


# ---- tests ------------------------------------------------------------------------------------------


def test_https_verifies_with_the_generated_certificate(server: TlsServer, https: httpx.Client) -> None:
    root = https.get("/")
    assert root.status_code == 200 and root.json()["url"] == server.url
    document = https.get("/api/v1/config").json()
    assert document["addr"] == server.url
    assert document["security"]["certFile"] == str(server.cert.resolve())
    assert document["security"]["keyFile"] == str(server.key.resolve())
    assert server.key.stat().st_mode & 0o777 == 0o600

    certificate = x509.load_pem_x509_certificate(server.cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    by_name = httpx.get(
        f"https://localhost:{server.port}/api/v1/log/config", verify=server.trust(), timeout=60
    )
    assert by_name.status_code == 200
    # curl, as the document's examples are run, with the certificate as its CA.
    curl = subprocess.run(
        ["curl", "-s", "--cacert", str(server.cert), "-X", "GET", f"{server.url}/api/v1/config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert curl.returncode == 0 and '"addr"' in curl.stdout, curl.stderr


def test_verification_fails_without_the_certificate(server: TlsServer) -> None:
    with pytest.raises(httpx.ConnectError, match=r"(?i)certificate verify failed"):
        httpx.get(server.url + "/", timeout=60)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/", timeout=60)
    curl = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", f"{server.url}/"], capture_output=True, timeout=60, check=False
    )
    assert (
        curl.returncode == 60
    )  # curl: "peer certificate cannot be authenticated with known CA certificates"


@pytest.mark.timeout(300)
def test_a_worker_with_the_ca_file_runs_a_job_over_https(
    server: TlsServer, https: httpx.Client, tmp_path: Path
) -> None:
    trusting = WorkerProcess(
        tmp_path, server.url, label="trusting", extra_args=["--ca-file", str(server.cert)]
    )
    doubting = WorkerProcess(tmp_path, server.url, label="doubting")
    workers = [trusting, doubting]

    def context() -> str:
        return (
            "\n".join(f"--- {w.label}:\n{w.log()[-3000:]}" for w in workers)
            + f"\n--- server:\n{server.log()}"
        )

    try:
        doubting.start()
        trusting.start()
        document = script(
            {"taskid": "0", "cmd": {"name": "sh", "args_array": ["-c", "echo over-https"]}}, name="tls"
        )
        job_id = https.post("/job", files=upload(document)).json()["data"]["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = https.get(f"/job/{job_id}").json()["data"]
            return job if job["state"] in ("completed", "suspend", "failed-permanent") else None

        job = wait_for(finished, 180.0, "the job to finish over HTTPS", context)
        assert job["state"] == "completed", context()
        report = https.get(f"/work/{job_id}_0_0", params={"report": "stdout"})
        assert report.status_code == 200 and "over-https" in str(report.json()["data"]), report.text

        # Only the worker that trusts the certificate ever got in.
        clients = https.get("/client").json()["data"]
        names = {str(c.get("name")) for c in clients}
        assert any("trusting" in n for n in names) and not any("doubting" in n for n in names), clients
        wait_for(
            lambda: "certificate verify failed" in doubting.log().lower(),
            60.0,
            "the worker without --ca-file to report the failed verification",
            context,
        )
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.timeout(300)
def test_a_restart_reuses_the_certificate(tmp_path: Path) -> None:
    first = TlsServer(tmp_path / "data").start()
    try:
        pem = first.cert.read_bytes()
    finally:
        first.stop()
    second = TlsServer(tmp_path / "data").start()
    try:
        assert second.cert.read_bytes() == pem
        assert httpx.get(second.url + "/", verify=second.trust(), timeout=60).status_code == 200
    finally:
        second.stop()
