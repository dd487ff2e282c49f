"""Metric storage with a clock the test controls: bucket boundaries, every level's sum, count, min and
max, events read the same before and after they are folded, level selection, range planning and
retention. Runs on both databases."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator

import pytest

from perdure.metrics import clock, queries, recording, storage
from perdure.metrics import levels as lv
from perdure.metrics.clock import ManualClock
from perdure.metrics.definitions import SYSTEM_OBJECT, queue_object
from perdure.metrics.storage import Agg
from perdure.metrics.sweep import sweep
from perdure.store import hooks, migrate
from perdure.store.database import Database
from perdure.timeutil import parse_time

MIN = 60_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = parse_time("2031-03-11T00:00:00Z")  # a day, a 30-minute and a minute boundary at once


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    migrate.upgrade(database)
    lv.configure_levels(None)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def now() -> Iterator[ManualClock]:
    manual = ManualClock(T0)
    with clock.use_clock(manual):
        yield manual


def add(db: Database, metric: str, value: float, objects: list[str] | None = None) -> None:
    with db.write() as conn:
        recording.record(conn, [(metric, value)], [SYSTEM_OBJECT, *(queue_object(q) for q in objects or [])])


def buckets(db: Database, metric: str, interval_s: int, object_id: str = "system-total") -> dict[str, Agg]:
    with db.read() as conn:
        rows = storage.series(conn, metric, object_id, interval_s, 0, 2**62)
    from perdure.timeutil import format_us

    return {format_us(start): agg for start, agg in rows}


@pytest.mark.parametrize("folded", [False, True], ids=["pending", "folded"])
def test_events_either_side_of_a_boundary_land_in_their_own_buckets(
    db: Database, now: ManualClock, folded: bool
) -> None:
    now.set(T0 - 1)  # 23:59:59.999999 the day before
    add(db, "checkoutLatency", 5.0, ["q1"])
    now.set(T0)  # midnight exactly: the next minute, half hour and day
    add(db, "checkoutLatency", 3.0, ["q1"])
    now.set(T0 + 30_000_000)
    add(db, "checkoutLatency", 7.0)
    now.set(T0 + 29 * MIN + 59_000_000)  # still the first half hour
    add(db, "checkoutLatency", 1.0)
    if folded:
        assert storage.fold(db, lv.levels()) == 6  # 4 samples for the system, 2 for q1
        with db.read() as conn:
            assert storage.pending_count(conn) == 0

    minute = buckets(db, "checkoutLatency", 60)
    assert minute["2031-03-10T23:59:00Z"] == Agg(5.0, 1, 5.0, 5.0)
    assert minute["2031-03-11T00:00:00Z"] == Agg(10.0, 2, 3.0, 7.0)
    assert minute["2031-03-11T00:29:00Z"] == Agg(1.0, 1, 1.0, 1.0)
    assert buckets(db, "checkoutLatency", 1800) == {
        "2031-03-10T23:30:00Z": Agg(5.0, 1, 5.0, 5.0),
        "2031-03-11T00:00:00Z": Agg(11.0, 3, 1.0, 7.0),
    }
    assert buckets(db, "checkoutLatency", 86400) == {
        "2031-03-10T00:00:00Z": Agg(5.0, 1, 5.0, 5.0),
        "2031-03-11T00:00:00Z": Agg(11.0, 3, 1.0, 7.0),
    }
    # The queue got only what was recorded for it.
    assert buckets(db, "checkoutLatency", 86400, "queue-q1") == {
        "2031-03-10T00:00:00Z": Agg(5.0, 1, 5.0, 5.0),
        "2031-03-11T00:00:00Z": Agg(3.0, 1, 3.0, 3.0),
    }
    with db.read() as conn:
        assert storage.all_time(conn, ["checkoutLatency"])[("checkoutLatency", "system-total")] == Agg(
            16.0, 4, 1.0, 7.0
        )


def test_statistics_of_a_bucket() -> None:
    agg = Agg().add(4.0).add(-2.0).add(10.0)
    assert (agg.value("sum"), agg.value("count"), agg.value("avg")) == (12.0, 3.0, 4.0)
    assert (agg.value("min"), agg.value("max"), agg.value("rate", 60)) == (-2.0, 10.0, 0.2)
    assert Agg().value("avg") == 0.0


def test_many_concurrent_writers_to_one_bucket_lose_nothing(db: Database, now: ManualClock) -> None:
    per_thread, threads = 25, 8
    errors: list[BaseException] = []

    @storage_retry
    def one(value: float) -> None:
        add(db, "workunitsCompleted", value, ["q"])

    def work(seed: int) -> None:
        try:
            for i in range(per_thread):
                one(float(seed * 100 + i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    values = [float(s * 100 + i) for s in range(threads) for i in range(per_thread)]
    expected = Agg(sum(values), len(values), min(values), max(values))
    for interval in (60, 1800, 86400):
        assert buckets(db, "workunitsCompleted", interval) == {"2031-03-11T00:00:00Z": expected}


def storage_retry(fn):  # type: ignore[no-untyped-def]
    """The stores' own retry (a PostgreSQL deadlock or serialization failure runs the transaction again)."""
    from perdure.store.database import retry_on_conflict

    return retry_on_conflict(fn)


