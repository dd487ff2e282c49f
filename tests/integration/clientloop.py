"""A small AWE-protocol worker for integration tests: register, heartbeat, check out, report.

``Worker`` makes single protocol calls and returns the raw ``httpx.Response`` so tests can assert on
status codes and envelopes. ``ClientLoop`` is a thread running the worker's main loop (check out with
a long-poll, heartbeat while "running", report ``done``) and records what the server accepted; it never
raises in the thread, it records surprises in ``errors`` for the test to assert on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx


def envelope(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


def error_text(response: httpx.Response) -> str:
    """The first message of an AWE error envelope ("" if there is none)."""
    try:
        errors = response.json().get("error") or []
    except ValueError:
        return response.text
    return str(errors[0]) if errors else ""


class Worker:
    """One client (worker) talking the AWE worker protocol over its own HTTP connection pool."""

    def __init__(
        self,
        base_url: str,
        client_id: str | None = None,
        *,
        group: str = "default",
        apps: Iterable[str] = ("*",),
        token: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url
        self.id = client_id or f"w-{uuid.uuid4().hex[:12]}"
        self.group = group
        self.apps = list(apps)
        self.token = token
        self.timeout = timeout
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

    # ---- plumbing -------------------------------------------------------------------------------

    def headers(self, token: str | None = None, *, authorization: str | None = None) -> dict[str, str]:
        if authorization is not None:
            return {"Authorization": authorization}
        token = token if token is not None else self.token
        return {"Authorization": f"CG_TOKEN {token}"} if token else {}

    def profile(self, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.id,
            "group": self.group,
            "apps": self.apps,
            "hostname": "localhost",
            "cores": 2,
            "version": "test",
            **extra,
        }

    def close(self) -> None:
        self.http.close()

    # ---- protocol calls -------------------------------------------------------------------------

    def register(self, *, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
        files = {"profile": ("profile.json", json.dumps(self.profile(**extra)), "application/json")}
        return self.http.post(
            "/client", files=files, headers=headers if headers is not None else self.headers()
        )

    def checkout(
        self,
        *,
        available: int | None = None,
        wait: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        params: dict[str, Any] = {"client": self.id}
        if available is not None:
            params["available"] = available
        if wait is not None:
            params["wait"] = wait
        return self.http.get(
            "/work",
            params=params,
            headers=headers if headers is not None else self.headers(),
            timeout=self.timeout + (wait or 0.0),
        )

    def checkout_id(self, **kwargs: Any) -> str:
        """Check out and return the workunit id; fails the test if nothing was handed out."""
        response = self.checkout(**kwargs)
        assert response.status_code == 200, f"{self.id}: checkout gave {response.status_code} {response.text}"
        wu_id: str = envelope(response)["data"]["id"]
        return wu_id

    def report(
        self,
        wu_id: str,
        status: str = "done",
        *,
        computetime: int | None = 1,
        stdout: str | None = None,
        stderr: str | None = None,
        worknotes: str | None = None,
        headers: dict[str, str] | None = None,
        client: str | None = None,
    ) -> httpx.Response:
        params: dict[str, Any] = {"status": status, "client": self.id if client is None else client}
        if computetime is not None:
            params["computetime"] = computetime
        files: dict[str, Any] = {}
        for name, content in (("stdout", stdout), ("stderr", stderr), ("worknotes", worknotes)):
            if content is not None:
                files[name] = (name, content.encode(), "text/plain")
        if not files:  # AWE workers always send a multipart body, possibly empty
            files = {"_": ("", b"", "application/octet-stream")}
        return self.http.put(
            f"/work/{wu_id}",
            params=params,
            files=files,
            headers=headers if headers is not None else self.headers(),
        )

    def heartbeat(
        self,
        current_work: list[str] | None = None,
        *,
        busy: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        work = list(current_work or [])
        body = {"busy": bool(work) if busy is None else busy, "current_work": {"data": work}}
        return self.http.put(
            f"/client/{self.id}",
            params={"heartbeat": ""},
            content=json.dumps(body),
            headers={
                "Content-Type": "application/json",
                **(headers if headers is not None else self.headers()),
            },
        )

    def instructions(self, current_work: list[str] | None = None) -> dict[str, str]:
        response = self.heartbeat(current_work)
        assert response.status_code == 200, (
            f"{self.id}: heartbeat gave {response.status_code} {response.text}"
        )
        data: dict[str, str] = envelope(response)["data"]
        return data

    def info(self) -> dict[str, Any]:
        response = self.http.get(f"/client/{self.id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = envelope(response)["data"]
        return data


@dataclass
class Event:
    """Something a loop saw, with client-side monotonic times around the request."""

    kind: str  # "checkout" or "done"
    wu_id: str
    sent: float
    received: float


@dataclass
class Ledger:
    """What every loop saw, shared and lock-protected."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done_accepted: Counter[str] = field(default_factory=Counter)
    checkouts: Counter[str] = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if event.kind == "done":
                self.done_accepted[event.wu_id] += 1
            else:
                self.checkouts[event.wu_id] += 1

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


