"""The metric tables: the event log (``metric_events``) and the per-level rollups (``metric_rollups``),
and the reads the metrics need from the rest of the schema (gauges, known queues and nodes).

Named queries only: what a metric means, which objects it is kept for and how levels bucket time is
``perdure.metrics``'s business, which calls these. Recording is an ``INSERT`` into ``metric_events``
inside the caller's transaction (no row locks: concurrent transactions on any number of servers never
queue behind each other to count). ``fold`` moves events into ``metric_rollups``, one row per metric,
object, level and bucket with total, sample count, minimum and maximum: it deletes the events it takes
and upserts their buckets in the same transaction, so each event is folded exactly once even with
several servers folding at once; readers add the events not folded yet, in one snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from sqlalchemy import Connection, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from perdure.states import WorkunitState
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import clientgroups, clients, meta, metric_events, metric_rollups, nodes, workunits

#: One sample: (metric, object id, value).
Sample = tuple[str, str, float]
#: The all-time level: one bucket (start 0) per metric and object, never expired.
TOTAL_INTERVAL = 0
_BULK_BATCH = 5000
#: Events taken per fold transaction (bounds how long a fold holds SQLite's write lock).
FOLD_BATCH = 20_000

t = metric_rollups.c
e = metric_events.c


class Bucketing(Protocol):
    """What a fold needs of a metrics level: its interval, and the start of the bucket holding a time."""

    @property
    def interval_s(self) -> int: ...

    def floor(self, t_us: int) -> int: ...


# ---- writing ------------------------------------------------------------------------------------


def insert_events(conn: Connection, samples: Iterable[Sample], at_us: int) -> None:
    """Append each (metric, object id, value) sample, at ``at_us``, to the event log.

    One plain multi-row INSERT: this runs in every submit, checkout and report, and SQLAlchemy's
    per-row parameter handling would cost more than the insert itself.
    """
    statement = insert_events_sql(samples, at_us, "%s" if conn.dialect.name == "postgresql" else "?")
    if statement is not None:
        conn.exec_driver_sql(*statement)


def insert_events_sql(
    samples: Iterable[Sample], at_us: int, mark: str = "?"
) -> tuple[str, tuple[Any, ...]] | None:
    """``insert_events``' statement as ``(sql, params)`` (placeholders ``mark``), for a caller that runs
    it on the driver directly (``store.sqlitedirect``); None when there is nothing to insert."""
    params = [x for metric, object_id, value in samples for x in (metric, object_id, at_us, float(value))]
    if not params:
        return None
    rows = ", ".join([f"({mark}, {mark}, {mark}, {mark})"] * (len(params) // 4))
    return f"INSERT INTO metric_events (metric, object_id, at, value) VALUES {rows}", tuple(params)


_INSERT_PG = (
    "INSERT INTO metric_events (metric, object_id, at, value)"
    " SELECT m, o, %s, v FROM unnest(%s::text[], %s::text[], %s::float8[]) AS s(m, o, v)"
)


def insert_events_pg(samples: Sequence[Sample], at_us: int) -> tuple[str, tuple[Any, ...]]:
    """``insert_events`` on PostgreSQL as ``(sql, params)`` for a caller that runs it on psycopg
    directly. The samples go as arrays, so the statement's text is the same for any number of them:
    PostgreSQL and psycopg prepare it once."""
    metrics, object_ids, values = zip(*samples, strict=True)
    return _INSERT_PG, (at_us, list(metrics), list(object_ids), list(values))


def fold(db: Database, levels: Sequence[Bucketing], batch: int = FOLD_BATCH) -> int:
    """Move every pending event into the all-time rollup and those of each level; returns how many
    events were folded."""
    folded = 0
    while True:
        with db.write() as conn:
            events = _take(conn, batch)
            buckets: dict[tuple[str, int, int, str], list[float]] = {}
            for metric, object_id, at_us, value in events:
                merge_bucket(buckets, (metric, TOTAL_INTERVAL, 0, object_id), value, 1, value, value)
                for level in levels:
                    merge_bucket(
                        buckets,
                        (metric, level.interval_s, level.floor(at_us), object_id),
                        value,
                        1,
                        value,
                        value,
                    )
            # In primary key order: two folders lock shared rows in the same order (no deadlock).
            upsert_rollups(conn, [(*key, *agg) for key, agg in sorted(buckets.items())])
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


def merge_bucket(
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


def upsert_rollups(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` are (metric, interval_s, bucket_start, object_id, total, samples, minimum, maximum)."""
    sql = _UPSERT.format(p="%s" if conn.dialect.name == "postgresql" else "?")
    for i in range(0, len(rows), _BULK_BATCH):
        conn.exec_driver_sql(sql, [(*r[:5], int(r[5]), *r[6:]) for r in rows[i : i + _BULK_BATCH]])