def test_choose_level_is_the_finest_that_keeps_the_start() -> None:
    lv.configure_levels(None)
    now = T0
    assert queries.choose_level(now - HOUR, now, now).interval_s == 60
    assert queries.choose_level(now - 7 * DAY + MIN, now, now).interval_s == 60
    assert queries.choose_level(now - 8 * DAY, now, now).interval_s == 1800
    assert queries.choose_level(now - 100 * DAY, now, now).interval_s == 86400
    assert queries.choose_level(0, now, now).interval_s == 86400  # nothing keeps it: the coarsest
    assert queries.choose_level(None, now - 30 * DAY, now).interval_s == 1800  # by end when no start


def test_a_range_is_split_into_coarse_middles_and_fine_edges() -> None:
    noon = T0 + 12 * HOUR
    lo, hi = noon - 30 * DAY - 95 * MIN, noon + 17 * MIN
    shape = [(s.level.interval_s, s.lo_us, s.hi_us) for s in queries.plan(lo, hi, noon + HOUR)]
    assert shape == [
        (86400, T0 - 29 * DAY, T0),  # whole days
        (1800, lo, T0 - 29 * DAY),  # older than a week: half hours only (the minutes are gone)
        (1800, T0, noon),  # today until this half hour
        (60, noon, hi),  # and this half hour in minutes
    ]
    # The pieces tile the range without overlaps.
    pieces = sorted((a, b) for _i, a, b in shape)
    assert pieces[0][0] == lo and pieces[-1][1] == hi
    assert all(p[1] == q[0] for p, q in itertools.pairwise(pieces))
    # Up to now: nothing comes after now, so today's whole day bucket is exact; no right edge.
    shape = [(s.level.interval_s, s.lo_us, s.hi_us) for s in queries.plan(lo, noon + 1, noon)]
    assert shape == [(86400, T0 - 29 * DAY, T0 + DAY), (1800, lo, T0 - 29 * DAY)]
    # A range no level keeps any more is read from the coarsest level alone.
    assert [(s.level.interval_s, s.lo_us) for s in queries.plan(0, noon - 800 * DAY, noon)] == [(86400, 0)]


def test_range_totals_match_the_events_they_cover(db: Database, now: ManualClock) -> None:
    """Events spread over 40 days; range totals at bucket-aligned edges equal a brute-force sum."""
    rng = random.Random(7)
    now.set(T0)
    events = [(T0 - rng.randrange(40 * DAY), float(rng.randrange(1, 10))) for _ in range(3000)]
    with db.write() as conn:
        storage.bulk_load(conn, "jobSubmitted", "queue-q", events, lv.levels(), T0)

    def brute(lo: int, hi: int) -> float:
        return sum(v for t, v in events if lo <= t < hi)

    ranges = [
        (T0 - 3 * DAY - 17 * MIN, T0 - 5 * MIN),  # inside the minute level's week
        (T0 - 30 * DAY - 90 * MIN, T0 - 2 * HOUR - 3 * MIN),  # left edge only in half hours
        (T0 - 39 * DAY, T0 - 38 * DAY + 30 * MIN),
        (T0 - 6 * DAY - 1 * MIN, T0 - 6 * DAY + 1 * MIN),
        (T0 - 40 * DAY, T0 + 1),
    ]
    with db.read() as conn:
        for lo, hi in ranges:
            got = queries.range_totals(conn, ["jobSubmitted"], lo, hi, T0)
            assert got.get(("jobSubmitted", "queue-q"), Agg()).total == brute(lo, hi), (lo, hi)
        # Without a start: everything up to the end (the all-time row less what came later).
        for hi in (T0 - 2 * DAY - 7 * MIN, T0 + 1):
            got = queries.range_totals(conn, ["jobSubmitted"], None, hi, T0)
            assert got[("jobSubmitted", "queue-q")].total == brute(0, hi)


def test_retention_deletes_only_buckets_wholly_past_their_level(db: Database, now: ManualClock) -> None:
    now.set(T0)
    add(db, "jobSubmitted", 1)
    now.set(T0 + 10 * MIN)
    add(db, "jobSubmitted", 2)

    def levels_with_data() -> dict[int, int]:
        with db.read() as conn:
            got = {}
            for interval in (60, 1800, 86400):
                got[interval] = len(storage.series(conn, "jobSubmitted", "system-total", interval, 0, 2**62))
        return got

    assert levels_with_data() == {60: 2, 1800: 1, 86400: 1}
    # The 00:00 minute ends at 00:01; 168 h later it is just past retention, 00:10 is not.
    now.set(T0 + 168 * HOUR + MIN)
    result = sweep(db, force=True)
    assert result.sampled and result.folded == 2 + 3 and result.expired >= 1
    assert buckets(db, "jobSubmitted", 60) == {"2031-03-11T00:10:00Z": Agg(2.0, 1, 2.0, 2.0)}
    now.set(T0 + 168 * HOUR + 11 * MIN)
    sweep(db, force=True)
    assert levels_with_data()[60] == 0
    assert levels_with_data()[1800] == 1
    now.set(T0 + 2160 * HOUR + 30 * MIN)
    sweep(db, force=True)
    assert levels_with_data()[1800] == 0
    assert levels_with_data()[86400] == 1
    now.set(T0 + 18000 * HOUR + DAY)
    sweep(db, force=True)
    assert levels_with_data()[86400] == 0
    # The all-time total is never expired: Prometheus counters must not go backwards.
    with db.read() as conn:
        assert storage.all_time(conn, ["jobSubmitted"])[("jobSubmitted", "system-total")].total == 3.0


