"""End-to-end benchmark: N trivial workunits (``true``) through a real ``perdure worker`` with K slots.

For each K, starts a real ``perdure server`` on a free loopback port (SQLite in a temporary data
directory, or a throwaway PostgreSQL database) and one ``perdure worker --slots K``, submits one job
with one task ``{"cmd": {"name": "true"}, "totalwork": N}`` and times it from submit to ``completed``
(polling ``GET /job/<id>`` every 0.1 s). It prints workunits/s and the overhead per workunit over
running ``true`` directly, then where the time goes, from the worker's perf reports
(``GET /job/<id>?perf``), the server's checkout times and the processes' CPU time.

    .venv/bin/python bench/e2e.py [--workunits 500] [--slots 1,2,4] [--db sqlite|postgresql]

Everything stays on loopback and is bounded in time; the worker and server are stopped and the data
removed even on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from common import (
    Server,
    begin,
    load_average,
    log_tail,
    postgres_database,
    postgres_problem,
    run_main,
    server_cpu,
    stop_process,
)
from perdure.sdk.lean import LeanHTTP

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
POLL_S = 0.1
#: The job script parser refuses a task with more workunits than this.
MAX_TOTALWORK = 100_000
#: Timed requests for each HTTP round trip figure.
HTTP_PROBES = 50
#: No route: answered 404 by the server's front and router, without the database.
BARE_PATH = "/bench-e2e-no-such-route"


# ---- processes -------------------------------------------------------------------------------------


def tree_cpu(pid: int) -> tuple[float, float]:
    """(own CPU seconds of the process and its live descendants, CPU of the children it has reaped)."""
    try:
        root = psutil.Process(pid)
        own, reaped = 0.0, 0.0
        for proc in [root, *root.children(recursive=True)]:
            with suppress(psutil.Error):
                times = proc.cpu_times()
                own += times.user + times.system
                reaped += times.children_user + times.children_system
        return own, reaped
    except psutil.Error:
        return 0.0, 0.0


class Worker:
    """``perdure worker --slots K`` in a child process, with a work path of its own."""

    def __init__(self, work_dir: Path, server_url: str, slots: int) -> None:
        self.workpath = work_dir / "worker"
        self.server_url = server_url
        self.slots = slots
        self.log_path = work_dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, client: httpx.Client, timeout: float = 60.0) -> None:
        """Start it and wait until all K slots are registered, so that start-up is not timed."""
        cmd = [sys.executable, "-m", "perdure", "worker", "--server", self.server_url]
        cmd += ["--workpath", str(self.workpath), "--slots", str(self.slots), "--apps", "*"]
        env = {**os.environ, "PERDURE_WORKER_IMDS_ENDPOINT": ""}  # no cloud metadata look-up
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
            with suppress(httpx.HTTPError):
                response = client.get("/client")
                if response.status_code == 200 and len(response.json().get("data") or []) >= self.slots:
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"worker did not register {self.slots} slot(s) within {timeout:.0f}s:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 20.0)


# ---- measurements ----------------------------------------------------------------------------------


@dataclass
class Direct:
    """Running ``true`` N times with subprocess in this process."""

    seconds: float  # wall time per run
    cpu: float  # CPU time per run, of the children (``true`` itself after fork/exec)


def run_direct(n: int) -> Direct:
    executable = shutil.which("true")
    if executable is None:
        raise RuntimeError("no `true` on PATH")
    subprocess.run([executable], check=True)  # warm-up: page cache, PATH look-up
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([executable], check=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Direct(seconds / n, cpu / n)


def http_round_trip(client: httpx.Client) -> float:
    """Median of ``GET /`` through httpx on a kept-alive connection, in seconds. Not a bare round trip:
    httpx's own CPU, FastAPI's routing, a thread hop and the job counts read from the database."""
    client.get("/")
    samples = []
    for _ in range(HTTP_PROBES):
        t0 = time.perf_counter()
        client.get("/")
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bare_round_trip(url: str) -> float:
    """Median of a request the server answers without its database (404 of an unknown path), through
    the worker's own client (``sdk/lean.py``) on a kept-alive connection: the floor of a worker call."""
    lean = LeanHTTP(url, {}, None)
    try:
        lean.request("GET", BARE_PATH, timeout=30.0)
        samples = []
        for _ in range(HTTP_PROBES):
            t0 = time.perf_counter()
            lean.request("GET", BARE_PATH, timeout=30.0)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        lean.close()


