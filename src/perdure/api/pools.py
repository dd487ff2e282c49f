"""``/api/v1/pools``: the worker pools, their sizes and their last scaling decisions (issue 21).

Read from what the scaler stored (``store.pools``), never from AWS on a request: every server
answers the same, and a slow or failing cloud API cannot slow the management API. Admins only
(``api/readguard.py``), like the other management reads.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from perdure.api import openapi as oa
from perdure.api.context import ctx
from perdure.config.model import ServerConfig
from perdure.errors import NotFound
from perdure.pool.aws import group_name
from perdure.poolconfig import PoolSpec
from perdure.store.pools import read_states
from perdure.timeutil import format_us

router = APIRouter()
#: Decisions shown per pool in the list (``GET /api/v1/pools/<name>`` shows every one kept).
LIST_DECISIONS = 5


def pool_document(
    config: ServerConfig, spec: PoolSpec, state: dict[str, Any], decisions: int
) -> dict[str, Any]:
    """One pool: its settings' sizes, what the scaler last saw and did."""
    history = list(state.get("decisions", []))[-decisions:] if decisions else list(state.get("decisions", []))
    return {
        "name": spec.name,
        "clientgroup": spec.clientgroup,
        "autoScalingGroup": group_name(spec),
        "region": spec.region or config.pool.region,
        "instanceTypes": list(spec.instanceTypes),
        "slotsPerNode": spec.slotsPerNode,
        "minNodes": spec.minNodes,
        "maxNodes": spec.maxNodes,
        "enabled": config.pool.enabled,
        "demand": state.get("demand"),
        "targetNodes": state.get("target"),
        "desiredNodes": state.get("desired"),
        "actualNodes": state.get("actual"),
        "draining": sorted(state.get("draining", {})),
        "updated": format_us(state.get("updated")) if state.get("updated") else "",
        "error": state.get("error", ""),
        "decisions": [
            {**d, "time": format_us(d.get("time"))}
            for d in reversed(history)  # newest first
        ],
    }


@router.get("/api/v1/pools", responses=oa.errors(401, 403, management=True))
async def list_pools(request: Request) -> JSONResponse:
    """The worker pools: demand, target, desired and actual nodes, the last scaling decisions."""
    context = ctx(request)
    config = context.config.effective
    states = await run_in_threadpool(read_states, context.db, [p.name for p in config.pool.pools])
    return JSONResponse(
        [pool_document(config, spec, states.get(spec.name, {}), LIST_DECISIONS) for spec in config.pool.pools]
    )


@router.get("/api/v1/pools/{name}", responses=oa.errors(401, 403, 404, management=True))
async def get_pool(name: str, request: Request) -> JSONResponse:
    """One worker pool with every scaling decision kept (newest first)."""
    context = ctx(request)
    config = context.config.effective
    spec = config.pool.get(name)
    if spec is None:
        raise NotFound(f"no pool named {name[:64]!r}")
    states = await run_in_threadpool(read_states, context.db, [name])
    return JSONResponse(pool_document(config, spec, states.get(name, {}), 0))


__all__ = ["pool_document", "router"]
