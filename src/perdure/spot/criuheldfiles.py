"""The files a full dump holds open in the work directory (its logs), kept at the size CRIU recorded.

A dump taken while the work runs (``--leave-running``) is snapshotted a moment later, when those files
may have grown, and CRIU refuses to restore a file of another size: so they are copied beside the images
at the dump's size, and put back over the restored work directory before ``criu restore``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from perdure.spot.criuimages import regular_files

log = logging.getLogger("perdure.spot")


def open_file_sizes(files_img: Path, workdir: Path) -> dict[str, int]:
    """Of the files the dump holds open, those in the work directory, by relative path: a full dump
    taken while the work runs is snapshotted a moment later, when its logs may have grown."""
    try:
        files = regular_files(files_img.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("CRIU files image %s unreadable: %s", files_img, exc)
        return {}
    root = str(workdir).rstrip("/") + "/"
    return {name[len(root) :]: size for name, size in files.items() if name.startswith(root)}


def _safe(rel: Any) -> bool:
    """A path relative to the work directory that stays inside it (a manifest names these files)."""
    return isinstance(rel, str) and bool(rel) and not rel.startswith("/") and ".." not in Path(rel).parts


def hold(workdir: Path, sizes: dict[str, int], held: Path) -> None:
    """Copy the first ``size`` bytes of each open file: what it held at the dump, were it appended to
    since (a log)."""
    for rel, size in sizes.items():
        if not _safe(rel):
            continue
        target = held / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError), (workdir / rel).open("rb") as src, target.open("wb") as out:
            remaining = size
            while remaining > 0 and (chunk := src.read(min(remaining, 1 << 20))):
                out.write(chunk)
                remaining -= len(chunk)


def put_back(held: Path, workdir: Path, sizes: Any) -> None:
    """The open files of a full dump, as they were at the dump, back into the restored work directory."""
    if not isinstance(sizes, dict):
        return
    for rel in sizes:
        if not _safe(rel) or not (held / rel).is_file():
            continue
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copy2(held / rel, target)
