"""Metrics endpoints: the management API's metric definitions, time series and summary, and
``/metrics`` for Prometheus.

Errors raised here (``BadRequest``, ``NotFound``) are rendered in the management API's shape by the
app's handler, since these paths are under ``/api/``; ``/metrics`` raises nothing of its own.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response

from perdure.api import openapi as oa
from perdure.api.context import ctx
from perdure.metrics import prometheus, queries
from perdure.metrics.levels import go_duration

router = APIRouter()


def install(app: FastAPI) -> None:
    """Add these routes ahead of the app's own (a catch-all such as ``/{name}`` for log files would
    otherwise shadow ``/metrics``). Idempotent. The HTTP request metrics are counted by the server's
    front (:mod:`perdure.api.front`)."""
    if getattr(app.state, "perdure_metrics_installed", False):
        return
    app.state.perdure_metrics_installed = True
    before = list(app.router.routes)
    app.include_router(router)
    added = app.router.routes[len(before) :]
    app.router.routes[:] = [*added, *before]


@router.get("/api/v1/metric", responses=oa.errors(401, 403, management=True))
def list_metrics(request: Request) -> JSONResponse:
    return JSONResponse(queries.list_definitions(ctx(request).db))


@router.get(
    "/api/v1/metricValue/{object_id}/{metric_id}", responses=oa.errors(400, 401, 403, 404, management=True)
)
def metric_value(
    request: Request,
    object_id: str,
    metric_id: str,
    interval: str | None = None,
    start: str | None = None,
    end: str | None = None,
    statistic: str | None = None,
) -> JSONResponse:
    """Points of one level; ``statistic`` (sum, count, avg, min, max, rate) overrides the metric's own."""
    document, level = queries.time_series(
        ctx(request).db,
        object_id,
        metric_id,
        interval=interval,
        start=start,
        end=end,
        statistic=statistic,
    )
    return JSONResponse(document, headers={"X-Perdure-Interval": go_duration(level.interval_s)})


@router.get("/api/v1/metrics/summary", responses=oa.errors(400, 401, 403, management=True))
def metrics_summary(request: Request, start: str | None = None, end: str | None = None) -> JSONResponse:
    return JSONResponse(queries.summary(ctx(request).db, start, end))


@router.get("/metrics", responses=oa.errors(401, 403))
def prometheus_metrics(request: Request) -> Response:
    context = ctx(request)
    return Response(
        prometheus.exposition(context.db, context.settings.node_ttl_s), media_type=prometheus.CONTENT_TYPE
    )
