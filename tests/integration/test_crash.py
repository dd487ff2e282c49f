"""A crash test: the server is SIGKILLed while clients are mid-run, restarted on the same database,
and the run still finishes with every workunit completed exactly once.

Several worker threads speak the AWE worker protocol over HTTP: register, check out with a short
long-poll, "run" the workunit for a few milliseconds, report it done, and heartbeat every half second
from a thread of their own. They follow a shared, updatable server URL and retry on connection errors
with a short backoff; a report whose reply was lost is sent again until it is answered "ok" (the
original or an identical repeat) or 409 (the lease went elsewhere). The server is killed twice mid-run
and each time a new server process is started on the same data directory and database, on a new port.

One worker "dies with the server" at the first crash: it stops heartbeating and abandons the workunit
it holds, which the restarted server must re-queue once the client's TTL runs out (3 s here).

At the end every job is completed, every workunit is in state done, exactly one client had a done
report accepted for each workunit, and the clients' ``total_completed`` sum to the number of workunits.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.jobs import script, task, upload
from tests.support import ServerProcess

#: Three jobs of 0 (x60) -> 1 (x40) -> 2 (x1): 303 workunits, with task dependencies crossing the crashes.
JOBS = 3
WIDTHS = (60, 40, 1)
WORKERS = 6
#: Kill the server when this share of the workunits has been accepted (and again at the second).
CRASH_AT = (0.25, 0.6)
RUN_DEADLINE_S = 75.0  # typically done in 10-20 s; generous for a loaded machine
HEARTBEAT_S = 0.5
CHECKOUT_WAIT_S = 0.5
BACKOFF_S = 0.1
SERVER_ENV = {"PERDURE_NODE_TTL_S": "3", "PERDURE_SWEEP_INTERVAL_S": "0.3"}


class Target:
    """The server's current base URL, shared by every worker and changed on restart."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        with self._lock:
            return self._url

    @url.setter
    def url(self, value: str) -> None:
        with self._lock:
            self._url = value


class GiveUp(Exception):
    """The run is over (deadline or stop) while a request was still being retried."""