@retry_on_conflict
def expire(db: Database, metrics: Sequence[str], cutoffs: Sequence[tuple[int, int]]) -> int:
    """Delete the buckets of each (level interval, cutoff) that start at or before the cutoff;
    returns how many rows went."""
    deleted = 0
    with db.write() as conn:
        for interval_s, cutoff in cutoffs:
            result = conn.execute(
                delete(metric_rollups).where(
                    t.metric.in_(list(metrics)),
                    t.interval_s == interval_s,
                    t.bucket_start <= cutoff,
                )
            )
            deleted += result.rowcount or 0
    return deleted


# ---- the gauge sample, once per period across all servers -----------------------------------------


def read_marker(conn: Connection, key: str) -> str | None:
    """A value kept in ``meta`` (the metrics keep the time of the last gauge sample there)."""
    value: str | None = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()
    return value


@retry_on_conflict
def sample_once(
    db: Database, key: str, now_us: int, due: Callable[[str | None], bool], samples: Sequence[Sample]
) -> bool:
    """Record ``samples`` at ``now_us`` if this caller wins the period: the marker ``key`` is created,
    or compare-and-set from a last value ``due`` says is old enough. True if it recorded them."""
    with db.write() as conn:
        last = read_marker(conn, key)
        if last is None:
            dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            created = conn.execute(
                dialect_insert(meta).values(key=key, value=str(now_us)).on_conflict_do_nothing()
            )
            won = bool(created.rowcount)
        elif not due(last):
            won = False
        else:
            moved = conn.execute(
                update(meta).where(meta.c.key == key, meta.c.value == last).values(value=str(now_us))
            )
            won = bool(moved.rowcount)
        if won:
            insert_events(conn, samples, now_us)
        return won


def clientgroup_names(conn: Connection) -> list[str]:
    """Every declared client group."""
    return list(conn.execute(select(clientgroups.c.name)).scalars())


def queued_by_clientgroups(conn: Connection) -> list[tuple[str, int]]:
    """Queued workunits per value of their ``clientgroups`` (a comma list)."""
    rows = conn.execute(
        select(workunits.c.clientgroups, func.count())
        .where(text(f"workunits.state = '{WorkunitState.QUEUED.value}'"))
        .group_by(workunits.c.clientgroups)
    ).all()
    return [(str(groups), int(n)) for groups, n in rows]


def live_clients(conn: Connection, heartbeat_since_us: int) -> list[Any]:
    """Clients neither deleted nor suspended that beat since then: ``id``, ``group_name``,
    ``node_id``, ``hostname``."""
    return list(
        conn.execute(
            select(clients.c.id, clients.c.group_name, clients.c.node_id, clients.c.hostname).where(
                clients.c.deleted_at == 0,
                clients.c.suspended.is_(False),
                clients.c.last_heartbeat >= heartbeat_since_us,
            )
        ).all()
    )


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


def series_rows(
    conn: Connection,
    metric: str,
    object_id: str,
    interval_s: int,
    lo_us: int,
    hi_us: int,
    events_hi_us: int,
) -> tuple[list[Any], list[tuple[int, float]]]:
    """One series' buckets of one level with ``lo_us <= start <= hi_us`` (``bucket_start``, ``total``,
    ``samples``, ``minimum``, ``maximum``; an index range read), and its pending events with
    ``lo_us <= at < events_hi_us``."""
    rows = conn.execute(
        select(t.bucket_start, t.total, t.samples, t.minimum, t.maximum).where(
            t.metric == metric,
            t.object_id == object_id,
            t.interval_s == interval_s,
            t.bucket_start >= lo_us,
            t.bucket_start <= hi_us,
        )
    ).all()
    pending = conn.execute(
        select(e.at, e.value).where(
            e.metric == metric, e.object_id == object_id, e.at >= lo_us, e.at < events_hi_us
        )
    ).all()
    return list(rows), [(int(at), float(value)) for at, value in pending]


