"""Job API benchmark: submit rate, and ``GET /job`` page latency at 100 jobs and at N jobs.

Starts a real ``perdure server`` on a free loopback port (SQLite in a temporary data directory, or a
throwaway PostgreSQL database), submits N three-task jobs over HTTP from C concurrent submitters, and
times ``GET /job`` (first page, a deep page, a field query) and ``GET /job/<id>`` once the store holds
100 jobs and again once it holds N. The target is a page that costs about the same at both sizes.

    .venv/bin/python bench/jobs.py [--jobs 10000] [--db sqlite|postgresql|both] [--concurrency 8]
                                   [--server-workers 1] [--samples 50] [--pg-analyze]

Everything stays on loopback; the server is stopped and the database dropped even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg

from common import Server, begin, each_database, load_average, print_failures, run_main, server_cpu

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SMALL = 100  # the "small store" size the N-job figures are compared with
DEEP_OFFSET = 9000
PAGE = 25  # the server's default limit
QUERY_PAGE = 10  # the field query's page: as many jobs as match it at 100 jobs
WARM_UP = 10  # untimed requests per probe before the timed ones
CPU_REQUESTS = 100  # requests in a row per probe for its CPU cost ...
CPU_BLOCKS = 5  # ... this many times (the median counts)
#: Seconds to wait before measuring: the server's sweep (every 5 s) refreshes PostgreSQL's statistics
#: and visibility map once a bulk submit passes autovacuum's thresholds, as it would in service.
SETTLE_S = 12.0
#: The probe that costs the same at any store size: its ratio is how much busier the machine was.
CONTROL = "one job"
PROJECTS = [
    f"proj-{name}"
    for name in ("soil", "ocean", "gut", "air", "ice", "lake", "wetland", "forest", "desert", "cave")
]
USERS = [f"user{n:02d}" for n in range(50)]
MAX_ERRORS_KEPT = 10
ABORT_AFTER_FAILURES = 100


# ---- the server ------------------------------------------------------------------------------------


# ---- the workload ----------------------------------------------------------------------------------


def job_script(n: int, rng: random.Random) -> bytes:
    """A realistic three-task job: fetch -> qc -> assemble, wired by dependsOn and input origins."""
    project = PROJECTS[n % len(PROJECTS)]
    user = rng.choice(USERS)
    sample = f"S{n:06d}"
    size = rng.randint(50, 5000) * 1_000_000
    document = {
        "info": {
            "pipeline": "mg-assembly",
            "name": f"{sample}-assembly",
            "project": project,
            "user": user,
            "clientgroups": "bench",
            "priority": rng.choice((1, 1, 1, 2, 5)),
            "xref": f"ticket-{rng.randint(1000, 9999)}",
            "description": f"metagenome assembly of {sample} for {project}",
            "userattr": {"sample": sample, "submission": f"sub-{n // 100:04d}", "organism": "metagenome"},
        },
        "tasks": [
            {
                "taskid": "fetch",
                "cmd": {
                    "name": "curl",
                    "args": f"-sSfL -o @raw.fastq https://data.example.org/{sample}.fastq",
                },
                "outputs": [{"filename": "raw.fastq", "host": "https://shock.example.org"}],
                "totalwork": 1,
            },
            {
                "taskid": "qc",
                "cmd": {
                    "name": "fastp",
                    "args": "-i @raw.fastq -o qc.fastq -j qc.json",
                    "environ": {"public": {"THREADS": "4"}},
                },
                "dependsOn": ["fetch"],
                "inputs": [{"filename": "raw.fastq", "origin": "fetch", "size": size}],
                "outputs": [{"filename": "qc.fastq"}, {"filename": "qc.json", "type": "stats"}],
                "userattr": {"stage": "qc"},
            },
            {
                "taskid": "assemble",
                "cmd": {"name": "megahit", "args": "-r @qc.fastq -o out --min-contig-len 500"},
                "dependsOn": ["qc"],
                "inputs": [{"filename": "qc.fastq", "origin": "qc"}],
                "outputs": [{"filename": "contigs.fa", "directory": "out"}],
                "totalwork": 1,
                "userattr": {"stage": "assembly"},
            },
        ],
    }
    return json.dumps(document).encode()


def multipart_upload(filename: str, script: bytes) -> tuple[bytes, str]:
    """The ``multipart/form-data`` body ``perdure submit`` sends (the script in the field ``upload``),
    encoded before the clock starts: the client shares the server's two cores, and httpx encoding the
    form for every request took about a tenth of the client's CPU from them."""
    boundary = f"perdure-bench-{uuid.uuid4().hex}"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="{filename}"\r\n'
            f"Content-Type: application/json\r\n\r\n"
        ).encode()
        + script
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Failure:
    request: str
    status: int | str
    body: str