def job_script(n: int) -> bytes:
    document = {
        "info": {"pipeline": "bench-e2e", "name": f"e2e-{n}", "project": "bench", "user": "bench"},
        "tasks": [{"taskid": "true", "cmd": {"name": "true"}, "totalwork": n}],
    }
    return json.dumps(document).encode()


def parse_time(value: str) -> float:
    """The server's RFC 3339 UTC time (``...Z``, up to microseconds) as Unix seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def checkout_times(client: httpx.Client, job_id: str) -> dict[str, float]:
    """The server's checkout time of each done workunit of the job (``GET /work?state=done``)."""
    times: dict[str, float] = {}
    offset = 0
    while True:
        response = client.get("/work", params={"state": "done", "limit": "1000", "offset": str(offset)})
        response.raise_for_status()
        body = response.json()
        for wu in body["data"]:
            if wu["jobid"] == job_id:
                times[wu["id"]] = parse_time(wu["checkout_time"])
        offset += len(body["data"])
        if not body["data"] or offset >= body.get("total_count", 0):
            return times


@dataclass
class Result:
    db: str
    slots: int
    n: int
    wall: float
    direct: Direct
    rtt: float = 0.0
    bare_rtt: float = 0.0
    #: means per workunit, seconds, from the perf reports
    runtime: float = 0.0
    data_in: float = 0.0
    total: float = 0.0
    #: per workunit on its slot: end of Runner.run -> the server claims the slot's next workunit
    to_claim: float = 0.0
    #: per workunit: the server claims it -> Runner.run starts on the worker
    claim_to_run: float = 0.0
    gaps_counted: int = 0
    idle_slots: int = 0
    #: CPU seconds per workunit
    server_cpu: float = 0.0
    worker_cpu: float = 0.0
    children_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def per_slot(self) -> float:
        """Wall time per workunit on one slot."""
        return self.wall * self.slots / self.n

    @property
    def overhead(self) -> float:
        return self.per_slot - self.direct.seconds


def analyse(result: Result, perf: dict[str, Any], claimed: dict[str, float]) -> None:
    stats = [s for s in perf.get("work_stats", {}).values() if isinstance(s, dict)]
    if len(stats) != result.n:
        result.notes.append(f"{len(stats)} perf reports for {result.n} workunits")
    if not stats:
        return
    result.runtime = statistics.fmean(s.get("runtime", 0.0) for s in stats)
    result.data_in = statistics.fmean(s.get("time_data_in", 0.0) for s in stats)
    result.total = statistics.fmean(s.get("total_time", 0.0) for s in stats)
    by_slot: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for wu_id, s in perf["work_stats"].items():
        if isinstance(s, dict) and "checkout" in s:
            by_slot.setdefault(s.get("client_id", ""), []).append((wu_id, s))
    result.idle_slots = max(0, result.slots - len(by_slot))
    to_claim, claim_to_run = [], []
    for items in by_slot.values():
        items.sort(key=lambda item: item[1]["checkout"])
        for (_, prev), (wu_id, cur) in itertools.pairwise(items):
            if wu_id in claimed:
                to_claim.append(claimed[wu_id] - (prev["checkout"] + prev.get("total_time", 0.0)))
                claim_to_run.append(cur["checkout"] - claimed[wu_id])
    if to_claim:
        result.to_claim = statistics.fmean(to_claim)
        result.claim_to_run = statistics.fmean(claim_to_run)
        result.gaps_counted = len(to_claim)


