"""Levels and Go durations: what ``GET /api/v1/metric`` prints and what ``?interval=`` accepts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from perdure.metrics import levels as lv
from perdure.metrics.levels import DEFAULT_LEVELS, Level, go_duration, parse_duration, parse_levels


@pytest.fixture(autouse=True)
def _default_levels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("PERDURE_METRICS_LEVELS", raising=False)
    lv.configure_levels(None)
    yield
    lv.configure_levels(None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (60, "1m0s"),
        (1800, "30m0s"),
        (86400, "24h0m0s"),
        (168 * 3600, "168h0m0s"),
        (2160 * 3600, "2160h0m0s"),
        (18000 * 3600, "18000h0m0s"),
        (3600, "1h0m0s"),
        (90, "1m30s"),
        (3661, "1h1m1s"),
        (45, "45s"),
        (1.5, "1.5s"),
        (0, "0s"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (-60, "-1m0s"),
    ],
)
def test_go_duration_prints_like_go(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m", 60),
        ("1m0s", 60),
        ("30m", 1800),
        ("24h", 86400),
        ("24h0m0s", 86400),
        ("168h0m0s", 604800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("90s", 90),
        ("500ms", 0.5),
        ("7d", 604800),
        ("0", 0),
    ],
)
def test_parse_duration_reads_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "1", "1x", "1m 0s", "abc", "h1", "1m-1s", "--1m"])
def test_parse_duration_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_default_levels_are_the_documents() -> None:
    assert [level.document() for level in lv.levels()] == [
        {"interval": "1m0s", "retention": "168h0m0s"},
        {"interval": "30m0s", "retention": "2160h0m0s"},
        {"interval": "24h0m0s", "retention": "18000h0m0s"},
    ]
    assert parse_levels("1m:168h,30m:2160h,24h:18000h") == DEFAULT_LEVELS


def test_levels_are_configurable_by_environment_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_METRICS_LEVELS", "10s:1h, 1m:24h")
    assert lv.levels() == (Level(10, 3600), Level(60, 86400))
    lv.configure_levels([Level(3600, 86400 * 30), Level(60, 3600)])
    assert lv.levels() == (Level(60, 3600), Level(3600, 86400 * 30))  # finest first, whatever the order
    assert lv.level_for_interval(3600) == Level(3600, 86400 * 30)
    assert lv.level_for_interval(1800) is None
    lv.configure_levels(None)
    assert lv.levels() == (Level(10, 3600), Level(60, 86400))


@pytest.mark.parametrize(
    "text",
    [
        "7m:1h,30m:2h",  # 30m is not a multiple of 7m: ranges could not be split without double counts
        "1m:168h,1m:24h",  # two levels with one interval
        "1m",  # no retention
        "1m:30s",  # keeps less than one bucket
        "1.5s:1h",  # not whole seconds
        "",
    ],
)
def test_bad_level_configurations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_levels(text)


def test_bucket_arithmetic_is_aligned_to_the_epoch() -> None:
    minute = Level(60, 3600)
    t = 1_700_000_123_456_789
    assert minute.floor(t) == t - t % 60_000_000
    assert minute.ceil(t) == minute.floor(t) + 60_000_000
    assert minute.ceil(minute.floor(t)) == minute.floor(t)
    assert minute.oldest_kept(t) == t - 3600 * 1_000_000
