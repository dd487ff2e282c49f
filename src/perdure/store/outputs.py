"""Output records: which bytes in the data store belong to which task, file and rank."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select

from perdure.store.schema import outputs


def blob_key(job_id: str, taskid: str, rank: int, filename: str) -> str:
    return f"jobs/{job_id}/{taskid}/{rank}/{filename}"


def record(
    conn: Connection,
    *,
    job_id: str,
    task_id: str,
    filename: str,
    rank: int,
    size: int,
    sha256: str,
    key: str,
    now: int,
) -> None:
    conn.execute(
        delete(outputs).where(
            outputs.c.task_id == task_id, outputs.c.filename == filename, outputs.c.rank == rank
        )
    )
    conn.execute(
        insert(outputs).values(
            task_id=task_id,
            job_id=job_id,
            filename=filename,
            rank=rank,
            size=size,
            sha256=sha256,
            blob_key=key,
            created=now,
        )
    )


def parts(conn: Connection, task_id: str, filename: str) -> list[Any]:
    """The stored parts of one output file, in rank order."""
    return list(
        conn.execute(
            select(outputs)
            .where(outputs.c.task_id == task_id, outputs.c.filename == filename)
            .order_by(outputs.c.rank)
        )
    )


def of_workunit(conn: Connection, task_id: str, rank: int) -> set[str]:
    return set(
        conn.execute(
            select(outputs.c.filename).where(outputs.c.task_id == task_id, outputs.c.rank == rank)
        ).scalars()
    )


def of_job(conn: Connection, job_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(outputs)
            .where(outputs.c.job_id == job_id)
            .order_by(outputs.c.task_id, outputs.c.filename, outputs.c.rank)
        )
    )


def forget_tasks(conn: Connection, task_ids: list[str]) -> None:
    conn.execute(delete(outputs).where(outputs.c.task_id.in_(task_ids)))
