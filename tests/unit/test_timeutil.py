"""RFC 3339 times as AWE prints them, integer microseconds as Perdure stores them, and AWE durations."""

from __future__ import annotations

import pytest

from perdure.timeutil import ZERO_TIME, format_us, parse_expiration, parse_time

#: 2019-02-28T21:06:13Z, a second in the real AWE job document.
SECOND = 1_551_387_973_000_000


# --- format_us -------------------------------------------------------------------------------------


@pytest.mark.parametrize("unset", [0, None])
def test_unset_time_formats_as_gos_zero_time(unset: int | None) -> None:
    assert format_us(unset) == "0001-01-01T00:00:00Z" == ZERO_TIME


def test_trailing_zeros_of_the_fraction_are_trimmed() -> None:
    assert format_us(SECOND + 88_000) == "2019-02-28T21:06:13.088Z"


def test_whole_seconds_have_no_fraction() -> None:
    assert format_us(SECOND) == "2019-02-28T21:06:13Z"


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (SECOND + 1, "2019-02-28T21:06:13.000001Z"),
        (SECOND + 100_000, "2019-02-28T21:06:13.1Z"),
        (SECOND + 999_999, "2019-02-28T21:06:13.999999Z"),
        (1, "1970-01-01T00:00:00.000001Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
    ],
)
def test_fraction_keeps_every_significant_microsecond(us: int, text: str) -> None:
    assert format_us(us) == text


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (17_184_198_331_999_999, "2514-07-19T04:25:31.999999Z"),
        (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_far_future_times_format_exactly(us: int, text: str) -> None:
    assert format_us(us) == text


def test_years_before_1000_are_padded_to_four_digits() -> None:
    assert format_us(parse_time("0999-01-01T00:00:00Z")) == "0999-01-01T00:00:00Z"


# --- parse_time ------------------------------------------------------------------------------------


def test_utc_time_with_z_is_parsed_to_microseconds() -> None:
    assert parse_time("2019-02-28T21:06:13.088Z") == SECOND + 88_000


@pytest.mark.parametrize(
    "text",
    [
        "2019-02-28T23:06:13+02:00",
        "2019-02-28T16:06:13-05:00",
        "2019-02-28T21:06:13+00:00",
        "2019-02-28T21:06:13-00:00",
        "2019-03-01T02:36:13+05:30",
    ],
)
def test_offsets_are_converted_to_utc(text: str) -> None:
    assert parse_time(text) == SECOND


def test_nine_digit_fraction_is_truncated_to_microseconds() -> None:
    assert parse_time("2019-02-28T21:06:13.123456789Z") == SECOND + 123_456


def test_seventh_digit_does_not_round_up() -> None:
    assert parse_time("2019-02-28T21:06:13.9999999Z") == SECOND + 999_999


def test_bare_date_means_midnight_utc() -> None:
    assert parse_time("2019-02-28") == 1_551_312_000_000_000
    assert format_us(parse_time("2019-02-28")) == "2019-02-28T00:00:00Z"


@pytest.mark.parametrize("text", ["2019-02-28t21:06:13z", "2019-02-28 21:06:13Z", " 2019-02-28T21:06:13Z "])
def test_rfc3339_variants_are_accepted(text: str) -> None:
    assert parse_time(text) == SECOND


def test_gos_zero_time_parses_as_unset() -> None:
    assert parse_time(ZERO_TIME) == 0


@pytest.mark.parametrize("text", ["2019-02-28T21:06:13", "2019-02-28T21:06:13.088", "2019-02-28 21:06"])
def test_time_without_a_zone_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "tomorrow",
        "28/02/2019",
        "2019-2-28",
        "2019-02-28T21:06:13+0200",
        "2019-02-28T21:06:13 UTC",
        "2019-02-28T21:06:13.Z",
        "1551387973",
        " ",
    ],
)
def test_garbage_is_refused_quoting_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time") as caught:
        parse_time(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    "text", ["2019-02-30T00:00:00Z", "2019-02-28T25:00:00Z", "2019-13-01", "2019-02-28T21:61:00Z"]
)
def test_impossible_dates_and_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize("empty", ["", None, 0])
def test_empty_or_non_string_time_is_refused(empty: object) -> None:
    with pytest.raises(ValueError, match="empty time"):
        parse_time(empty)  # type: ignore[arg-type]


# --- round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2019-02-28T21:06:13.088Z",
        "2019-02-28T21:06:13Z",
        "2019-02-28T21:06:13.000001Z",
        "2019-02-28T21:06:13.999999Z",
        "1970-01-01T00:00:00.000001Z",
        "1969-12-31T23:59:59.999999Z",
        "2000-02-29T12:00:00.5Z",
        "2099-12-31T23:59:59.999999Z",
    ],
)
def test_format_and_parse_round_trip(text: str) -> None:
    assert format_us(parse_time(text)) == text


@pytest.mark.parametrize("us", [1, -1, SECOND, SECOND + 88_000, SECOND + 999_999, 4_102_444_799_999_999])
def test_parse_and_format_round_trip(us: int) -> None:
    assert parse_time(format_us(us)) == us


@pytest.mark.parametrize("text", ["2300-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999999Z"])
def test_far_future_times_round_trip(text: str) -> None:
    assert format_us(parse_time(text)) == text


# --- parse_expiration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30M", 1_800), ("12H", 43_200), ("7D", 604_800), ("1M", 60), ("0M", 0), ("365D", 31_536_000)],
)
def test_expiration_is_a_count_of_minutes_hours_or_days(text: str, seconds: int) -> None:
    assert parse_expiration(text) == seconds


@pytest.mark.parametrize(
    "text", ["7d", "30m", "D", "1.5H", "", " ", "-1D", "7", "7 D", "7DD", "H7", "7W", "1H30M"]
)
def test_bad_expiration_is_refused_showing_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_expiration(text)
    assert str(caught.value) == f"expiration must look like 30M, 12H or 7D, not {text!r}"


@pytest.mark.parametrize("value", [None, 7])
def test_non_string_expiration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="expiration must look like 30M, 12H or 7D"):
        parse_expiration(value)  # type: ignore[arg-type]
