"""The FastAPI application: routers, error shapes, and the background sweep."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import Match

from perdure import __version__
from perdure.api import (
    cgroups,
    clients,
    dashboard,
    data,
    jobs,
    management,
    nodes,
    pools,
    queue,
    root,
    s3,
    scripts,
    spot,
    work,
)
from perdure.api import metrics as metrics_api
from perdure.api import shock as shock_api
from perdure.api.context import ServerContext
from perdure.api.envelope import error_for
from perdure.api.errors import response_for
from perdure.api.front import FrontMiddleware
from perdure.api.housekeeping import guarded
from perdure.configstore import ConfigStore
from perdure.errors import DomainError
from perdure.logs import ServerLogs
from perdure.metrics import recording
from perdure.metrics.sweep import sweep as sweep_metrics
from perdure.pool.scaler import Scaler
from perdure.protocol import Refused
from perdure.settings import Settings, apply_config, process_overrides
from perdure.store import leasecaps, migrate
from perdure.store.database import Database
from perdure.store.spot import collectable_jobs
from perdure.store.stranded import suspend_stranded

log = logging.getLogger("perdure.server")


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    run_migrations: bool = True,
    freeze_startup_objects: bool = False,
) -> FastAPI:
    """The server application. ``freeze_startup_objects`` (a server process, not a test) moves what
    exists once it has started out of the garbage collector's reach (``gc.freeze``): the modules,
    stores and settings live as long as the process, and walking them took a full collection about
    75 ms, once a second under load, during which no request moved."""
    recording.install()  # the stores' hooks record metrics (perdure.store.hooks)
    database = db or Database(settings.database_url)
    if run_migrations:
        migrate.upgrade(database)
    leasecaps.capability_key(database)  # read (or made) now, not on the event loop by a checkout
    config = ConfigStore(
        database,
        settings.data_dir / "config.json",
        overrides=process_overrides(settings, os.environ),
        fixed={
            "perdure.databaseURL": settings.database_url,
            "perdure.dataDir": str(settings.data_dir.resolve()),
        },
    )
    logs = ServerLogs(settings.data_dir)
    config.listeners.append(lambda effective: apply_config(settings, effective))
    config.listeners.append(lambda effective: logs.apply(effective.log))
    config.load()
    context = ServerContext.create(settings, database, config, logs)
    context.scaler = Scaler(database, context.process_uuid)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        context.signal.start(database)
        if freeze_startup_objects:
            gc.freeze()
        stop = asyncio.Event()
        sweeper = asyncio.create_task(_sweep_forever(context, stop))
        try:
            yield
        finally:
            context.signal.stop()
            # Let a sweep already running in its thread finish: cancelling would leave it using
            # connections after the database is disposed.
            stop.set()
            await sweeper
            if context.scaler is not None and context.scaler.acted:
                # Another server takes the pools over at its next step rather than when the lease ends.
                await asyncio.to_thread(guarded, "pools", context.scaler.release)
            logs.close()
            if db is None:
                database.dispose()

    app = FastAPI(title="Perdure", version=__version__, lifespan=lifespan, redoc_url=None, docs_url=None)
    app.state.ctx = context
    for module in (
        root,
        jobs,
        work,
        s3,
        spot,
        data,
        clients,
        cgroups,
        queue,
        nodes,
        pools,
        scripts,
        management,
    ):
        app.include_router(module.router)
    dashboard.install(app)  # /ui/, /docs with local assets, /api/v1/events
    app.include_router(shock_api.router)  # /node: the Shock-compatible data plane (issue 19)
    app.include_router(management.log_files)  # last: /{name} would shadow the routes above
    metrics_api.install(app)  # /api/v1/metric*, /metrics
    # One layer for the HTTP metrics, the access log (both outermost: they see refused requests too),
    # NUL refusal, authentication, admin-only reads, body limits and the worker fast path (issue 22).
    app.add_middleware(FrontMiddleware, context=context)
    _install_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several worker processes): settings come from PERDURE_*."""
    return create_app(Settings.from_env(), run_migrations=False, freeze_startup_objects=True)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _perdure_error(request: Request, exc: DomainError) -> JSONResponse:
        return response_for(request, exc)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return response_for(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_for(request.url.path, 400, f"{where}: {first['msg']}" if where else str(first["msg"]))

    @app.exception_handler(ClientDisconnect)
    async def _client_went_away(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return response_for(request, exc)  # here, not below: the 500 handler always logs a traceback

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_for(request.url.path, 404, "Not Found")
        if exc.status_code == 405:
            allowed = allowed_methods(app, request)
            response = error_for(
                request.url.path, 405, f"Method Not Allowed: {request.method}; allowed: {', '.join(allowed)}"
            )
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return error_for(request.url.path, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return response_for(request, exc)


#: The methods a 405's ``Allow`` header may name.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route fully serves on this path (Starlette names only the first route's)."""
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in app.router.routes
        )
    ]


#: Seconds between SQLite planner-statistics refreshes (PostgreSQL's: ``tend_tables``, every sweep).
OPTIMIZE_EVERY_S = 3600.0


async def _sweep_forever(context: ServerContext, stop: asyncio.Event) -> None:
    """Idempotent housekeeping, safe to run on every server sharing the database."""
    optimized = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), context.settings.sweep_interval_s)
            return
        try:
            await asyncio.to_thread(sweep_once, context)
            if time.monotonic() - optimized > OPTIMIZE_EVERY_S:
                optimized = time.monotonic()
                await asyncio.to_thread(guarded, "optimize", context.db.optimize)
        except Exception:
            log.exception("background sweep failed; will retry")


