"""``file://`` inputs: read only below the roots a worker was started with (issue 17).

A job's input ``file:///etc/...`` would otherwise be copied from any path the worker can read (its own
log, its token file) into the job's work directory, and so into the job's outputs. By default a worker
reads no local file for a job; ``--allow-file-root DIR`` (repeatable, ``allow_file_root`` in the TOML
file) names the directories it may read below. The path is resolved (symlinks, ``..``) before the
check, so a link inside a root cannot lead out of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LocalFileRefused(Exception):
    """A ``file://`` input outside every allowed root (or with none allowed)."""


def local_path(url: str, roots: Sequence[str | Path]) -> Path:
    """The resolved local path ``url`` (``file://...``) names, when it lies below one of ``roots``."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise LocalFileRefused(f"{url!r} is not a local file URL")
    if not roots:
        raise LocalFileRefused(
            f"{url!r}: file inputs are refused, this worker reads no local files for jobs "
            "(start it with --allow-file-root DIR to allow some)"
        )
    path = Path(os.path.realpath(unquote(parts.path)))
    for root in roots:
        resolved = Path(os.path.realpath(root))
        if path == resolved or path.is_relative_to(resolved):
            return path
    raise LocalFileRefused(f"{url!r} is outside the directories this worker may read files from")
