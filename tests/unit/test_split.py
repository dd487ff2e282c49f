"""split_ranges (awe.md §1.5): parts on record boundaries (lines, FASTA, FASTQ), covering the input once.

The reader is a fake ``read_at`` over bytes in memory. Property checks use hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perdure.split import MB, part_count, record_kind, split_ranges

PROPERTY = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def reader(data: bytes, calls: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        assert offset >= 0 and length >= 0
        if calls is not None:
            calls.append((offset, length))
        return data[offset : offset + length]

    return read_at


def split(data: bytes, totalwork: int, maxworksize_mb: int = 0, index: str = "") -> list[tuple[int, int]]:
    return split_ranges(
        reader(data), len(data), totalwork=totalwork, maxworksize_mb=maxworksize_mb, index=index
    )


def line_starts(data: bytes) -> list[int]:
    return [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A and i + 1 < len(data)]


def fasta_starts(data: bytes) -> list[int]:
    return [s for s in line_starts(data) if data[s : s + 1] == b">"]


def fastq_starts(data: bytes) -> list[int]:
    return line_starts(data)[::4]


def assert_partition(data: bytes, ranges: list[tuple[int, int]], starts: list[int]) -> None:
    """Contiguous, in order, non-empty, covering every byte once, each part starting at a record start."""
    assert ranges, "no parts"
    position = 0
    for offset, length in ranges:
        assert offset == position, ranges
        assert length > 0, ranges
        assert offset in starts, (offset, ranges)
        position += length
    assert position == len(data)
    assert b"".join(data[o : o + n] for o, n in ranges) == data


def lines(count: int, width: int = 7) -> bytes:
    return b"".join(b"%0*d\n" % (width, i) for i in range(count))


def fasta(count: int) -> bytes:
    return b"".join(
        b">seq%d description\n%s\n%s\n" % (i, b"ACGT" * 15, b"GATTACA" * (i % 5 + 1)) for i in range(count)
    )


def fastq(count: int) -> bytes:
    # Quality lines that begin with '@' or '+' must not be taken for record starts.
    return b"".join(b"@read%d\nACGTACGTAC\n+\n@+IIIIIIII\n" % i for i in range(count))


# ---- basics -------------------------------------------------------------------------------------------


def test_part_count() -> None:
    assert part_count(10 * MB, 1, 0) == 1
    assert part_count(10 * MB, 0, 0) == 1
    assert part_count(10 * MB, -3, 0) == 1
    assert part_count(10 * MB, 4, 0) == 4
    assert part_count(10 * MB, 4, 1) == 10
    assert part_count(10 * MB + 1, 4, 1) == 11
    assert part_count(10 * MB, 4, 5) == 4
    assert part_count(10 * MB, 20, 1) == 20


@pytest.mark.parametrize(
    ("index", "head", "kind"),
    [
        ("line", b">", "line"),
        ("LINE", b"@", "line"),
        ("fasta", b"x", "fasta"),
        ("fastq", b"x", "fastq"),
        ("", b">", "fasta"),
        ("", b"@", "fastq"),
        ("chunkrecord", b">", "fasta"),
        ("record", b"A", "line"),
        ("", b"", "line"),
    ],
)
def test_record_kind(index: str, head: bytes, kind: str) -> None:
    assert record_kind(index, head) == kind


def test_empty_input_is_one_empty_part() -> None:
    assert split(b"", 4) == [(0, 0)]
    assert split(b"", 1) == [(0, 0)]
    assert split(b"", 4, maxworksize_mb=1) == [(0, 0)]


def test_no_split_asked_reads_nothing() -> None:
    calls: list[tuple[int, int]] = []
    data = lines(100)
    assert split_ranges(reader(data, calls), len(data), totalwork=1, maxworksize_mb=0, index="") == [
        (0, len(data))
    ]
    assert calls == []


@pytest.mark.parametrize("kind", ["line", "fasta", "fastq"])
@pytest.mark.parametrize("totalwork", [2, 3, 4, 7, 16])
def test_parts_never_cut_a_record(kind: str, totalwork: int) -> None:
    data = {"line": lines(500), "fasta": fasta(200), "fastq": fastq(200)}[kind]
    starts = {"line": line_starts, "fasta": fasta_starts, "fastq": fastq_starts}[kind](data)
    for index in (kind, ""):
        ranges = split(data, totalwork, index=index)
        assert_partition(data, ranges, starts)
        assert len(ranges) == totalwork


def test_fasta_records_with_many_lines_stay_whole() -> None:
    data = b"".join(b">r%d\n" % i + b"ACGTACGTAC\n" * 40 for i in range(12))
    ranges = split(data, 5, index="fasta")
    assert_partition(data, ranges, fasta_starts(data))
    assert len(ranges) == 5


def test_fewer_records_than_parts_asked() -> None:
    data = b"one\ntwo\nthree\n"
    ranges = split(data, 10, index="line")
    assert_partition(data, ranges, line_starts(data))
    assert len(ranges) == 3
    assert split(b"only one line\n", 4) == [(0, 14)]
    data = fastq(2)
    ranges = split(data, 8)
    assert_partition(data, ranges, fastq_starts(data))
    assert len(ranges) == 2
    data = b">only\nACGT\nACGT\n"
    assert split(data, 4, index="fasta") == [(0, len(data))]


def test_no_trailing_newline() -> None:
    data = lines(99) + b"last line without newline"
    ranges = split(data, 4, index="line")
    assert_partition(data, ranges, line_starts(data))
    assert len(ranges) == 4
    assert data[ranges[-1][0] :].endswith(b"without newline")
    data = fastq(30).rstrip(b"\n")
    ranges = split(data, 4)
    assert_partition(data, ranges, fastq_starts(data))
    assert len(ranges) == 4


def test_crlf_lines_keep_their_carriage_return() -> None:
    data = b"".join(b"line %03d\r\n" % i for i in range(100))
    ranges = split(data, 4, index="line")
    assert_partition(data, ranges, line_starts(data))
    for offset, length in ranges:
        assert data[offset : offset + length].endswith(b"\r\n")
    assert len(ranges) == 4


def test_records_longer_than_the_scan_window() -> None:
    # A line (or FASTA sequence) much longer than the 64 KiB read-ahead per step.
    data = b"short\n" + b"x" * 300_000 + b"\n" + b"short\n" * 3 + b"y" * 200_000 + b"\n"
    ranges = split(data, 4, index="line")
    assert_partition(data, ranges, line_starts(data))
    data = b">a\n" + b"A" * 300_000 + b"\n>b\n" + b"C" * 300_000 + b"\n>c\nG\n"
    ranges = split(data, 3, index="fasta")
    assert_partition(data, ranges, fasta_starts(data))
    assert ranges == [(0, 300_004), (300_004, 300_004), (600_008, 5)]


def test_maxworksize_raises_the_part_count() -> None:
    data = lines(300_000, width=9)  # 3,000,000 bytes: more than 2 MB
    assert len(data) > 2 * MB
    ranges = split(data, 1, maxworksize_mb=1, index="line")
    assert_partition(data, ranges, line_starts(data))
    assert len(ranges) == math.ceil(len(data) / MB) == 3
    assert all(length <= MB + 10 for _, length in ranges)  # at most maxworksize, give or take a line
    # totalwork wins when it asks for more.
    ranges = split(data, 5, maxworksize_mb=1, index="line")
    assert len(ranges) == 5
    # A cap above the size changes nothing.
    assert len(split(data, 2, maxworksize_mb=4, index="line")) == 2
    assert split(data, 1, maxworksize_mb=4, index="line") == [(0, len(data))]


def test_reads_are_bounded() -> None:
    """Finding boundaries in lines reads a window near each target, not the whole input."""
    calls: list[tuple[int, int]] = []
    data = lines(300_000, width=9)
    split_ranges(reader(data, calls), len(data), totalwork=4, maxworksize_mb=0, index="line")
    assert sum(min(length, len(data) - offset) for offset, length in calls) < len(data) // 4


@pytest.mark.parametrize(
    "data",
    [b"x" * 1000 + b"\n" + b"a\n" * 10, b"a\n" * 10 + b"x" * 1000 + b"\n"],
    ids=["long-first", "long-last"],
)
def test_at_least_totalwork_parts_when_there_are_enough_records(data: bytes) -> None:
    ranges = split(data, 4, index="line")
    assert_partition(data, ranges, line_starts(data))
    assert len(ranges) == 4


# ---- properties ---------------------------------------------------------------------------------------

line_text = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"."))


@PROPERTY
@given(
    records=st.lists(line_text, min_size=1, max_size=200),
    trailing_newline=st.booleans(),
    crlf=st.booleans(),
    totalwork=st.integers(min_value=1, max_value=24),
)
def test_lines_property(records: list[bytes], trailing_newline: bool, crlf: bool, totalwork: int) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = end.join(r.replace(b"\r", b".") for r in records) + (end if trailing_newline else b"")
    if not data:
        assert split(data, totalwork, index="line") == [(0, 0)]
        return
    starts = line_starts(data)
    ranges = split(data, totalwork, index="line")
    assert_partition(data, ranges, starts)
    assert len(ranges) <= min(totalwork, len(starts))
    longest = max(b - a for a, b in zip(starts, [*starts[1:], len(data)], strict=True))
    if longest < len(data) / totalwork:  # every record fits between two targets
        assert len(ranges) == totalwork


@PROPERTY
@given(
    records=st.lists(
        st.tuples(
            st.text("abc xyz", max_size=12),
            st.lists(st.text("ACGTN", min_size=1, max_size=60), max_size=5),
        ),
        min_size=1,
        max_size=80,
    ),
    totalwork=st.integers(min_value=1, max_value=16),
    named=st.booleans(),
)
def test_fasta_property(records: list[tuple[str, list[str]]], totalwork: int, named: bool) -> None:
    data = "".join(f">{head}\n" + "".join(f"{s}\n" for s in seq) for head, seq in records).encode()
    starts = fasta_starts(data)
    assert len(starts) == len(records)
    ranges = split(data, totalwork, index="fasta" if named else "")
    assert_partition(data, ranges, starts)
    assert len(ranges) <= min(totalwork, len(records))


@PROPERTY
@given(
    reads=st.lists(st.text("ACGT", min_size=1, max_size=40), min_size=1, max_size=80),
    quality_start=st.sampled_from("@+I#"),
    trailing_newline=st.booleans(),
    totalwork=st.integers(min_value=1, max_value=16),
)
def test_fastq_property(reads: list[str], quality_start: str, trailing_newline: bool, totalwork: int) -> None:
    text = "".join(f"@r{i}\n{s}\n+\n{quality_start}{'I' * (len(s) - 1)}\n" for i, s in enumerate(reads))
    data = text.encode() if trailing_newline else text.encode().rstrip(b"\n")
    starts = fastq_starts(data)
    assert len(starts) == len(reads)
    ranges = split(data, totalwork, index="fastq")
    assert_partition(data, ranges, starts)
    assert len(ranges) <= min(totalwork, len(reads))
    # Detected from the first byte too.
    assert split(data, totalwork) == ranges
