"""Worker pools on EC2 that follow the queue (issue 21 item 4), against moto's EC2 and Auto Scaling
APIs in server mode on loopback (started here; dummy credentials, instance metadata off: nothing
leaves the machine), on both databases.

The scaler's step is driven directly with a clock of the test's own (real time plus an offset the
test advances), so cooldowns and idle times pass without sleeping; one test runs a real server whose
sweep does the same on its own.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient

from perdure.pool.scaler import Scaler
from perdure.store import transitions
from perdure.store.database import Database
from perdure.store.pools import DRAIN_REASON, acquire_lease
from perdure.timeutil import now_us
from tests.integration.drive import checkout, report, submit

# One moto server fixture and fake AWS environment for every AWS test (S3 there, EC2 and Auto Scaling here).
from tests.integration.test_s3_store import AWS_ENV, moto_endpoint
from tests.jobs import script, task
from tests.support import ServerProcess, wait_for

__all__ = ["moto_endpoint"]  # the module's moto server (a fixture)

GROUP = "spot"
SECOND = 1_000_000


@pytest.fixture
def aws(moto_endpoint: str) -> dict[str, Any]:
    """A fresh moto account with a VPC, a subnet and an image to launch."""
    httpx.post(f"{moto_endpoint}/moto-api/reset").raise_for_status()
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    autoscaling = boto3.client("autoscaling", endpoint_url=moto_endpoint, region_name="us-east-1")
    return {"endpoint": moto_endpoint, "subnet": subnet, "ami": ami, "ec2": ec2, "autoscaling": autoscaling}


def pool(aws: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "name": "spot",
        "clientgroup": GROUP,
        "instanceTypes": ["m5.large", "m6i.large", "r5.large"],
        "subnets": [aws["subnet"]],
        "ami": aws["ami"],
        "slotsPerNode": 2,
        "minNodes": 0,
        "maxNodes": 3,
        "onDemandBase": 1,
        "cooldown": "1m",
        "scaleInIdleFor": "2m",
        "workpath": "/srv/perdure",
        **overrides,
    }


def pool_settings(aws: dict[str, Any], **overrides: Any) -> dict[str, str]:
    return {
        "pool.endpoint": aws["endpoint"],
        "pool.region": "us-east-1",
        "pool.serverURL": "http://10.0.0.5:8001",  # only written into the user data, never contacted
        "pool.pools": json.dumps([pool(aws, **overrides)]),
    }


def configure(client: TestClient, kv: dict[str, str]) -> None:
    response = client.put("/api/v1/configKV", json={"kvMap": kv})
    assert response.status_code == 200, response.text


def group(aws: dict[str, Any]) -> dict[str, Any]:
    found = aws["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=["perdure-spot"])
    groups: list[dict[str, Any]] = found["AutoScalingGroups"]
    assert len(groups) == 1
    return groups[0]


def desired(aws: dict[str, Any]) -> int | None:
    found = aws["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=["perdure-spot"])
    groups = found["AutoScalingGroups"]
    return int(groups[0]["DesiredCapacity"]) if groups else None


def live_instances(aws: dict[str, Any]) -> list[str]:
    return sorted(i["InstanceId"] for i in group(aws)["Instances"] if i["LifecycleState"] == "InService")


def start_node(client: TestClient, node: str, instance_id: str, slots: int = 2) -> list[str]:
    """What a worker on that instance does: report its node (with the EC2 instance id) and register
    one client per slot."""
    info = {"hostName": node, "cloud": "aws", "instance": {"instanceId": instance_id}}
    response = client.put(f"/api/v1/nodes/{node}", json={"info": info, "files": [], "group": GROUP})
    assert response.status_code == 200, response.text
    ids = [f"{node}-slot{n}" for n in range(slots)]
    for client_id in ids:
        profile = {"id": client_id, "group": GROUP, "apps": ["*"], "node_id": node}
        files = {"profile": ("p.json", json.dumps(profile), "application/json")}
        assert client.post("/client", files=files).status_code == 200
    return ids


class Clock:
    """Real time plus an offset the test moves forward (the store stamps rows with real time)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_us() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += int(seconds * SECOND)


def client_document(client: TestClient, client_id: str) -> dict[str, Any]:
    document: dict[str, Any] = client.get(f"/client/{client_id}").json()["data"]
    return document


