"""Worker pools (issue 21 item 4): the facts the scaler reads and the little it keeps.

The scaler needs, per pool: how much work its client group has (queued + running), which nodes are
busy or idle and since when, and a way to stop a node taking work before its instance is terminated
(its clients are suspended through ``transitions.suspend_client``, without re-queueing anything: only
a node that holds no lease is drained). What it keeps is small and written by one server at a time:
each pool's state (sizes, nodes being drained, the last decisions, capped) and the scaler's lease, as
JSON documents in ``meta`` (``pool:<name>``, ``pool-lease``), so no table is needed for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from perdure.states import WorkunitState
from perdure.store import transitions
from perdure.store.commalist import comma_list_contains
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import clients, meta, nodes, workunits

#: The suspend reason that marks a client drained by a pool's scale-in (and only those are resumed).
DRAIN_REASON = "pool scale-in: draining before the instance is terminated"
LEASE_KEY = "pool-lease"
_STATE_PREFIX = "pool:"


@dataclass(frozen=True)
class NodeActivity:
    """A node of a pool as the scaler sees it."""

    node_id: str
    instance_id: str
    #: A client of the node holds a leased workunit.
    busy: bool
    #: The latest registration, checkout or report of its clients (µs).
    last_active: int
    #: Every client of the node is suspended by a scale-in.
    drained: bool


# ---- the lease: one scaler at a time ---------------------------------------------------------------


def acquire_lease(db: Database, holder: str, now_us: int, ttl_us: int) -> bool:
    """True when ``holder`` holds the scaler's lease until ``now_us + ttl_us`` (taken, or renewed);
    False while another holder's lease runs. The row is locked, so two servers never both win."""
    expires = now_us + ttl_us
    value = json.dumps({"holder": holder, "expires": expires})
    try:
        return _acquire(db, holder, now_us, value)
    except IntegrityError:  # another server inserted the first lease at the same moment: theirs
        return False


@retry_on_conflict
def _acquire(db: Database, holder: str, now_us: int, value: str) -> bool:
    with db.write() as conn:
        raw = conn.execute(
            select(meta.c.value).where(meta.c.key == LEASE_KEY).with_for_update()
        ).scalar_one_or_none()
        if raw is None:
            conn.execute(insert(meta).values(key=LEASE_KEY, value=value))
            return True
        current = json.loads(raw)
        if current.get("holder") != holder and int(current.get("expires", 0)) > now_us:
            return False
        conn.execute(update(meta).where(meta.c.key == LEASE_KEY).values(value=value))
        return True


def release_lease(db: Database, holder: str) -> None:
    """Give the lease up (a server stopping), so another server takes over without waiting."""
    with db.write() as conn:
        raw = conn.execute(
            select(meta.c.value).where(meta.c.key == LEASE_KEY).with_for_update()
        ).scalar_one_or_none()
        if raw is not None and json.loads(raw).get("holder") == holder:
            conn.execute(delete(meta).where(meta.c.key == LEASE_KEY))


# ---- pool state ------------------------------------------------------------------------------------


