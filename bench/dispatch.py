"""Dispatch benchmark: workunits/s and checkout latency through M concurrent HTTP workers.

Starts a real ``perdure server`` on a free loopback port (SQLite in a temporary data directory, or a
throwaway PostgreSQL database), queues Q workunits (jobs of one split task each), registers M clients
and runs M concurrent worker loops, each doing ``GET /work?client=<id>`` (checkout) then
``PUT /work/<id>?status=done&client=<id>`` (report) with no process execution in between, until N
workunits have gone through after a warm-up. While they run, the queue is topped up with new jobs so
it stays between about 3/4 Q and Q deep. It prints workunits/s, checkout and report latency
(p50/p99/max), where the CPU went (server, PostgreSQL, this client), and a summary against the targets.

    .venv/bin/python bench/dispatch.py [--db sqlite|postgresql|both] [--clients 32]
                                       [--queued 1000,100000] [--measure 3000] [--server-workers 1]
                                       [--task-size 1000] [--http raw|httpx] [--next] [--pg-analyze]

With ``--next`` each report after a worker's first checkout also asks for its next workunit
(``PUT /work/<id>?status=done&client=<id>&next``, Perdure's extension): one request per workunit, whose
latency is counted as both the report's and the checkout's.

CPU is per process, sampled at both ends of the measured window: PostgreSQL backends that the server's
pool opens and closes inside the window are not counted (the "sessions opened" figure shows how many).

Everything stays on loopback and is bounded in time; the server is stopped and the database dropped
even on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import psutil
import psycopg

from common import Server, postgres_database, postgres_problem, print_failures

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The job script parser refuses a task with more workunits than this.
MAX_TOTALWORK = 100_000
MAX_ERRORS_KEPT = 10
#: Targets from the design notes, checked in the summary.
TARGET_PG_RATE = 1000.0
TARGET_P99_MS = 50.0
TARGET_DEPTH_RATIO = 1.5


# ---- the server ------------------------------------------------------------------------------------


# ---- CPU accounting --------------------------------------------------------------------------------


def _cpu_times(processes: list[psutil.Process]) -> dict[tuple[int, float], float]:
    """CPU seconds (user + system) so far, per process (keyed by pid and start time)."""
    times: dict[tuple[int, float], float] = {}
    for process in processes:
        try:
            cpu = process.cpu_times()
            times[(process.pid, process.create_time())] = cpu.user + cpu.system
        except psutil.Error:
            pass
    return times


def _used(before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]) -> float:
    """CPU seconds used between two samples by the processes alive at both."""
    return sum(after[key] - before[key] for key in before.keys() & after.keys())


def _postgres_backends(database: str) -> list[psutil.Process]:
    """The PostgreSQL backends serving our throwaway database (their title names it)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(process.info.get("cmdline") or [])
        if (process.info.get("name") or "").startswith("postgres") and f" {database} " in f"{title} ":
            found.append(process)
    return found


@dataclass
class CpuSnapshot:
    wall: float
    server: dict[tuple[int, float], float]
    postgres: dict[tuple[int, float], float]
    client: float


def cpu_snapshot(server: Server, pg: list[psutil.Process]) -> CpuSnapshot:
    return CpuSnapshot(
        time.perf_counter(), _cpu_times(server.processes()), _cpu_times(pg), time.process_time()
    )


