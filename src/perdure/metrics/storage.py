"""Metric storage: events appended where they happen, folded into per-level rollups by the sweep.

Recording is an ``INSERT`` into ``metric_events`` inside the caller's transaction: as durable as the
change it counts (a rolled-back report counts nothing) and free of row locks, so concurrent
transactions on any number of servers never queue behind each other to count. ``fold`` moves events
into ``metric_rollups``, one row per metric, object, level and bucket with total, sample count, minimum
and maximum, so sums, rates and averages are all exact at any level and merging rows is arithmetic.
Fold deletes the events it takes and upserts their buckets in the same transaction (each event is
folded exactly once, even with several servers folding at once); readers add the events not folded
yet, in one snapshot, so a query never misses or double-counts anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select

from perdure.metrics.levels import Level
from perdure.store.database import Database
from perdure.store.schema import metric_events, metric_rollups

#: The all-time level: one bucket (start 0) per metric and object, never expired.
TOTAL_INTERVAL = 0
_BULK_BATCH = 5000
#: Events taken per fold transaction (bounds how long a fold holds SQLite's write lock).
FOLD_BATCH = 20_000

t = metric_rollups.c
e = metric_events.c


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
    """Append each (metric, object id, value) sample, at ``at_us``, to the event log.

    One plain multi-row INSERT: this runs in every submit, checkout and report, and SQLAlchemy's
    per-row parameter handling would cost more than the insert itself.
    """
    params = [x for metric, object_id, value in samples for x in (metric, object_id, at_us, float(value))]
    if not params:
        return
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    rows = ", ".join([f"({mark}, {mark}, {mark}, {mark})"] * (len(params) // 4))
    conn.exec_driver_sql(
        f"INSERT INTO metric_events (metric, object_id, at, value) VALUES {rows}", tuple(params)
    )


def fold(db: Database, levels: Sequence[Level], batch: int = FOLD_BATCH) -> int:
    """Move every pending event into the rollups of each level; returns how many were folded."""
    folded = 0
    while True:
        with db.write() as conn:
            events = _take(conn, batch)
            buckets: dict[tuple[str, int, int, str], list[float]] = {}
            for metric, object_id, at_us, value in events:
                _add(buckets, (metric, TOTAL_INTERVAL, 0, object_id), value, 1, value, value)
                for level in levels:
                    _add(
                        buckets,
                        (metric, level.interval_s, level.floor(at_us), object_id),
                        value,
                        1,
                        value,
                        value,
                    )
            # In primary key order: two folders lock shared rows in the same order (no deadlock).
            _upsert(conn, [(*key, *agg) for key, agg in sorted(buckets.items())])
        folded += len(events)
        if len(events) < batch:
            return folded


def _take(conn: Connection, batch: int) -> list[Any]:
    """Delete and return the oldest pending events; on PostgreSQL skipping any another folder holds."""
    oldest = select(e.id).order_by(e.id).limit(batch)
    if conn.dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    stmt = delete(metric_events).where(e.id.in_(oldest)).returning(e.metric, e.object_id, e.at, e.value)
    return list(conn.execute(stmt).all())


def _add(
    buckets: dict[Any, list[float]], key: Any, total: float, samples: float, lo: float, hi: float
) -> None:
    """Merge into ``buckets[key]`` = [total, samples, minimum, maximum] (plain lists: bulk loads add
    millions of samples, and this is the inner loop)."""
    agg = buckets.get(key)
    if agg is None:
        buckets[key] = [total, samples, lo, hi]
        return
    agg[0] += total
    agg[1] += samples
    if lo < agg[2]:
        agg[2] = lo
    if hi > agg[3]:
        agg[3] = hi


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
        _add(below, at_us - at_us % step, value, 1, value, value)
    rows: list[tuple[Any, ...]] = []
    for i, level in enumerate(ordered):
        if i:
            coarser: dict[int, list[float]] = {}
            for start, agg in below.items():
                _add(coarser, level.floor(start), *agg)
            below = coarser
        oldest = level.oldest_kept(now_us)
        rows += [
            (metric, level.interval_s, start, object_id, *agg)
            for start, agg in sorted(below.items())
            if start + level.interval_us > oldest
        ]
    everything: dict[int, list[float]] = {}
    for agg in below.values():
        _add(everything, 0, *agg)
    rows += [(metric, TOTAL_INTERVAL, 0, object_id, *agg) for agg in everything.values()]
    _upsert(conn, rows)
    return len(rows)


#: Add rows to their buckets, creating them if needed. Plain SQL run with ``executemany`` over tuples:
#: folding and bulk loads write many rows, and building a parameter dict per row costs more than the
#: database's work. ``{p}`` is the driver's placeholder.
_UPSERT = (
    "INSERT INTO metric_rollups "
    "(metric, interval_s, bucket_start, object_id, total, samples, minimum, maximum) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
    "ON CONFLICT (metric, interval_s, bucket_start, object_id) DO UPDATE SET "
    "total = metric_rollups.total + excluded.total, "
    "samples = metric_rollups.samples + excluded.samples, "
    "minimum = CASE WHEN excluded.minimum < metric_rollups.minimum THEN excluded.minimum "
    "ELSE metric_rollups.minimum END, "
    "maximum = CASE WHEN excluded.maximum > metric_rollups.maximum THEN excluded.maximum "
    "ELSE metric_rollups.maximum END"
)


def _upsert(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` are (metric, interval_s, bucket_start, object_id, total, samples, minimum, maximum)."""
    sql = _UPSERT.format(p="%s" if conn.dialect.name == "postgresql" else "?")
    for i in range(0, len(rows), _BULK_BATCH):
        conn.exec_driver_sql(sql, [(*r[:5], int(r[5]), *r[6:]) for r in rows[i : i + _BULK_BATCH]])


