"""What a node reports: quick and empty off AWS, full instance facts from an IMDSv2 stand-in."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from perdure import nodeinfo
from tests.imds import METADATA, TOKEN, ImdsStandIn


@pytest.fixture
def imds() -> Iterator[ImdsStandIn]:
    with ImdsStandIn() as service:
        yield service


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_without_metadata_the_node_is_reported_quickly_with_no_instance() -> None:
    started = time.monotonic()
    info = nodeinfo.collect(_closed_port(), timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert info["instance"] == {}
    assert info["cloud"] == ""
    assert "id" not in info
    assert set(info) == {
        "ips",
        "hostName",
        "cloud",
        "arch",
        "cores",
        "cpuModel",
        "cpuVendor",
        "memoryInMB",
        "instance",
    }
    assert isinstance(info["cores"], int) and info["cores"] >= 1
    assert isinstance(info["memoryInMB"], int) and info["memoryInMB"] > 0
    assert info["arch"]
    assert all(isinstance(ip, str) and not ip.startswith("127.") for ip in info["ips"])


@pytest.mark.parametrize("endpoint", [None, ""])
def test_no_endpoint_skips_the_metadata_service(endpoint: str | None) -> None:
    assert nodeinfo.collect(endpoint)["instance"] == {}


def test_a_silent_metadata_service_does_not_hang_the_node() -> None:
    """A listener that accepts but never answers: the token request times out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        started = time.monotonic()
        info = nodeinfo.collect(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert info["instance"] == {} and info["cloud"] == ""


def test_imdsv2_instance_facts(imds: ImdsStandIn) -> None:
    url, seen = imds.url, imds.seen
    info = nodeinfo.collect(url + "/", timeout=2.0)
    assert info["cloud"] == "aws"
    assert info["instance"] == {
        "zone": "us-west-1a",
        "instanceId": "i-044f3323bfd228fd6",
        "instanceType": "m6i.large",
        "region": "us-west-1",
        "createTime": "2025-03-11T23:05:22Z",
        "payType": "Spot",
    }
    assert seen[0] == ("PUT", "/latest/api/token", seen[0][2]) and seen[0][2]
    assert all(token == TOKEN for method, _, token in seen if method == "GET")


def test_the_stand_in_refuses_calls_without_the_session_token(imds: ImdsStandIn) -> None:
    assert httpx.get(f"{imds.url}/latest/meta-data/instance-id", trust_env=False).status_code == 401


def test_on_demand_instance_and_region_from_the_zone() -> None:
    metadata = {
        k: v
        for k, v in METADATA.items()
        if k not in ("/latest/meta-data/placement/region", "/latest/dynamic/instance-identity/document")
    }
    metadata["/latest/meta-data/instance-life-cycle"] = "on-demand"
    with ImdsStandIn(metadata) as service:
        instance = nodeinfo.collect(service.url)["instance"]
        assert instance["payType"] == "OnDemand"
        assert instance["region"] == "us-west-1"
        assert instance["createTime"] == ""


def test_a_service_that_refuses_tokens_is_treated_as_absent() -> None:
    with ImdsStandIn(tokens=False) as service:
        info = nodeinfo.collect(service.url)
        assert info["instance"] == {} and info["cloud"] == ""


def test_cpu_model_and_vendor_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\n"
        "\nprocessor\t: 1\nvendor_id\t: Other\nmodel name\t: Other\n"
    )
    info = nodeinfo.collect(None, cpuinfo_path=cpuinfo)
    assert info["cpuModel"] == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert info["cpuVendor"] == "GenuineIntel"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\n")
    info = nodeinfo.collect(None, cpuinfo_path=arm)
    assert (info["cpuModel"], info["cpuVendor"]) == ("", "")
    assert nodeinfo.collect(None, cpuinfo_path=tmp_path / "absent")["cpuModel"] == ""


def test_default_log_files_keep_the_given_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    present = tmp_path / "cloud-init-output.log"
    monkeypatch.setattr(nodeinfo, "CLOUD_INIT_LOG", str(tmp_path / "absent.log"))
    assert nodeinfo.default_log_files(["/var/log/a.log", "/var/log/a.log"]) == ["/var/log/a.log"]
    present.write_text("booted\n")
    monkeypatch.setattr(nodeinfo, "CLOUD_INIT_LOG", str(present))
    assert nodeinfo.default_log_files(["/var/log/a.log"]) == ["/var/log/a.log", str(present)]