def totals_rows(
    conn: Connection,
    metrics: Sequence[str],
    interval_s: int,
    lo_us: int,
    hi_us: int,
    events_between: tuple[int, int] | None,
) -> tuple[list[Any], list[tuple[str, str, float]]]:
    """Per (metric, object id), the buckets of one level with ``lo_us <= start < hi_us`` summed up
    (``metric``, ``object_id``, ``total``, ``samples``, ``minimum``, ``maximum``), and the pending
    events of these metrics, those with ``lo <= at < hi`` when ``events_between`` is (lo, hi)."""
    rows = conn.execute(
        select(
            t.metric,
            t.object_id,
            func.sum(t.total).label("total"),
            func.sum(t.samples).label("samples"),
            func.min(t.minimum).label("minimum"),
            func.max(t.maximum).label("maximum"),
        )
        .where(
            t.metric.in_(list(metrics)),
            t.interval_s == interval_s,
            t.bucket_start >= lo_us,
            t.bucket_start < hi_us,
        )
        .group_by(t.metric, t.object_id)
    ).all()
    pending = select(e.metric, e.object_id, e.value).where(e.metric.in_(list(metrics)))
    if events_between is not None:
        pending = pending.where(e.at >= events_between[0], e.at < events_between[1])
    return list(rows), [(str(m), str(o), float(v)) for m, o, v in conn.execute(pending)]


def pending_count(conn: Connection) -> int:
    """Events not folded yet."""
    return int(conn.execute(select(func.count()).select_from(metric_events)).scalar_one())


def queue_names(conn: Connection) -> set[str]:
    """Client groups declared or in use by a client."""
    found = set(conn.execute(select(clientgroups.c.name)).scalars())
    in_use = select(clients.c.group_name).where(clients.c.deleted_at == 0).distinct()
    return found | set(conn.execute(in_use).scalars())


def node_names(conn: Connection) -> set[str]:
    """Nodes registered or named by a client."""
    found = set(conn.execute(select(nodes.c.id)).scalars())
    on_nodes = select(clients.c.node_id).where(clients.c.deleted_at == 0, clients.c.node_id != "").distinct()
    return found | set(conn.execute(on_nodes).scalars())


def has_data(conn: Connection, metrics: Sequence[str], object_id: str) -> bool:
    """Whether any of these metrics has a sample for the object, folded or not yet."""
    for table in (metric_rollups, metric_events):
        found = conn.execute(
            select(table.c.object_id)
            .where(table.c.metric.in_(list(metrics)), table.c.object_id == object_id)
            .limit(1)
        ).first()
        if found is not None:
            return True
    return False


def node_known(conn: Connection, name: str) -> bool:
    """Whether the node is registered or a live client runs on it."""
    registered = conn.execute(select(nodes.c.id).where(nodes.c.id == name)).first()
    with_client = conn.execute(
        select(clients.c.id).where(clients.c.node_id == name, clients.c.deleted_at == 0).limit(1)
    ).first()
    return registered is not None or with_client is not None


def queue_known(conn: Connection, name: str) -> bool:
    """Whether the client group is declared or a live client is in it."""
    declared = conn.execute(select(clientgroups.c.id).where(clientgroups.c.name == name)).first()
    in_use = conn.execute(
        select(clients.c.id).where(clients.c.group_name == name, clients.c.deleted_at == 0).limit(1)
    ).first()
    return declared is not None or in_use is not None


__all__ = [
    "FOLD_BATCH",
    "TOTAL_INTERVAL",
    "Bucketing",
    "Connection",
    "Sample",
    "clientgroup_names",
    "expire",
    "fold",
    "has_data",
    "insert_events",
    "insert_events_pg",
    "live_clients",
    "merge_bucket",
    "node_known",
    "node_names",
    "pending_count",
    "queue_known",
    "queue_names",
    "queued_by_clientgroups",
    "read_marker",
    "sample_once",
    "series_rows",
    "snapshot",
    "totals_rows",
    "upsert_rollups",
]
