"""Where interruption notices come from: AWS instance metadata, SIGTERM, and ``perdure worker drain``.

* **Instance metadata (IMDSv2):** a session token (PUT ``/latest/api/token``), then every 5 s
  ``/latest/meta-data/spot/instance-action`` (404 until EC2 schedules the stop) and the rebalance
  recommendation, an earlier and weaker warning. The endpoint is configurable so tests serve their own;
  by default it is polled only on a node detected as EC2 (:mod:`perdure.spot.cloud`). An error status
  there (403 from another cloud's metadata server) is logged once and polling goes on.
* **SIGTERM** (Kubernetes, AWS Batch, systemd): wired by the worker command.
* **drain:** ``perdure worker drain`` writes a request file into the work path and wakes the worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("perdure.spot")

#: A notice's deadline leaves this much before the instance actually stops, for the reports.
SAFETY_MARGIN_S = 10.0
TOKEN_TTL_S = 21600
DRAIN_FILE = "drain-request.json"
PID_FILE = "worker.pid"


@dataclass(frozen=True)
class Notice:
    #: spot | sigterm | drain
    source: str
    detail: str
    #: ``time.monotonic()`` by which every hand-over must be done.
    deadline: float
    #: Let running work finish instead of checkpointing it (``drain --finish``).
    finish: bool = False


class ImdsWatcher(threading.Thread):
    """Polls instance metadata for the spot interruption notice and the rebalance recommendation."""

    def __init__(
        self,
        endpoint: str,
        on_notice: Callable[[Notice], None],
        on_rebalance: Callable[[str], None],
        stop: threading.Event,
        *,
        poll_s: float = 5.0,
        deadline_s: float = 120.0,
    ) -> None:
        super().__init__(name="imds", daemon=True)
        self.endpoint = endpoint.rstrip("/")
        self.on_notice = on_notice
        self.on_rebalance = on_rebalance
        self.stop = stop
        self.poll_s = poll_s
        self.deadline_s = deadline_s
        self._token = ""
        self._token_expires = 0.0
        self._rebalance_seen = False

    def run(self) -> None:
        reached = False
        failures = 0
        reported: set[str] = set()  # each kind of error is logged once; polling goes on
        with httpx.Client(timeout=2.0, trust_env=False, follow_redirects=False) as http:
            while True:
                notice = None
                try:
                    notice = self.poll(http)
                    reached, failures = True, 0
                except httpx.TransportError as exc:
                    failures += 1
                    if not reached and failures >= 3:
                        log.info(
                            "no instance metadata service at %s (%s): spot notices come only from "
                            "SIGTERM and `perdure worker drain`",
                            self.endpoint,
                            exc,
                        )
                        return
                except Exception as exc:  # an HTTP error status or anything odd: never kill the thread
                    self._token = ""
                    kind = (
                        f"{type(exc).__name__}:{getattr(getattr(exc, 'response', None), 'status_code', '')}"
                    )
                    if kind not in reported:
                        reported.add(kind)
                        log.warning("instance metadata at %s: %s; still polling", self.endpoint, exc)
                if notice is not None:
                    self.on_notice(notice)
                    return
                if self.stop.wait(self.poll_s):
                    return

    def poll(self, http: httpx.Client) -> Notice | None:
        headers = {"X-aws-ec2-metadata-token": self._session_token(http)}
        response = http.get(f"{self.endpoint}/latest/meta-data/spot/instance-action", headers=headers)
        if response.status_code == 401:
            self._token = ""  # expired or revoked: a new one next time
            return None
        if response.status_code == 200:
            return self._notice(response.text)
        if not self._rebalance_seen:
            rebalance = http.get(
                f"{self.endpoint}/latest/meta-data/events/recommendations/rebalance", headers=headers
            )
            if rebalance.status_code == 200:
                self._rebalance_seen = True
                self.on_rebalance(rebalance.text.strip())
        return None

    def _session_token(self, http: httpx.Client) -> str:
        if not self._token or time.monotonic() > self._token_expires:
            response = http.put(
                f"{self.endpoint}/latest/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            response.raise_for_status()
            self._token = response.text.strip()
            self._token_expires = time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    def _notice(self, body: str) -> Notice:
        """``{"action": "terminate", "time": "2026-11-24T08:22:00Z"}``: hand over before that time."""
        now = time.monotonic()
        deadline = now + self.deadline_s
        action, when = "terminate", ""
        try:
            document: Any = json.loads(body)
            action = str(document.get("action", action))
            when = str(document.get("time", ""))
            stop_at = datetime.fromisoformat(when.replace("Z", "+00:00"))
            left = (stop_at - datetime.now(UTC)).total_seconds() - SAFETY_MARGIN_S
            deadline = min(deadline, now + max(left, 5.0))
        except (ValueError, AttributeError, TypeError):
            log.warning("unreadable spot instance-action %r; assuming %gs", body[:200], self.deadline_s)
        detail = f"spot interruption notice: {action} at {when or 'an unknown time'}"
        return Notice("spot", detail, deadline)


# ---- drain ------------------------------------------------------------------------------------------


def request_drain(workpath: Path, *, finish: bool, deadline_s: float) -> int:
    """Ask the worker running on ``workpath`` to drain; returns its process id.

    Raises ProcessLookupError when no worker runs there."""
    pid_path = workpath / PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        raise ProcessLookupError(f"no worker is running on {workpath} (no {PID_FILE})") from None
    request = {"finish": finish, "deadline_s": deadline_s, "requested": time.time()}
    tmp = workpath / f".{DRAIN_FILE}.tmp"
    tmp.write_text(json.dumps(request))
    os.replace(tmp, workpath / DRAIN_FILE)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        (workpath / DRAIN_FILE).unlink(missing_ok=True)
        raise ProcessLookupError(f"no worker is running on {workpath} (process {pid} is gone)") from None
    return pid


def take_drain_request(workpath: Path, default_deadline_s: float) -> Notice | None:
    """The pending drain request, if any (consumed)."""
    path = workpath / DRAIN_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        document = {}
    path.unlink(missing_ok=True)
    try:
        deadline_s = float(document.get("deadline_s", default_deadline_s))
    except (TypeError, ValueError):
        deadline_s = default_deadline_s
    finish = bool(document.get("finish", False))
    detail = "drain requested (finish running work)" if finish else "drain requested"
    return Notice("drain", detail, time.monotonic() + max(deadline_s, 1.0), finish=finish)
