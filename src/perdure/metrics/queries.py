"""Reading metrics: the definitions list, one series at one level, and the per-queue summary.

Every read is a range over the rollup index: a series reads only its own buckets inside the range
(clamped to what the level keeps), and the summary adds whole days from the daily level and only the
ragged edges from finer ones, so its cost grows with the number of queues, not with the range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from perdure.errors import BadRequest, NotFound
from perdure.metrics import clock, storage
from perdure.metrics.definitions import (
    BY_NAME,
    DEFINITIONS,
    NODE,
    QUEUE,
    SUMMARY_METRICS,
    SYSTEM,
    SYSTEM_OBJECT,
    MetricDef,
    MetricObject,
    definition,
    definition_document,
    node_object,
    parse_object,
    queue_object,
)
from perdure.metrics.levels import Level, go_duration, level_for_interval, levels, parse_duration
from perdure.metrics.storage import STATISTICS, Agg
from perdure.store import metricstore
from perdure.store.database import Database
from perdure.store.metricstore import Connection
from perdure.timeutil import format_us, parse_time


def stamp(t_us: int) -> str:
    """RFC 3339 for a bucket start: ``format_us`` without its ``strftime`` (a series has thousands)."""
    if t_us % 1_000_000 or t_us <= 0:
        return format_us(t_us)
    t = time.gmtime(t_us // 1_000_000)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """Optional RFC 3339 ``start``/``end`` into microseconds; 400 if malformed or reversed."""
    bounds: list[int | None] = []
    for name, value in (("start", start), ("end", end)):
        if value is None or value == "":
            bounds.append(None)
            continue
        try:
            bounds.append(parse_time(value))
        except ValueError:
            raise BadRequest(f"invalid {name} {value!r}: expected an RFC 3339 time") from None
    lo, hi = bounds
    if lo is not None and hi is not None and hi < lo:
        raise BadRequest(f"end {end} is before start {start}")
    return lo, hi


# ---- objects and definitions --------------------------------------------------------------------


def known_objects(conn: Connection) -> list[MetricObject]:
    """system-total, every client group (declared, in use by a client, or with data) and every node
    (registered, named by a client, or with data)."""
    found = {SYSTEM_OBJECT}
    found |= {queue_object(n) for n in metricstore.queue_names(conn)}
    found |= {node_object(n) for n in metricstore.node_names(conn)}
    for _metric, object_id in storage.all_time(conn, list(BY_NAME)):
        obj = parse_object(object_id)
        if obj is not None:
            found.add(obj)
    order = {SYSTEM: 0, QUEUE: 1, NODE: 2}
    return sorted(found, key=lambda o: (order[o.type], o.name))


def object_exists(conn: Connection, obj: MetricObject) -> bool:
    if obj.type == SYSTEM or metricstore.has_data(conn, list(BY_NAME), obj.id):
        return True
    if obj.type == NODE:
        return metricstore.node_known(conn, obj.name)
    return metricstore.queue_known(conn, obj.name)


def list_definitions(db: Database) -> list[dict[str, Any]]:
    """``GET /api/v1/metric``: one entry per metric and object it is kept for."""
    with storage.snapshot(db) as conn:
        objects = known_objects(conn)
    current = levels()
    return [
        definition_document(metric, obj, current)
        for obj in objects
        for metric in DEFINITIONS
        if obj.type in metric.objects
    ]


# ---- one series ---------------------------------------------------------------------------------


def choose_level(start_us: int | None, end_us: int, now_us: int) -> Level:
    """The finest level that still keeps ``start`` (or ``end`` when there is no start)."""
    reference = end_us if start_us is None else start_us
    current = levels()
    return next((lv for lv in current if reference >= lv.oldest_kept(now_us)), current[-1])


def resolve(object_id: str, metric_ref: str) -> tuple[MetricObject, MetricDef]:
    metric = definition(metric_ref)
    if metric is None:
        raise NotFound(f"metric definition {metric_ref!r} not found")
    obj = parse_object(object_id)
    if obj is None:
        raise NotFound(f"metric object {object_id!r} not found")
    if obj.type not in metric.objects:
        raise NotFound(f"metric {metric.name} is not kept for {obj.type} objects")
    return obj, metric


def time_series(
    db: Database,
    object_id: str,
    metric_ref: str,
    *,
    interval: str | None = None,
    start: str | None = None,
    end: str | None = None,
    statistic: str | None = None,
) -> tuple[dict[str, Any], Level]:
    """``GET /api/v1/metricValue/<object>/<metric>``: the points of one level inside the range."""
    obj, metric = resolve(object_id, metric_ref)
    start_us, end_us = parse_range(start, end)
    stat = statistic or metric.statistic
    if stat not in STATISTICS:
        raise BadRequest(f"unknown statistic {stat!r}: use one of {', '.join(STATISTICS)}")
    now = clock.now()
    hi = now if end_us is None else end_us
    level = _level_named(interval) if interval else choose_level(start_us, hi, now)
    lo = hi - level.retention_us if start_us is None else start_us
    # Never below what the level keeps: a range of years reads only the buckets that can exist.
    lo = max(level.floor(lo), level.floor(level.oldest_kept(now)))
    with storage.snapshot(db) as conn:
        if not object_exists(conn, obj):
            raise NotFound(f"metric object {object_id!r} not found")
        buckets = storage.series(conn, metric.name, obj.id, level.interval_s, lo, hi) if lo <= hi else []
    meta: dict[str, str] = {}
    if obj.type == QUEUE:
        meta["queueName"] = obj.name
    elif obj.type == NODE:
        meta["nodeID"] = obj.name
    return (
        {
            "id": f"{metric.id}.{obj.id}",
            "points": [
                {"time": stamp(start_), "value": agg.value(stat, level.interval_s)} for start_, agg in buckets
            ],
            "metaData": meta,
        },
        level,
    )


def _level_named(interval: str) -> Level:
    try:
        seconds = parse_duration(interval)
    except ValueError:
        raise BadRequest(f"invalid interval {interval!r}") from None
    level = level_for_interval(seconds)
    if level is None:
        known = ", ".join(go_duration(lv.interval_s) for lv in levels())
        raise BadRequest(f"no metrics level has interval {interval!r}: the levels are {known}")
    return level


# ---- the summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    level: Level
    lo_us: int
    hi_us: int  # exclusive


def plan(lo_us: int, hi_us: int, now_us: int) -> list[Segment]:
    """Split [lo, hi) into level ranges: whole coarse buckets inside, finer ones only at the edges.

    A bucket counts when it starts inside the range, so ranges that meet add up exactly. Each edge uses
    the finest level that still keeps it (the coarsest where none does). Boundaries fall on bucket
    starts of every finer level (intervals are multiples of each other): no bucket counts twice. A
    range reaching past ``now`` has no right edge: nothing is recorded after now, so the coarse bucket
    holding ``now`` is already exact.
    """
    return _cover(lo_us, hi_us, list(reversed(levels())), now_us, open_end=hi_us > now_us)


def _cover(lo: int, hi: int, candidates: list[Level], now: int, open_end: bool) -> list[Segment]:
    if lo >= hi or not candidates:
        return []
    level, rest = candidates[0], candidates[1:]
    finer = [lv for lv in rest if lo >= lv.oldest_kept(now)]
    if not finer:
        return [Segment(level, lo, hi)]
    inner_lo = level.ceil(lo)
    inner_hi = level.ceil(hi) if open_end else level.floor(hi)
    if inner_lo >= inner_hi:
        return _cover(lo, hi, finer, now, open_end)
    segments = [Segment(level, inner_lo, inner_hi), *_cover(lo, inner_lo, finer, now, False)]
    if not open_end:
        right = [lv for lv in rest if inner_hi >= lv.oldest_kept(now)]
        segments += _cover(inner_hi, hi, right, now, False)
    return segments


def range_totals(
    conn: Connection, metrics: list[str], lo_us: int | None, hi_us: int, now_us: int
) -> dict[tuple[str, str], Agg]:
    """Per (metric, object): everything recorded in [lo, hi). Without ``lo``: since metrics began
    (the all-time row less what came after ``hi``)."""
    result: dict[tuple[str, str], Agg] = {}
    if lo_us is None:
        storage.merge_into(result, storage.all_time(conn, metrics))
        later: dict[tuple[str, str], Agg] = {}
        for segment in plan(hi_us, max(hi_us, now_us) + 1, now_us):
            storage.merge_into(
                later, storage.totals(conn, metrics, segment.level.interval_s, segment.lo_us, segment.hi_us)
            )
        for key, agg in later.items():
            if key in result:
                result[key].total -= agg.total
                result[key].samples -= agg.samples
        return result
    for segment in plan(lo_us, hi_us, now_us):
        storage.merge_into(
            result, storage.totals(conn, metrics, segment.level.interval_s, segment.lo_us, segment.hi_us)
        )
    return result


def summary(db: Database, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    """``GET /api/v1/metrics/summary``: per queue, the total of each summary metric over the range."""
    start_us, end_us = parse_range(start, end)
    now = clock.now()
    hi = now if end_us is None else end_us
    with storage.snapshot(db) as conn:
        totals = range_totals(conn, list(SUMMARY_METRICS), start_us, hi + 1, now)
        queues = [o for o in known_objects(conn) if o.type == QUEUE]
    queues = sorted({*queues, *(q for _m, oid in totals if (q := parse_object(oid)) and q.type == QUEUE)})
    stamp = format_us(hi)
    items: dict[str, list[dict[str, Any]]] = {}
    for name in SUMMARY_METRICS:
        metric = BY_NAME[name]
        items[name] = [
            {
                "id": name,
                "point": {"time": stamp, "value": totals.get((name, q.id), Agg()).value(metric.statistic)},
                "metaData": {"queueName": q.name},
            }
            for q in queues
        ]
    return {"items": items}
