"""The arithmetic of AWE's split parts and Shock's index units (issue 19): pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.datastore import ConcatReader, DirectoryBlobStore
from perdure.errors import BadRequest
from perdure.split import awe_part, split_ranges
from perdure.store import shock


@pytest.mark.parametrize(
    ("totalwork", "totalindex", "expected"),
    [
        (4, 4, ["1", "2", "3", "4"]),
        (3, 10, ["1-4", "5-7", "8-10"]),  # the first total % N ranks get one unit more
        (2, 3, ["1-2", "3"]),
        (1, 7, ["1-7"]),
    ],
)
def test_awe_part_is_awe_workunit_part(totalwork: int, totalindex: int, expected: list[str]) -> None:
    assert [awe_part(rank, totalwork, totalindex) for rank in range(1, totalwork + 1)] == expected
    assert awe_part(0, totalwork, totalindex) == ""  # rank 0 reads the whole input


def test_part_range_covers_units_a_to_b_and_refuses_what_is_not_there() -> None:
    units = [(0, 3), (3, 5), (8, 2)]
    assert shock.part_range(units, "1", "line") == (0, 3)
    assert shock.part_range(units, "2-3", "line") == (3, 7)
    with pytest.raises(BadRequest, match=r"beyond the last part \(3\)"):
        shock.part_range(units, "3-4", "line")
    for bad in ("0", "2-1", "a", "", "1-", "-1"):
        with pytest.raises(BadRequest):
            shock.part_range(units, bad, "line")


def _node(indexes: dict[str, object] | None = None) -> shock.ShockNode:
    return shock.ShockNode(
        id="00000000-0000-4000-8000-000000000000",
        job_id="j",
        task_id="j_t",
        filename="f",
        parts=0,
        indexes=dict(indexes or {}),
        attributes=None,
        created=0,
    )


def _reader(tmp_path: Path, data: bytes) -> ConcatReader:
    store = DirectoryBlobStore(tmp_path)
    pending = store.begin("k", 1 << 30)
    pending.write(data)
    pending.commit(None)
    return ConcatReader(store, ["k"])


def test_line_and_record_indexes_count_records_as_the_splitter_does(tmp_path: Path) -> None:
    fasta = b">a\nACGT\nAC\n>b\nGG\n>c\nT\n"
    reader = _reader(tmp_path, fasta)
    records = shock.index_units(_node(), "record", reader)
    assert [fasta[o : o + n] for o, n in records] == [b">a\nACGT\nAC\n", b">b\nGG\n", b">c\nT\n"]
    lines = shock.index_units(_node(), "line", reader)
    assert len(lines) == 7 and fasta[slice(lines[1][0], sum(lines[1]))] == b"ACGT\n"
    with pytest.raises(BadRequest, match="no index"):
        shock.index_units(_node(), "bai", reader)


def test_a_stored_split_index_serves_exactly_the_splitters_parts(tmp_path: Path) -> None:
    data = b"".join(b"%d\n" % n for n in range(1, 1001))
    reader = _reader(tmp_path, data)
    ranges = split_ranges(
        lambda o, n: data[o : o + n], len(data), totalwork=4, maxworksize_mb=0, index="line"
    )
    node = _node({"chunkrecord": {"units": [list(r) for r in ranges]}})
    units = shock.index_units(node, "chunkrecord", reader)
    for rank in range(1, 5):
        offset, length = shock.part_range(units, awe_part(rank, 4, len(units)), "chunkrecord")
        assert (offset, length) == ranges[rank - 1]
        assert data[offset + length - 1 : offset + length] == b"\n"  # never inside a record
