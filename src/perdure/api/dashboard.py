"""The web dashboard at ``/ui/``, the API docs page, and the change stream the dashboard listens to.

The dashboard is a single-page application (``perdure/dashboard/``): every page is ``index.html``, which
reads the API with the caller's own token, so it sees exactly what that caller may see through the API.
Its libraries come from npm, pinned in ``ui/package.json``; ``scripts/build-ui.sh`` (run by
``make install``) copies their files into ``perdure/dashboard/vendor/``. Nothing is loaded from a CDN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.staticfiles import StaticFiles

from perdure.api import openapi as oa
from perdure.api.context import ServerContext, ctx
from perdure.api.queue import queue_summary
from perdure.security import issuer_of

log = logging.getLogger("perdure.server")

ASSETS = Path(__file__).resolve().parent.parent / "dashboard"
VENDOR = ASSETS / "vendor"
#: Seconds between two looks at the database for a change stream; pages never refresh faster.
STREAM_PERIOD_S = 2.0
#: A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0
#: How long the identity provider's discovery document is trusted.
DISCOVERY_TTL_S = 300.0

_MISSING_ASSETS = (
    "<!doctype html><html lang='en'><head><title>Perdure</title></head><body><main>"
    "<h1>Perdure dashboard</h1><p>The dashboard's libraries are not installed: run "
    "<code>make install</code> (or <code>scripts/build-ui.sh</code>) in the Perdure checkout.</p>"
    "</main></body></html>"
)


def install(app: FastAPI) -> None:
    """Routes of the dashboard and the docs page (the app is created with ``docs_url=None``)."""
    app.mount("/ui/static", StaticFiles(directory=ASSETS, check_dir=False), name="ui-static")
    app.add_api_route("/ui", _to_dashboard, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/auth.json", _auth, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui/{page:path}", _page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", _docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/api/v1/events",
        _events,
        methods=["GET"],
        summary="Server-sent events: `change` when jobs, workunits or clients change (checked every 2 s).",
        response_class=Response,
        responses=oa.errors(401, 403, management=True),
    )


def wants_html(request: Request) -> bool:
    """A browser navigating, not an API client: AWE clients ask for ``/`` without preferring HTML."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


def _to_dashboard() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


def _page(page: str) -> Response:
    index = ASSETS / "index.html"
    if not (VENDOR / "chart.umd.min.js").is_file():
        return HTMLResponse(_MISSING_ASSETS, status_code=503)
    return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})


def _docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Perdure API",
        swagger_js_url="/ui/static/vendor/swagger-ui-bundle.js",
        swagger_css_url="/ui/static/vendor/swagger-ui.css",
        swagger_favicon_url="/ui/static/favicon.svg",
    )


_discovery: dict[str, tuple[float, dict[str, Any]]] = {}


async def _auth(request: Request) -> JSONResponse:
    """What the sign-in page needs before anyone is signed in: no secrets."""
    cognito = ctx(request).config.effective.security.cognito
    body: dict[str, Any] = {"enabled": cognito.enabled}
    if cognito.enabled:
        issuer = issuer_of(cognito)
        endpoints = await _endpoints(issuer)
        body |= {
            "issuer": issuer,
            "clientId": cognito.clientID,
            "adminGroups": list(cognito.adminGroups),
            "authorizationEndpoint": endpoints.get("authorization_endpoint"),
            "tokenEndpoint": endpoints.get("token_endpoint"),
        }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def _endpoints(issuer: str) -> dict[str, Any]:
    cached = _discovery.get(issuer)
    if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
        return cached[1]
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            reply = await client.get(f"{issuer}/.well-known/openid-configuration")
            reply.raise_for_status()
            document = reply.json()
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not an object")
    except (httpx.HTTPError, ValueError) as exc:
        # Sign-in by a pasted token still works; the page says why the button is missing.
        log.warning("OIDC discovery at %s failed: %s", issuer, exc)
        return {}
    _discovery[issuer] = (time.monotonic(), document)
    return document


async def _events(request: Request) -> Response:
    context = ctx(request)

    async def stream() -> AsyncIterator[bytes]:
        last = ""
        quiet_since = time.monotonic()
        yield b"retry: 2000\n\n"
        while not await request.is_disconnected():
            version = await asyncio.to_thread(_version, context)
            if version != last:
                last = version
                quiet_since = time.monotonic()
                yield f"event: change\ndata: {json.dumps({'version': version})}\n\n".encode()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(STREAM_PERIOD_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _version(context: ServerContext) -> str:
    """A fingerprint of what the pages show; it carries no data, so any signed-in caller may have it."""
    summary = queue_summary(context)
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
