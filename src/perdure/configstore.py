"""Where the configuration lives: the data directory's file, and the database every server shares.

The database copy carries a version; each server's sweep compares it and reloads when another server
changed something, so a change over the API reaches every server within one sweep interval.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from perdure.config import Config, ConfigError, apply_kv, from_document, read_file, to_document, write_file
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import meta
from perdure.timeutil import now_us

log = logging.getLogger("perdure.config")
_KEY = "config"

Listener = Callable[[Config], None]


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
        self.version = 0
        self._persisted = Config()
        self.effective = Config()
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._checkpoint_settings: tuple[Config, dict[str, Any]] | None = None

    def checkpoint_settings(self) -> dict[str, Any]:
        """The ``ckpt`` section as the config document shows it (what workers are handed with their
        work and heartbeats, and what decides which checkpoints to collect), built once per
        configuration: a configuration is replaced on change, never changed in place."""
        config = self.effective
        cached = self._checkpoint_settings
        if cached is None or cached[0] is not config:
            cached = (config, to_document(config)["ckpt"])
            self._checkpoint_settings = cached
        return dict(cached[1])

    # ---- loading ------------------------------------------------------------------------------

    def load(self) -> Config:
        """Reconcile file and database (the newer wins), then apply this process's overrides."""
        from_file = read_file(self.path)
        file_mtime_us = int(self.path.stat().st_mtime * 1_000_000) if from_file is not None else 0
        stored = self._read_db()
        if stored is None:
            self._write_db(from_file or Config(), create=True)
        elif from_file is not None and file_mtime_us > stored["updated"]:
            log.info("configuration file %s is newer than the shared copy; applying it", self.path)
            self._write_db(from_file, create=False)
        stored = self._read_db()
        assert stored is not None
        self._adopt(stored)
        write_file(self.path, self._persisted)
        return self.effective

    def refresh(self) -> bool:
        """Pick up a change another server made; True when something changed."""
        stored = self._read_db()
        # "<=": a read that raced a change of ours may see the version before it; never go back to it.
        if stored is None or stored["version"] <= self.version:
            return False
        self._adopt(stored)
        write_file(self.path, self._persisted)
        log.info("configuration version %d loaded", self.version)
        return True

    def _adopt(self, stored: Mapping[str, Any]) -> None:
        with self._lock:
            self.version = int(stored["version"])
            self._persisted = from_document(stored["config"])
            effective = self._persisted
            if self.overrides:
                try:
                    effective = apply_kv(effective, self.overrides, allow_read_only=True)
                except ConfigError as exc:
                    raise ConfigError(f"bad configuration override: {exc.fields}", exc.fields) from None
            if self.fixed:
                effective = apply_kv(effective, self.fixed, allow_read_only=True)
            self.effective = effective
        for listener in self.listeners:
            listener(self.effective)

    # ---- changing -----------------------------------------------------------------------------

    def update(self, kv: Mapping[str, Any], *, allow_read_only: bool = False) -> Config:
        """Apply configKV pairs all or none; raises ``ConfigError`` naming each bad key."""
        return self.modify(lambda config: apply_kv(config, kv, allow_read_only=allow_read_only))

    @retry_on_conflict
    def modify(self, change: Callable[[Config], Config]) -> Config:
        with self.db.write() as conn:
            row = conn.execute(select(meta.c.value).where(meta.c.key == _KEY).with_for_update()).scalar_one()
            stored = json.loads(row)
            updated = change(from_document(stored["config"]))
            document = {
                "version": stored["version"] + 1,
                "updated": now_us(),
                "config": to_document(updated, mask=False),
            }
            conn.execute(update(meta).where(meta.c.key == _KEY).values(value=json.dumps(document)))
        self._adopt(document)
        write_file(self.path, self._persisted)
        log.info("configuration version %d saved", self.version)
        return self.effective

    # ---- the database copy --------------------------------------------------------------------

    def _read_db(self) -> dict[str, Any] | None:
        with self.db.read() as conn:
            raw = conn.execute(select(meta.c.value).where(meta.c.key == _KEY)).scalar_one_or_none()
        return json.loads(raw) if raw else None

    def _write_db(self, config: Config, *, create: bool) -> None:
        try:
            self._write_db_once(config, create=create)
        except IntegrityError:
            if not create:
                raise  # another server created it at the same moment: theirs stands

    def _write_db_once(self, config: Config, *, create: bool) -> None:
        document = {"version": 1, "updated": now_us(), "config": to_document(config, mask=False)}
        with self.db.write() as conn:
            current = conn.execute(
                select(meta.c.value).where(meta.c.key == _KEY).with_for_update()
            ).scalar_one_or_none()
            if current is None:
                conn.execute(insert(meta).values(key=_KEY, value=json.dumps(document)))
            elif not create:
                document["version"] = json.loads(current)["version"] + 1
                conn.execute(update(meta).where(meta.c.key == _KEY).values(value=json.dumps(document)))
