"""The worker pools on ``/metrics``: each pool's desired, actual and target node counts and its
scaling decisions by action, read from the state the scaler stores, so every server shows the same
whichever one holds the scaler's lease."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from perdure.store.database import Database
from perdure.store.pools import read_states


class PoolCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        states = read_states(self.db)
        gauges = {
            "desired": GaugeMetricFamily(
                "perdure_pool_desired_nodes",
                "The pool's Auto Scaling group's desired capacity",
                labels=["pool"],
            ),
            "actual": GaugeMetricFamily(
                "perdure_pool_actual_nodes", "The pool's instances pending or in service", labels=["pool"]
            ),
            "target": GaugeMetricFamily(
                "perdure_pool_target_nodes",
                "The nodes the pool's queue asks for (within min and max)",
                labels=["pool"],
            ),
        }
        decisions = CounterMetricFamily(
            "perdure_pool_decisions",
            "Scaling decisions the scaler made, by pool and action",
            labels=["pool", "action"],
        )
        for name, state in sorted(states.items()):
            for key, family in gauges.items():
                if isinstance(state.get(key), int):
                    family.add_metric([name], state[key])
            for action, count in sorted(dict(state.get("counts", {})).items()):
                decisions.add_metric([name, action], int(count))
        yield from gauges.values()
        yield decisions