# ---- one run ---------------------------------------------------------------------------------------


def run_once(kind: str, db_url: str | None, slots: int, args: argparse.Namespace) -> Result:
    direct = run_direct(args.workunits)
    with tempfile.TemporaryDirectory(prefix=f"perdure-bench-e2e-{kind}-{slots}-") as tmp:
        work_dir = Path(tmp)
        server = Server(work_dir / "data", db_url, 1)
        worker = Worker(work_dir, server.url, slots)
        try:
            server.start()
            with httpx.Client(base_url=server.url, timeout=30.0) as client:
                worker.start(client)
                assert server.proc is not None and worker.proc is not None
                server_cpu0 = server_cpu(server)
                worker_cpu0, children_cpu0 = tree_cpu(worker.proc.pid)

                files = {"upload": ("e2e.json", job_script(args.workunits), "application/json")}
                t0 = time.perf_counter()
                response = client.post("/job", files=files)
                if response.status_code != 200:
                    raise RuntimeError(f"POST /job -> {response.status_code}: {response.text[:600]}")
                job_id = response.json()["data"]["id"]
                deadline = t0 + args.timeout
                state = ""
                while True:
                    state = client.get(f"/job/{job_id}").json()["data"]["state"]
                    if state == "completed":
                        break
                    if state not in ("queued", "in-progress") or time.perf_counter() > deadline:
                        why = f"state {state!r}" if state not in ("queued", "in-progress") else "timed out"
                        raise RuntimeError(
                            f"job {job_id} did not complete ({why} after {time.perf_counter() - t0:.0f} s)"
                            f"\nworker log (tail):\n{log_tail(worker.log_path)}"
                            f"\nserver log (tail):\n{server.log_tail()}"
                        )
                    if worker.proc.poll() is not None:
                        raise RuntimeError(f"worker exited:\n{log_tail(worker.log_path)}")
                    time.sleep(POLL_S)
                wall = time.perf_counter() - t0

                server_cpu1 = server_cpu(server)
                worker_cpu1, children_cpu1 = tree_cpu(worker.proc.pid)
                result = Result(kind, slots, args.workunits, wall, direct)
                n = args.workunits
                result.server_cpu = (server_cpu1 - server_cpu0) / n
                result.worker_cpu = (worker_cpu1 - worker_cpu0) / n
                result.children_cpu = (children_cpu1 - children_cpu0) / n
                # After the clock stops: these requests are not part of the timed run.
                worker.stop()
                perf = client.get(f"/job/{job_id}", params={"perf": ""}).json()["data"]
                analyse(result, perf, checkout_times(client, job_id))
                result.rtt = http_round_trip(client)
                result.bare_rtt = bare_round_trip(server.url)
                return result
        finally:
            worker.stop()
            server.stop()


