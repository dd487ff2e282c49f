"""Client-group tokens act on their own group only (issue 17).

A worker's token of group g2 must not rewrite the node record of a g1 node or ship logs in its name.
The node's group is that of the clients running on it; a node no client has joined yet is anyone's
to register. (Clients and leased workunits are already checked against the client's own group by
:func:`perdure.api.workerauth.check_worker`.)
"""

from __future__ import annotations

from starlette.requests import Request

from perdure.api.context import ctx
from perdure.api.workerauth import cg_token
from perdure.errors import Forbidden, NotFound
from perdure.store.scope import node_groups, workunit_group


def token_group(request: Request) -> str | None:
    """The group of the request's clientgroup token, or None when it carries none (or an unknown one,
    which :func:`check_worker` refuses)."""
    caller = getattr(request.state, "principal", None)
    if caller is not None and caller.kind == "worker" and caller.groups:
        return str(caller.groups[0])
    if caller is not None and caller.kind == "user":
        return None  # an admin's bearer token (check_worker refuses anyone else's)
    token = cg_token(request)
    return ctx(request).clients.token_group(token) if token else None


def check_node_scope(request: Request, node_id: str) -> None:
    """Refuse a worker call on ``node_id`` with the token of a group the node is not in."""
    group = token_group(request)
    if group is None:
        return
    groups = node_groups(ctx(request).db, node_id)
    if groups and group not in groups:
        raise Forbidden(f"node {node_id} belongs to another client group")


def check_work_scope(request: Request, work_id: str) -> None:
    """A client-group token reads only the workunits its own group's clients hold (others: 404)."""
    caller = getattr(request.state, "principal", None)
    if caller is None or caller.kind != "worker" or not caller.groups:
        return
    if workunit_group(ctx(request).db, work_id) != caller.groups[0]:
        raise NotFound("Not Found")


__all__ = ["check_node_scope", "check_work_scope", "token_group"]
