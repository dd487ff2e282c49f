"""Where the stored parts of a task's output file are, for handing out direct (presigned) access to
them instead of serving their bytes (issue 21)."""

from __future__ import annotations

from dataclasses import dataclass

from perdure.store import outputs
from perdure.store.database import Database


@dataclass(frozen=True)
class StoredPart:
    key: str
    size: int
    sha256: str


def stored_parts(
    db: Database, job_id: str, files: list[tuple[str, str]]
) -> dict[tuple[str, str], list[StoredPart]]:
    """For each (task id, file name) of one job, its stored parts in rank order (one snapshot)."""
    found: dict[tuple[str, str], list[StoredPart]] = {}
    with db.read() as conn:
        for taskid, filename in files:
            found[(taskid, filename)] = [
                StoredPart(p.blob_key, int(p.size), str(p.sha256))
                for p in outputs.parts(conn, f"{job_id}_{taskid}", filename)
            ]
    return found


__all__ = ["StoredPart", "stored_parts"]
