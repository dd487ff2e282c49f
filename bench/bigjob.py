"""Big-job acceptance benchmark: seconds to accept one job of 10,000 workunits and one of 10,000 tasks.

Starts a real ``perdure server`` on a free loopback port (SQLite in a temporary data directory, or a
throwaway PostgreSQL database) and times ``POST /job`` until its reply, for three shapes: one task with
``totalwork: N`` (N workunits), a linear chain of N tasks (each ``dependsOn`` the one before and takes
its output as an input with an ``origin``), and a wide DAG of N tasks (a fan-out from one ``split``
task to N - 2 workers, gathered by one ``merge`` task that depends on all of them). Each shape is
submitted ``--repeat`` times; the best and the median wall time are printed with the server's CPU time
per submit. Targets (issue 22): the workunit job in 1 s or less, the task jobs in 3 s or less.

    .venv/bin/python bench/bigjob.py [--size 10000] [--db sqlite|postgresql|both] [--repeat 3]

Everything stays on loopback; the server is stopped and the database dropped even on error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from common import Server, begin, each_database, load_average, run_main, server_cpu

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGETS = {"workunits": 1.0, "chain": 3.0, "dag": 3.0}


def workunit_job(size: int) -> dict[str, Any]:
    """One task split into ``size`` workunits."""
    return {
        "info": {"pipeline": "bench-big", "name": f"wu-{size}", "project": "bench", "user": "bench"},
        "tasks": [
            {
                "taskid": "scan",
                "cmd": {"name": "scan", "args": "-i @chunk.fa -o hits.tsv"},
                "inputs": [{"filename": "chunk.fa", "url": "https://data.example.org/ref.fa"}],
                "outputs": [{"filename": "hits.tsv"}],
                "totalwork": size,
            }
        ],
    }


def _task(taskid: str, depends: list[str], n: int) -> dict[str, Any]:
    """A task that reads the output of its first dependency and writes its own."""
    return {
        "taskid": taskid,
        "cmd": {"name": "step", "args": f"-i @{depends[0]}.dat -o {taskid}.dat --part {n}"},
        "dependsOn": depends,
        "inputs": [{"filename": f"{depends[0]}.dat", "origin": depends[0]}],
        "outputs": [{"filename": f"{taskid}.dat"}],
        "userattr": {"part": str(n)},
    }


def chain_job(size: int) -> dict[str, Any]:
    """``size`` tasks, each depending on the one before and reading its output."""
    first = {
        "taskid": "t0",
        "cmd": {"name": "step", "args": "-o t0.dat"},
        "outputs": [{"filename": "t0.dat"}],
    }
    tasks = [first] + [_task(f"t{i}", [f"t{i - 1}"], i) for i in range(1, size)]
    return {"info": {"pipeline": "bench-big", "name": f"chain-{size}", "user": "bench"}, "tasks": tasks}


def dag_job(size: int) -> dict[str, Any]:
    """``split`` -> ``size - 2`` parallel workers -> ``merge`` (which depends on every worker)."""
    split = {"taskid": "split", "cmd": {"name": "split"}, "outputs": [{"filename": "split.dat"}]}
    workers = [_task(f"w{i}", ["split"], i) for i in range(size - 2)]
    merge = {
        "taskid": "merge",
        "cmd": {"name": "merge"},
        "dependsOn": [w["taskid"] for w in workers],
        "inputs": [{"filename": f"{w['taskid']}.dat", "origin": w["taskid"]} for w in workers[:100]],
        "outputs": [{"filename": "all.dat"}],
    }
    return {
        "info": {"pipeline": "bench-big", "name": f"dag-{size}", "user": "bench"},
        "tasks": [split, *workers, merge],
    }


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "workunits": workunit_job,
    "chain": chain_job,
    "dag": dag_job,
}


def run_one(kind: str, db_url: str | None, work_dir: Path, args: argparse.Namespace) -> list[str]:
    """Time each shape; returns the shapes that missed their target."""
    server = Server(work_dir / "data", db_url, 1)
    missed: list[str] = []
    print(f"\n=== {kind}: size {args.size}, {args.repeat} submit(s) per shape ===", flush=True)
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=600.0) as http:
            print(f"  {'shape':<10} {'best s':>7} {'median s':>9} {'server CPU s':>13} {'target s':>9}")
            for name, build in SHAPES.items():
                body = json.dumps(build(args.size)).encode()
                walls, cpus = [], []
                for _ in range(args.repeat):
                    cpu0 = server_cpu(server)
                    t0 = time.perf_counter()
                    reply = http.post("/job", content=body, headers={"content-type": "application/json"})
                    walls.append(time.perf_counter() - t0)
                    cpus.append(server_cpu(server) - cpu0)
                    if reply.status_code != 200:
                        raise RuntimeError(f"{name}: {reply.status_code} {reply.text[:400]}")
                    data = reply.json()["data"]
                    expect = args.size if name != "workunits" else 1
                    if len(data["tasks"]) != expect:
                        raise RuntimeError(f"{name}: {len(data['tasks'])} tasks in the reply, not {expect}")
                best, median = min(walls), statistics.median(walls)
                target = TARGETS[name]
                flag = "" if median <= target else "  !! over target"
                if median > target:
                    missed.append(f"{kind} {name}")
                print(
                    f"  {name:<10} {best:7.2f} {median:9.2f} {statistics.median(cpus):13.2f} "
                    f"{target:9.1f}{flag}",
                    flush=True,
                )
        print(f"  {load_average()}")
    finally:
        server.stop()
    return missed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=10_000, help="workunits or tasks per job (default 10000)")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3, help="submits per shape (default 3)")
    parser.add_argument(
        "--pg-admin", default=PG_ADMIN_DSN, help=f"PostgreSQL admin DSN (default {PG_ADMIN_DSN})"
    )
    args = parser.parse_args(argv)
    if args.size < 3 or args.repeat < 1:
        parser.error("--size must be at least 3 and --repeat at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begin("big-job acceptance")
    # None where PostgreSQL was skipped, else the shapes that missed their target.
    runs: list[list[str] | None] = each_database(
        args.db,
        args.pg_admin,
        "perdure-bigjob-",
        lambda kind, url, tmp: run_one(kind, url, tmp, args),
        lambda _kind, _problem: None,
    )
    missed = [shape for run in runs if run is not None for shape in run]
    failed = None in runs
    print("\n=== summary ===")
    print("  all shapes within target" if not missed else "  over target: " + ", ".join(missed))
    return 1 if failed or missed else 0


if __name__ == "__main__":
    run_main(main, "server stopped and data removed")