def test_the_pool_follows_a_queue_that_grows_and_drains(client: TestClient, aws: dict[str, Any]) -> None:
    configure(client, pool_settings(aws))
    config = client.app.state.ctx.config  # type: ignore[attr-defined]
    clock = Clock()
    scaler = Scaler(client.app.state.ctx.db, "server-a", clock=clock)  # type: ignore[attr-defined]

    # No work: the group is made, empty, with the mixed spot policy and the installer as user data.
    assert scaler.step(config.effective) == {"spot": [scaler_decision("create", 0, 0)]}
    made = group(aws)
    assert (made["MinSize"], made["MaxSize"], made["DesiredCapacity"]) == (0, 3, 0)
    assert made["CapacityRebalance"] is True
    policy = made["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "capacity-optimized"
    assert policy["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == [
        "m5.large",
        "m6i.large",
        "r5.large",
    ]
    version = aws["ec2"].describe_launch_template_versions(LaunchTemplateName="perdure-spot")
    script_text = base64.b64decode(
        version["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
    ).decode()
    assert "http://10.0.0.5:8001/api/v1/scripts/install-worker?" in script_text
    assert "group=spot&slots=2&workpath=%2Fsrv%2Fperdure" in script_text

    # Five workunits for the group (and one for another group, which does not count): 3 nodes.
    submit(client, script(*(task(str(n)) for n in range(5)), clientgroups=GROUP))
    submit(client, script(task("x"), clientgroups="elsewhere"))
    clock.advance(61)
    assert scaler.step(config.effective) == {"spot": [scaler_decision("scale-out", 0, 3)]}
    instances = live_instances(aws)
    assert len(instances) == 3

    # The nodes start; node 0 takes two workunits and keeps them, nodes 1 and 2 run the others.
    slots = {n: start_node(client, f"node{n}", instances[n]) for n in range(3)}
    held = [checkout(client, slots[0][0]), checkout(client, slots[0][1])]
    for client_id in (slots[1][0], slots[1][1], slots[2][0]):
        work = checkout(client, client_id)
        assert work is not None
        report(client, work["id"], client_id)
    assert all(held) and checkout(client, slots[2][1]) is None

    # Two running workunits want one node. Within the cooldown nothing moves; after it, nodes 1 and
    # 2 have been idle long enough and are drained (no more work for them); busy node 0 is not.
    clock.advance(30)
    assert scaler.step(config.effective) == {"spot": []}
    clock.advance(200)
    (drain,) = scaler.step(config.effective)["spot"]  # type: ignore[index]
    assert (drain.action, drain.before, drain.after) == ("drain", 3, 1)
    assert sorted(drain.reason.split("idle: ")[1].split(", ")) == sorted(instances[1:])
    assert group(aws)["DesiredCapacity"] == 3 and len(live_instances(aws)) == 3  # nothing terminated yet
    assert [client_document(client, c)["suspended"] for c in slots[1] + slots[2]] == [True] * 4
    assert [client_document(client, c)["suspended"] for c in slots[0]] == [False, False]
    submit(client, script(task("late"), clientgroups="elsewhere-too"))
    refused = client.get(f"/work?client={slots[1][0]}")  # a drained slot gets no work
    assert refused.status_code != 200 and "suspended" in refused.text.lower(), refused.text

    # The next step terminates the drained, idle instances, and only those.
    clock.advance(1)
    decisions = scaler.step(config.effective)["spot"]  # type: ignore[index]
    assert [(d.action, d.before, d.after) for d in decisions] == [("terminate", 3, 2), ("terminate", 2, 1)]
    assert live_instances(aws) == [instances[0]]
    assert group(aws)["DesiredCapacity"] == 1

    # Node 0 finishes; with an empty queue it is drained and then terminated: the pool is empty.
    for work, client_id in zip(held, slots[0], strict=True):
        report(client, work["id"], client_id)  # type: ignore[index]
    clock.advance(200)
    assert [d.action for d in scaler.step(config.effective)["spot"]] == ["drain"]  # type: ignore[index]
    clock.advance(1)
    assert [d.action for d in scaler.step(config.effective)["spot"]] == ["terminate"]  # type: ignore[index]
    assert live_instances(aws) == [] and group(aws)["DesiredCapacity"] == 0

    # What the API shows: sizes and the decisions, newest first.
    shown = client.get("/api/v1/pools").json()
    assert [(p["name"], p["desiredNodes"], p["actualNodes"], p["demand"]) for p in shown] == [
        ("spot", 0, 1, 0)
    ]
    actions = [d["action"] for d in client.get("/api/v1/pools/spot").json()["decisions"]]
    assert actions == ["terminate", "drain", "terminate", "terminate", "drain", "scale-out", "create"]
    assert client.get("/api/v1/pools/nope").status_code == 404
    metrics = client.get("/metrics").text
    assert 'perdure_pool_desired_nodes{pool="spot"} 0.0' in metrics
    assert 'perdure_pool_decisions_total{action="terminate",pool="spot"} 3.0' in metrics


def scaler_decision(action: str, before: int, after: int) -> Any:
    class Matches:
        def __eq__(self, other: object) -> bool:
            return (getattr(other, "action", None), other.before, other.after) == (action, before, after)  # type: ignore[attr-defined]

        def __repr__(self) -> str:
            return f"<{action} {before} -> {after}>"

    return Matches()


@dataclass
class DrainedNode:
    """A one-slot pool whose only node has run one workunit and been drained once idle."""

    client: TestClient
    scaler: Scaler
    clock: Clock
    instance: str
    slot: str

    def step(self) -> list[str]:
        """A second later, what the scaler decides for the pool's nodes."""
        self.clock.advance(1)
        config = self.client.app.state.ctx.config  # type: ignore[attr-defined]
        return [d.action for d in self.scaler.step(config.effective)["spot"]]  # type: ignore[index]


def drained_node(client: TestClient, aws: dict[str, Any]) -> DrainedNode:
    configure(client, pool_settings(aws, minNodes=0, cooldown="0s", scaleInIdleFor="0s", slotsPerNode=1))
    config = client.app.state.ctx.config  # type: ignore[attr-defined]
    clock = Clock()
    scaler = Scaler(client.app.state.ctx.db, "server-a", clock=clock)  # type: ignore[attr-defined]
    submit(client, script(task("0"), clientgroups=GROUP))
    scaler.step(config.effective)
    (instance,) = live_instances(aws)
    (slot,) = start_node(client, "node0", instance, slots=1)
    work = checkout(client, slot)
    assert work is not None
    report(client, work["id"], slot)
    node = DrainedNode(client, scaler, clock, instance, slot)
    assert node.step() == ["drain"]
    return node


def test_a_drained_node_returns_to_service_when_the_queue_grows(
    client: TestClient, aws: dict[str, Any]
) -> None:
    node = drained_node(client, aws)
    assert client_document(client, node.slot)["suspended"] is True

    submit(client, script(task("1"), clientgroups=GROUP))  # before the drained node is terminated
    assert node.step() == ["undrain"]
    assert client_document(client, node.slot)["suspended"] is False
    assert live_instances(aws) == [node.instance] and checkout(client, node.slot) is not None


def test_a_drained_node_that_took_work_is_not_terminated(client: TestClient, aws: dict[str, Any]) -> None:
    """The race the two-step scale-in is for: a checkout that read the client before the drain
    committed leases it work anyway. That node is not terminated: the work it holds counts, so it
    is taken back into service; once idle again it is drained, then terminated."""
    node = drained_node(client, aws)

    # The lease that slipped in: as if a checkout had read the client just before the drain.
    raced = submit(client, script(task("r"), clientgroups=GROUP))
    assert client.put(f"/client/{node.slot}?resume").status_code == 200
    work = checkout(client, node.slot)
    assert work is not None and work["jobid"] == raced["id"]
    with client.app.state.ctx.db.write() as conn:  # type: ignore[attr-defined]
        assert transitions.suspend_client(conn, node.slot, DRAIN_REASON)
    assert node.step() == ["undrain"]
    assert live_instances(aws) == [node.instance]
    report(client, work["id"], node.slot)
    for action in ("drain", "terminate"):
        assert node.step() == [action]
    assert live_instances(aws) == []


def test_a_node_resumed_by_hand_is_not_terminated(client: TestClient, aws: dict[str, Any]) -> None:
    """An admin who resumes a drained node's clients takes it back: the scaler does not terminate
    it (it may take work again) until it has drained it again."""
    node = drained_node(client, aws)
    assert client.put(f"/client/{node.slot}?resume").status_code == 200
    assert node.step() == ["drain"]
    assert live_instances(aws) == [node.instance]


def test_bad_pool_settings_are_refused(client: TestClient, aws: dict[str, Any]) -> None:
    before = client.get("/api/v1/config").json()
    good = pool(aws)
    cases: list[tuple[dict[str, str], str]] = [
        ({"pool.pools": json.dumps([{**good, "maxNodes": 5000}])}, "pool.pools.0.maxNodes"),
        ({"pool.pools": json.dumps([{**good, "minNodes": 4, "maxNodes": 2}])}, "pool.pools.0"),
        ({"pool.pools": json.dumps([{**good, "subnets": ["subnet-nothex"]}])}, "pool.pools.0.subnets.0"),
        ({"pool.pools": json.dumps([{**good, "instanceTypes": []}])}, "pool.pools.0.instanceTypes"),
        ({"pool.pools": json.dumps([{**good, "slotsPerNode": 0}])}, "pool.pools.0.slotsPerNode"),
        ({"pool.pools": json.dumps([{**good, "cooldown": "soon"}])}, "pool.pools.0.cooldown"),
        ({"pool.pools": json.dumps([{**good, "workpath": "/srv/../etc"}])}, "pool.pools.0.workpath"),
        ({"pool.pools": json.dumps([{**good, "secretKey": "x"}])}, "pool.pools.0.secretKey"),
        ({"pool.pools": json.dumps([good, good])}, "pool.pools"),
        ({"pool.pools": "[{"}, "pool.pools"),
        ({"pool.pools": '{"name": "spot"}'}, "pool.pools"),
        ({"pool.endpoint": "http://key:secret@127.0.0.1:5000"}, "pool.endpoint"),
        ({"pool.interval": "0s"}, "pool.interval"),
        ({"job.ebsPerJob": "true"}, "job.ebsPerJob"),
    ]
    for kv, key in cases:
        response = client.put("/api/v1/configKV", json={"kvMap": kv})
        body = response.json()
        assert (response.status_code, body.get("errorCode")) == (422, 1003), (kv, body)
        assert set(body) == {"statusCode", "errorCode", "message", "fields"}
        assert key in body["fields"], (kv, body["fields"])
    assert "not implemented" in body["fields"]["job.ebsPerJob"]
    assert client.get("/api/v1/config").json() == before


def test_one_scaler_at_a_time(client: TestClient, aws: dict[str, Any]) -> None:
    """The lease is exclusive: of two servers sharing the database only one steps; the other takes
    over once the lease runs out; and of many racing for it exactly one wins."""
    configure(client, pool_settings(aws))
    db = client.app.state.ctx.db  # type: ignore[attr-defined]
    config = client.app.state.ctx.config.effective  # type: ignore[attr-defined]
    clock = Clock()
    first, second = Scaler(db, "server-a", clock=clock), Scaler(db, "server-b", clock=clock)
    assert first.step(config) is not None
    assert second.step(config) is None
    clock.advance(config.pool.interval * 3 + 1)  # server-a stopped stepping
    assert second.step(config) is not None
    assert first.step(config) is None
    second.release()  # a server stopping gives the lease up: the other acts at once
    assert first.step(config) is not None
    assert len(aws["autoscaling"].describe_auto_scaling_groups()["AutoScalingGroups"]) == 1

    won: list[str] = []
    start = threading.Barrier(6)
    later = clock() + 3600 * SECOND

    def race(name: str) -> None:
        start.wait()
        if acquire_lease(db, name, later, 60 * SECOND):
            won.append(name)

    threads = [threading.Thread(target=race, args=(f"racer{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_a_server_scales_its_pool_and_shows_it(tmp_path: Path, db_url: str, aws: dict[str, Any]) -> None:
    """A real server: its sweep sizes the pool from the queue; the API, the CLI and /metrics show it."""
    env = {
        **AWS_ENV,
        "PERDURE_CFG_pool__enabled": "true",
        "PERDURE_CFG_pool__interval": "1s",
        **{f"PERDURE_CFG_{k.replace('.', '__')}": v for k, v in pool_settings(aws, cooldown="0s").items()},
    }
    server = ServerProcess(tmp_path / "server", db_url, env=env).start()
    try:
        job = script(*(task(str(n)) for n in range(3)), clientgroups=GROUP)
        files = {"upload": ("job.json", json.dumps(job), "application/json")}
        assert httpx.post(f"{server.url}/job", files=files).status_code == 200
        wait_for(lambda: desired(aws) == 2, timeout=30, what="the pool to scale out", context=server.log)
        shown = httpx.get(f"{server.url}/api/v1/pools").json()
        assert (shown[0]["demand"], shown[0]["targetNodes"], shown[0]["desiredNodes"]) == (3, 2, 2)
        # "create" when the first step saw the job already, else "create" at 0 then "scale-out"
        assert (shown[0]["decisions"][0]["action"], shown[0]["decisions"][0]["to"]) in {
            ("create", 2),
            ("scale-out", 2),
        }
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'perdure_pool_desired_nodes{pool="spot"} 2.0' in metrics
        from typer.testing import CliRunner

        from perdure.cli import app

        listed = CliRunner().invoke(app, ["pools", "--server", server.url])
        assert listed.exit_code == 0, listed.output
        assert "spot" in listed.output and "0 -> 2" in listed.output
        detail = CliRunner().invoke(app, ["pool", "show", "spot", "--server", server.url])
        assert detail.exit_code == 0 and "desired 2" in detail.output, detail.output
    finally:
        server.stop()
    # It gave the scaler's lease up as it stopped: another server may act at once.
    successor = Database(db_url)
    try:
        assert acquire_lease(successor, "successor", now_us(), 60 * SECOND)
    finally:
        successor.dispose()