# ---- output ----------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def print_result(r: Result) -> None:
    print(
        f"\n  K={r.slots}: {r.n} workunits in {r.wall:.2f} s = {r.rate:.1f} workunits/s; "
        f"overhead {r.overhead * 1000:.2f} ms per workunit "
        f"(wall*K/N {r.per_slot * 1000:.2f} ms - `true` run directly {r.direct.seconds * 1000:.2f} ms)"
    )
    runner_rest = r.total - r.runtime - r.data_in
    between = r.per_slot - r.total
    unaccounted = between - r.to_claim - r.claim_to_run
    print("    where a slot's time goes, ms per workunit (means; perf reports and server checkout times):")
    print(f"    {ms(r.runtime)}  runtime: spawn `true` and wait for it (Runner._execute)")
    print(f"    {ms(r.data_in)}  time_data_in: work directory, environment, inputs (none here)")
    print(f"    {ms(runner_rest)}  rest of Runner.run (userattr.json, output check)")
    print(f"    {ms(r.total)}  = total_time (Runner.run)")
    print(f"    {ms(r.to_claim)}  end of Runner.run -> server claims the slot's next workunit")
    print("               (report: PUT /work multipart + transaction; tidy; GET /work until the claim)")
    print(f"    {ms(r.claim_to_run)}  server claims it -> Runner.run starts (checkout commit, reply, decode)")
    print(f"    {ms(unaccounted)}  start and finish spread over N/K (first claim, last report, 0.1 s poll)")
    print(f"    {ms(r.per_slot)}  = wall*K/N")
    print(
        f"    for scale: `true` run directly {r.direct.seconds * 1000:.2f} ms "
        f"(its CPU {r.direct.cpu * 1000:.2f} ms); HTTP round trip, p50: bare (lean client, a 404, no "
        f"database) {r.bare_rtt * 1000:.2f} ms, GET / (httpx, reads the job counts) {r.rtt * 1000:.2f} ms"
    )
    print(
        f"    CPU per workunit: server {r.server_cpu * 1000:.2f} ms, worker (Python) "
        f"{r.worker_cpu * 1000:.2f} ms, `true` children {r.children_cpu * 1000:.2f} ms"
        + (" (PostgreSQL backends not counted)" if r.db == "postgresql" else "")
    )
    if r.idle_slots:
        r.notes.append(f"{r.idle_slots} slot(s) got no work")
    if r.gaps_counted < r.n - r.slots:
        r.notes.append(f"server checkout times matched only {r.gaps_counted} of {r.n - r.slots} workunits")
    for note in r.notes:
        print(f"    !! {note}")


def print_summary(results: list[Result]) -> None:
    print("\n=== summary ===")
    print(
        f"  {'db':<10} {'K':>2} {'wall s':>7} {'wu/s':>7} {'wall*K/N ms':>11} {'direct ms':>9} "
        f"{'overhead ms':>11} {'srv CPU ms':>10} {'wrk CPU ms':>10}"
    )
    for r in results:
        print(
            f"  {r.db:<10} {r.slots:>2} {r.wall:7.2f} {r.rate:7.1f} {r.per_slot * 1000:11.2f} "
            f"{r.direct.seconds * 1000:9.2f} {r.overhead * 1000:11.2f} {r.server_cpu * 1000:10.2f} "
            f"{r.worker_cpu * 1000:10.2f}"
        )


# ---- main ------------------------------------------------------------------------------------------


def parse_slots(value: str) -> list[int]:
    try:
        slots = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {value!r}") from None
    if not slots or any(k < 1 for k in slots):
        raise argparse.ArgumentTypeError("slots must be integers of at least 1")
    return slots


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workunits", type=int, default=500, help="workunits in the job (default 500)")
    parser.add_argument("--slots", type=parse_slots, default=[1, 2, 4], help="worker slots K (default 1,2,4)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on a run after this many seconds (default 600)"
    )
    parser.add_argument(
        "--pg-admin", default=PG_ADMIN_DSN, help=f"PostgreSQL admin DSN (default {PG_ADMIN_DSN})"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.workunits <= MAX_TOTALWORK:
        parser.error(f"--workunits must be between 1 and {MAX_TOTALWORK}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin("end-to-end")
    print(
        f"\n=== {args.db}: {args.workunits} workunits of `true` in one task, "
        f"one worker with K = {', '.join(map(str, args.slots))} slot(s) ==="
    )
    if args.db == "postgresql":
        problem = postgres_problem(args.pg_admin)
        if problem:
            print(f"  SKIPPED ({problem})")
            return 1
    results: list[Result] = []
    for slots in args.slots:
        if args.db == "postgresql":
            with postgres_database(args.pg_admin) as url:
                result = run_once(args.db, url, slots, args)
        else:
            result = run_once(args.db, None, slots, args)
        print_result(result)
        results.append(result)
    print_summary(results)
    print(f"  {load_average()} at the end")
    return 1 if any(r.notes for r in results) else 0


if __name__ == "__main__":
    run_main(main, "processes stopped and data removed")