class PgSampler:
    """What our database's sessions do while we measure: ``pg_stat_activity`` sampled every 50 ms
    (a wait profile), and ``pg_stat_database`` counters (sessions opened, commits, time in statements
    and idle inside transactions) before and after."""

    COUNTERS = "sessions, xact_commit, xact_rollback, active_time, idle_in_transaction_time, deadlocks"

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.samples: Counter[str] = Counter()
        self.n = 0
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _counters(self, conn: psycopg.Connection[Any]) -> dict[str, float]:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            f"SELECT {self.COUNTERS} FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        names = [c.strip() for c in self.COUNTERS.split(",")]
        return {name: float(v or 0) for name, v in zip(names, row or (), strict=False)}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
            self.before = self._counters(conn)
            while not self._stop.wait(0.05):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, left(query, 40) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ).fetchall()
                self.n += 1
                for state, wtype, wevent, query in rows:
                    if state == "idle":
                        continue
                    if state == "active":
                        what = f"{wtype}:{wevent}" if wtype else "running"
                        key = f"active, {what}: {' '.join((query or '').split())}"
                    else:
                        key = f"{state} (waiting for the server)"
                    self.samples[key] += 1
            time.sleep(1.1)  # backends flush their statistics at most once a second
            self.after = self._counters(conn)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def report(self, workunits: int) -> list[str]:
        lines = []
        if self.before and self.after:
            d = {k: self.after[k] - self.before.get(k, 0.0) for k in self.after}
            per = max(1, workunits)
            lines.append(
                f"postgres: {d['sessions']:.0f} sessions opened, {d['xact_commit'] / per:.1f} commits and "
                f"{d['xact_rollback'] / per:.2f} rollbacks per workunit; per workunit "
                f"{d['active_time'] / per:.2f} ms in statements (incl. lock waits), "
                f"{d['idle_in_transaction_time'] / per:.2f} ms idle in transaction; "
                f"deadlocks {d['deadlocks']:.0f}"
            )
        if self.n:
            top = ", ".join(f"{count / self.n:.1f} x {key}" for key, count in self.samples.most_common(6))
            lines.append(f"postgres sessions busy (average over {self.n} samples): {top or 'none'}")
        return lines


# ---- the workload ----------------------------------------------------------------------------------


def job_script(name: str, totalwork: int) -> bytes:
    """One job with one split task of ``totalwork`` workunits; the command is never run."""
    document = {
        "info": {"pipeline": "bench-dispatch", "name": name, "project": "bench", "user": "bench"},
        "tasks": [{"taskid": "0", "cmd": {"name": "true", "args": ""}, "totalwork": totalwork}],
    }
    return json.dumps(document).encode()


def submit(client: httpx.Client, name: str, totalwork: int) -> None:
    files = {"upload": (f"{name}.json", job_script(name, totalwork), "application/json")}
    response = client.post("/job", files=files)
    if response.status_code != 200:
        raise RuntimeError(f"POST /job -> {response.status_code}: {response.text[:500]}")


def load_queue(url: str, queued: int, task_size: int, concurrency: int = 4) -> int:
    """Queue ``queued`` workunits as jobs of at most ``task_size``; returns the number of jobs."""
    sizes = [task_size] * (queued // task_size)
    if queued % task_size:
        sizes.append(queued % task_size)
    with httpx.Client(base_url=url, timeout=300.0) as client:
        # The first job alone, so the queue's head is the oldest job (FIFO), then the rest in parallel.
        submit(client, "queue-0", sizes[0])
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda i: submit(client, f"queue-{i}", sizes[i]), range(1, len(sizes))))
    return len(sizes)


def register(url: str, count: int) -> list[str]:
    ids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for client_id in ids:
            profile = {"id": client_id, "name": client_id, "group": "default", "apps": ["*"]}
            files = {"profile": ("profile.json", json.dumps(profile), "application/json")}
            response = client.post("/client", files=files)
            if response.status_code != 200:
                raise RuntimeError(f"POST /client -> {response.status_code}: {response.text[:500]}")
    return ids


def count_workunits(url: str, state: str) -> int:
    response = httpx.get(f"{url}/work", params={"state": state, "limit": 1}, timeout=60.0)
    response.raise_for_status()
    return int(response.json()["total_count"])


# ---- HTTP for the worker loops ---------------------------------------------------------------------


