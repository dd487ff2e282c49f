"""Per-workunit data capabilities (issue 17): a clientgroup token alone reads no job data.

Every checkout (and the ``next`` of a report) carries ``captoken``: an HMAC over the workunit's id,
its lease's attempt and an expiry (``security.capabilityTTL`` from the checkout), keyed by the
installation's capability key (``store/leasecaps.py``), so every server accepts what any of them
issued. The same token is put into the workunit's server-local input and predata URLs as
``?captoken=``, as presigned URLs are, so a worker (Perdure's or AWE's) reads its inputs by fetching
the URLs it was given; Perdure's worker also sends it on its checkpoint reads.

It reads exactly that workunit's inputs (job outputs and Shock nodes named by its task, split parts
included), its task's output nodes, and its checkpoints; it dies with the lease: done, failed,
requeued, preempted or lost, the workunit's row no longer shows that attempt checked out. Checked on
every data read of a worker's token (``Authorization: CG_TOKEN``), and it is on its own a credential
for those reads (what AWE's worker sends to a Shock host is its data token, not ours). Users and
admins read with their own tokens as before. Writes stay fenced by the lease itself (client id and
its group's token, checked in the write's transaction).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.requests import Request
from starlette.types import Scope

from perdure.api import openapi as oa
from perdure.api.context import ServerContext, ctx
from perdure.errors import Forbidden
from perdure.states import WorkunitState
from perdure.store import leasecaps
from perdure.store.leasecaps import Lease

#: The query parameter a capability travels in (the access log masks it: it names a token).
PARAM = "captoken"
#: Routes a capability alone may read (GET/HEAD): job outputs and Shock nodes.
_READS = re.compile(r"^(/job/[^/]+/output/.+|/node/[^/]+)$")
_OUTPUT_URL = re.compile(r"^/job/(?P<job>[^/?#]+)/output/(?P<task>[^/?#]+)/(?P<file>[^?#]+)")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, wu_id: str, attempt: int, expires: int) -> bytes:
    return hmac.new(key, f"{wu_id}\n{attempt}\n{expires}".encode(), hashlib.sha256).digest()


def issue(key: bytes, wu_id: str, attempt: int, expires: int) -> str:
    """The capability of ``wu_id``'s lease number ``attempt``, valid until ``expires`` (epoch s)."""
    return f"{_b64(wu_id.encode())}.{attempt}.{expires}.{_b64(_mac(key, wu_id, attempt, expires))}"


def verify(key: bytes, token: str, now: float) -> tuple[str, int]:
    """(workunit id, attempt) of a genuine, unexpired capability; ``Forbidden`` otherwise."""
    try:
        wu_part, attempt_s, expires_s, mac_part = token.split(".")
        wu_id = _unb64(wu_part).decode()
        attempt, expires = int(attempt_s), int(expires_s)
        mac = _unb64(mac_part)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Forbidden("invalid data capability (captoken)") from None
    if not hmac.compare_digest(mac, _mac(key, wu_id, attempt, expires)):
        raise Forbidden("invalid data capability (captoken)")
    if now >= expires:
        raise Forbidden("the data capability (captoken) has expired")
    return wu_id, attempt


# ---- handing them out -------------------------------------------------------------------------------


def grant(context: ServerContext, workunit: dict[str, Any], base: str) -> dict[str, Any]:
    """Give a checked-out workunit document its capability, in ``captoken`` and in the URLs of its
    inputs and predata on this server (absolute, from ``absolute_io``, or server-relative)."""
    ttl = int(context.config.effective.security.capabilityTTL)
    key = leasecaps.capability_key(context.db)
    token = issue(key, str(workunit["id"]), int(workunit.get("attempt") or 0), int(time.time()) + ttl)
    workunit["captoken"] = token
    for field in ("inputs", "predata"):
        ios = []
        for io in workunit.get(field) or []:
            url = str(io.get("url") or "")
            if url.startswith("/") or url.startswith(base + "/"):
                io = {**io, "url": with_token(url, token)}
            ios.append(io)
        workunit[field] = ios
    return workunit


def openapi_param() -> dict[str, Any]:
    """``?captoken=``, as the data routes document it."""
    return oa.text(
        PARAM,
        "The reading workunit's data capability, from its checkout (a clientgroup token alone reads "
        "no job data when security is on)",
    )


def with_token(url: str, token: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{PARAM}={token}"


# ---- checking them ----------------------------------------------------------------------------------


def capability_only(scope: Scope) -> bool:
    """Whether a request without a token of ours may be let through to its route on the strength of
    a ``captoken`` (checked there): a GET or HEAD of a job output or a Shock node."""
    if scope["method"] not in ("GET", "HEAD") or not _READS.match(scope["path"]):
        return False
    return PARAM in parse_qs(scope.get("query_string", b"").decode("latin-1"))


def needs_capability(request: Request) -> bool:
    """A worker's token (or a bare capability) reads job data only with the lease's capability."""
    caller = getattr(request.state, "principal", None)
    return caller is not None and caller.kind in ("worker", "capability")


def _live_lease(request: Request) -> Lease:
    token = request.query_params.get(PARAM, "")
    if not token:
        raise Forbidden(
            "job data needs the reading workunit's capability (captoken from its checkout), "
            "not a clientgroup token alone"
        )
    context = ctx(request)
    wu_id, attempt = verify(leasecaps.capability_key(context.db), token, time.time())
    found = leasecaps.lease(context.db, wu_id)
    if found is None or found.state != WorkunitState.CHECKOUT.value or found.attempt != attempt:
        raise Forbidden(f"the lease of workunit {wu_id} this capability was given for has ended")
    return found


def _output_of(io: dict[str, Any], job_id: str) -> tuple[str, str, str] | None:
    url = str(io.get("url") or "")
    if io.get("origin") and not url:
        return job_id, str(io["origin"]), str(io.get("filename") or "")
    match = _OUTPUT_URL.match(url)
    if match is None:
        return None
    return unquote(match["job"]), unquote(match["task"]), unquote(match["file"])


def _readable_outputs(found: Lease) -> set[tuple[str, str, str]]:
    named = (_output_of(io, found.job_id) for io in [*found.inputs, *found.predata])
    return {output for output in named if output is not None}


def check_output_read(request: Request, job_id: str, task: str, filename: str) -> None:
    """Refuse (403) reading a job output the request's capability does not name."""
    found = _live_lease(request)
    if (job_id, task, filename) not in _readable_outputs(found):
        raise Forbidden(f"workunit {found.id} does not read {job_id}/{task}/{filename}")


def check_node_read(request: Request, node_id: str) -> None:
    """Refuse (403) reading a Shock node that is neither an input nor an output of the capability's
    task (AWE's worker builds an output's index on its node)."""
    found = _live_lease(request)
    nodes = {str(io.get("node")) for io in [*found.inputs, *found.outputs] if io.get("node")}
    if node_id in nodes:
        return
    output = leasecaps.node_output(ctx(request).db, node_id)
    if output is None or output not in _readable_outputs(found):
        raise Forbidden(f"workunit {found.id} does not read node {node_id}")


def check_checkpoint_read(request: Request, wu_id: str) -> None:
    """Refuse (403) reading a checkpoint of any workunit but the capability's own."""
    found = _live_lease(request)
    if found.id != wu_id:
        raise Forbidden(f"this capability is workunit {found.id}'s, not {wu_id}'s")


__all__ = [
    "PARAM",
    "capability_only",
    "check_checkpoint_read",
    "check_node_read",
    "check_output_read",
    "grant",
    "issue",
    "needs_capability",
    "openapi_param",
    "verify",
    "with_token",
]
