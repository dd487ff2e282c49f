"""The node a worker ``Slot`` runs in, with only what a slot's loop reads: for unit tests of the loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def fake_node(
    tmp_path: Path, api: Any, *, stop: Any = None, tidy: Callable[[Any], None] = lambda outcome: None
) -> SimpleNamespace:
    """A node of group ``g`` that takes any app, talking to ``api``; ``stop`` defaults to an event."""
    return SimpleNamespace(
        node_id="n",
        api=api,
        workdir=tmp_path / "work",
        workpath=tmp_path,
        spot=None,
        facts={},
        config=SimpleNamespace(
            name="w",
            group="g",
            apps=["*"],
            checkout_wait_s=0.0,
            allow_file_root=[],
            transfer_tries=5,
            transfer_timeout_s=300.0,
        ),
        containers=None,
        stop=threading.Event() if stop is None else stop,
        draining=threading.Event(),
        handover_deadline=None,
        free_bytes=lambda: -1,
        fail=lambda reason: None,
        tidy=tidy,
    )