class Http(Protocol):
    async def request(self, method: str, path: str) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxHttp:
    """httpx.AsyncClient over a shared keep-alive pool (what a Python worker would use)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(self, method: str, path: str) -> tuple[int, bytes]:
        response = await self.client.request(method, path)
        return response.status_code, response.content

    async def aclose(self) -> None:
        pass


class RawHttp:
    """One keep-alive HTTP/1.1 connection, hand-rolled: a fraction of httpx's CPU per request, so that
    on a small machine the benchmark's client steals less CPU from the server it measures."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: 0\r\n\r\n"
            try:
                self.writer.write(head.encode())
                raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
                status = int(raw[9:12])
                length, close = 0, False
                for line in raw.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await asyncio.wait_for(self.reader.readexactly(length), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.aclose()
                if attempt == 2:
                    raise
                continue  # a keep-alive connection the server had closed: once more on a new one
            if close:
                await self.aclose()
            return status, body
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# ---- the measured run ------------------------------------------------------------------------------


@dataclass
class Run:
    warmup: int
    measure: int
    queued: int
    chunk: int
    deadline: float
    #: workunits claimed for a loop (bounds the total), and reported done
    claimed: int = 0
    done: int = 0
    topped_up: int = 0
    top_up_jobs: int = 0
    depth_min: int = 0
    depth_max: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    checkout_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    empty: int = 0
    errors: int = 0
    kept: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def target(self) -> int:
        return self.warmup + self.measure

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.kept) < MAX_ERRORS_KEPT:
            self.kept.append(message)

    def depth(self) -> int:
        return self.queued + self.topped_up - self.claimed

    def note_depth(self) -> None:
        depth = self.depth()
        self.depth_min, self.depth_max = min(self.depth_min, depth), max(self.depth_max, depth)


async def worker_loop(http: Http, client_id: str, run: Run, combined: bool = False) -> None:
    """Check out, report done, again. ``combined``: after the first checkout, each report asks for the
    next workunit too (``PUT /work/<id>?status=done&client=<id>&next``, Perdure's extension), and its
    latency counts as both the report's and the checkout's."""
    client = quote(client_id)
    held: str | None = None
    while True:
        more = run.claimed < run.target and time.monotonic() < run.deadline
        if held is None:
            if not more:
                return
            run.claimed += 1
            timed = run.started.is_set()
            t0 = time.perf_counter()
            status, body = await http.request("GET", f"/work?client={client}")
            t1 = time.perf_counter()
            if status == 400 and b"No eligible workunit" in body:
                run.claimed -= 1
                run.empty += 1
                await asyncio.sleep(0.005)
                continue
            if status != 200:
                run.claimed -= 1
                run.error(f"checkout -> {status}: {body[:300]!r}")
                await asyncio.sleep(0.05)
                continue
            held = json.loads(body)["data"]["id"]
            run.note_depth()
            if timed:
                run.checkout_ms.append((t1 - t0) * 1000)
            continue
        ask_next = combined and more
        if ask_next:
            run.claimed += 1
        timed = run.started.is_set()
        t1 = time.perf_counter()
        path = f"/work/{quote(held)}?status=done&client={client}" + ("&next" if ask_next else "")
        status, body = await http.request("PUT", path)
        t2 = time.perf_counter()
        reported, held = held, None
        if status != 200 or b'"ok"' not in body:
            run.claimed -= ask_next
            run.error(f"report of {reported} -> {status}: {body[:300]!r}")
            continue
        if timed:
            run.report_ms.append((t2 - t1) * 1000)
            if ask_next:
                run.checkout_ms.append((t2 - t1) * 1000)
        run.done += 1
        if run.done == run.warmup:
            run.t_start = time.perf_counter()
            run.started.set()
        elif run.done == run.target:
            run.t_end = time.perf_counter()
            run.finished.set()
        if ask_next:
            answer = json.loads(body)
            if answer.get("next"):
                held = answer["next"]["id"]
                run.note_depth()
                continue
            run.claimed -= 1
            failure = answer.get("next_error") or {}
            if "No eligible workunit" in " ".join(failure.get("error") or []):
                run.empty += 1
                await asyncio.sleep(0.005)
            else:
                run.error(f"next checkout after {reported}: {failure}")
                await asyncio.sleep(0.05)


