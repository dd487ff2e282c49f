"""Clean-up after a ``--tcp-close`` restore, which leaves behind the iptables DROP rules the dump's
network lock put in (two per connection): the criu engine removes them once the tree is back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("perdure.spot")

#: CRIU's per-connection network lock (criu/netfilter.c): packets not marked 0xC114 are dropped.
_LOCK_RULE = re.compile(r"^-A (INPUT|OUTPUT) .*! --mark 0xc114\b.* -j DROP$", re.IGNORECASE)


def lock_rules(listing: str) -> list[str]:
    """The ``iptables -S`` lines that are CRIU's connection locks."""
    return [line.strip() for line in listing.splitlines() if _LOCK_RULE.match(line.strip())]


def remove_tcp_locks() -> int:
    """A ``--tcp-close`` restore leaves the DROP rules the dump's network lock put in (two per
    connection): remove them, for IPv4 and IPv6. How many were removed."""
    removed = 0
    for tool in ("iptables", "ip6tables"):
        binary = shutil.which(tool)
        if binary is None:
            continue
        try:
            listing = subprocess.run(
                [binary, "-w", "-t", "filter", "-S"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        for rule in lock_rules(listing.stdout):
            words = shlex.split(rule)
            words[0] = "-D"
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                done = subprocess.run(
                    [binary, "-w", "-t", "filter", *words], capture_output=True, timeout=30, check=False
                )
                removed += done.returncode == 0
    if removed:
        log.info("removed %d iptables rule(s) CRIU's network lock left", removed)
    return removed


class TcpLockCleanup(threading.Thread):
    """Once ``criu restore`` has written its pidfile (the tree is back), its locks go."""

    def __init__(self, pidfile: Path, timeout_s: float = 120.0) -> None:
        super().__init__(daemon=True, name="criu-tcp-locks")
        self.pidfile = pidfile
        self.timeout_s = timeout_s

    def run(self) -> None:
        give_up = time.monotonic() + self.timeout_s
        while time.monotonic() < give_up and not self.pidfile.exists():
            time.sleep(0.1)
        remove_tcp_locks()
