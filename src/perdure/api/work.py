"""``/work``: checkout (with long-poll), workunit views, secrets for the lease holder, and reports.

Perdure's extension to the AWE worker protocol: a report with ``&next`` (``PUT /work/<id>?status=done
&client=<id>&next[&available=N][&wait=S]``) also checks out the client's next workunit, in the same
request, as ``GET /work?client=<id>[&available=N][&wait=S]`` would right after it (its own
transaction, after the report's). A refused report is answered exactly as without ``next``, and nothing
is checked out. An accepted one answers ``{"status": 200, "data": "ok", "error": null, "next": <the
workunit, as a checkout answers it> | null, "next_error": null | {"status": 400, "error": ["No eligible
workunit found"], "code": "no-work"}}``: ``next_error`` holds what the checkout would have answered
instead (no work, client suspended or deleted, ...; ``code`` is a ``perdure.protocol.Refusal``). AWE
workers, which never send ``next``, see no difference.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api import params, reportparts
from perdure.api.auth import check_job_access, require_admin
from perdure.api.awe_io import absolute_io, external_base
from perdure.api.context import ServerContext, ctx
from perdure.api.envelope import ok, page
from perdure.api.errors import refusal_body
from perdure.api.groupscope import check_work_scope
from perdure.api.leasecaps import grant
from perdure.api.s3 import with_presigned
from perdure.api.workerauth import check_worker, check_worker_async
from perdure.errors import BadRequest, DomainError
from perdure.protocol import NoWork, Refused
from perdure.spot.records import Preemption, parse
from perdure.store.workrequests import CheckoutRequest, Operation, ReportRequest, decode_workunit_id

router = APIRouter()

#: Longest a checkout may be held open waiting for work.
MAX_WAIT_S = 60.0
#: Waiters re-check at least this often, in case a wake-up was missed.
RECHECK_S = 1.0
#: Of each report file (stdout, stderr, worknotes, perf) the last this many bytes are kept.
MAX_LOG_BYTES = 4 * 1024 * 1024
MAX_PREEMPTION_BYTES = 256 * 1024


@router.get(
    "/work",
    openapi_extra=oa.query(
        oa.text("client", "Check out a workunit for this client (a worker's call)"),
        oa.integer("available", "Free bytes on the worker (-1: unknown)", minimum=-1),
        oa.number("wait", "Seconds to wait for work to appear", maximum=60),
        oa.flag("query", "List workunits (admins)"),
        oa.integer("limit", "Page size", minimum=1, maximum=1000),
        oa.integer("offset", "Workunits to skip", minimum=0),
        oa.text("state", "Workunit states"),
    ),
    responses=oa.errors(400, 401, 403),
)
async def checkout_or_list(request: Request) -> JSONResponse:
    qp = request.query_params
    if "client" not in qp:
        return await run_in_threadpool(_list, request)
    client_id = qp.get("client", "")
    if not client_id:
        raise BadRequest("missing client id")
    available = params.integer(qp, "available", -1, minimum=-1)
    wait = min(params.number(qp, "wait", 0.0), MAX_WAIT_S)
    context = ctx(request)
    await check_worker_async(request, client_id=client_id)
    checkout = CheckoutRequest(client_id, available)
    deadline = time.monotonic() + wait
    workunit = (await context.batcher.submit(Operation(checkout=checkout))).checkout
    if isinstance(workunit, NoWork) and wait > 0:
        workunit = await _wait_for_work(context, checkout, deadline)
    if isinstance(workunit, DomainError | Refused):
        raise workunit
    assert workunit is not None
    workunit = await with_presigned(context, _with_ckpt(context, workunit))
    base = external_base(request)
    return ok(grant(context, absolute_io(workunit, base), base))


async def _wait_for_work(
    context: ServerContext, checkout: CheckoutRequest, deadline: float
) -> dict[str, Any] | DomainError | Refused:
    """Claim again whenever work may have appeared, until ``deadline``; ``NoWork`` after it."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return NoWork("No eligible workunit found")
        await context.signal.wait(min(remaining, RECHECK_S))
        workunit = (await context.batcher.submit(Operation(checkout=checkout))).checkout
        assert workunit is not None
        if not isinstance(workunit, NoWork):
            return workunit