def sweep_once(context: ServerContext) -> None:
    """Each step in its own guard: one that fails is logged and counted
    (``perdure_sweep_failures_total{step=...}``) and never keeps the others from running."""
    guarded("config", context.config.refresh)
    requeued = guarded("requeue_lost", context.clients.requeue_lost)
    if requeued:
        log.warning("re-queued %d workunit(s) of lost clients", requeued)
    stranded = guarded("suspend_stranded", lambda: suspend_stranded(context.db, context.clients.ttl_us))
    if stranded:
        log.warning("suspended %d job(s) whose failed work no live client can retry", stranded)
    guarded("promote_due", context.jobs.promote_due)
    finished = guarded("advance_finished", context.jobs.advance_finished)
    if finished:
        # A server stopped mid-batch leaves such tasks (or this sweep met a live batch in between).
        log.info("completed the finished tasks of %d job(s)", finished)
    guarded("metrics", lambda: sweep_metrics(context.db, node_ttl_s=context.settings.node_ttl_s))
    reaped = guarded("reap_expired", context.jobs.reap_expired)
    if reaped:
        log.info("removed %d expired job(s)", reaped)
    collected = guarded("collect_checkpoints", lambda: collect_checkpoints(context))
    if collected:
        log.info("deleted the checkpoints of %d finished or deleted job(s)", collected)
    guarded("pools", lambda: scale_pools(context))
    tended = guarded("tend_tables", context.db.tend_tables)
    if tended:
        log.info("table upkeep (autovacuum's thresholds passed): %s", ", ".join(tended))


def scale_pools(context: ServerContext) -> None:
    """The worker pools' scaling step, every ``pool.interval``, on the server holding the lease."""
    config = context.config.effective
    scaler = context.scaler
    if scaler is not None and config.pool.enabled and config.pool.pools and scaler.due(config):
        scaler.step(config)


def collect_checkpoints(context: ServerContext) -> int:
    """Checkpoints in the server's store of jobs that completed (unless diagnosisMode) or are gone."""
    store = context.checkpoints
    job_ids = store.job_ids()
    if not job_ids:
        return 0
    useless = collectable_jobs(context.db, job_ids, context.config.checkpoint_settings())
    for job_id in useless:
        store.delete_job(job_id)
    return len(useless)