async def top_up(url: str, run: Run) -> None:
    """Keep the queue at about Q deep: a new job of ``chunk`` workunits per ``chunk`` claimed."""
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        while not run.finished.is_set() and time.monotonic() < run.deadline:
            if run.claimed - run.topped_up >= run.chunk and run.claimed < run.target:
                name = f"top-up-{run.top_up_jobs}"
                files = {"upload": (f"{name}.json", job_script(name, run.chunk), "application/json")}
                response = await client.post("/job", files=files)
                if response.status_code != 200:
                    run.error(f"top-up POST /job -> {response.status_code}: {response.text[:300]}")
                    return
                run.topped_up += run.chunk
                run.top_up_jobs += 1
            else:
                await asyncio.sleep(0.01)


async def drive(
    url: str, port: int, client_ids: list[str], run: Run, kind: str, combined: bool = False
) -> None:
    limits = httpx.Limits(max_connections=len(client_ids), max_keepalive_connections=len(client_ids))
    shared = httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits)
    https: list[Http] = [
        HttpxHttp(shared) if kind == "httpx" else RawHttp("127.0.0.1", port, 60.0) for _ in client_ids
    ]
    filler = asyncio.create_task(top_up(url, run))
    try:
        await asyncio.gather(
            *(worker_loop(h, c, run, combined) for h, c in zip(https, client_ids, strict=True))
        )
    finally:
        filler.cancel()
        with suppress(asyncio.CancelledError):
            await filler
        for h in https:
            await h.aclose()
        await shared.aclose()


# ---- reporting -------------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Latency:
    p50: float
    p99: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        ordered = sorted(values)
        return cls(
            percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1] if ordered else 0.0, len(ordered)
        )

    def __str__(self) -> str:
        return f"p50 {self.p50:6.1f}  p99 {self.p99:6.1f}  max {self.max:6.1f}  (n={self.n})"


@dataclass
class Result:
    db: str
    queued: int
    rate: float = 0.0
    checkout: Latency | None = None
    report: Latency | None = None
    error: str | None = None