@dataclass
class Worker:
    """One AWE-protocol client, run in a thread, plus its heartbeat thread."""

    index: int
    target: Target
    stop: threading.Event
    deadline: float
    #: Set by the test at the first crash; a doomed worker then abandons its workunit and goes silent.
    crashed: threading.Event
    doomed: bool = False
    id: str = field(default_factory=lambda: f"crash-{uuid.uuid4().hex[:12]}")
    #: Workunit ids whose done report this worker had accepted ("ok"), one entry per checkout.
    accepted: list[str] = field(default_factory=list)
    #: Workunit ids whose report was refused with 409 (the lease was no longer ours).
    conflicts: list[str] = field(default_factory=list)
    abandoned: str | None = None
    #: Responses that should never happen: 5xx, other 4xx, malformed documents.
    anomalies: list[str] = field(default_factory=list)
    transport_errors: int = 0
    #: Reports sent more than once because a reply was lost (the server died mid-request).
    resent: int = 0
    discards: list[str] = field(default_factory=list)
    current: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _send(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on connection errors and 5xx until answered, or until the deadline."""
        while True:
            if time.monotonic() > self.deadline:
                raise GiveUp(f"{method} {path}: deadline")
            try:
                response = http.request(method, self.target.url + path, **kwargs)
            except httpx.TransportError:
                self.transport_errors += 1
                time.sleep(BACKOFF_S)
                continue
            if response.status_code >= 500:
                self.anomalies.append(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
                time.sleep(BACKOFF_S)
                continue
            return response

    # ---- the protocol -----------------------------------------------------------------------------

    def run(self) -> None:
        rng = random.Random(self.index)
        try:
            with httpx.Client(timeout=10.0) as http:
                self._register(http)
                beat = threading.Thread(target=self._heartbeats, name=f"hb-{self.index}", daemon=True)
                beat.start()
                try:
                    self._loop(http, rng)
                finally:
                    self.finished.set()
                    beat.join(5)
        except GiveUp as exc:
            if not self.stop.is_set():
                self.anomalies.append(f"gave up: {exc}")
        except Exception as exc:  # surface anything unexpected through the assertions
            self.anomalies.append(f"worker crashed: {type(exc).__name__}: {exc}")
        finally:
            self.finished.set()

    def _register(self, http: httpx.Client) -> None:
        profile = {"id": self.id, "name": self.id, "group": "default", "apps": ["*"]}
        files = {"profile": ("profile.json", json.dumps(profile), "application/json")}
        response = self._send(http, "POST", "/client", files=files)
        if response.status_code != 200 or response.json()["data"]["id"] != self.id:
            raise AssertionError(f"register -> {response.status_code}: {response.text[:300]}")

    def _loop(self, http: httpx.Client, rng: random.Random) -> None:
        while not self.stop.is_set():
            response = self._send(http, "GET", "/work", params={"client": self.id, "wait": CHECKOUT_WAIT_S})
            if response.status_code == 400 and "No eligible workunit found" in response.text:
                continue
            if response.status_code != 200:
                self.anomalies.append(f"checkout -> {response.status_code}: {response.text[:300]}")
                time.sleep(BACKOFF_S)
                continue
            workunit = response.json()["data"]
            wu_id = workunit["id"]
            if workunit.get("client") != self.id or workunit.get("state") != "checkout":
                self.anomalies.append(
                    f"checkout of {wu_id} shows {workunit.get('client')!r}/{workunit['state']}"
                )
            with self.lock:
                self.current = wu_id
            time.sleep(rng.uniform(0.0, 0.02))  # the "work"
            if self.doomed and self.crashed.is_set():
                self.abandoned = wu_id  # die holding the lease: no report, no more heartbeats
                return
            self._report_done(http, wu_id)
            with self.lock:
                self.current = None

    def _report_done(self, http: httpx.Client, wu_id: str) -> None:
        """Send the report until it is accepted or refused; a lost reply means sending it again."""
        params = {"status": "done", "client": self.id}
        errors_before = self.transport_errors
        while True:
            try:
                response = self._send(http, "PUT", f"/work/{wu_id}", params=params)
            except GiveUp:
                self.anomalies.append(f"report of {wu_id} never answered")
                raise
            if self.transport_errors > errors_before:
                self.resent += 1
            if response.status_code == 200 and response.json().get("data") == "ok":
                self.accepted.append(wu_id)  # counted once however many repeats it took
                return
            if response.status_code == 409:
                self.conflicts.append(wu_id)
                return
            self.anomalies.append(f"report of {wu_id} -> {response.status_code}: {response.text[:300]}")
            return

    def _heartbeats(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while not self.finished.wait(HEARTBEAT_S):
                if self.doomed and self.crashed.is_set():
                    return  # the machine went down with the server
                with self.lock:
                    current = [self.current] if self.current else []
                body = {"busy": bool(current), "current_work": {"data": current}}
                try:
                    response = http.put(
                        f"{self.target.url}/client/{self.id}", params={"heartbeat": ""}, json=body
                    )
                except httpx.TransportError:
                    continue  # the next beat will do
                if response.status_code != 200:
                    self.anomalies.append(f"heartbeat -> {response.status_code}: {response.text[:300]}")
                    continue
                discard = response.json()["data"].get("discard")
                if discard:
                    self.discards.append(discard)


def _submit_jobs(url: str) -> list[str]:
    ids = []
    for n in range(JOBS):
        document = script(
            task("0", totalwork=WIDTHS[0]),
            task("1", depends=["0"], totalwork=WIDTHS[1]),
            task("2", depends=["1"], totalwork=WIDTHS[2]),
            name=f"crash-{n}",
        )
        response = httpx.post(f"{url}/job", files=upload(document), timeout=30.0)
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["id"])
    return ids


def _db_activity(db_url: str) -> str:
    """For a failure message: what PostgreSQL sessions on the test database are doing (or waiting on)."""
    if not db_url.startswith("postgresql"):
        return ""
    try:
        with psycopg.connect(db_url, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 120) "
                "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
    except psycopg.Error as exc:
        return f"pg_stat_activity unavailable: {exc}"
    return "; sessions: " + " | ".join(str(r) for r in rows)


def _job_states(url: str, job_ids: list[str]) -> dict[str, str] | None:
    try:
        return {j: httpx.get(f"{url}/job/{j}", timeout=5.0).json()["data"]["state"] for j in job_ids}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None  # the server is down or coming up


def test_sigkill_mid_run_then_restart_completes_every_workunit_exactly_once(
    tmp_path: Path, db_url: str
) -> None:
    total = JOBS * sum(WIDTHS)
    data_dir = tmp_path / "server-data"
    servers = [ServerProcess(data_dir, db_url, env=SERVER_ENV).start()]
    stop = threading.Event()
    crashed = threading.Event()
    workers: list[Worker] = []
    threads: list[threading.Thread] = []
    try:
        target = Target(servers[0].url)
        job_ids = _submit_jobs(target.url)
        deadline = time.monotonic() + RUN_DEADLINE_S
        workers = [Worker(i, target, stop, deadline, crashed, doomed=(i == 0)) for i in range(WORKERS)]
        threads = [threading.Thread(target=w.run, name=f"worker-{i}") for i, w in enumerate(workers)]
        for thread in threads:
            thread.start()

        def accepted() -> int:
            return sum(len(w.accepted) for w in workers)

        crash_points = [int(total * share) for share in CRASH_AT]
        crash_log: list[str] = []
        states: dict[str, str] | None = None
        while time.monotonic() < deadline:
            if crash_points and accepted() >= crash_points[0]:
                crash_points.pop(0)
                busy = sum(1 for w in workers if w.current)
                servers[-1].kill()
                crashed.set()
                crash_log.append(f"killed at {accepted()}/{total} accepted, {busy} worker(s) holding work")
                time.sleep(0.3)  # let the workers hit connection errors mid-request
                servers.append(ServerProcess(data_dir, db_url, env=SERVER_ENV).start())
                target.url = servers[-1].url
                continue
            states = _job_states(target.url, job_ids)
            if not crash_points and states and all(s == "completed" for s in states.values()):
                break
            time.sleep(0.2)
        # If the run is stuck, see what the database is doing before the workers stop.
        stuck = "" if states and all(s == "completed" for s in states.values()) else _db_activity(db_url)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert not any(t.is_alive() for t in threads), "workers did not stop"

        url = target.url
        assert len(servers) == 1 + len(CRASH_AT), crash_log
        states = _job_states(url, job_ids)
        counts = httpx.get(f"{url}/work", params={"limit": 1, "state": "checkout"}, timeout=10.0).json()
        summary = (
            f"{crash_log}; accepted {accepted()}/{total}; job states {states}; "
            f"workunits still checked out: {counts.get('total_count')}; "
            f"anomalies {[a for w in workers for a in w.anomalies][:10]}; "
            f"last server log: {servers[-1].log()[-3000:]}{stuck}"
        )
        assert states is not None and all(s == "completed" for s in states.values()), summary

        # No 5xx, no unexpected answers.
        anomalies = [f"worker {w.index}: {a}" for w in workers for a in w.anomalies]
        assert not anomalies, anomalies

        # Every workunit is done, per the server.
        server_side: list[str] = []
        for job_id in job_ids:
            report = httpx.get(f"{url}/job/{job_id}", params={"report": ""}, timeout=10.0).json()["data"]
            assert report["state"] == "completed"
            for t in report["tasks"]:
                assert t["state"] == "completed", t
                assert len(t["workunits"]) == t["totalwork"], t
                for wu in t["workunits"]:
                    assert wu["state"] == "done", wu
                    server_side.append(wu["wuid"])
        assert len(server_side) == len(set(server_side)) == total

        # Exactly one accepted done per workunit, and never from two clients.
        per_workunit = Counter(wu for w in workers for wu in w.accepted)
        doubled = {wu: n for wu, n in per_workunit.items() if n != 1}
        assert not doubled, f"workunits with more than one accepted done: {doubled}"
        by_client: dict[str, set[str]] = {}
        for w in workers:
            for wu in w.accepted:
                by_client.setdefault(wu, set()).add(w.id)
        assert all(len(ids) == 1 for ids in by_client.values())
        assert set(per_workunit) == set(server_side), (
            f"done on the server but never accepted: {sorted(set(server_side) - set(per_workunit))[:5]}; "
            f"accepted but unknown: {sorted(set(per_workunit) - set(server_side))[:5]}"
        )

        # The server's own tally agrees.
        listed = httpx.get(f"{url}/client", timeout=10.0).json()["data"]
        ours = {c["id"]: c for c in listed if c["id"] in {w.id for w in workers}}
        assert len(ours) == WORKERS
        assert sum(c["total_completed"] for c in ours.values()) == total
        for w in workers:
            assert ours[w.id]["total_completed"] == len(w.accepted), (w.index, ours[w.id])

        print(  # shown with -s: what the crashes exercised
            f"\n{crash_log}; transport errors {sum(w.transport_errors for w in workers)}; "
            f"reports resent {sum(w.resent for w in workers)}; "
            f"409s {sum(len(w.conflicts) for w in workers)}; "
            f"accepted per worker {[len(w.accepted) for w in workers]}; abandoned {workers[0].abandoned}"
        )
        # The lease the doomed worker abandoned was re-queued after its TTL and completed by another.
        doomed = workers[0]
        if doomed.abandoned is not None:
            assert doomed.abandoned not in doomed.accepted
            assert doomed.abandoned in per_workunit
            assert doomed.id not in by_client[doomed.abandoned]
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        for server in servers:
            server.stop()
