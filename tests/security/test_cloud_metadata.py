"""Issue 17: a worker asks the cloud metadata address (169.254.169.254) only on EC2.

* EC2 is recognised from local facts alone (DMI, ``/sys/hypervisor``), as cloud-init does; anything
  else, a laptop or another cloud, is not EC2 and the address is never polled unless configured.
* A metadata server that answers with an error (403, as GCP's and Azure's do) is logged once and the
  watcher keeps polling instead of dying.
* A real worker started with the default setting on this (non-EC2) machine polls nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from perdure.spot.cloud import EC2_ENDPOINT, is_ec2, metadata_endpoint
from perdure.spot.interruption import ImdsWatcher
from perdure.worker.config import WorkerConfig
from tests.imds import ImdsStandIn
from tests.integration.cluster import Cluster
from tests.support import wait_for


def fake_sys(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


EC2_FACTS = [
    {"class/dmi/id/sys_vendor": "Amazon EC2"},
    {"class/dmi/id/board_asset_tag": "i-0123456789abcdef0"},
    {"class/dmi/id/product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF"},
    {"class/dmi/id/bios_version": "4.11.amazon"},
    {"hypervisor/uuid": "ec2e1916-9099-7caf-fd21-012345abcdef"},
]
OTHER_MACHINES = [
    {},  # a container or a laptop without DMI
    {"class/dmi/id/sys_vendor": "Google", "class/dmi/id/product_uuid": "4C4C4544-0042-3310"},
    {"class/dmi/id/sys_vendor": "Microsoft Corporation", "class/dmi/id/board_asset_tag": "7783-7084"},
    {"class/dmi/id/sys_vendor": "LENOVO", "class/dmi/id/product_uuid": "b2c3d4e5-0000-0000"},
]


@pytest.mark.parametrize("facts", EC2_FACTS, ids=lambda f: next(iter(f)))
def test_ec2_is_recognised_from_local_facts(tmp_path: Path, facts: dict[str, str]) -> None:
    root = fake_sys(tmp_path, facts)
    assert is_ec2(root)
    assert metadata_endpoint("auto", root) == EC2_ENDPOINT


@pytest.mark.parametrize("facts", OTHER_MACHINES, ids=["bare", "gcp", "azure", "laptop"])
def test_off_ec2_the_metadata_address_is_never_used(tmp_path: Path, facts: dict[str, str]) -> None:
    root = fake_sys(tmp_path, facts)
    assert not is_ec2(root)
    assert metadata_endpoint("auto", root) == ""
    assert WorkerConfig().imds_endpoint == "auto"  # the default decides by detection
    for off in ("", "off", "none"):
        assert metadata_endpoint(off, fake_sys(tmp_path, EC2_FACTS[0])) == ""
    assert metadata_endpoint("http://127.0.0.1:9/", root) == "http://127.0.0.1:9/"  # configured


class Forbidden:
    """A metadata server that answers 403 to everything, as GCP's and Azure's do to AWS's calls."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                owner.requests += 1
                self.send_response(403)
                self.send_header("Content-Length", "9")
                self.end_headers()
                self.wfile.write(b"Forbidden")

            do_GET = do_PUT = _refuse

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def forbidden() -> Iterator[Forbidden]:
    server = Forbidden()
    yield server
    server.close()


def test_an_error_status_is_logged_once_and_polling_goes_on(
    forbidden: Forbidden, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    watcher = ImdsWatcher(forbidden.url, lambda n: None, lambda r: None, stop, poll_s=0.01)
    with caplog.at_level(logging.WARNING, logger="perdure.spot"):
        watcher.start()
        wait_for(lambda: forbidden.requests >= 5, 10, "five polls")
        assert watcher.is_alive()  # an HTTPStatusError used to end the thread here
        stop.set()
        watcher.join(5)
    assert not watcher.is_alive()
    warnings = [r for r in caplog.records if "instance metadata" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "403" in warnings[0].getMessage()


def test_polling_recovers_when_the_service_starts_answering(caplog: pytest.LogCaptureFixture) -> None:
    with ImdsStandIn(tokens=False) as imds:  # no session token (404) at first
        notices: list[object] = []
        stop = threading.Event()
        watcher = ImdsWatcher(imds.url, notices.append, lambda r: None, stop, poll_s=0.01)
        watcher.start()
        wait_for(lambda: len(imds.seen) >= 3, 10, "a few refused token requests")
        imds.tokens = True
        imds.interrupt(in_s=120)
        wait_for(lambda: notices, 10, "the notice once the service answers")
        watcher.join(5)


def test_a_worker_started_off_ec2_polls_no_metadata(sqlite_cluster: Cluster) -> None:
    cluster = sqlite_cluster
    server = cluster.server()
    worker = cluster.worker(server.url, env={"PERDURE_WORKER_IMDS_ENDPOINT": "auto"})
    wait_for(lambda: "instance metadata:" in worker.log(), 30, "the worker to start", cluster.diagnostics)
    assert "instance metadata: not polled" in worker.log()
    api = cluster.api(server)
    nodes = wait_for(lambda: api.http.get("/api/v1/node").json(), 30, "the node record", cluster.diagnostics)
    assert [(node["cloud"], node["instance"] or {}) for node in nodes] == [("", {})], nodes