class ClientLoop(threading.Thread):
    """A worker's main loop in a thread: long-poll checkout, heartbeat, "run", report done.

    ``run_seconds`` is how long each workunit "runs"; ``before_report`` may return False to skip the
    report (a worker that dies mid-run). The loop ends when ``stop()`` is called.
    """

    def __init__(
        self,
        base_url: str,
        ledger: Ledger,
        *,
        client_id: str | None = None,
        group: str = "default",
        apps: Iterable[str] = ("*",),
        token: str | None = None,
        wait: float = 0.5,
        run_seconds: float = 0.0,
        before_report: Callable[[str], bool] | None = None,
    ) -> None:
        self.worker = Worker(base_url, client_id, group=group, apps=apps, token=token)
        super().__init__(name=f"client-loop-{self.worker.id}", daemon=True)
        self.ledger = ledger
        self.wait = wait
        self.run_seconds = run_seconds
        self.before_report = before_report
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            registered = self.worker.register()
            if registered.status_code != 200:
                self.ledger.error(f"{self.worker.id}: register {registered.status_code} {registered.text}")
                return
            while not self._stop_event.is_set():
                self._one_round()
        except Exception as exc:  # recorded, not raised: the test asserts on ledger.errors
            self.ledger.error(f"{self.worker.id}: {type(exc).__name__}: {exc}")
        finally:
            self.worker.close()

    def _one_round(self) -> None:
        sent = time.monotonic()
        response = self.worker.checkout(wait=self.wait)
        received = time.monotonic()
        if response.status_code == 400 and error_text(response) == "No eligible workunit found":
            return
        if response.status_code != 200:
            self.ledger.error(f"{self.worker.id}: checkout {response.status_code} {response.text}")
            self._stop_event.wait(0.1)
            return
        wu_id = envelope(response)["data"]["id"]
        self.ledger.add(Event("checkout", wu_id, sent, received))
        beat = self.worker.heartbeat([wu_id])
        if beat.status_code != 200 or "discard" in envelope(beat)["data"]:
            self.ledger.error(f"{self.worker.id}: heartbeat while running {wu_id}: {beat.text}")
        if self.run_seconds:
            time.sleep(self.run_seconds)
        if self.before_report is not None and not self.before_report(wu_id):
            return
        sent = time.monotonic()
        reply = self.worker.report(wu_id, "done", stdout=f"ran {wu_id}\n")
        received = time.monotonic()
        if reply.status_code == 200 and envelope(reply)["data"] == "ok":
            self.ledger.add(Event("done", wu_id, sent, received))
        else:
            self.ledger.error(f"{self.worker.id}: report {wu_id}: {reply.status_code} {reply.text}")
