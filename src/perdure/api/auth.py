"""Authentication for every request, and the admin and ownership checks routes call.

With Cognito/OIDC off, every caller is the anonymous admin ``public`` (AWE's anonymous defaults).
With it on, a request needs ``Authorization: bearer <JWT>``, or, on the worker protocol's routes
only, ``Authorization: CG_TOKEN <token>``; anything else is 401 before any route runs.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from perdure.api.context import ServerContext
from perdure.api.envelope import error_for
from perdure.api.leasecaps import capability_only
from perdure.api.readguard import METRICS_PATH, SCRAPER, metrics_token_matches
from perdure.errors import NotFound, NotPrivileged
from perdure.security import ANONYMOUS, Principal, TokenError, Verifier

#: Readable (GET) without a token even when security is on: the self-description, the API schema,
#: the worker installer new cloud instances fetch (no secret unless one is put in its URL) and the
#: wheels it installs (the server's open code and public libraries), and the Cognito settings a web
#: front end needs before anyone can log in (no secrets either).
PUBLIC_PATHS = frozenset(
    {
        "/",
        "/openapi.json",
        "/docs",
        "/api/v1/scripts/install-worker",
        "/api/v1/scripts/wheelhouse",
        "/api/v1/security/cognito",
        "/ui",
    }
)
#: The dashboard's pages and files (each page then reads the API with the signed-in user's token), and
#: the wheels of the worker installer.
PUBLIC_PREFIXES = ("/ui/", "/api/v1/scripts/wheelhouse/")
_WORKER_ROUTES = [
    ("GET", re.compile(r"^/work$")),
    ("GET", re.compile(r"^/work/[^/]+$")),
    ("PUT", re.compile(r"^/work/[^/]+$")),
    ("PUT", re.compile(r"^/work/[^/]+/output/.+$")),
    ("POST", re.compile(r"^/client$")),
    ("GET", re.compile(r"^/client/[^/]+$")),
    ("PUT", re.compile(r"^/client/[^/]+$")),
    ("DELETE", re.compile(r"^/client/[^/]+$")),
    ("PUT", re.compile(r"^/api/v1/nodes/[^/]+(/files)?$")),
    ("GET", re.compile(r"^/job/[^/]+/output/.+$")),
    # the Shock-compatible node API AWE's worker moves data through (api/shock.py)
    ("GET", re.compile(r"^/node/[^/]+$")),
    ("PUT", re.compile(r"^/node/[^/]+(/index/[^/]+)?$")),
    # spot protection: checkpoint and restore reports, the server's checkpoint store, collection
    ("POST", re.compile(r"^/work/[^/]+/(checkpoints|restores|ckpt)$")),
    ("DELETE", re.compile(r"^/work/[^/]+/ckpt$")),
    ("GET", re.compile(r"^/work/[^/]+/ckpt/(chunks|manifests)/[^/]+$")),
    ("HEAD", re.compile(r"^/work/[^/]+/ckpt/chunks/[^/]+$")),
    ("PUT", re.compile(r"^/work/[^/]+/ckpt/(chunks|manifests)/[^/]+$")),
    ("GET", re.compile(r"^/checkpoints/collectable$")),
]


def is_worker_route(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in _WORKER_ROUTES)


def caller_without_credentials(scope: Scope, security: Any) -> Principal | None:
    """The caller when no credential needs checking (with security off, everyone is the anonymous
    admin), or None: :func:`authenticate` decides. ``/metrics`` always goes there, for its scrape
    token."""
    if security.cognito.enabled or scope["path"] == METRICS_PATH:
        return None
    return ANONYMOUS


async def authenticate(scope: Scope, context: ServerContext) -> Principal | Response:
    """The caller of ``scope`` (which :func:`principal` then returns to routes), or the 401 to answer."""
    security = context.config.effective.security
    cognito = security.cognito
    path, method = scope["path"], scope["method"]
    headers = dict(scope["headers"])
    if path == METRICS_PATH and metrics_token_matches(
        getattr(security, "metricsToken", ""), headers.get(b"authorization", b"").decode("latin-1")
    ):
        return SCRAPER  # Prometheus with its own token (issue 17); /metrics only
    if not cognito.enabled:
        return ANONYMOUS
    header = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, credential = header.partition(" ")
    try:
        if (
            (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))
            and method in ("GET", "HEAD")
            and not header
        ):
            return Principal(user="anonymous", kind="anonymous")
        if scheme.lower() == "bearer" and credential.strip():
            verified: Principal = await run_in_threadpool(Verifier(cognito).verify, credential.strip())
            return verified
        if scheme.upper() == "CG_TOKEN" and credential.strip():
            if not is_worker_route(method, path):
                raise TokenError("clientgroup tokens are accepted on worker calls only")
            group = await run_in_threadpool(context.clients.token_group, credential.strip())
            if group is None:
                raise TokenError("Invalid clientgroup token")
            return Principal(user=f"clientgroup:{group}", groups=(group,), kind="worker")
        if capability_only(scope):
            # A workunit's own input URL (issue 17): its captoken is checked by the route. AWE's
            # worker sends its job's data token here, if any, which is not ours to check.
            return Principal(user="capability", kind="capability")
        raise TokenError("Invalid Auth Header" if header else "No Authorization")
    except TokenError as exc:
        return error_for(path, 401, str(exc), error_code=2001)


def principal(request: Request) -> Principal:
    found: Principal = getattr(request.state, "principal", ANONYMOUS)
    return found


def require_admin(request: Request, what: str = "change this") -> Principal:
    caller = principal(request)
    if not caller.admin:
        admin_groups = request.app.state.ctx.config.effective.security.cognito.adminGroups
        raise NotPrivileged(
            f"User is not privileged, only admin can {what}",
            {"adminGroups": list(admin_groups), "groupsInToken": list(caller.groups) or None},
        )
    return caller


def job_owner_filter(request: Request) -> str | None:
    """The owner a non-admin is limited to (None: sees everything)."""
    caller = principal(request)
    return None if caller.admin or caller.kind == "worker" else caller.user


def check_job_access(request: Request, job_id: str) -> None:
    """Non-admins see and change only their own jobs; others' are reported as not found."""
    owner = job_owner_filter(request)
    if owner is None:
        return
    if request.app.state.ctx.jobs.owner_of(job_id) != owner:
        raise NotFound("Not Found")


__all__: list[Any] = [
    "authenticate",
    "caller_without_credentials",
    "check_job_access",
    "principal",
    "require_admin",
]
