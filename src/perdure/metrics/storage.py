"""Metric storage: events appended where they happen, folded into per-level rollups by the sweep.

Recording appends to an event log inside the caller's transaction: as durable as the change it counts
(a rolled-back report counts nothing) and free of row locks. ``fold`` moves events into rollups, one
row per metric, object, level and bucket with total, sample count, minimum and maximum, so sums, rates
and averages are all exact at any level and merging rows is arithmetic; readers add the events not
folded yet, in one snapshot, so a query never misses or double-counts anything. The SQL is the store's
(``perdure.store.metricstore``); this module is the arithmetic over what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perdure.metrics.levels import Level
from perdure.store import metricstore
from perdure.store.database import Database
from perdure.store.metricstore import FOLD_BATCH, TOTAL_INTERVAL, Connection, merge_bucket, snapshot

__all__ = [
    "FOLD_BATCH",
    "STATISTICS",
    "TOTAL_INTERVAL",
    "Agg",
    "add",
    "all_time",
    "bulk_load",
    "expire",
    "fold",
    "merge_into",
    "pending_count",
    "series",
    "snapshot",
    "totals",
]


@dataclass
class Agg:
    """A bucket (or several merged): total, number of samples, smallest and largest sample."""

    total: float = 0.0
    samples: int = 0
    minimum: float = 0.0
    maximum: float = 0.0

    def add(
        self, value: float, samples: int = 1, minimum: float | None = None, maximum: float | None = None
    ) -> Agg:
        lo = value if minimum is None else minimum
        hi = value if maximum is None else maximum
        if self.samples == 0:
            self.minimum, self.maximum = lo, hi
        else:
            self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        self.total += value
        self.samples += samples
        return self

    def merge(self, other: Agg) -> Agg:
        if other.samples:
            self.add(other.total, other.samples, other.minimum, other.maximum)
        return self

    def value(self, statistic: str, interval_s: int = 0) -> float:
        if statistic == "sum":
            return self.total
        if statistic == "count":
            return float(self.samples)
        if statistic == "avg":
            return self.total / self.samples if self.samples else 0.0
        if statistic == "min":
            return self.minimum
        if statistic == "max":
            return self.maximum
        if statistic == "rate":  # per second over the bucket
            return self.total / interval_s if interval_s else 0.0
        raise ValueError(f"unknown statistic {statistic!r}")


STATISTICS = ("sum", "count", "avg", "min", "max", "rate")


# ---- writing ------------------------------------------------------------------------------------


def add(conn: Connection, samples: Iterable[tuple[str, str, float]], at_us: int) -> None:
    """Append each (metric, object id, value) sample, at ``at_us``, to the event log."""
    metricstore.insert_events(conn, samples, at_us)


def fold(db: Database, levels: Sequence[Level], batch: int = FOLD_BATCH) -> int:
    """Move every pending event into the rollups of each level; returns how many were folded."""
    return metricstore.fold(db, levels, batch)


def bulk_load(
    conn: Connection,
    metric: str,
    object_id: str,
    points: Iterable[tuple[int, float]],
    levels: Sequence[Level],
    now_us: int,
) -> int:
    """Add many (time, value) samples of one series at once, rolled up in memory first.

    For backfills and benchmarks: the finest level is summed from the samples and each coarser one
    from the level below (intervals are multiples of each other); buckets already past their level's
    retention are not written, as the sweep would delete them. Returns the number of rows written.
    """
    ordered = sorted(levels)
    step = ordered[0].interval_us
    below: dict[int, list[float]] = {}
    for at_us, value in points:
        merge_bucket(below, at_us - at_us % step, value, 1, value, value)
    rows: list[tuple[Any, ...]] = []
    for i, level in enumerate(ordered):
        if i:
            coarser: dict[int, list[float]] = {}
            for start, agg in below.items():
                merge_bucket(coarser, level.floor(start), *agg)
            below = coarser
        oldest = level.oldest_kept(now_us)
        rows += [
            (metric, level.interval_s, start, object_id, *agg)
            for start, agg in sorted(below.items())
            if start + level.interval_us > oldest
        ]
    everything: dict[int, list[float]] = {}
    for agg in below.values():
        merge_bucket(everything, 0, *agg)
    rows += [(metric, TOTAL_INTERVAL, 0, object_id, *agg) for agg in everything.values()]
    metricstore.upsert_rollups(conn, rows)
    return len(rows)


def expire(db: Database, metrics: Sequence[str], levels: Sequence[Level], now_us: int) -> int:
    """Delete buckets wholly older than their level's retention; returns how many rows went."""
    # A bucket goes when it ends at or before the oldest time its level keeps.
    cutoffs = [(level.interval_s, level.oldest_kept(now_us) - level.interval_us) for level in levels]
    return metricstore.expire(db, metrics, cutoffs)


# ---- reading ------------------------------------------------------------------------------------


def _agg(row: Any) -> Agg:
    return Agg(float(row.total), int(row.samples), float(row.minimum), float(row.maximum))


def series(
    conn: Connection, metric: str, object_id: str, interval_s: int, lo_us: int, hi_us: int
) -> list[tuple[int, Agg]]:
    """The buckets of one series with ``lo_us <= start <= hi_us``, oldest first: an index range read
    of the rollups, plus the pending events that fall in it."""
    interval_us = interval_s * 1_000_000
    rows, pending = metricstore.series_rows(
        conn, metric, object_id, interval_s, lo_us, hi_us, hi_us - hi_us % interval_us + interval_us
    )
    found: dict[int, Agg] = {int(row.bucket_start): _agg(row) for row in rows}
    for at_us, value in pending:
        start = at_us - at_us % interval_us
        if lo_us <= start <= hi_us:
            found.setdefault(start, Agg()).add(value)
    return sorted(found.items())


def totals(
    conn: Connection, metrics: Sequence[str], interval_s: int, lo_us: int, hi_us: int
) -> dict[tuple[str, str], Agg]:
    """Per (metric, object id): the merged buckets of one level with ``lo_us <= start < hi_us``, and the
    pending events that would fall in them."""
    between = None
    if interval_s != TOTAL_INTERVAL:
        # An event's bucket starts in [lo, hi) exactly when the event is in [ceil(lo), ceil(hi)).
        step = interval_s * 1_000_000
        between = (-(-lo_us // step) * step, -(-hi_us // step) * step)
    rows, pending = metricstore.totals_rows(conn, metrics, interval_s, lo_us, hi_us, between)
    result = {(r.metric, r.object_id): _agg(r) for r in rows}
    for metric, object_id, value in pending:
        result.setdefault((metric, object_id), Agg()).add(value)
    return result


def all_time(conn: Connection, metrics: Sequence[str]) -> dict[tuple[str, str], Agg]:
    """Every object's all-time total of each metric (what Prometheus counters show)."""
    return totals(conn, metrics, TOTAL_INTERVAL, 0, 1)


def pending_count(conn: Connection) -> int:
    return metricstore.pending_count(conn)


def merge_into(target: dict[tuple[str, str], Agg], more: Mapping[tuple[str, str], Agg]) -> None:
    for key, agg in more.items():
        target.setdefault(key, Agg()).merge(agg)
