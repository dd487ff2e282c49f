"""Metrics benchmark: query latency over 30 days of 1-minute samples for 100 objects.

Loads, straight through the rollup storage API (``perdure.metrics.storage.bulk_load``), one sample per
minute for 30 days of each summary metric (jobSubmitted, runtime, spotProtection, timeSaved) for 100
queues, rolled up into the default levels (1m kept 7 days, 30m kept 90 days, 24h kept ~2 years), then
times the queries the API answers:

* ``1 day at 1m``: one queue's series over the last day at the 1-minute level (1,440 points);
* ``30 days at 30m``: one queue's series over 30 days at the 30-minute level (1,440 points);
* ``summary 30 days`` and ``summary all``: every queue's totals (``GET /api/v1/metrics/summary`` with
  ``start`` 30 days ago, and without ``start``).

Each query runs ``--samples`` times (a random queue each time) after a warm-up; p50/p95/max in ms are
printed against the 100 ms target, on SQLite (a temporary file) and PostgreSQL (a throwaway database
on ``postgresql://postgres@127.0.0.1:5432``, dropped at the end; skipped with a message and a non-zero
exit if unreachable).

    .venv/bin/python bench/metrics.py [--db sqlite|postgresql|both] [--objects 100] [--days 30]
                                      [--samples 50] [--pg-admin DSN]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from common import begin, each_database, load_average, run_main
from perdure.metrics import clock, queries, storage
from perdure.metrics import levels as metric_levels
from perdure.metrics.definitions import SUMMARY_METRICS
from perdure.store import migrate
from perdure.store.database import Database
from perdure.store.schema import metric_rollups
from perdure.timeutil import format_us

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_MS = 100.0
MIN_US = 60_000_000
DAY_US = 1440 * MIN_US


# ---- loading --------------------------------------------------------------------------------------


def sample(metric: str, rng: random.Random) -> float:
    """A plausible per-minute value: a few submissions, their runtime, now and then a protection."""
    if metric == "jobSubmitted":
        return float(rng.randrange(0, 6))
    if metric == "runtime":
        return rng.uniform(0, 3600)
    if metric == "spotProtection":
        return 1.0 if rng.random() < 0.01 else 0.0
    return rng.uniform(0, 600) if rng.random() < 0.01 else 0.0


def load(db: Database, objects: list[str], days: int, now_us: int) -> tuple[int, float]:
    """Every object's metrics, one sample a minute for ``days`` days; returns (rows, seconds)."""
    rng = random.Random(42)
    first = now_us - days * DAY_US
    minutes = range(days * 1440)
    started = time.perf_counter()
    rows = 0
    levels = metric_levels.levels()
    for n, object_id in enumerate(objects, start=1):
        with db.write() as conn:
            for metric in SUMMARY_METRICS:
                points = [(first + m * MIN_US + 1, sample(metric, rng)) for m in minutes]
                rows += storage.bulk_load(conn, metric, object_id, points, levels, now_us)
        if n % 20 == 0 or n == len(objects):
            rate = rows / (time.perf_counter() - started)
            print(f"    {n}/{len(objects)} objects loaded, {rows:,} rows ({rate:,.0f} rows/s)", flush=True)
    if db.is_sqlite:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")  # what the server's periodic PRAGMA optimize does
            conn.commit()
    else:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE metric_rollups")
    return rows, time.perf_counter() - started


# ---- timing ---------------------------------------------------------------------------------------


@dataclass
class Timing:
    name: str
    detail: str
    times_ms: list[float] = field(default_factory=list)

    def line(self) -> str:
        ordered = sorted(self.times_ms)
        p50 = statistics.median(ordered)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        verdict = "ok" if p95 < TARGET_MS else f"OVER {TARGET_MS:.0f} ms"
        return (
            f"  {self.name:<18} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {ordered[-1]:7.2f} ms  "
            f"n={len(ordered):<3} {verdict:<10} {self.detail}"
        )

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def time_query(name: str, run: Callable[[], str], samples: int) -> Timing:
    run()  # warm-up: plans, caches
    timing = Timing(name, "")
    for _ in range(samples):
        started = time.perf_counter()
        timing.detail = run()
        timing.times_ms.append((time.perf_counter() - started) * 1000)
    return timing


