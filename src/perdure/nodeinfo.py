"""What a worker node says about itself for the management API's node list (``GET /api/v1/node``).

The keys follow MemVerge's document (ips, hostName, cloud, arch, cores, cpuModel, cpuVendor,
memoryInMB, instance). The instance facts come from AWS's instance metadata service (IMDSv2); off AWS
that service is simply absent, so every step is bounded by a short timeout and failures leave the
instance empty rather than delaying the worker's start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
#: Logs every node can offer when present: cloud-init runs the installer on a fresh instance.
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_TOKEN_HEADER = "X-aws-ec2-metadata-token"


def collect(
    imds_endpoint: str | None = None,
    timeout: float = 1.0,
    *,
    cpuinfo_path: Path = Path("/proc/cpuinfo"),
) -> dict[str, Any]:
    """The node document without ``id`` (the caller knows its node id) and ``lastHeartbeat``.

    Instance facts are asked of ``imds_endpoint`` only: the caller decides whether this node is on
    EC2 (:func:`perdure.spot.cloud.metadata_endpoint`); None asks nothing."""
    instance = aws_instance(imds_endpoint, timeout) if imds_endpoint else {}
    model, vendor = _cpu(cpuinfo_path)
    return {
        "ips": ipv4_addresses(),
        "hostName": socket.getfqdn(),
        "cloud": "aws" if instance else "",
        "arch": platform.machine(),
        "cores": os.cpu_count() or 0,
        "cpuModel": model,
        "cpuVendor": vendor,
        "memoryInMB": psutil.virtual_memory().total // 2**20,
        "instance": instance,
    }


def default_log_files(extra: list[str]) -> list[str]:
    """The files a node advertises: those it was asked to, plus cloud-init's log where it exists."""
    files = list(dict.fromkeys(extra))
    if CLOUD_INIT_LOG not in files and os.path.isfile(CLOUD_INIT_LOG):
        files.append(CLOUD_INIT_LOG)
    return files


def ipv4_addresses() -> list[str]:
    """Non-loopback IPv4 addresses, interface order; the resolver's answer if psutil has none."""
    found: list[str] = []
    try:
        for addresses in psutil.net_if_addrs().values():
            found += [a.address for a in addresses if a.family == socket.AF_INET]
    except Exception:  # psutil unsupported here: fall back to the resolver
        found = []
    if not found:
        try:
            found = list(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            found = []
    return [a for a in dict.fromkeys(found) if _routable_v4(a)]


def _routable_v4(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_loopback and not ip.is_unspecified


def _cpu(path: Path) -> tuple[str, str]:
    """``model name`` and ``vendor_id`` of the first processor; "" where the kernel does not say."""
    model = vendor = ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return model, vendor
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        if model and vendor:
            break
    return model, vendor


def aws_instance(endpoint: str, timeout: float = 1.0) -> dict[str, str]:
    """Instance facts from IMDSv2, or ``{}`` when the service is absent, slow or incomplete.

    ``trust_env=False``: a proxy from the environment must not see (or answer for) the link-local
    metadata address.
    """
    base = endpoint.rstrip("/")
    deadline = time.monotonic() + 4 * timeout  # the whole exchange, however many round trips
    try:
        with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False) as http:
            reply = http.put(f"{base}/latest/api/token", headers={_TOKEN_TTL_HEADER: "60"})
            if reply.status_code != 200 or not reply.text:
                return {}
            headers = {_TOKEN_HEADER: reply.text.strip()}

            def get(path: str) -> str:
                if time.monotonic() > deadline:
                    raise TimeoutError("instance metadata too slow")
                answer = http.get(f"{base}/latest/{path}", headers=headers)
                return answer.text.strip() if answer.status_code == 200 else ""

            instance_id = get("meta-data/instance-id")
            if not instance_id:
                return {}
            zone = get("meta-data/placement/availability-zone")
            instance_type = get("meta-data/instance-type")
            region = get("meta-data/placement/region")
            life_cycle = get("meta-data/instance-life-cycle")
            identity = _json_object(get("dynamic/instance-identity/document"))
    except (httpx.HTTPError, TimeoutError, OSError):
        return {}
    return {
        "zone": zone,
        "instanceId": instance_id,
        "instanceType": instance_type or str(identity.get("instanceType", "")),
        "region": region or str(identity.get("region", "")) or zone.rstrip("abcdefghijklmnopqrstuvwxyz"),
        "createTime": str(identity.get("pendingTime", "")),
        "payType": "Spot" if life_cycle.lower() == "spot" else "OnDemand",
    }


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["CLOUD_INIT_LOG", "DEFAULT_IMDS_ENDPOINT", "aws_instance", "collect", "default_log_files"]