@dataclass
class Failures:
    count: int = 0
    kept: list[Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: str, response: httpx.Response | None, error: Exception | None = None) -> None:
        with self.lock:
            self.count += 1
            if len(self.kept) < MAX_ERRORS_KEPT:
                if response is not None:
                    self.kept.append(Failure(request, response.status_code, response.text[:600]))
                else:
                    self.kept.append(Failure(request, type(error).__name__, str(error)[:600]))


@dataclass
class SubmitResult:
    ids: list[str]
    seconds: float
    #: (completion time since start, request latency) per successful submit
    done: list[tuple[float, float]]


def submit_jobs(url: str, first: int, count: int, concurrency: int, failures: Failures) -> SubmitResult:
    """Submit jobs ``first .. first+count-1`` from ``concurrency`` threads, each with its own client."""
    local = threading.local()
    clients: list[httpx.Client] = []
    clients_lock = threading.Lock()
    bodies = [
        multipart_upload(f"job-{n}.json", job_script(n, random.Random(n)))
        for n in range(first, first + count)
    ]
    start = time.perf_counter()

    def one(i: int) -> tuple[str, float, float] | None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=120.0)
            with clients_lock:
                clients.append(client)
        body, content_type = bodies[i]
        t0 = time.perf_counter()
        try:
            response = client.post("/job", content=body, headers={"content-type": content_type})
        except httpx.HTTPError as exc:
            failures.add(f"POST /job (job {first + i})", None, exc)
            if failures.count > ABORT_AFTER_FAILURES:
                raise RuntimeError(f"giving up after {failures.count} failed submits") from exc
            return None
        t1 = time.perf_counter()
        if response.status_code != 200:
            failures.add(f"POST /job (job {first + i})", response)
            if failures.count > ABORT_AFTER_FAILURES:
                raise RuntimeError(f"giving up after {failures.count} failed submits")
            return None
        return response.json()["data"]["id"], t1 - start, t1 - t0

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        results = list(pool.map(one, range(count)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error or Ctrl-C, do not send the rest
        for client in clients:
            client.close()
    seconds = time.perf_counter() - start
    ok = [r for r in results if r is not None]
    return SubmitResult([r[0] for r in ok], seconds, [(r[1], r[2]) for r in ok])


# ---- latency ---------------------------------------------------------------------------------------


@dataclass
class Probe:
    key: str
    label: str
    path: str
    params: dict[str, str]
    #: what ``total_count`` / page length the answer should show, checked once
    expect_total: int | None = None
    samples: list[float] = field(default_factory=list)
    total_seen: int | None = None
    page_len: int | None = None
    #: CPU ms per request of the server and its database backends (see ``measure_cpu``)
    cpu_ms: float | None = None


def probes_for(size: int, ids: list[str], rng: random.Random) -> list[Probe]:
    deep = DEEP_OFFSET if size >= DEEP_OFFSET + PAGE else max(0, (size - 1) // PAGE * PAGE)
    project = PROJECTS[3]
    # One project holds a tenth of the jobs: a page of QUERY_PAGE is full at 100 jobs and at N.
    query = {"query": "", "info.project": project, "state": "queued", "limit": str(QUERY_PAGE)}
    return [
        Probe("first page", "GET /job (offset 0)", "/job", {}, expect_total=size),
        Probe("deep page", f"GET /job?offset={deep}", "/job", {"offset": str(deep)}, expect_total=size),
        Probe(
            "query", f"GET /job?query&info.project={project}&state=queued&limit={QUERY_PAGE}", "/job", query
        ),
        Probe("one job", "GET /job/<id>", f"/job/{rng.choice(ids)}", {}),
    ]


def measure(url: str, probes: list[Probe], samples: int, failures: Failures, cpu: CpuMeter) -> None:
    """Round-robin over the probes so that background noise lands on all of them alike, then each
    probe's CPU cost (which other work on the machine skews far less than its latency)."""
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for probe in probes:  # warm-up: connection, plan and page caches
            for _ in range(WARM_UP):
                client.get(probe.path, params=probe.params)
        for _ in range(samples):
            for probe in probes:
                t0 = time.perf_counter()
                try:
                    response = client.get(probe.path, params=probe.params)
                except httpx.HTTPError as exc:
                    failures.add(f"GET {probe.path} {probe.params}", None, exc)
                    continue
                elapsed = time.perf_counter() - t0
                if response.status_code != 200:
                    failures.add(f"GET {response.request.url}", response)
                    continue
                probe.samples.append(elapsed * 1000)
                if probe.total_seen is None:
                    body = response.json()
                    probe.total_seen = body.get("total_count")
                    if isinstance(body.get("data"), list):
                        probe.page_len = len(body["data"])
        for probe in probes:
            probe.cpu_ms = measure_cpu(client, probe, cpu)


def measure_cpu(client: httpx.Client, probe: Probe, cpu: CpuMeter) -> float:
    """CPU ms per request: the median of ``CPU_BLOCKS`` runs of ``CPU_REQUESTS`` requests in a row (the
    kernel counts CPU in 10 ms ticks, so only a run resolves a few ms each; the median drops a run
    that met the server's sweep)."""
    blocks = []
    for _ in range(CPU_BLOCKS):
        before = cpu.seconds()
        for _ in range(CPU_REQUESTS):
            client.get(probe.path, params=probe.params)
        blocks.append((cpu.seconds() - before) * 1000 / CPU_REQUESTS)
    return statistics.median(blocks)


class CpuMeter:
    """CPU seconds used so far by the server, its children and (PostgreSQL) its database backends,
    where a page's queries spend their time. A backend counts from when it is first seen (not its
    start-up), and one that exits keeps what it had used, so no run gains or loses a whole backend."""

    def __init__(self, server: Server, db_url: str | None) -> None:
        self.server = server
        self.db_url = db_url
        #: pid -> (process, CPU when first seen, CPU when last seen)
        self.backends: dict[int, tuple[psutil.Process, float, float]] = {}

    def seconds(self) -> float:
        total = server_cpu(self.server)
        if self.db_url:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                ).fetchall()
            for (pid,) in pids:
                if pid not in self.backends:
                    with contextlib.suppress(psutil.Error):
                        proc = psutil.Process(pid)
                        first = _cpu(proc)
                        if first is not None:
                            self.backends[pid] = (proc, first, first)
            for pid, (proc, first, last) in list(self.backends.items()):
                now = _cpu(proc)
                if now is not None:
                    self.backends[pid] = (proc, first, now)
                total += (now if now is not None else last) - first
        return total


def _cpu(proc: psutil.Process) -> float | None:
    """A process's CPU seconds, or None once it has gone."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


@dataclass
class Stats:
    p50: float
    p95: float
    max: float
    n: int


def stats(values: list[float]) -> Stats | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Stats(statistics.median(ordered), p95, ordered[-1], len(ordered))


# ---- one database ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    db: str
    submit_rate: float = 0.0
    cpu_ms: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)
    #: the same ratios of CPU per request (server and database), steadier on a busy machine
    cpu_ratios: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def run_one(kind: str, db_url: str | None, work_dir: Path, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(kind)
    failures = Failures()
    server = Server(work_dir / "data", db_url, args.server_workers)
    print(
        f"\n=== {kind}: {args.jobs} jobs, {args.concurrency} submitters, "
        f"{args.server_workers} server worker(s), {args.samples} samples ===",
        flush=True,
    )
    try:
        server.start()
        rng = random.Random(1)
        small = min(SMALL, args.jobs)

        t0 = time.perf_counter()
        first = submit_jobs(server.url, 0, small, args.concurrency, failures)
        if not first.ids:
            raise RuntimeError("no job could be submitted")
        small_probes = probes_for(len(first.ids), first.ids, rng)
        cpu = CpuMeter(server, db_url)
        time.sleep(SETTLE_S)
        measure(server.url, small_probes, args.samples, failures, cpu)
        print(f"  {len(first.ids)} jobs submitted, measured at {len(first.ids)} jobs", flush=True)

        cpu_before, client_before = server_cpu(server), time.process_time()
        rest = submit_jobs(server.url, small, args.jobs - small, args.concurrency, failures)
        cpu_per_job = (server_cpu(server) - cpu_before) / max(1, len(rest.ids))
        client_per_job = (time.process_time() - client_before) / max(1, len(rest.ids))
        ids = first.ids + rest.ids
        if args.pg_analyze and db_url:
            # This PostgreSQL runs without autovacuum: give the planner the statistics it would have.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("ANALYZE")
            print("  ANALYZE run after the bulk submit (--pg-analyze)")
        big_probes = probes_for(len(ids), ids, rng)
        time.sleep(SETTLE_S)
        measure(server.url, big_probes, args.samples, failures, cpu)
        wall = time.perf_counter() - t0

        submitted = len(ids)
        submit_seconds = first.seconds + rest.seconds
        outcome.submit_rate = submitted / submit_seconds if submit_seconds else 0.0
        latencies = stats([lat * 1000 for _, lat in first.done + rest.done])
        print(
            f"\n  submit: {submitted} jobs in {submit_seconds:.1f} s = {outcome.submit_rate:.1f} jobs/s",
            end="",
        )
        if latencies:
            lat = latencies
            print(f"  (per request p50 {lat.p50:.1f} ms, p95 {lat.p95:.1f} ms, max {lat.max:.0f} ms)")
        else:
            print()
        print("  submit rate by store size: " + submit_curve(rest, small))
        # Less skewed by other work on the machine than the rate: what one submit costs the server.
        print(
            f"  server CPU per submitted job: {cpu_per_job * 1000:.2f} ms"
            f" (this client's: {client_per_job * 1000:.2f} ms, on the same cores)"
        )
        outcome.cpu_ms = cpu_per_job * 1000
        print_table(small_probes, big_probes, len(first.ids), submitted)
        for a, b in zip(small_probes, big_probes, strict=True):
            sa, sb = stats(a.samples), stats(b.samples)
            if sa and sb:
                outcome.ratios[b.key] = sb.p50 / sa.p50
            if a.cpu_ms and b.cpu_ms:
                outcome.cpu_ratios[b.key] = b.cpu_ms / a.cpu_ms
        print(f"  run time: {wall:.0f} s; {load_average()}", flush=True)
    except BaseException as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        server.stop()
        if failures.count:
            outcome.error = outcome.error or f"{failures.count} failed request(s)"
        print_failures(
            failures.count, [f"{f.request} -> {f.status}: {f.body}" for f in failures.kept], server
        )
    return outcome


def submit_curve(rest: SubmitResult, offset: int) -> str:
    """Submit rate over each fifth of the bulk submission, to show whether it slows as the store grows."""
    done = sorted(t for t, _ in rest.done)
    if len(done) < 20:
        return "(too few jobs)"
    parts = []
    step = len(done) // 5
    previous_t, previous_i = 0.0, 0
    for i in range(step, len(done) + 1, step):
        t = done[i - 1]
        if t > previous_t:
            parts.append(f"{offset + i}: {(i - previous_i) / (t - previous_t):.0f}/s")
        previous_t, previous_i = t, i
    return ", ".join(parts) + f"  (jobs in store -> rate over the preceding {step})"


def fmt(s: Stats | None) -> str:
    if s is None:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    return f"{s.p50:7.1f} {s.p95:7.1f} {s.max:7.1f}"


def fmt_cpu(small: float | None, big: float | None) -> str:
    if not small or big is None:
        return f"{'-':>8} {'-':>8} {'-':>8}"
    return f"{small:8.2f} {big:8.2f} {big / small:8.2f}"


def print_table(small: list[Probe], big: list[Probe], n_small: int, n_big: int) -> None:
    labels = [
        b.label if a.label == b.label else f"{b.label} ({a.params['offset']} at {n_small})"
        for a, b in zip(small, big, strict=True)
    ]
    width = max(len(label) for label in labels) + 2
    left, right = f"at {n_small} jobs", f"at {n_big} jobs"
    heading = f"{'latency, ms':<{width}} {left:^23}   {right:^23}   {'p50 ratio':>9}"
    print(f"\n  {heading}   {'CPU ms per request':^26}")
    columns = f"{'p50':>7} {'p95':>7} {'max':>7}"
    cpu_columns = f"{n_small:>8} {n_big:>8} {'ratio':>8}"
    print(f"  {'':<{width}} {columns}   {columns}   {'N / 100':>9}   {cpu_columns}")
    for label, a, b in zip(labels, small, big, strict=True):
        sa, sb = stats(a.samples), stats(b.samples)
        ratio = f"{sb.p50 / sa.p50:9.2f}" if sa and sb else f"{'-':>9}"
        print(f"  {label:<{width}} {fmt(sa)}   {fmt(sb)}   {ratio}   {fmt_cpu(a.cpu_ms, b.cpu_ms)}")
    print("  (CPU: the server's and, on PostgreSQL, its database backends', over requests in a row)")
    for probe in small + big:
        if (
            probe.total_seen is not None
            and probe.expect_total is not None
            and probe.total_seen != probe.expect_total
        ):
            print(f"  !! {probe.label}: total_count {probe.total_seen}, expected {probe.expect_total}")
    query = [p for p in small + big if p.key == "query"]
    matched = ", ".join(
        f"{p.total_seen} of {n} (page of {p.page_len})" for p, n in zip(query, (n_small, n_big), strict=True)
    )
    print(f"  query matched {matched}")


# ---- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to submit (default 10000)")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent submitters (default 8)")
    parser.add_argument("--server-workers", type=int, default=1, help="perdure server --workers (default 1)")
    parser.add_argument(
        "--samples", type=int, default=50, help="timed requests per probe and size (default 50)"
    )
    parser.add_argument(
        "--pg-analyze",
        action="store_true",
        help="run ANALYZE after the bulk submit (for servers older than store/upkeep.py, without autovacuum)",
    )
    parser.add_argument(
        "--pg-admin", default=PG_ADMIN_DSN, help=f"PostgreSQL admin DSN (default {PG_ADMIN_DSN})"
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "concurrency", "server_workers", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin("job API")
    outcomes = each_database(
        args.db,
        args.pg_admin,
        "perdure-bench-",
        lambda kind, url, tmp: run_one(kind, url, tmp, args),
        lambda kind, problem: Outcome(kind, error="skipped: " + problem),
    )

    print("\n=== summary: p50 latency at N jobs / at 100 jobs (target: about 1) ===")
    for o in outcomes:
        if o.error and not o.ratios:
            print(f"  {o.db:<10} {o.error}")
            continue
        ratios = ", ".join(f"{key} {r:.2f}" for key, r in o.ratios.items())
        print(f"  {o.db:<10} submit {o.submit_rate:.0f} jobs/s ({o.cpu_ms:.1f} ms server CPU each); {ratios}")
        if o.cpu_ratios:
            cpu = ", ".join(f"{key} {r:.2f}" for key, r in o.cpu_ratios.items())
            print(f"  {'':<10} CPU per request at N / at 100: {cpu}")
        for name, measured in (("p50", o.ratios), ("CPU", o.cpu_ratios)):
            if measured.get(CONTROL):
                pages = ", ".join(
                    f"{k} {r / measured[CONTROL]:.2f}" for k, r in measured.items() if k != CONTROL
                )
                print(f"  {'':<10} {name} ratios over {CONTROL}'s (the machine's drift): {pages}")
        if o.error:
            print(f"  {'':<10} !! {o.error}")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    run_main(main, "server stopped and data removed")