def run_one(kind: str, db_url: str | None, queued: int, work_dir: Path, args: argparse.Namespace) -> Result:
    result = Result(kind, queued)
    server = Server(work_dir / "data", db_url, args.server_workers)
    label = f"{kind}, {queued:,} queued, {args.clients} clients, {args.server_workers} server worker(s)"
    mode = "report+next in one request" if args.next else "checkout and report"
    print(f"\n=== {label}, {args.http} client, {mode} ===", flush=True)
    run: Run | None = None
    try:
        server.start()
        t0 = time.perf_counter()
        jobs = load_queue(server.url, queued, args.task_size)
        print(f"  queue: {queued:,} workunits in {jobs} job(s) loaded in {time.perf_counter() - t0:.1f} s")
        if args.pg_analyze and db_url:
            with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute("ANALYZE")
            print("  ANALYZE run on the database after loading (--pg-analyze)")
        client_ids = register(server.url, args.clients)
        warmup = args.warmup if args.warmup >= 0 else max(100, args.measure // 10)
        chunk = max(1, min(args.task_size, queued // 4))
        run = Run(warmup, args.measure, queued, chunk, time.monotonic() + args.timeout)
        run.depth_min = run.depth_max = queued
        pg: list[psutil.Process] = []
        sampler = PgSampler(db_url) if db_url else None

        async def measured() -> tuple[CpuSnapshot, CpuSnapshot]:
            task = asyncio.create_task(drive(server.url, server.port, client_ids, run, args.http, args.next))
            await asyncio.wait([task, asyncio.create_task(run.started.wait())], return_when="FIRST_COMPLETED")
            if db_url:  # the backends serving the server's pool exist once warm-up is over
                pg.extend(_postgres_backends(db_url.rsplit("/", 1)[-1]))
            before = cpu_snapshot(server, pg)
            if sampler:
                sampler.start()
            await asyncio.wait(
                [task, asyncio.create_task(run.finished.wait())], return_when="FIRST_COMPLETED"
            )
            after = cpu_snapshot(server, pg)
            if sampler:
                await asyncio.to_thread(sampler.stop)
            await task
            return before, after

        load_before = os.getloadavg()[0]
        before, after = asyncio.run(measured())
        measured_n = run.measure
        if not run.finished.is_set():
            if not run.started.is_set():
                raise RuntimeError(f"warm-up not over ({run.done} done) within --timeout {args.timeout:.0f}s")
            run.t_end = time.perf_counter()
            measured_n = run.done - run.warmup
            run.error(f"TIMED OUT: only {measured_n} of {run.measure} measured workunits done in --timeout")
        seconds = run.t_end - run.t_start
        result.rate = measured_n / seconds
        result.checkout = Latency.of(run.checkout_ms)
        result.report = Latency.of(run.report_ms)
        print(
            f"  measured {measured_n:,} workunits (after {run.warmup} warm-up) in {seconds:.2f} s: "
            f"{result.rate:,.0f} workunits/s"
        )
        if args.next:
            print(f"  checkout latency, ms: {result.checkout}  (first checkouts, then report+next)")
            print(f"  report+next latency, ms: {result.report}")
        else:
            print(f"  checkout latency, ms: {result.checkout}")
            print(f"  report   latency, ms: {result.report}")
        print(
            f"  queue depth during the run: {run.depth_min:,}..{run.depth_max:,} "
            f"({run.top_up_jobs} top-up job(s) of {run.chunk}); empty checkouts: {run.empty}"
        )
        wall = after.wall - before.wall
        cores = psutil.cpu_count() or 1
        shares = [
            ("server", _used(before.server, after.server)),
            ("bench client", after.client - before.client),
        ]
        if db_url:
            label = f"postgres ({len(pg)} backends alive throughout)"
            shares.insert(1, (label, _used(before.postgres, after.postgres)))
        used = ", ".join(f"{name} {100 * cpu / wall:.0f}%" for name, cpu in shares)
        per_wu = ", ".join(
            f"{name.split(' (')[0]} {1000 * cpu / max(1, measured_n):.2f}" for name, cpu in shares
        )
        print(
            f"  CPU while measuring (100% = one core, {cores} cores): {used}; "
            f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
        )
        print(f"  CPU ms per workunit: {per_wu}")
        for line in sampler.report(measured_n) if sampler else []:
            print(f"  {line}")
        done = count_workunits(server.url, "done")
        held = count_workunits(server.url, "checkout")
        if done != run.done or held:
            run.error(f"server counts {done} done and {held} checked out; the loops counted {run.done} done")
        print(
            f"  check: server counts {done:,} workunits done (loops: {run.done:,}), {held} still checked out"
        )
    except BaseException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        server.stop()
        if run is not None and run.errors:
            result.error = result.error or f"{run.errors} failed request(s)"
            print_failures(run.errors, run.kept, server)
    return result


def print_summary(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n=== summary: {args.clients} clients, {args.server_workers} server worker(s), "
        f"{args.http} client{', --next' if args.next else ''} ==="
    )
    print(f"  {'database':<11} {'queued':>8} {'wu/s':>7} {'checkout p50':>13} {'p99':>7} {'max':>7}")
    for r in results:
        if r.checkout is None:
            print(f"  {r.db:<11} {r.queued:>8,} {'-':>7}  {r.error}")
            continue
        c = r.checkout
        print(f"  {r.db:<11} {r.queued:>8,} {r.rate:>7,.0f} {c.p50:>13.1f} {c.p99:>7.1f} {c.max:>7.1f}")
    print("  targets:")
    for db in dict.fromkeys(r.db for r in results):
        measured = sorted((r for r in results if r.db == db and r.checkout), key=lambda r: r.queued)
        if not measured:
            continue
        checks = []
        if db == "postgresql":
            worst = min(r.rate for r in measured)
            checks.append(
                f"rate >= {TARGET_PG_RATE:.0f}/s: {_verdict(worst >= TARGET_PG_RATE)} ({worst:,.0f})"
            )
        if args.clients == 32:
            p99 = max(r.checkout.p99 for r in measured if r.checkout)
            checks.append(
                f"checkout p99 <= {TARGET_P99_MS:.0f} ms: {_verdict(p99 <= TARGET_P99_MS)} ({p99:.1f})"
            )
        if len(measured) >= 2:
            small, big = measured[0], measured[-1]
            ratio = small.rate / big.rate if big.rate else math.inf
            checks.append(
                f"rate at {small.queued:,} / at {big.queued:,} <= {TARGET_DEPTH_RATIO}: "
                f"{_verdict(ratio <= TARGET_DEPTH_RATIO)} ({ratio:.2f})"
            )
        print(f"  {db:<11} " + ("; ".join(checks) or "(no target applies to this run)"))


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ---- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--clients", type=int, default=32, help="concurrent workers M (default 32)")
    parser.add_argument(
        "--queued",
        default="1000,100000",
        help="queue depths Q to measure at, comma-separated (default 1000,100000)",
    )
    parser.add_argument("--measure", type=int, default=3000, help="workunits timed per run N (default 3000)")
    parser.add_argument(
        "--warmup", type=int, default=-1, help="untimed workunits first (default N/10, >= 100)"
    )
    parser.add_argument("--server-workers", type=int, default=1, help="perdure server --workers (default 1)")
    parser.add_argument(
        "--task-size",
        type=int,
        default=1000,
        help=f"workunits per queued job (default 1000, max {MAX_TOTALWORK})",
    )
    parser.add_argument(
        "--http", choices=("raw", "httpx"), default="raw", help="worker HTTP client (default raw: cheapest)"
    )
    parser.add_argument(
        "--next",
        action="store_true",
        help="report and check out the next workunit in one request (PUT ...&next, Perdure's extension)",
    )
    parser.add_argument(
        "--pg-analyze",
        action="store_true",
        help="run ANALYZE after loading the queue on PostgreSQL (what autovacuum does within a minute or so)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds allowed per measured run (default 180)"
    )
    parser.add_argument(
        "--pg-admin", default=PG_ADMIN_DSN, help=f"PostgreSQL admin DSN (default {PG_ADMIN_DSN})"
    )
    args = parser.parse_args(argv)
    try:
        args.queued = [int(q.replace("_", "")) for q in args.queued.split(",") if q.strip()]
    except ValueError:
        parser.error("--queued must be comma-separated integers")
    if not args.queued or min(args.queued) < 1:
        parser.error("--queued needs at least one depth, each at least 1")
    for name in ("clients", "measure", "server_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.task_size <= MAX_TOTALWORK:
        parser.error(f"--task-size must be between 1 and {MAX_TOTALWORK}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results: list[Result] = []
    for kind in kinds:
        if kind == "postgresql":
            problem = postgres_problem(args.pg_admin)
            if problem:
                print(f"\n=== postgresql: SKIPPED ({problem}) ===")
                results.append(Result(kind, 0, error="skipped: " + problem))
                continue
        for queued in args.queued:
            with tempfile.TemporaryDirectory(prefix=f"perdure-dispatch-{kind}-") as tmp:
                try:
                    if kind == "sqlite":
                        results.append(run_one(kind, None, queued, Path(tmp), args))
                        continue
                    with postgres_database(args.pg_admin) as url:
                        results.append(run_one(kind, url, queued, Path(tmp), args))
                except Exception as exc:  # report it and go on with the next run
                    print(f"  !! run failed: {type(exc).__name__}: {exc}")
                    results.append(Result(kind, queued, error=f"{type(exc).__name__}: {exc}"))
    print_summary(results, args)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
