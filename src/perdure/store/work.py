"""Workunits: the dispatch of worker operations (reports, then checkouts, batch by batch), and reading
workunits, their logs, secrets and outputs.

The concepts live in their own modules: ``store.checkout`` (the claim and the lease),
``store.report`` (reports and the failure rules), ``store.requeue`` (leases given back),
``store.workdocs`` (the workunit document), ``store.workrequests`` (the operations and outcomes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, func, select
from sqlalchemy.exc import SQLAlchemyError

from perdure.datastore import BlobStore
from perdure.errors import BadRequest, DomainError, NotFound
from perdure.protocol import Refused
from perdure.spot.records import Preemption
from perdure.store import hooks, lifecycle, outputs, sqlitedirect, workdocs
from perdure.store.checkout import checkout_batch, claim
from perdure.store.database import Database, retry_on_conflict
from perdure.store.report import apply_reports, report_batch
from perdure.store.schema import jobs, tasks, workunit_logs, workunits
from perdure.store.workrequests import (
    CheckoutRequest,
    DispatchOutcome,
    Failure,
    FailureLimits,
    Operation,
    ReportRequest,
    decode_workunit_id,
    held_lease,
)
from perdure.timeutil import now_us

log = logging.getLogger("perdure.work")
T = TypeVar("T")


def _rounds(operations: Sequence[Operation]) -> list[list[int]]:
    """The operations' indexes in rounds where each client appears at most once, each client's
    operations in the order given."""
    rounds: list[list[int]] = []
    last: dict[str, int] = {}
    for index, operation in enumerate(operations):
        n = last.get(operation.client_id, -1) + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(index)
        last[operation.client_id] = n
    return rounds


def _checks_out(operation: Operation, outcome: DispatchOutcome) -> bool:
    """Whether the operation asks for a checkout that its report, if any, allows."""
    return operation.checkout is not None and outcome.report in (None, "ok")


def _value(result: T | Failure | None) -> T:
    if isinstance(result, DomainError | Refused):
        raise result
    assert result is not None
    return result


class WorkStore:
    def __init__(
        self,
        db: Database,
        limits: FailureLimits | Callable[[], FailureLimits] | None = None,
        *,
        blobs: BlobStore | None = None,
        expire_after_s: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.db = db
        fixed = limits or FailureLimits()
        self._limits = fixed if callable(fixed) else (lambda: fixed)
        self.blobs = blobs
        self._expire_after_s = expire_after_s

    # ---- checkout and reports, one worker request or a batch of them ----------------------------

    def checkout(self, client_id: str, available: int | None = None) -> dict[str, Any]:
        """Lease one eligible workunit to the client, or raise ``NoWork``.

        A client that already holds a lease gets the same workunit again: a checkout retried after a
        lost reply never hands out a second one.
        """
        operation = Operation(checkout=CheckoutRequest(client_id, available))
        return _value(self.dispatch([operation])[0].checkout)

    def report(
        self,
        wu_id: str,
        client_id: str,
        status: str,
        *,
        computetime: int = 0,
        logs: Mapping[str, str] | None = None,
        preemption: Preemption | None = None,
    ) -> str:
        """Apply a client's report on the workunit it holds (``LeaseLost`` if it does not)."""
        request = ReportRequest(wu_id, client_id, status, computetime, dict(logs or {}), preemption)
        return _value(self.dispatch([Operation(report=request)])[0].report)

    def dispatch(
        self, operations: Sequence[Operation], answer: Callable[[int, DispatchOutcome], None] | None = None
    ) -> list[DispatchOutcome]:
        """Several workers' requests at once (a server takes together those that arrive while it is
        busy): every report in one transaction, then the checkouts, of operations without a report or
        whose report was accepted, in another. Each operation's refusal is its own; a database error
        fails them all, and nothing of the transaction it hit is kept. A client's operations are taken
        in turn, each in a round of its own. When every report of a round also asks for a checkout
        (``&next``), reports and claims share one transaction (``_report_and_claim``).

        ``answer(index, outcome)`` is called as soon as an operation's outcome is final, before the
        batch is over: a report with nothing to check out once the reports are committed, a checkout
        once the claims are (not for the last round's claims, which the batch returns at once). When
        the reports leave a task with no workunit to do, the task is completed and its job moved on
        (dependents queued, the job completed) in a transaction of its own, after those answers: only
        the operations whose reports finished the task wait for it, and check out afterwards, so that
        a worker which reported a task's last workunit finds the work of the tasks that waited for it.
        """
        outcomes = [DispatchOutcome() for _ in operations]
        rounds = _rounds(operations)
        for number, indexes in enumerate(rounds):
            # Answers that nothing follows are not given early: the last round's claims are the batch's
            # result, returned at once, and answering them too would wake the caller's loop twice.
            last = number == len(rounds) - 1
            reports = [(i, r) for i in indexes if (r := operations[i].report) is not None]
            finishing: dict[str, list[int]] = {}
            if reports:
                together = all(operations[i].checkout is not None for i, _ in reports)
                if together:
                    results, finished, claims = self._report_and_claim(operations, indexes)
                else:
                    results, finished = report_batch(self.db, self.limits, [r for _, r in reports])
                    claims = None
                for (i, _), report_result in zip(reports, results, strict=True):
                    outcomes[i].report = report_result
                if claims is not None:  # all in one transaction, committed
                    for i, claimed in claims.items():
                        outcomes[i].checkout = claimed
                    if answer is not None and not last:
                        for i in indexes:
                            answer(i, outcomes[i])
                    continue
                finishing = {job: [reports[n][0] for n in ns] for job, ns in finished.items()}
            waiting = {i for ns in finishing.values() for i in ns}
            at_once = [i for i in indexes if i not in waiting]
            try:
                if answer is not None:  # those with nothing to check out, before the others' claims
                    for i in at_once:
                        if not _checks_out(operations[i], outcomes[i]):
                            answer(i, outcomes[i])
                self._checkouts(operations, outcomes, at_once)
                if answer is not None and (finishing or not last):
                    for i in at_once:
                        if _checks_out(operations[i], outcomes[i]):
                            answer(i, outcomes[i])
            finally:
                if finishing:  # even if those claims failed: the reports that finished the tasks are in
                    self._advance_jobs(sorted(finishing))
            if finishing:
                later = [i for i in indexes if i in waiting]
                self._checkouts(operations, outcomes, later)
                if answer is not None:
                    for i in later:
                        answer(i, outcomes[i])
        return outcomes

    @retry_on_conflict
    def _report_and_claim(
        self, operations: Sequence[Operation], indexes: Sequence[int]
    ) -> tuple[list[str | Failure], dict[str, list[int]], dict[int, dict[str, Any] | Failure] | None]:
        """A round whose reports all ask for the next workunit (``&next``): the reports and then the
        claims of those accepted (and of the round's plain checkouts) in one transaction, whose commit
        is as durable as a report's, instead of two. If the reports finish a task, only they are
        committed here (claims None): the task is completed first, as ``dispatch`` says."""
        reported = [i for i in indexes if operations[i].report is not None]
        with self.db.dispatch() as conn:
            samples = hooks.Samples()
            reports = [r for i in reported if (r := operations[i].report) is not None]
            results, finished = apply_reports(conn, self.db.dialect, self.limits, reports, samples)
            claims: dict[int, dict[str, Any] | Failure] | None = None
            if not finished:
                verdicts = dict(zip(reported, results, strict=True))
                wanted = [
                    (i, c)
                    for i in indexes
                    if (c := operations[i].checkout) is not None and verdicts.get(i, "ok") == "ok"
                ]
                leased = claim(conn, self.db.dialect, [c for _, c in wanted], samples, after_reports=True)
                claims = {i: result for (i, _), result in zip(wanted, leased, strict=True)}
            sqlitedirect.finish(conn, self.db.dialect, samples)
        return results, finished, claims

    def _checkouts(
        self, operations: Sequence[Operation], outcomes: list[DispatchOutcome], indexes: list[int]
    ) -> None:
        """The checkouts of these operations, unless their report was refused."""
        checkouts = [
            (i, c)
            for i in indexes
            if (c := operations[i].checkout) is not None and _checks_out(operations[i], outcomes[i])
        ]
        if checkouts:
            claims = checkout_batch(self.db, [c for _, c in checkouts])
            for (i, _), claim in zip(checkouts, claims, strict=True):
                outcomes[i].checkout = claim

    def _advance_jobs(self, job_ids: Sequence[str]) -> None:
        """Jobs whose tasks the batch's reports finished. The reports are committed already: if this
        fails, the server's sweep (``JobStore.advance_finished``) completes the tasks later."""
        try:
            self._advance_jobs_now(job_ids)
        except SQLAlchemyError:
            log.exception("completing the tasks of job(s) %s failed; the sweep will", ", ".join(job_ids))

    @retry_on_conflict
    def _advance_jobs_now(self, job_ids: Sequence[str]) -> None:
        with self.db.write() as conn:
            now = now_us()
            for job_id in job_ids:
                lifecycle.advance_job(conn, job_id, now, self._expire_after_s(), self.blobs)

    # ---- reading ------------------------------------------------------------------------------

    def get(self, wu_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return workdocs.document(conn, decode_workunit_id(wu_id))

    def find(
        self, states: Sequence[str] | None, limit: int, offset: int, client_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        where: list[ColumnElement[bool]] = []
        if states:
            where.append(workunits.c.state.in_(list(states)))
        if client_id:
            where.append(workunits.c.client_id == client_id)
        with self.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(workunits).where(*where)).scalar_one()
            rows = conn.execute(
                workdocs.joined()
                .where(*where)
                .order_by(workunits.c.priority.desc(), workunits.c.submittime, workunits.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [workdocs.workunit_document(r) for r in rows], int(total)

    def log(self, wu_id: str, kind: str) -> str:
        if kind not in ("stdout", "stderr", "worknotes"):
            raise BadRequest(f"log type '{kind}' not found")
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            if conn.execute(select(workunits.c.id).where(workunits.c.id == wu_id)).first() is None:
                raise NotFound(f"no workunit found with id {wu_id}")
            content = conn.execute(
                select(workunit_logs.c.content).where(
                    workunit_logs.c.workunit_id == wu_id, workunit_logs.c.kind == kind
                )
            ).scalar_one_or_none()
        if content is None:
            raise BadRequest(f"log type '{kind}' not found")
        return str(content)

    def secret(self, wu_id: str, client_id: str, which: str) -> str:
        """The job's data token or the task's private environment, only for the lease holder."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            row = conn.execute(
                select(workunits.c.state, workunits.c.client_id, jobs.c.datatoken, tasks.c.private_env)
                .join(tasks, tasks.c.id == workunits.c.task_id)
                .join(jobs, jobs.c.id == workunits.c.job_id)
                .where(workunits.c.id == wu_id)
            ).one_or_none()
        row = held_lease(row, wu_id, client_id)
        if which == "datatoken":
            if not row.datatoken:
                raise BadRequest("error in getting token")
            return str(row.datatoken)
        return json.dumps(row.private_env or {})

    # ---- outputs ------------------------------------------------------------------------------

    def output_target(self, wu_id: str, client_id: str, filename: str) -> tuple[str, str]:
        """Check an upload before its bytes arrive: the client holds the lease and the task declares the
        file. Returns (job id, blob key)."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.read() as conn:
            row = self._leased(conn, wu_id, client_id)
            declared = {o["filename"] for o in row.spec.get("outputs", [])}
        if filename not in declared:
            raise BadRequest(f"task {row.taskid} declares no output {filename!r}")
        return row.job_id, outputs.blob_key(row.job_id, row.taskid, row.rank, filename)

    def record_output(
        self, wu_id: str, client_id: str, filename: str, key: str, size: int, sha256: str
    ) -> None:
        """Remember an uploaded output, if the client still holds the lease."""
        wu_id = decode_workunit_id(wu_id)
        with self.db.write() as conn:
            row = self._leased(conn, wu_id, client_id)
            outputs.record(
                conn,
                job_id=row.job_id,
                task_id=row.task_id,
                filename=filename,
                rank=row.rank,
                size=size,
                sha256=sha256,
                key=key,
                now=now_us(),
            )

    @staticmethod
    def _leased(conn: Connection, wu_id: str, client_id: str) -> Any:
        row = conn.execute(
            select(
                workunits.c.job_id,
                workunits.c.task_id,
                workunits.c.rank,
                workunits.c.state,
                workunits.c.client_id,
                tasks.c.taskid,
                tasks.c.spec,
            )
            .join(tasks, tasks.c.id == workunits.c.task_id)
            .where(workunits.c.id == wu_id)
        ).one_or_none()
        return held_lease(row, wu_id, client_id)

    @property
    def limits(self) -> FailureLimits:
        return self._limits()

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(select(workunits.c.state, func.count()).group_by(workunits.c.state)).all()
        return {state: int(n) for state, n in rows}


__all__ = ["WorkStore"]
