"""Admin-only reads (issue 17): what the docs reserve for admins is refused to other users.

With security on, a user's token reads the user's own jobs, their outputs and the read-only views the
docs give users (queue, metrics of their jobs, the API's self-description); the server's
configuration, its log settings, the clients and client groups, the worker pools, the nodes and their
shipped log files (which name other users' workunits) and the metrics summary need an admin.
Clientgroup tokens reach only the worker calls :mod:`perdure.api.auth` lets them make (a worker reads
its own client record).

``/metrics`` (Prometheus) needs an admin with security on; with ``security.metricsToken`` set it
also takes ``Authorization: Bearer <that token>``, and then needs it (or an admin) even with security
off, so a scraper gets a credential of its own rather than an admin's.

Runs inside :class:`perdure.api.auth.AuthMiddleware` (the caller is known) and before any route reads a
body.
"""

from __future__ import annotations

import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from perdure.api.envelope import error_for, mgmt_error
from perdure.security import Principal

#: GET/HEAD paths only an admin may read.
ADMIN_READS = re.compile(
    r"^(/api/v1/config|/api/v1/log/config|/client(/[^/]+)?|/cgroup(/[^/]+)?|/api/v1/node"
    r"|/api/v1/nodes/[^/]+/files|/nodes/.*|/api/v1/metrics/summary|/api/v1/pools(/[^/]+)?)/?$"
)
#: Of those, what a clientgroup token may read (its own client record, checked by the route).
WORKER_READS = re.compile(r"^/client/[^/]+$")
METRICS_PATH = "/metrics"
SCRAPER = Principal(user="metrics-scraper", kind="scraper")


def metrics_token_matches(expected: str, authorization: str) -> bool:
    """Whether ``authorization`` is ``Bearer <expected>`` (compared in constant time)."""
    scheme, _, credential = authorization.strip().partition(" ")
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(credential.strip().encode(), expected.encode())
    )


class AdminReadsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        effective = scope["app"].state.ctx.config.effective
        secured = effective.security.cognito.enabled
        caller: Principal | None = scope.get("state", {}).get("principal")
        if path == METRICS_PATH:
            token = getattr(effective.security, "metricsToken", "")
            if token or secured:
                admin = secured and caller is not None and caller.admin
                if not admin and not (caller is not None and caller.kind == "scraper"):
                    what = "an admin's token" + (" or the metrics scrape token" if token else "")
                    response = mgmt_error(
                        403 if secured and caller else 401, f"/metrics needs {what}", None, 2005
                    )
                    await response(scope, receive, send)
                    return
        elif (
            secured
            and caller is not None
            and not caller.admin
            and ADMIN_READS.match(path)
            and not (caller.kind == "worker" and WORKER_READS.match(path))
        ):
            fields = {
                "adminGroups": list(effective.security.cognito.adminGroups),
                "groupsInToken": list(caller.groups) or None,
            }
            response = error_for(path, 403, "User is not privileged, only admin can read this", fields, 2005)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["ADMIN_READS", "SCRAPER", "AdminReadsMiddleware", "metrics_token_matches"]