def measure(db: Database, objects: list[str], now_us: int, samples: int) -> list[Timing]:
    rng = random.Random(7)
    day_ago, month_ago = format_us(now_us - DAY_US), format_us(now_us - 30 * DAY_US)
    end = format_us(now_us)

    def series(interval: str, start: str) -> Callable[[], str]:
        def run() -> str:
            document, _level = queries.time_series(
                db, rng.choice(objects), "metricDef-runtime", interval=interval, start=start, end=end
            )
            return f"{len(document['points'])} points"

        return run

    def summary(start: str | None) -> Callable[[], str]:
        def run() -> str:
            body: dict[str, Any] = queries.summary(db, start, end)
            return f"{len(body['items']['jobSubmitted'])} queues x {len(body['items'])} metrics"

        return run

    return [
        time_query("1 day at 1m", series("1m", day_ago), samples),
        time_query("30 days at 30m", series("30m", month_ago), samples),
        time_query("summary 30 days", summary(month_ago), samples),
        time_query("summary all", summary(None), samples),
    ]


# ---- one database ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    db: str
    timings: list[Timing] = field(default_factory=list)
    error: str | None = None


def run_one(kind: str, url: str, args: argparse.Namespace) -> Outcome:
    print(f"\n=== {kind} ===", flush=True)
    db = Database(url)
    outcome = Outcome(kind)
    try:
        migrate.upgrade(db)
        now_us = clock.now()
        now_us -= now_us % MIN_US
        objects = [f"queue-q{i:03d}" for i in range(args.objects)]
        print(
            f"  loading {args.days} days of 1-minute samples of {', '.join(SUMMARY_METRICS)} "
            f"for {args.objects} queues ({args.days * 1440 * args.objects * len(SUMMARY_METRICS):,} samples)",
            flush=True,
        )
        rows, seconds = load(db, objects, args.days, now_us)
        with db.read() as conn:
            per_level = dict(
                conn.execute(
                    select(metric_rollups.c.interval_s, func.count()).group_by(metric_rollups.c.interval_s)
                ).all()
            )
        print(f"  loaded {rows:,} rollup rows in {seconds:.1f} s; rows per level (interval s): {per_level}")
        with clock.use_clock(lambda: now_us):
            outcome.timings = measure(db, objects, now_us, args.samples)
        print(f"  query latency ({args.samples} runs each, random queue; target p95 < {TARGET_MS:.0f} ms):")
        for timing in outcome.timings:
            print(timing.line())
        slow = [t.name for t in outcome.timings if t.p95 >= TARGET_MS]
        if slow:
            outcome.error = f"over target: {', '.join(slow)}"
    except Exception as exc:  # reported in the summary, the database is still dropped
        outcome.error = f"{type(exc).__name__}: {exc}"
        print(f"  !! {outcome.error}")
    finally:
        db.dispose()
    return outcome


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--objects", type=int, default=100, help="queues to load (default 100)")
    parser.add_argument("--days", type=int, default=30, help="days of 1-minute samples (default 30)")
    parser.add_argument("--samples", type=int, default=50, help="timed runs per query (default 50)")
    parser.add_argument(
        "--pg-admin", default=PG_ADMIN_DSN, help=f"PostgreSQL admin DSN (default {PG_ADMIN_DSN})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metric_levels.configure_levels(None)
    begin("metrics")
    outcomes = each_database(
        args.db,
        args.pg_admin,
        "perdure-bench-metrics-",
        lambda kind, url, tmp: run_one(kind, url or f"sqlite:///{tmp / 'metrics.db'}", args),
        lambda kind, problem: Outcome(kind, error="skipped: " + problem),
    )

    print(f"\n=== summary: p95 per query (target < {TARGET_MS:.0f} ms); {load_average()} ===")
    for o in outcomes:
        figures = ", ".join(f"{t.name} {t.p95:.1f} ms" for t in o.timings)
        print(f"  {o.db:<10} {figures or o.error}")
        if o.error and o.timings:
            print(f"  {'':<10} !! {o.error}")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    run_main(main, "data removed")
