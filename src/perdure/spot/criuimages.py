"""Reading CRIU's images without ``crit`` or ``pycriu``: a small protobuf decoder for the statistics
(``stats-dump``, ``stats-restore``) and the regular files a dump holds open (``files.img``).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("perdure.spot")

# criu/include/magic.h: every image but the service ones starts with IMG_COMMON_MAGIC, then its own.
IMG_COMMON_MAGIC = 0x54564319
FILES_MAGIC = 0x56303138
# criu/include/magic.h: service images (stats, irmap cache) start with IMG_SERVICE_MAGIC, then their own.
IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306
# images/stats.proto: stats_entry { dump_stats_entry dump = 1; restore_stats_entry restore = 2; }
DUMP_FIELDS = {
    1: "freezing_time",
    2: "frozen_time",
    3: "memdump_time",
    4: "memwrite_time",
    5: "pages_scanned",
    6: "pages_skipped_parent",
    7: "pages_written",
    8: "irmap_resolve",
    9: "pages_lazy",
    10: "page_pipes",
    11: "page_pipe_bufs",
    12: "shpages_scanned",
    13: "shpages_skipped_parent",
    14: "shpages_written",
}
RESTORE_FIELDS = {
    1: "pages_compared",
    2: "pages_skipped_cow",
    3: "forking_time",
    4: "restore_time",
    5: "pages_restored",
}


def parse_stats(data: bytes) -> dict[str, int]:
    """The figures of a CRIU ``stats-dump`` or ``stats-restore`` image (times in microseconds).
    Raises ValueError for anything that is not a whole stats image."""
    if len(data) < 4:
        raise ValueError("not a CRIU stats image: shorter than its magic")
    (magic,) = struct.unpack_from("<I", data, 0)
    offset = 4
    if magic == IMG_SERVICE_MAGIC:  # images v1.1; older CRIU wrote the stats magic alone
        if len(data) < 8:
            raise ValueError("truncated CRIU stats image: no image magic after the service magic")
        (magic,) = struct.unpack_from("<I", data, 4)
        offset = 8
    if magic != STATS_MAGIC:
        raise ValueError(f"not a CRIU stats image (magic {magic:#010x})")
    figures: dict[str, int] = {}
    for entry in _entries(data, offset, "stats"):
        for number, value in _fields(entry):
            names = DUMP_FIELDS if number == 1 else RESTORE_FIELDS if number == 2 else None
            if names is None or not isinstance(value, bytes):
                continue  # a field of a newer CRIU
            for sub, figure in _fields(value):
                if sub in names and isinstance(figure, int):
                    figures[names[sub]] = figure
    return figures


def _entries(data: bytes, offset: int, kind: str) -> Iterator[bytes]:
    """The entries of a CRIU image from ``offset`` (past its magic): each a 4-byte size, then a
    protobuf message of that size."""
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError(f"truncated CRIU {kind} image: partial entry size")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise ValueError(f"truncated CRIU {kind} image: entry of {size} bytes, {len(data) - offset} left")
        yield data[offset : offset + size]
        offset += size


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: an int for varints and fixed-width fields, bytes
    for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("bad protobuf field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError("truncated protobuf fixed-width field")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated protobuf length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise ValueError("protobuf varint longer than 10 bytes")


def regular_files(data: bytes) -> dict[str, int]:
    """The regular files a ``files.img`` names, with the size CRIU recorded (CRIU refuses to restore
    a file whose size differs). Raises ValueError for anything that is not a files image."""
    if len(data) < 8 or struct.unpack_from("<II", data, 0) != (IMG_COMMON_MAGIC, FILES_MAGIC):
        raise ValueError("not a CRIU files image")
    files: dict[str, int] = {}
    for entry in _entries(data, 8, "files"):
        for number, value in _fields(entry):
            if number != 3 or not isinstance(value, bytes):  # file_entry.reg
                continue
            found = dict(_fields(value))
            name, length = found.get(6), found.get(8)  # reg_file_entry.name, .size
            if isinstance(name, bytes) and isinstance(length, int):
                files[name.decode(errors="surrogateescape")] = length
    return files


def read_stats(path: Path) -> dict[str, Any]:
    """Statistics are for the record: a missing or unreadable file must not fail a checkpoint."""
    try:
        return dict(parse_stats(path.read_bytes()))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("CRIU statistics %s unreadable: %s", path, exc)
        return {"error": str(exc)}
