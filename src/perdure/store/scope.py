"""Which client group a node or a leased workunit belongs to (issue 17): its clients' groups."""

from __future__ import annotations

from sqlalchemy import select

from perdure.store.database import Database
from perdure.store.schema import clients, workunits


def node_groups(db: Database, node_id: str) -> set[str]:
    """The client groups of ``node_id``'s registered clients (empty for a node none has joined)."""
    with db.read() as conn:
        rows = conn.execute(select(clients.c.group_name).where(clients.c.node_id == node_id).distinct())
        return {str(row[0]) for row in rows}


def workunit_group(db: Database, work_id: str) -> str | None:
    """The client group of the client holding ``work_id`` (None: no client holds it, or no such work)."""
    with db.read() as conn:
        group = conn.execute(
            select(clients.c.group_name)
            .select_from(workunits.join(clients, clients.c.id == workunits.c.client_id))
            .where(workunits.c.id == work_id)
        ).scalar_one_or_none()
        return str(group) if group is not None else None
