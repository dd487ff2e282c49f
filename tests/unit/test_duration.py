"""Durations: the one parser and printer (``perdure.duration``) every setting, flag and query uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perdure.duration import MAX_SECONDS, format_duration, parse_duration, to_seconds


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_printing_then_parsing_gives_the_same_nanoseconds(nanos: int) -> None:
    text = format_duration(nanos / 1e9)
    assert round(parse_duration(text) * 1e9) == nanos
    assert format_duration(parse_duration(text)) == text


@given(st.integers(min_value=0, max_value=2**40))
def test_whole_milliseconds_up_to_decades_round_trip(millis: int) -> None:
    text = format_duration(millis / 1000)
    assert "d" not in text  # Go never prints days
    assert round(parse_duration(text) * 1000) == millis


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400),
        ("1d12h", 36 * 3600),
        ("1.5d", 36 * 3600),
        ("-1h30m", -5400),
        ("2h45m30.5s", 9930.5),
        ("1µs", 1e-6),
        ("1μs", 1e-6),
        ("1us", 1e-6),
        ("+90s", 90),
    ],
)
def test_go_units_and_days_are_read(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(7 * 86400, "168h0m0s"), (90, "1m30s"), (0.5, "500ms"), (1.5e-6, "1.5µs"), (1e-9, "1ns")],
)
def test_printing_is_gos(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["300", "1e3s", "5 m", "nan", "infs", "1y", "300000000000h", "9223372037s"])
def test_parse_duration_refuses_what_is_no_go_duration_or_beyond_its_range(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_settings_also_take_seconds_as_numbers_or_numeric_strings() -> None:
    assert to_seconds("300") == 300.0
    assert to_seconds(" 1.5 ") == 1.5
    assert to_seconds(42) == 42.0
    assert to_seconds("2m") == 120.0
    for bad in (True, None, "99999999999999999999999", float("nan"), float("inf"), MAX_SECONDS * 2):
        with pytest.raises(ValueError):
            to_seconds(bad)
