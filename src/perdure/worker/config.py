"""Worker settings: the ``worker`` section of the configuration model (``perdure.config``), read
from CLI flags over environment variables (``PERDURE_WORKER_<NAME>``) over a TOML file; and what the
worker follows from the server (``node.heartbeat``, ``node.ttl``), sent with every heartbeat reply."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from pydantic import ValidationError

from perdure.config.model import NodeConfig, WorkerConfig

__all__ = ["ServerTiming", "WorkerConfig"]

log = logging.getLogger("perdure.worker")


class ServerTiming:
    """The heartbeat interval a worker keeps: the server's ``node.heartbeat`` unless this node set
    ``heartbeat_s`` itself (the environment and the command line win over the database), and never
    longer than a third of the server's ``node.ttl``, so a worker is never taken for lost while it
    beats. A reply whose values are out of the model's bounds is refused with a warning, and the
    last good values stay in force. The first beat comes within a second of starting, so a worker
    learns the server's values before its default interval could outlast a short TTL."""

    #: Seconds before the first heartbeat.
    FIRST_BEAT_S = 1.0

    def __init__(self, config: WorkerConfig) -> None:
        self._local = config.heartbeat_s
        self._explicit = "heartbeat_s" in config.model_fields_set
        self._lock = threading.Lock()
        #: The server's node section as of the last heartbeat reply; None before the first.
        self.node: NodeConfig | None = None
        self._asked = False

    def adopt(self, instructions: Mapping[str, str]) -> bool:
        """Follow a heartbeat reply's ``heartbeat`` and ``ttl``; False when refused or absent."""
        sent = {k: instructions[k] for k in ("heartbeat", "ttl") if instructions.get(k)}
        if not sent:
            return False
        current = self.node or NodeConfig()
        try:
            node = NodeConfig.model_validate({**current.model_dump(), **sent})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            log.warning("refusing the server's node settings %s: %s", sent, problems)
            return False
        with self._lock:
            changed = node != self.node
            self.node = node
        if changed:
            log.info("following the server: heartbeat every %.3gs, ttl %.3gs", self.interval(), node.ttl)
        return True

    def interval(self) -> float:
        """Seconds between two heartbeats."""
        node = self.node
        if node is None:
            first, self._asked = not self._asked, True
            return min(self._local, self.FIRST_BEAT_S) if first else self._local
        beat = self._local if self._explicit else node.heartbeat
        return min(beat, node.ttl / 3)