def test_the_sweep_samples_once_per_period_across_servers(db: Database, now: ManualClock) -> None:
    now.set(T0)
    assert sweep(db, sample_every_s=15).sampled
    assert not sweep(db, sample_every_s=15).sampled  # another server, same period
    now.advance(15)
    assert sweep(db, sample_every_s=15).sampled
    now.set(T0 - HOUR)  # a clock that went backwards does not stop sampling
    assert sweep(db, sample_every_s=15).sampled
    # Every sample counted once: the gauges' average is over the samples taken.
    assert buckets(db, "queueLength", 60)["2031-03-11T00:00:00Z"].samples == 2


@pytest.fixture
def recorded() -> Iterator[None]:
    """The metrics recorder installed, as the server installs it: the store's hooks record."""
    before = hooks.recorder()
    recording.install()
    try:
        yield
    finally:
        hooks.install(before)


@pytest.mark.usefixtures("recorded")
def test_checkpoint_hooks_fill_the_spot_protection_metrics(db: Database, now: ManualClock) -> None:
    with db.write() as conn:
        hooks.checkpoint_taken(conn, "q1", "n1", ok=True, duration_s=2.5, size_bytes=1e9)
        hooks.checkpoint_taken(conn, "q1", "n1", ok=False)
        hooks.restored(conn, "q1,q2", "n2", ok=True, duration_s=4.0, saved_s=3600.0)
        hooks.restored(conn, "", None, ok=False)
    with db.read() as conn:
        totals = storage.all_time(
            conn,
            ["checkpointDuration", "checkpointSize", "checkpointFailures", "spotProtection", "timeSaved"],
        )
    assert totals[("checkpointDuration", "node-n1")] == Agg(2.5, 1, 2.5, 2.5)
    assert totals[("checkpointSize", "queue-q1")].total == 1e9
    assert totals[("checkpointFailures", "system-total")].total == 1
    assert totals[("spotProtection", "queue-q2")].total == 1
    assert totals[("timeSaved", "system-total")].total == 3600.0
    assert ("spotProtection", "queue-default") not in totals


def test_folding_concurrently_counts_each_event_once(db: Database, now: ManualClock) -> None:
    """Several servers fold at once while others record: nothing lost, nothing counted twice."""
    for i in range(300):
        now.set(T0 + i * 7_000_000)
        add(db, "runtime", float(i), ["q"])
    errors: list[BaseException] = []

    def folder() -> None:
        try:
            storage.fold(db, lv.levels(), batch=50)
        except BaseException as exc:  # reported below
            errors.append(exc)

    folders = [threading.Thread(target=folder) for _ in range(4)]
    for f in folders:
        f.start()
    for i in range(300, 400):
        add(db, "runtime", float(i), ["q"])  # recorded while folding: at the last time set
    for f in folders:
        f.join()
    assert errors == []
    storage.fold(db, lv.levels())
    with db.read() as conn:
        assert storage.pending_count(conn) == 0
        everything = storage.all_time(conn, ["runtime"])
    expected = Agg(float(sum(range(400))), 400, 0.0, 399.0)
    assert everything[("runtime", "system-total")] == expected
    assert everything[("runtime", "queue-q")] == expected
    for interval in (60, 1800, 86400):
        merged = Agg()
        for agg in buckets(db, "runtime", interval).values():
            merged.merge(agg)
        assert merged == expected


def test_a_rolled_back_transaction_records_nothing(db: Database, now: ManualClock) -> None:
    with pytest.raises(RuntimeError), db.write() as conn:
        recording.record(conn, [("jobSubmitted", 1)], [SYSTEM_OBJECT])
        raise RuntimeError("the change being counted failed")
    add(db, "jobSubmitted", 1)
    with db.read() as conn:
        assert storage.all_time(conn, ["jobSubmitted"])[("jobSubmitted", "system-total")].total == 1


@pytest.mark.usefixtures("recorded")
def test_an_over_long_client_group_counts_in_the_total_only(db: Database, now: ManualClock) -> None:
    long_group = "g" * 400
    with db.write() as conn:
        hooks.job_submitted(conn, f"short,{long_group}")
    with db.read() as conn:
        totals = storage.all_time(conn, ["jobSubmitted"])
    assert set(totals) == {("jobSubmitted", "system-total"), ("jobSubmitted", "queue-short")}
