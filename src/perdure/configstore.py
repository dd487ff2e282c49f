"""Where the configuration lives: the data directory's file, and the database every server shares.

The database copy carries a version; each server's sweep compares it and reloads when another server
changed something, so a change over the API reaches every server within one sweep interval. What a
server uses is a ``Snapshot``: an immutable configuration and the version it came from, replaced
whole on every change (readers keep the one they took; nobody sees half a change).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perdure.config.documents import from_document, read_file, to_document, write_file
from perdure.config.keys import apply_kv
from perdure.config.model import ServerConfig
from perdure.config.values import ConfigError
from perdure.store.configs import create_config, modify_config, read_config, replace_config
from perdure.store.database import Database

log = logging.getLogger("perdure.config")

Listener = Callable[[ServerConfig], None]


@dataclass(frozen=True)
class Snapshot:
    """One published configuration: ``version`` is the shared copy's (0 before the first load)."""

    version: int
    config: ServerConfig


class ConfigStore:
    def __init__(
        self, db: Database, path: Path, overrides: Mapping[str, str], fixed: Mapping[str, str]
    ) -> None:
        """``overrides`` (environment, CLI) win for this process only; ``fixed`` (database URL, data
        directory) describe this process and are never persisted."""
        self.db = db
        self.path = path
        self.overrides = dict(overrides)
        self.fixed = dict(fixed)
        self._persisted = ServerConfig()
        self.snapshot = Snapshot(0, ServerConfig())
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._checkpoint_settings: tuple[ServerConfig, dict[str, Any]] | None = None

    @property
    def effective(self) -> ServerConfig:
        """The configuration in force for this process (the current snapshot's)."""
        return self.snapshot.config

    @property
    def version(self) -> int:
        return self.snapshot.version

    def checkpoint_settings(self) -> dict[str, Any]:
        """The ``ckpt`` section as the config document shows it (what workers are handed with their
        work and heartbeats, and what decides which checkpoints to collect), built once per snapshot."""
        config = self.effective
        cached = self._checkpoint_settings
        if cached is None or cached[0] is not config:
            cached = (config, to_document(config)["ckpt"])
            self._checkpoint_settings = cached
        return dict(cached[1])

    # ---- loading ------------------------------------------------------------------------------

    def load(self) -> ServerConfig:
        """Reconcile file and database (the newer wins), then apply this process's overrides."""
        from_file = read_file(self.path)
        file_mtime_us = int(self.path.stat().st_mtime * 1_000_000) if from_file is not None else 0
        stored = read_config(self.db)
        if stored is None:
            create_config(self.db, to_document(from_file or ServerConfig(), mask=False))
        elif from_file is not None and file_mtime_us > stored["updated"]:
            log.info("configuration file %s is newer than the shared copy; applying it", self.path)
            replace_config(self.db, to_document(from_file, mask=False))
        stored = read_config(self.db)
        assert stored is not None
        self._adopt(stored)
        write_file(self.path, self._persisted)
        return self.effective

    def refresh(self) -> bool:
        """Pick up a change another server made; True when something changed."""
        stored = read_config(self.db)
        # "<=": a read that raced a change of ours may see the version before it; never go back to it.
        if stored is None or stored["version"] <= self.version:
            return False
        self._adopt(stored)
        write_file(self.path, self._persisted)
        log.info("configuration version %d loaded", self.version)
        return True

    def _adopt(self, stored: Mapping[str, Any]) -> None:
        with self._lock:
            # lenient: a value an older version stored out of today's bounds is clamped, with a warning
            persisted = from_document(stored["config"], lenient=True)
            effective = persisted
            if self.overrides:
                try:
                    effective = apply_kv(effective, self.overrides, allow_read_only=True)
                except ConfigError as exc:
                    raise ConfigError(f"bad configuration override: {exc.fields}", exc.fields) from None
            if self.fixed:
                effective = apply_kv(effective, self.fixed, allow_read_only=True)
            self._persisted = persisted
            self.snapshot = Snapshot(int(stored["version"]), effective)
        for listener in self.listeners:
            listener(self.effective)

    # ---- changing -----------------------------------------------------------------------------

    def update(self, kv: Mapping[str, Any], *, allow_read_only: bool = False) -> ServerConfig:
        """Apply configKV pairs all or none; raises ``ConfigError`` naming each bad key."""
        return self.modify(lambda config: apply_kv(config, kv, allow_read_only=allow_read_only))

    def modify(self, change: Callable[[ServerConfig], ServerConfig]) -> ServerConfig:
        def on_document(document: dict[str, Any]) -> dict[str, Any]:
            return to_document(change(from_document(document, lenient=True)), mask=False)

        stored = modify_config(self.db, on_document)
        self._adopt(stored)
        write_file(self.path, self._persisted)
        log.info("configuration version %d saved", self.version)
        return self.effective