def read_states(db: Database, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each pool's stored state by name (all of them when ``names`` is None)."""
    with db.read() as conn:
        stmt = select(meta.c.key, meta.c.value).where(meta.c.key.startswith(_STATE_PREFIX))
        if names is not None:
            stmt = select(meta.c.key, meta.c.value).where(meta.c.key.in_([_STATE_PREFIX + n for n in names]))
        rows = conn.execute(stmt).all()
    return {row.key[len(_STATE_PREFIX) :]: json.loads(row.value) for row in rows}


@retry_on_conflict
def save_state(db: Database, name: str, state: Mapping[str, Any]) -> None:
    key = _STATE_PREFIX + name
    value = json.dumps(state)
    with db.write() as conn:
        done = conn.execute(update(meta).where(meta.c.key == key).values(value=value))
        if not done.rowcount:
            conn.execute(insert(meta).values(key=key, value=value))


def forget_states(db: Database, keep: Iterable[str]) -> None:
    """Drop the state of pools no longer configured."""
    names = [_STATE_PREFIX + n for n in keep]
    with db.write() as conn:
        conn.execute(delete(meta).where(meta.c.key.startswith(_STATE_PREFIX), meta.c.key.not_in(names)))


# ---- what the queue asks and what the nodes do -----------------------------------------------------


def demand(db: Database, group: str) -> int:
    """Workunits the group's nodes are needed for: queued or preempted ones the group may run (no
    clientgroups, or a list naming it), plus those its clients hold."""
    waiting = (WorkunitState.QUEUED.value, WorkunitState.PREEMPTED.value)
    with db.read() as conn:
        queued = conn.execute(
            select(func.count())
            .select_from(workunits)
            .where(
                workunits.c.state.in_(waiting),
                or_(workunits.c.clientgroups == "", comma_list_contains(workunits.c.clientgroups, group)),
            )
        ).scalar_one()
        running = conn.execute(
            select(func.count())
            .select_from(workunits.join(clients, clients.c.id == workunits.c.client_id))
            .where(workunits.c.state == WorkunitState.CHECKOUT.value, clients.c.group_name == group)
        ).scalar_one()
    return int(queued) + int(running)


def node_activity(db: Database, instance_ids: Iterable[str]) -> dict[str, NodeActivity]:
    """The nodes whose reported EC2 instance id is one of ``instance_ids``, by instance id. An
    instance whose worker has not reported yet (still booting) is absent."""
    wanted = set(instance_ids)
    if not wanted:
        return {}
    found: dict[str, NodeActivity] = {}
    with db.read() as conn:
        by_node: dict[str, str] = {}
        for row in conn.execute(select(nodes.c.id, nodes.c.info)):
            instance = (row.info or {}).get("instance") or {}
            instance_id = instance.get("instanceId") if isinstance(instance, dict) else None
            if instance_id in wanted:
                by_node[row.id] = str(instance_id)
        if not by_node:
            return {}
        held = (
            select(func.count())
            .select_from(workunits)
            .where(workunits.c.client_id == clients.c.id, workunits.c.state == WorkunitState.CHECKOUT.value)
            .scalar_subquery()
        )
        rows = conn.execute(
            select(
                clients.c.node_id,
                clients.c.regtime,
                clients.c.last_checkout,
                clients.c.last_report,
                clients.c.suspended,
                clients.c.suspend_reason,
                held.label("held"),
            ).where(clients.c.node_id.in_(list(by_node)), clients.c.deleted_at == 0)
        ).all()
    for node_id, instance_id in by_node.items():
        mine = [r for r in rows if r.node_id == node_id]
        if not mine:
            continue
        found[instance_id] = NodeActivity(
            node_id=node_id,
            instance_id=instance_id,
            busy=any(r.held for r in mine),
            last_active=max(max(r.regtime, r.last_checkout, r.last_report) for r in mine),
            drained=all(r.suspended and r.suspend_reason == DRAIN_REASON for r in mine),
        )
    return found


@retry_on_conflict
def drain_node(db: Database, node_id: str, idle_since_us: int) -> bool:
    """Stop a node's clients taking work, if none holds a lease nor was active after
    ``idle_since_us``: True when drained. Nothing is re-queued (there is nothing to re-queue)."""
    with db.write() as conn:
        rows = _node_clients(conn, node_id)
        if not rows or any(max(r.last_checkout, r.last_report) > idle_since_us for r in rows):
            return False
        if _holds_work(conn, [r.id for r in rows]):
            return False
        for row in rows:
            if not row.suspended:
                transitions.suspend_client(conn, row.id, DRAIN_REASON)
        return True


@retry_on_conflict
def undrain_node(db: Database, node_id: str) -> int:
    """Let a drained node take work again (the queue grew before it was terminated)."""
    with db.write() as conn:
        count = 0
        for row in _node_clients(conn, node_id):
            if (
                row.suspended
                and row.suspend_reason == DRAIN_REASON
                and transitions.resume_client(conn, row.id)
            ):
                count += 1
        return count


def node_busy(db: Database, node_id: str) -> bool:
    """Whether a client of the node holds a lease (checked again just before terminating it)."""
    with db.read() as conn:
        ids = [r.id for r in _node_clients(conn, node_id, lock=False)]
        return _holds_work(conn, ids)


def _node_clients(conn: Connection, node_id: str, *, lock: bool = True) -> list[Any]:
    stmt = select(clients).where(clients.c.node_id == node_id, clients.c.deleted_at == 0)
    if lock:
        stmt = stmt.with_for_update()
    return list(conn.execute(stmt).all())


def _holds_work(conn: Connection, client_ids: list[str]) -> bool:
    if not client_ids:
        return False
    held = conn.execute(
        select(workunits.c.id)
        .where(and_(workunits.c.client_id.in_(client_ids), workunits.c.state == WorkunitState.CHECKOUT.value))
        .limit(1)
    ).first()
    return held is not None


__all__ = [
    "DRAIN_REASON",
    "NodeActivity",
    "acquire_lease",
    "demand",
    "drain_node",
    "forget_states",
    "node_activity",
    "node_busy",
    "read_states",
    "release_lease",
    "save_state",
    "undrain_node",
]
