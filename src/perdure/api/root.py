"""``GET /``: the server describes itself, as AWE did."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from perdure import __version__
from perdure.api.context import ctx
from perdure.api.dashboard import wants_html
from perdure.store.jobs import DISTINCT_FIELDS
from perdure.timeutil import format_us, now_us

router = APIRouter()

RESOURCES = ["job", "work", "client", "queue"]


@router.get("/")
def describe(request: Request) -> Response:
    if wants_html(request):
        return RedirectResponse("/ui/", status_code=307)
    context = ctx(request)
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {
            "id": "Perdure",
            "type": "server",
            "title": "Perdure",
            "version": __version__,
            "resources": RESOURCES,
            "info_indexes": sorted(DISTINCT_FIELDS),
            "url": base,
            "documentation": f"{base}/docs",
            "contact": "",
            "auth": [],
            "anonymous_permissions": {"read": True, "write": True, "delete": True},
            "queue_status": "running",
            "server_uuid": context.clients.cluster_id,
            "server_time": format_us(now_us()),
            "uptime": _format_uptime(context.uptime_s),
            "uptime_seconds": round(context.uptime_s, 3),
            "database": context.db.dialect,
            "jobs": context.jobs.counts(),
        }
    )


def _format_uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h{minutes}m{secs}s"
    return f"{days}d{text}" if days else text