def _with_ckpt(context: ServerContext, workunit: dict[str, Any]) -> dict[str, Any]:
    # The system's checkpoint settings as of this checkout; the job's overrides are applied by the
    # worker from the document's userattr and environment.
    workunit["ckpt"] = context.config.checkpoint_settings()
    return workunit


def _list(request: Request) -> JSONResponse:
    require_admin(request, "list every workunit")
    qp = request.query_params
    limit = params.integer(qp, "limit", 25, minimum=1)
    if limit > 1000:
        raise BadRequest("limit must be at most 1000")
    offset = params.integer(qp, "offset", 0, minimum=0)
    states = params.comma_values(qp, "state") or None
    documents, total = ctx(request).work.find(states, limit, offset)
    return page(documents, limit=limit, offset=offset, total=total)


@router.get(
    "/work/{work_id}",
    openapi_extra=oa.query(
        oa.text("report", "stdout, stderr or worknotes of the last report"),
        oa.flag("privateenv", "The private environment (the leasing client only)"),
        oa.flag("datatoken", "The job's data token (the leasing client only)"),
        oa.text("client", "The client asking"),
    ),
    responses=oa.errors(400, 401, 403, 404),
)
async def get_work(work_id: str, request: Request) -> JSONResponse:
    qp = request.query_params
    context = ctx(request)
    if "status" in qp:  # the API document's GET form of the status update
        return await _report(work_id, request)
    if params.flag(qp, "datatoken") or params.flag(qp, "privateenv"):
        which = "datatoken" if params.flag(qp, "datatoken") else "privateenv"
        client_id = qp.get("client", "")
        if not client_id:
            raise BadRequest("missing client parameter")
        await run_in_threadpool(check_worker, request, client_id=client_id)
        value = await run_in_threadpool(context.work.secret, work_id, client_id, which)
        return ok(None, headers={"Datatoken" if which == "datatoken" else "Privateenv": value})
    await run_in_threadpool(check_job_access, request, decode_workunit_id(work_id)[:36])
    await run_in_threadpool(check_work_scope, request, decode_workunit_id(work_id))  # issue 17
    if params.flag(qp, "report"):
        return ok(await run_in_threadpool(context.work.log, work_id, qp.get("report", "")))
    return ok(absolute_io(await run_in_threadpool(context.work.get, work_id), external_base(request)))


@router.put(
    "/work/{work_id}",
    openapi_extra=oa.query(
        oa.text("status", "done, fail, failed-permanent or preempted", required=True),
        oa.text("client", "The reporting client", required=True),
        oa.number("computetime", "Seconds of compute", maximum=10.0**12),
        oa.flag("next", "Then check out the next workunit"),
        oa.integer("available", "Free bytes on the worker (-1: unknown)", minimum=-1),
        oa.number("wait", "Seconds to wait for the next workunit", maximum=60),
        oa.flag("report", "The request carries report files"),
    ),
    responses=oa.errors(400, 401, 403, 404),
)
async def update_work(work_id: str, request: Request) -> JSONResponse:
    return await _report(work_id, request)


async def _report(work_id: str, request: Request) -> JSONResponse:
    qp = request.query_params
    status = qp.get("status", "")
    client_id = qp.get("client", "")
    if not status:
        raise BadRequest("missing status parameter")
    if not client_id:
        raise BadRequest("missing client parameter")
    computetime = int(params.number(qp, "computetime", 0.0, maximum=10.0**12))
    then_next = params.flag(qp, "next")
    available, wait = -1, 0.0
    if then_next:
        available = params.integer(qp, "available", -1, minimum=-1)
        wait = min(params.number(qp, "wait", 0.0), MAX_WAIT_S)
    # The token first (issue 17): a report is not read from a caller that may not make it.
    await check_worker_async(request, client_id=client_id)
    logs, preemption = await _report_files(request)
    context = ctx(request)
    report = ReportRequest(work_id, client_id, status, computetime, logs, preemption)
    # Perdure's extension: with ``next``, the report and then (if it was accepted, in a transaction
    # of its own) a checkout, in one request. A refused report is answered as without ``next``; once
    # the report is in, the checkout's outcome is in ``next`` (the workunit) or ``next_error`` (what a
    # checkout would have answered instead: no work, client suspended, ...).
    checkout = CheckoutRequest(client_id, available) if then_next else None
    deadline = time.monotonic() + wait
    outcome = await context.batcher.submit(Operation(report=report, checkout=checkout))
    if isinstance(outcome.report, DomainError | Refused):
        raise outcome.report
    if checkout is None:
        return ok(outcome.report)
    workunit = outcome.checkout
    if isinstance(workunit, NoWork) and wait > 0:
        workunit = await _wait_for_work(context, checkout, deadline)
    base = external_base(request)
    return JSONResponse(
        {
            "status": 200,
            "data": "ok",
            "error": None,
            "next": (
                grant(
                    context,
                    absolute_io(await with_presigned(context, _with_ckpt(context, workunit)), base),
                    base,
                )
                if isinstance(workunit, dict)
                else None
            ),
            "next_error": refusal_body(workunit) if isinstance(workunit, DomainError | Refused) else None,
        }
    )


