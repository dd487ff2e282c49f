"""The stores on one database as a server builds them, with every state write watched
(``tests/statewatch.py``): for tests of the domain rules against the store itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from perdure.jobscript import parse_job_script
from perdure.store import migrate
from perdure.store.clients import ClientStore, Profile
from perdure.store.database import Database
from perdure.store.jobs import JobStore
from perdure.store.schema import jobs, tasks, workunits
from perdure.store.spot import SpotStore
from perdure.store.work import WorkStore
from perdure.store.workrequests import FailureLimits
from tests import statewatch
from tests.jobs import script


@dataclass
class World:
    """The stores on one database, as a server builds them, with every state write logged."""

    db: Database
    jobs: JobStore
    work: WorkStore
    clients: ClientStore
    spot: SpotStore
    ttl_s: list[float] = field(default_factory=lambda: [300.0])
    #: Each scenario's own client group (and client id prefix), so scenarios run in one database keep
    #: to their own jobs.
    group: str = "s0"

    def id(self, name: str) -> str:
        return f"{self.group}-{name}"

    def submit(self, *tasks: dict[str, Any]) -> str:
        raw = json.dumps(script(*tasks, clientgroups=self.group))
        job_id: str = self.jobs.submit(parse_job_script(raw.encode()), raw, None)["id"]
        return job_id

    def register(self, name: str, current_work: list[str] | None = None) -> None:
        profile = Profile(
            id=self.id(name), group=self.group, apps=["*"], current_work={"data": current_work or []}
        )
        self.clients.register(profile)

    def checkout(self, name: str) -> str:
        wu_id: str = self.work.checkout(self.id(name))["id"]
        return wu_id

    def report(self, wu_id: str, name: str, status: str, **extra: Any) -> None:
        assert self.work.report(wu_id, self.id(name), status, **extra) == "ok"

    def job_state(self, job_id: str) -> str:
        with self.db.read() as conn:
            return str(conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one())

    def workunit_state(self, wu_id: str) -> str:
        with self.db.read() as conn:
            return str(conn.execute(select(workunits.c.state).where(workunits.c.id == wu_id)).scalar_one())

    def task_state(self, task_id: str) -> str:
        with self.db.read() as conn:
            return str(conn.execute(select(tasks.c.state).where(tasks.c.id == task_id)).scalar_one())


#: Small limits, so that the failure rules are quick to reach.
LIMITS = FailureLimits(max_work_failure=2, max_client_failure=3)


@contextmanager
def open_world(
    db_url: str,
    data_dir: Path,
    limits: FailureLimits = FailureLimits(max_work_failure=2, max_client_failure=3),
) -> Iterator[World]:
    db = Database(db_url)
    migrate.upgrade(db)
    statewatch.install(db)
    ttl_s = [300.0]
    try:
        yield World(
            db=db,
            jobs=JobStore(db, data_dir),
            work=WorkStore(db, limits),
            clients=ClientStore(db, lambda: ttl_s[0], "cluster"),
            spot=SpotStore(db),
            ttl_s=ttl_s,
        )
    finally:
        db.dispose()


__all__ = ["World", "open_world"]
