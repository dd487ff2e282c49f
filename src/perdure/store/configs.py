"""The shared copy of the configuration: one JSON document in ``meta`` under the key ``config``.

The document is ``{"version": n, "updated": <µs>, "config": {...}}``; every change raises the version,
which is how each server's sweep notices another server's change. This module knows the document's
envelope, not the configuration's keys (``perdure.config`` does).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import meta
from perdure.timeutil import now_us

_KEY = "config"

Stored = dict[str, Any]


def read_config(db: Database) -> Stored | None:
    """The stored document, or None before the first server wrote one."""
    with db.read() as conn:
        raw = conn.execute(select(meta.c.value).where(meta.c.key == _KEY)).scalar_one_or_none()
    return json.loads(raw) if raw else None


def create_config(db: Database, config: dict[str, Any]) -> bool:
    """Store ``config`` as version 1 unless a copy exists; False when one did (or another server
    created it at the same moment: theirs stands)."""
    try:
        with db.write() as conn:
            if _locked(conn) is not None:
                return False
            conn.execute(insert(meta).values(key=_KEY, value=json.dumps(_envelope(1, config))))
            return True
    except IntegrityError:
        return False


@retry_on_conflict
def replace_config(db: Database, config: dict[str, Any]) -> Stored:
    """Store ``config`` as the next version (or the first); returns the stored document."""
    with db.write() as conn:
        current = _locked(conn)
        if current is None:
            document = _envelope(1, config)
            conn.execute(insert(meta).values(key=_KEY, value=json.dumps(document)))
        else:
            document = _envelope(int(current["version"]) + 1, config)
            conn.execute(update(meta).where(meta.c.key == _KEY).values(value=json.dumps(document)))
    return document


@retry_on_conflict
def modify_config(db: Database, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Stored:
    """Read the stored configuration under a row lock, store ``change(config)`` as the next version
    and return the stored document; an exception from ``change`` stores nothing."""
    with db.write() as conn:
        current = _locked(conn)
        if current is None:
            raise LookupError("no configuration is stored yet")
        document = _envelope(int(current["version"]) + 1, change(current["config"]))
        conn.execute(update(meta).where(meta.c.key == _KEY).values(value=json.dumps(document)))
    return document


def _locked(conn: Connection) -> Stored | None:
    raw = conn.execute(select(meta.c.value).where(meta.c.key == _KEY).with_for_update()).scalar_one_or_none()
    return json.loads(raw) if raw else None


def _envelope(version: int, config: dict[str, Any]) -> Stored:
    return {"version": version, "updated": now_us(), "config": config}
