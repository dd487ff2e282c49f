"""Cutting a line- or record-oriented input into parts on record boundaries.

A task with ``maxworksize`` (MB) or ``totalwork`` > 1 and a split input (``partinfo.input``, or its
only input) is cut into at least ``totalwork`` parts of at most ``maxworksize`` MB each, never inside
a record. Records are lines (``partinfo.index`` "line"), FASTA entries ("fasta", or a file starting
with ``>``) or 4-line FASTQ entries ("fastq", or a file starting with ``@``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

MB = 1024 * 1024
#: How far past a target offset we read looking for the next record start, per step.
_SCAN = 64 * 1024

ReadAt = Callable[[int, int], bytes]


def record_kind(index: str, head: bytes) -> str:
    index = (index or "").lower()
    if index in ("line", "fasta", "fastq"):
        return index
    if head.startswith(b">"):
        return "fasta"
    if head.startswith(b"@"):
        return "fastq"
    return "line"


def part_count(size: int, totalwork: int, maxworksize_mb: int) -> int:
    count = max(1, totalwork)
    if maxworksize_mb > 0:
        count = max(count, math.ceil(size / (maxworksize_mb * MB)))
    return count


def _next_boundary(read_at: ReadAt, size: int, offset: int, kind: str) -> int:
    """The first record start at or after ``offset`` (``size`` if none)."""
    if offset <= 0:
        return 0
    # A record starts right after a newline; for FASTA it must also begin with '>'.
    position = offset - 1
    while position < size:
        chunk = read_at(position, _SCAN)
        if not chunk:
            return size
        index = 0
        while True:
            newline = chunk.find(b"\n", index)
            if newline < 0:
                break
            start = position + newline + 1
            if start >= size:
                return size
            if kind != "fasta":
                return start
            following = chunk[newline + 1 : newline + 2] or read_at(start, 1)
            if following == b">":
                return start
            index = newline + 1
        position += len(chunk)
    return size


def _record_starts(read_at: ReadAt, size: int, kind: str) -> list[int]:
    """Every record's offset, by reading the whole input (only when cutting by bytes fell short)."""
    if kind == "fastq":
        return _fastq_starts(read_at, size)
    starts, position = [0], 0
    while position < size:
        chunk = read_at(position, MB)
        if not chunk:
            break
        index = chunk.find(b"\n")
        while index >= 0:
            start = position + index + 1
            if start < size:
                following = chunk[index + 1 : index + 2] or read_at(start, 1)
                if kind != "fasta" or following == b">":
                    starts.append(start)
            index = chunk.find(b"\n", index + 1)
        position += len(chunk)
    return starts


def _fastq_starts(read_at: ReadAt, size: int) -> list[int]:
    """Offsets of every FASTQ record (every 4th line): FASTQ cannot be resynchronised mid-file."""
    starts, line, position = [0], 0, 0
    while position < size:
        chunk = read_at(position, MB)
        if not chunk:
            break
        index = chunk.find(b"\n")
        while index >= 0:
            line += 1
            if line % 4 == 0 and position + index + 1 < size:
                starts.append(position + index + 1)
            index = chunk.find(b"\n", index + 1)
        position += len(chunk)
    return starts


def split_ranges(
    read_at: ReadAt, size: int, *, totalwork: int, maxworksize_mb: int, index: str
) -> list[tuple[int, int]]:
    """(offset, length) of each part; fewer parts than asked when there are fewer records."""
    if size <= 0:
        return [(0, 0)]
    count = part_count(size, totalwork, maxworksize_mb)
    if count == 1:
        return [(0, size)]
    kind = record_kind(index, read_at(0, 1))
    targets = [size * i // count for i in range(count)]
    if kind == "fastq":
        starts = _fastq_starts(read_at, size)
        bounds = []
        for target in targets:
            bounds.append(next((s for s in starts if s >= target), size))
    else:
        bounds = [_next_boundary(read_at, size, target, kind) for target in targets]
    edges = [*sorted(set(bounds)), size]
    ranges = [(a, b - a) for a, b in itertools.pairwise(edges) if b > a]
    if len(ranges) < count:
        # A long record swallowed several byte targets: share the records out by count instead.
        starts = _record_starts(read_at, size, kind)
        if len(starts) > len(ranges):
            parts = min(count, len(starts))
            cuts = [starts[len(starts) * i // parts] for i in range(parts)] + [size]
            ranges = [(a, b - a) for a, b in itertools.pairwise(cuts) if b > a]
    return ranges


def record_offsets(read_at: ReadAt, size: int, kind: str) -> list[int]:
    """The offset of every record of ``kind`` ("line", "fasta" or "fastq"), as ``split_ranges`` sees
    records: what a Shock-compatible ``line`` or ``record`` index counts (api/shock.py)."""
    if size <= 0:
        return []
    return _record_starts(read_at, size, kind)


def awe_part(rank: int, totalwork: int, totalindex: int) -> str:
    """The index units rank ``rank`` of ``totalwork`` downloads, as AWE's ``Workunit.Part()``: the
    first ``totalindex % totalwork`` ranks get one unit more; ``"a-b"``, or ``"a"`` for one unit."""
    if rank <= 0 or totalwork <= 0:
        return ""
    size, remainder = divmod(totalindex, totalwork)
    if rank <= remainder:
        start = (size + 1) * (rank - 1) + 1
        end = start + size
    else:
        start = (size + 1) * remainder + size * (rank - remainder - 1) + 1
        end = start + size - 1
    return str(start) if start == end else f"{start}-{end}"
