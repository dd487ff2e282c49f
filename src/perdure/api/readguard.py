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

Checked by :class:`perdure.api.front.FrontMiddleware` once :mod:`perdure.api.auth` knows the caller, and
before any route reads a body.
"""

from __future__ import annotations

import hmac
import re

from starlette.responses import Response
from starlette.types import Scope

from perdure.api.envelope import error_for, mgmt_error
from perdure.config.model import ServerConfig
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


def refusal(scope: Scope, caller: Principal, effective: ServerConfig) -> Response | None:
    """The 401 or 403 answering a read ``caller`` may not make, or None (it may)."""
    if scope["method"] not in ("GET", "HEAD"):
        return None
    path: str = scope["path"]
    secured = effective.security.cognito.enabled
    if path == METRICS_PATH:
        token = getattr(effective.security, "metricsToken", "")
        if (token or secured) and not (secured and caller.admin) and caller.kind != "scraper":
            what = "an admin's token" + (" or the metrics scrape token" if token else "")
            return mgmt_error(403 if secured else 401, f"/metrics needs {what}", None, 2005)
    elif (
        secured
        and not caller.admin
        and ADMIN_READS.match(path)
        and not (caller.kind == "worker" and WORKER_READS.match(path))
    ):
        fields = {
            "adminGroups": list(effective.security.cognito.adminGroups),
            "groupsInToken": list(caller.groups) or None,
        }
        return error_for(path, 403, "User is not privileged, only admin can read this", fields, 2005)
    return None


__all__ = ["ADMIN_READS", "SCRAPER", "metrics_token_matches", "refusal"]
