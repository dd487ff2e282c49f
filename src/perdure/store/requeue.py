"""Giving a client's leases back to the queue (a lost, deleted or suspended client)."""

from __future__ import annotations

from sqlalchemy import (
    Connection,
)

from perdure.store import lifecycle, transitions
from perdure.store.database import Database
from perdure.store.schema import workunits


def requeue_client_work(conn: Connection, client_id: str, now: int, *, reason: str) -> int:
    """Put every workunit leased to a client back in the queue: a lost or suspended worker is not a
    workunit failure, so ``failed`` is left alone."""
    held = transitions.requeue_leases(conn, [workunits.c.client_id == client_id], now)
    for row in held:
        lifecycle.record_event(
            conn, row.job_id, lifecycle.EVENT_WORK_REQUEUED, f"workunit {row.id} re-queued: {reason}", now
        )
    if held:
        Database.work_queued(conn)
    return len(held)