async def _report_files(request: Request) -> tuple[dict[str, str], Preemption | None]:
    """The report's files, and for ``status=preempted`` the ``preemption`` part (JSON)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return {}, None
    boundary = reportparts.boundary_of(content_type)
    length = request.headers.get("content-length", "")
    if boundary is not None and length.isdigit() and int(length) <= reportparts.MAX_BYTES:
        # The common case, a worker's few short parts, without spooling each into a file. What this
        # parser does not take is left to Starlette's (the body read here is read again from memory).
        parts = reportparts.parse(await request.body(), boundary, max_files=8, max_fields=16)
        if parts is not None:
            return _report_parts(parts)
    try:
        form = await request.form(max_files=8, max_fields=16)
    except ClientDisconnect:
        raise  # the client went away: not a malformed body
    except Exception as exc:  # python-multipart raises several types for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        uploaded: dict[str, bytes | str | _FileTail] = {}
        for name in ("preemption", *_LOG_FIELDS):
            item = form.get(name)
            if isinstance(item, UploadFile):
                read = item.file.read(MAX_PREEMPTION_BYTES + 1) if name == "preemption" else None
                uploaded[name] = read if read is not None else _tail_of_file(item)
            elif isinstance(item, str):
                uploaded[name] = item
        return _report_parts(uploaded)
    finally:
        await form.close()


#: The report's log parts and the log each is kept as (``notes`` is AWE's older name of ``worknotes``;
#: of the two, the later in this order wins).
_LOG_FIELDS = {
    "perf": "perf",
    "stdout": "stdout",
    "stderr": "stderr",
    "notes": "worknotes",
    "worknotes": "worknotes",
}


def _report_parts(parts: Mapping[str, bytes | str | _FileTail]) -> tuple[dict[str, str], Preemption | None]:
    """The logs (the last ``MAX_LOG_BYTES`` of each) and the preemption record of a report's parts:
    a file's content as bytes, a field's as text."""
    preemption = None
    part = parts.get("preemption")
    if isinstance(part, bytes):
        preemption = parse(Preemption, part[: MAX_PREEMPTION_BYTES + 1], "preemption")
    elif isinstance(part, str):
        preemption = parse(Preemption, part, "preemption")
    logs: dict[str, str] = {}
    for field, kind in _LOG_FIELDS.items():
        item = parts.get(field)
        if isinstance(item, bytes):
            logs[kind] = _tail(item)
        elif isinstance(item, _FileTail):
            logs[kind] = _tail(item.data, item.dropped)
        elif isinstance(item, str):
            logs[kind] = _printable(item[-MAX_LOG_BYTES:])
    return logs, preemption


def _printable(text: str) -> str:
    """Logs are kept whatever a program wrote; NUL, which PostgreSQL text cannot hold, becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class _FileTail:
    """The last bytes of an uploaded report file, and how many before them were not read."""

    data: bytes
    dropped: int


def _tail_of_file(upload: UploadFile) -> _FileTail:
    """The last MAX_LOG_BYTES of an uploaded file, without reading the rest into memory."""
    handle = upload.file
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(max(0, size - MAX_LOG_BYTES))
    data = handle.read()
    return _FileTail(data, size - len(data))


def _tail(data: bytes, dropped: int = 0) -> str:
    """The last MAX_LOG_BYTES of a report file, as text, saying how many earlier bytes were not kept."""
    dropped += max(0, len(data) - MAX_LOG_BYTES)
    text = _printable(data[-MAX_LOG_BYTES:].decode("utf-8", errors="replace"))
    if dropped:
        text = f"[... {dropped} earlier bytes not kept ...]\n" + text
    return text
