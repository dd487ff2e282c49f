"""Reading CRIU's images without crit: the statistics and the files image. The builders here make the
images the engine's tests (``test_spot_criu``) hand to a fake ``criu``."""

from __future__ import annotations

import struct

import pytest

from perdure.spot.criuimages import (
    FILES_MAGIC,
    IMG_COMMON_MAGIC,
    IMG_SERVICE_MAGIC,
    STATS_MAGIC,
    parse_stats,
    regular_files,
)

# ---- statistics -----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def stats_image(*entries: bytes, service: bool = True) -> bytes:
    head = struct.pack("<II", IMG_SERVICE_MAGIC, STATS_MAGIC) if service else struct.pack("<I", STATS_MAGIC)
    return head + b"".join(struct.pack("<I", len(e)) + e for e in entries)


DUMP_FIGURES = {
    "freezing_time": 1200,
    "frozen_time": 35_000,
    "memdump_time": 20_000,
    "memwrite_time": 9_000,
    "pages_scanned": 300_000,
    "pages_skipped_parent": 250_000,
    "pages_written": 50_000,
    "irmap_resolve": 3,
    "pages_lazy": 0,
    "page_pipes": 2,
    "page_pipe_bufs": 17,
    "shpages_scanned": 10,
    "shpages_skipped_parent": 4,
    "shpages_written": 6,
}


def dump_entry() -> bytes:
    body = b"".join(field(n, v) for n, v in enumerate(DUMP_FIGURES.values(), start=1))
    # Fields of a newer CRIU, of every wire type, are skipped.
    body += field(99, 5) + varint(100 << 3 | 1) + b"\x01" * 8 + varint(101 << 3 | 5) + b"\x02" * 4
    body += field(102, b"later")
    return field(1, body) + field(7, b"\x08\x01")


def test_dump_statistics() -> None:
    assert parse_stats(stats_image(dump_entry())) == DUMP_FIGURES


def test_restore_statistics_and_the_old_header() -> None:
    body = field(1, 10) + field(2, 20) + field(3, 3000) + field(4, 2**33) + field(5, 40) + field(6, 1)
    expected = {
        "pages_compared": 10,
        "pages_skipped_cow": 20,
        "forking_time": 3000,
        "restore_time": 2**33,
        "pages_restored": 40,
    }
    assert parse_stats(stats_image(field(2, body))) == expected
    assert parse_stats(stats_image(field(2, body), service=False)) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than its magic"),
        (b"\x00\x01", "shorter than its magic"),
        (struct.pack("<I", IMG_SERVICE_MAGIC), "no image magic"),
        (struct.pack("<II", IMG_SERVICE_MAGIC, 0x54564319), "not a CRIU stats image"),
        (b"garbage garbage garbage", "not a CRIU stats image"),
        (stats_image() + b"\x05\x00", "partial entry size"),
        (stats_image() + struct.pack("<I", 50) + b"\x08\x01", "entry of 50 bytes, 2 left"),
        (stats_image(b"\x0a\x05\x08"), "truncated protobuf length-delimited"),
        (stats_image(b"\x0a\x02\x08\x80"), "truncated protobuf varint"),
        (stats_image(b"\x0a\x01\x0b"), "wire type 3"),
        (stats_image(b"\x00\x01"), "field number 0"),
        (stats_image(b"\x08" + b"\xff" * 11), "longer than 10 bytes"),
    ],
)
def test_garbage_statistics_are_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stats(data)


# ---- the files image ------------------------------------------------------------------------------


def files_image(files: dict[str, int | None]) -> bytes:
    """A ``files.img``: a regular-file entry per name, with its size (None: no size, a device)."""
    entries = []
    for number, (name, size) in enumerate(files.items(), start=1):
        reg = field(1, number) + field(2, 0x8001) + field(3, 0) + field(6, name.encode())
        if size is not None:
            reg += field(8, size)
        entries.append(field(1, 1) + field(2, number) + field(3, reg))
    return struct.pack("<II", IMG_COMMON_MAGIC, FILES_MAGIC) + b"".join(
        struct.pack("<I", len(e)) + e for e in entries
    )


def test_the_files_image_gives_the_sizes_crius_restore_checks() -> None:
    data = files_image({"/w/out.txt": 120, "/dev/null": None, "/usr/lib/libc.so.6": 1_926_232})
    assert regular_files(data) == {"/w/out.txt": 120, "/usr/lib/libc.so.6": 1_926_232}
    with pytest.raises(ValueError, match="not a CRIU files image"):
        regular_files(stats_image(dump_entry()))
    with pytest.raises(ValueError, match="truncated"):
        regular_files(data[:-3])
