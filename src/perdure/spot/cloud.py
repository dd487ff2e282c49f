"""Whether this node is an EC2 instance, decided without a network call (issue 17).

A worker polls the instance metadata service (``169.254.169.254``) only on EC2, or at an endpoint
configured explicitly: on a laptop or another cloud, that link-local address belongs to someone else
(GCP's and Azure's metadata servers answer there) and must not be asked. The facts are those
cloud-init's ``ds-identify`` reads: the DMI ``sys_vendor`` (``Amazon EC2`` on Nitro), the DMI
``product_uuid``, ``product_version``/``bios_version`` (``amazon`` on Xen instances),
``board_asset_tag`` (``i-…`` on Nitro) and ``/sys/hypervisor/uuid`` (``ec2…`` on Xen).
"""

from __future__ import annotations

import re
from pathlib import Path

#: The metadata service's address on EC2.
EC2_ENDPOINT = "http://169.254.169.254"
#: ``imds_endpoint`` values that mean: never poll.
DISABLED = ("", "off", "none", "false", "no")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,32}$")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip().lower()
    except OSError:
        return ""


def is_ec2(sys_root: Path = Path("/sys")) -> bool:
    """True when the DMI or hypervisor facts under ``sys_root`` say this is an EC2 instance."""
    dmi = sys_root / "class" / "dmi" / "id"
    if _read(dmi / "sys_vendor").startswith("amazon ec2"):
        return True
    if _INSTANCE_ID.match(_read(dmi / "board_asset_tag")):
        return True
    if _read(dmi / "product_uuid").startswith("ec2"):
        return True
    if any("amazon" in _read(dmi / name) for name in ("product_version", "bios_version")):
        return True
    return _read(sys_root / "hypervisor" / "uuid").startswith("ec2")


def metadata_endpoint(configured: str, sys_root: Path = Path("/sys")) -> str:
    """The metadata endpoint to use, or "" for none: a configured URL as given, ``auto`` the EC2
    address only when :func:`is_ec2`, anything in :data:`DISABLED` none."""
    value = configured.strip()
    if value.lower() in DISABLED:
        return ""
    if value.lower() == "auto":
        return EC2_ENDPOINT if is_ec2(sys_root) else ""
    return value


__all__ = ["DISABLED", "EC2_ENDPOINT", "is_ec2", "metadata_endpoint"]
