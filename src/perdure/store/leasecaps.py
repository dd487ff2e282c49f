"""What a lease capability is checked against (issue 17): the server's capability key and the live
lease of one workunit.

A capability is an HMAC over a workunit's id, its lease's attempt and an expiry, keyed by a secret
every server of the installation shares (kept in ``meta``, made once). It is checked against the
workunit's row, read when the capability is used: no table of tokens, nothing written per checkout.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from perdure.store.database import Database
from perdure.store.schema import meta, shock_nodes, tasks, workunits

_KEY = "lease_capability_key"
_cache: dict[str, bytes] = {}
_lock = threading.Lock()


def capability_key(db: Database) -> bytes:
    """The installation's capability key: made by the first server that needs it, then read once per
    process (several servers agree on it, so a capability one issues another accepts)."""
    with _lock:
        cached = _cache.get(db.url)
        if cached is not None:
            return cached
    try:
        with db.write() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == _KEY)).scalar_one_or_none()
            if value is None:
                value = secrets.token_hex(32)
                conn.execute(insert(meta).values(key=_KEY, value=value))
    except IntegrityError:  # another server made it first
        with db.read() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == _KEY)).scalar_one()
    key = bytes.fromhex(str(value))
    with _lock:
        _cache[db.url] = key
    return key


@dataclass(frozen=True)
class Lease:
    """A workunit as a capability sees it: whether its lease is the one named, and what it may read."""

    id: str
    job_id: str
    state: str
    attempt: int
    #: The task's inputs, outputs and predata as stored (``url``, ``origin``, ``node``, ``filename``).
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    predata: list[dict[str, Any]]


def lease(db: Database, wu_id: str) -> Lease | None:
    """The workunit ``wu_id`` and its task's IO, in one read; None when there is no such workunit."""
    with db.read() as conn:
        row = conn.execute(
            select(workunits.c.id, workunits.c.job_id, workunits.c.state, workunits.c.attempt, tasks.c.spec)
            .join(tasks, tasks.c.id == workunits.c.task_id)
            .where(workunits.c.id == wu_id)
        ).one_or_none()
    if row is None:
        return None
    spec = row.spec or {}
    return Lease(
        id=row.id,
        job_id=row.job_id,
        state=row.state,
        attempt=int(row.attempt),
        inputs=list(spec.get("inputs") or []),
        outputs=list(spec.get("outputs") or []),
        predata=list(spec.get("predata") or []),
    )


def node_output(db: Database, node_id: str) -> tuple[str, str, str] | None:
    """The job output a Shock node holds: (job id, short task id, file name); None if no such node."""
    with db.read() as conn:
        row = conn.execute(
            select(shock_nodes.c.job_id, shock_nodes.c.task_id, shock_nodes.c.filename).where(
                shock_nodes.c.id == node_id
            )
        ).one_or_none()
    if row is None:
        return None
    task = str(row.task_id)
    prefix = f"{row.job_id}_"
    return str(row.job_id), task[len(prefix) :] if task.startswith(prefix) else task, str(row.filename)


__all__ = ["Lease", "capability_key", "lease", "node_output"]
