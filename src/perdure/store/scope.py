"""Which client group a node belongs to (issue 17): the groups of the clients running on it."""

from __future__ import annotations

from sqlalchemy import select

from perdure.store.database import Database
from perdure.store.schema import clients


def node_groups(db: Database, node_id: str) -> set[str]:
    """The client groups of ``node_id``'s registered clients (empty for a node none has joined)."""
    with db.read() as conn:
        rows = conn.execute(select(clients.c.group_name).where(clients.c.node_id == node_id).distinct())
        return {str(row[0]) for row in rows}
