"""The scaler: each pool's size follows its client group's queue (issue 21 item 4).

One step, on the one server that holds the lease (``store.pools.acquire_lease``), for each pool:

* **target** = ceil((queued + running workunits of the group) / slotsPerNode), clamped to
  [minNodes, maxNodes];
* **scale out** when the target is above the group's desired capacity: ``SetDesiredCapacity``;
* **scale in** in two steps, so a node that runs work is never terminated: nodes idle for
  ``scaleInIdleFor`` (no lease, no checkout or report) are *drained* (their clients are suspended:
  they take no more work); at a later step each drained node that still holds no lease is terminated
  with ``ShouldDecrementDesiredCapacity``. A node that took work in the instant it was drained keeps
  it and is terminated once it is done; a drained node is taken back into service if the queue grows
  first. The scaler never lowers the desired capacity itself (the group would pick which node dies).
* changes of size (scale-out, a drain) are at least ``cooldown`` apart.

Every change is a decision (time, from, to, action, reason) kept in the pool's state, which the API,
the CLI and ``/metrics`` show. The step takes the clock as a parameter, so tests drive it directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from perdure.config.model import ServerConfig
from perdure.pool.aws import Ec2Pool, GroupView, fingerprint, group_name, make_clients
from perdure.poolconfig import PoolConfig, PoolSpec
from perdure.store import pools as store
from perdure.store.database import Database
from perdure.timeutil import now_us

log = logging.getLogger("perdure.pool")

#: Decisions kept per pool (the newest).
KEEP_DECISIONS = 50
#: The lease outlives this many scaler intervals, so a server that died is replaced soon.
LEASE_INTERVALS = 3


class Cloud(Protocol):
    def ensure(self, server: str, spec: PoolSpec, desired: int) -> None: ...
    def describe(self, spec: PoolSpec) -> GroupView | None: ...
    def set_desired(self, spec: PoolSpec, desired: int) -> None: ...
    def terminate(self, instance_id: str) -> None: ...


CloudFactory = Callable[[PoolConfig, PoolSpec], Cloud]


def ec2_clouds() -> CloudFactory:
    """Real EC2 through boto3, one client pair per (region, endpoint)."""
    made: dict[tuple[str, str], Cloud] = {}

    def cloud_for(config: PoolConfig, spec: PoolSpec) -> Cloud:
        key = (spec.region or config.region, config.endpoint)
        if key not in made:
            made[key] = Ec2Pool(*make_clients(*key))
        return made[key]

    return cloud_for


@dataclass(frozen=True)
class Decision:
    time: int
    action: str
    before: int
    after: int
    reason: str

    def document(self) -> dict[str, Any]:
        return {"time": self.time, "action": self.action, "from": self.before, "to": self.after,
                "reason": self.reason}  # fmt: skip


def target_size(spec: PoolSpec, demand: int) -> int:
    return max(spec.minNodes, min(spec.maxNodes, math.ceil(demand / spec.slotsPerNode)))


def server_url(config: ServerConfig) -> str:
    return (config.pool.serverURL or config.perdure.externalURL).rstrip("/")


class Scaler:
    def __init__(
        self,
        db: Database,
        holder: str,
        clouds: CloudFactory | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.db = db
        self.holder = holder
        self.clouds = clouds or ec2_clouds()
        self.clock = clock
        self._last_step = 0
        #: This process has held the lease (so it has one to give back when it stops).
        self.acted = False

    def due(self, config: ServerConfig) -> bool:
        """Whether ``pool.interval`` has passed since this process's last step."""
        return self.clock() - self._last_step >= config.pool.interval * 1_000_000

    def step(self, config: ServerConfig) -> dict[str, list[Decision]] | None:
        """One step for every pool; None when another server holds the lease (it acts instead)."""
        now = self.clock()
        self._last_step = now
        ttl = int(max(config.pool.interval * LEASE_INTERVALS, 10.0) * 1_000_000)
        if not store.acquire_lease(self.db, self.holder, now, ttl):
            return None
        self.acted = True
        store.forget_states(self.db, [p.name for p in config.pool.pools])
        states = store.read_states(self.db, [p.name for p in config.pool.pools])
        made: dict[str, list[Decision]] = {}
        for spec in config.pool.pools:
            state = dict(states.get(spec.name) or {})
            try:
                made[spec.name] = self._step_pool(config, spec, state, now)
                state["error"] = ""
            except Exception as exc:
                log.exception("pool %s: scaling step failed; tried again next step", spec.name)
                made[spec.name] = []
                state["error"] = f"{type(exc).__name__}: {exc}"[:500]
            state["updated"] = now
            store.save_state(self.db, spec.name, state)
        return made

    def release(self) -> None:
        """Give the lease up (this server is stopping)."""
        store.release_lease(self.db, self.holder)
        self.acted = False

    def _step_pool(
        self, config: ServerConfig, spec: PoolSpec, state: dict[str, Any], now: int
    ) -> list[Decision]:
        decisions: list[Decision] = []

        def decide(action: str, before: int, after: int, reason: str) -> None:
            decision = Decision(now, action, before, after, reason)
            log.info("pool %s: %s %d -> %d: %s", spec.name, action, before, after, reason)
            decisions.append(decision)
            history = [*state.get("decisions", []), decision.document()]
            state["decisions"] = history[-KEEP_DECISIONS:]
            counts = dict(state.get("counts", {}))
            counts[action] = int(counts.get(action, 0)) + 1
            state["counts"] = counts

        server = server_url(config)
        if not server:
            raise ValueError("set pool.serverURL (or perdure.externalURL): new nodes must reach the server")
        cloud = self.clouds(config.pool, spec)
        demand = store.demand(self.db, spec.clientgroup)
        target = target_size(spec, demand)
        state.update(
            group=group_name(spec), demand=demand, target=target, min=spec.minNodes, max=spec.maxNodes
        )
        view = cloud.describe(spec)
        wanted = fingerprint(server, spec)
        if view is None or state.get("fingerprint") != wanted:
            cloud.ensure(server, spec, target)
            created = view is None
            view = cloud.describe(spec)
            if view is None:
                raise RuntimeError(f"Auto Scaling group {group_name(spec)} not found after creating it")
            state["fingerprint"] = wanted
            if created:
                decide(
                    "create", 0, view.desired, f"group {group_name(spec)} created for {demand} workunit(s)"
                )
                state["lastScaled"] = now
        desired = view.desired
        live = view.instances
        activity = store.node_activity(self.db, live)
        draining: dict[str, int] = {
            i: int(t) for i, t in dict(state.get("draining", {})).items() if i in live
        }
        for instance_id, found in activity.items():  # drained by a step whose state was lost
            if found.drained and instance_id not in draining:
                draining[instance_id] = now
        cooled = now - int(state.get("lastScaled", 0)) >= spec.cooldown * 1_000_000
        per_node = f"{demand} workunit(s) / {spec.slotsPerNode} slot(s) per node"

        # The queue grew while nodes were draining: take them back first, they are up already.
        serving = desired - len(draining)
        if target > serving and draining:
            back = sorted(draining, key=lambda i: draining[i])[: target - serving]
            for instance_id in back:
                taken = activity.get(instance_id)
                if taken is not None:
                    store.undrain_node(self.db, taken.node_id)
                del draining[instance_id]
            decide("undrain", serving, serving + len(back), f"{per_node}; back in service: {', '.join(back)}")

        # Drained nodes that hold no lease are terminated, one call each.
        for instance_id, since in sorted(draining.items(), key=lambda item: item[1]):
            node = activity.get(instance_id)
            if node is not None and not node.drained:
                del draining[instance_id]  # resumed by hand: it serves again, and may take work
                continue
            if since >= now or (node is not None and store.node_busy(self.db, node.node_id)):
                continue  # drained in this step, or took work in the instant it was drained: later
            cloud.terminate(instance_id)
            del draining[instance_id]
            decide("terminate", desired, desired - 1, f"{instance_id} drained and idle")
            desired -= 1

        serving = desired - len(draining)
        if target > desired and cooled:
            cloud.set_desired(spec, target)
            decide("scale-out", desired, target, per_node)
            desired = target
            state["lastScaled"] = now
        elif target < serving and cooled:
            cutoff = now - int(spec.scaleInIdleFor * 1_000_000)
            idle = sorted(
                (
                    n
                    for i, n in activity.items()
                    if i not in draining and not n.busy and n.last_active <= cutoff
                ),
                key=lambda n: (n.last_active, n.instance_id),
            )
            chosen = [
                n.instance_id
                for n in idle[: serving - target]
                if store.drain_node(self.db, n.node_id, cutoff)
            ]
            for instance_id in chosen:
                draining[instance_id] = now
            if chosen:
                decide("drain", serving, serving - len(chosen), f"{per_node}; idle: {', '.join(chosen)}")
                state["lastScaled"] = now
        state.update(desired=desired, actual=len(live), draining=draining)
        return decisions


__all__ = ["Cloud", "CloudFactory", "Decision", "Scaler", "ec2_clouds", "server_url", "target_size"]