def expire(conn: Connection, metrics: Sequence[str], levels: Sequence[Level], now_us: int) -> int:
    """Delete buckets wholly older than their level's retention; returns how many rows went."""
    deleted = 0
    for level in levels:
        cutoff = level.oldest_kept(now_us) - level.interval_us  # bucket end <= oldest kept
        result = conn.execute(
            delete(metric_rollups).where(
                t.metric.in_(list(metrics)),
                t.interval_s == level.interval_s,
                t.bucket_start <= cutoff,
            )
        )
        deleted += result.rowcount or 0
    return deleted


# ---- reading ------------------------------------------------------------------------------------


@contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read transaction that sees rollups and pending events as of one moment (a fold committing
    between two statements must not hide events nor count them twice): REPEATABLE READ on
    PostgreSQL; a SQLite read transaction is a snapshot already."""
    if db.is_sqlite:
        with db.read() as conn:
            yield conn
        return
    with db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        yield conn


def _aggregates() -> tuple[Any, ...]:
    return (
        func.sum(t.total).label("total"),
        func.sum(t.samples).label("samples"),
        func.min(t.minimum).label("minimum"),
        func.max(t.maximum).label("maximum"),
    )


def _agg(row: Any) -> Agg:
    return Agg(float(row.total), int(row.samples), float(row.minimum), float(row.maximum))


def series(
    conn: Connection, metric: str, object_id: str, interval_s: int, lo_us: int, hi_us: int
) -> list[tuple[int, Agg]]:
    """The buckets of one series with ``lo_us <= start <= hi_us``, oldest first: an index range read
    of the rollups, plus the pending events that fall in it."""
    found: dict[int, Agg] = {}
    rows = conn.execute(
        select(t.bucket_start, t.total, t.samples, t.minimum, t.maximum).where(
            t.metric == metric,
            t.object_id == object_id,
            t.interval_s == interval_s,
            t.bucket_start >= lo_us,
            t.bucket_start <= hi_us,
        )
    ).all()
    for row in rows:
        found[int(row.bucket_start)] = _agg(row)
    interval_us = interval_s * 1_000_000
    pending = conn.execute(
        select(e.at, e.value).where(
            e.metric == metric,
            e.object_id == object_id,
            e.at >= lo_us,
            e.at < hi_us - hi_us % interval_us + interval_us,
        )
    ).all()
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
    rows = conn.execute(
        select(t.metric, t.object_id, *_aggregates())
        .where(
            t.metric.in_(list(metrics)),
            t.interval_s == interval_s,
            t.bucket_start >= lo_us,
            t.bucket_start < hi_us,
        )
        .group_by(t.metric, t.object_id)
    ).all()
    result = {(r.metric, r.object_id): _agg(r) for r in rows}
    pending = select(e.metric, e.object_id, e.value).where(e.metric.in_(list(metrics)))
    if interval_s != TOTAL_INTERVAL:
        # An event's bucket starts in [lo, hi) exactly when the event is in [ceil(lo), ceil(hi)).
        step = interval_s * 1_000_000
        pending = pending.where(e.at >= -(-lo_us // step) * step, e.at < -(-hi_us // step) * step)
    for metric, object_id, value in conn.execute(pending):
        result.setdefault((metric, object_id), Agg()).add(value)
    return result


def all_time(conn: Connection, metrics: Sequence[str]) -> dict[tuple[str, str], Agg]:
    """Every object's all-time total of each metric (what Prometheus counters show)."""
    return totals(conn, metrics, TOTAL_INTERVAL, 0, 1)


def pending_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(metric_events)).scalar_one())


def merge_into(target: dict[tuple[str, str], Agg], more: Mapping[tuple[str, str], Agg]) -> None:
    for key, agg in more.items():
        target.setdefault(key, Agg()).merge(agg)
