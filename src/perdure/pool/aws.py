"""A pool on EC2: its launch template and Auto Scaling group, through boto3 (issue 21 item 4).

Credentials come from the standard AWS chain and are never part of the configuration; ``endpoint``
points both clients elsewhere (a test double such as moto), as ``store.s3.endpoint`` does for S3.

The group is made so that only the scaler ever removes a node: new instances are protected from
scale-in, and the scaler never lowers the desired capacity itself; it terminates one drained instance
at a time with ``TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=True)``. Capacity
rebalancing is on, so the group starts a replacement when EC2 signals that a spot instance is at risk
(the worker on the old one hands its work over as on any interruption notice).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from perdure.poolconfig import PoolSpec

#: The tag that names a pool on its group and (propagated) on its instances.
POOL_TAG = "perdure:pool"
#: Instances in these lifecycle states count as the pool's nodes.
LIVE_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed", "InService"})


def group_name(spec: PoolSpec) -> str:
    return f"perdure-{spec.name}"


def make_clients(region: str = "", endpoint: str = "", connect_timeout: float = 10.0) -> tuple[Any, Any]:
    """(autoscaling, ec2) boto3 clients from the standard credential chain."""
    import boto3
    from botocore.config import Config as BotoConfig

    # Short timeouts and few tries: the step runs in the server's sweep, and is tried again next interval.
    options = BotoConfig(
        connect_timeout=connect_timeout, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}
    )
    session = boto3.session.Session()
    kwargs: dict[str, Any] = {
        "region_name": region or None,
        "endpoint_url": endpoint or None,
        "config": options,
    }
    return session.client("autoscaling", **kwargs), session.client("ec2", **kwargs)


def install_url(server: str, spec: PoolSpec) -> str:
    """The server's installer for one of the pool's nodes: its group, slots and work path."""
    query = urlencode(
        {
            "server": server,
            "group": spec.clientgroup,
            "slots": str(spec.slotsPerNode),
            "workpath": spec.workpath,
        }
    )
    return f"{server.rstrip('/')}/api/v1/scripts/install-worker?{query}"


def user_data(server: str, spec: PoolSpec) -> str:
    """The node's boot script: fetch the server's installer and run it. A clientgroup token, when
    the pool has one, is read on the node from SSM (the node's instance profile may read it)."""
    lines = ["#!/bin/sh", f"# Perdure worker pool {spec.name}: install and start a worker.", "set -eu"]
    if spec.tokenParameter:
        lines.append(
            'PERDURE_TOKEN="$(aws ssm get-parameter --with-decryption --query Parameter.Value --output text'
            f' --name {shlex.quote(spec.tokenParameter)})"'
        )
        lines.append("export PERDURE_TOKEN")
    lines.append(f"curl -fsS --retry 30 --retry-connrefused {shlex.quote(install_url(server, spec))} | sh")
    return "\n".join(lines) + "\n"


def launch_template_data(server: str, spec: PoolSpec) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ImageId": spec.ami,
        "UserData": base64.b64encode(user_data(server, spec).encode()).decode(),
        # IMDSv2 only: the worker asks the metadata service for spot notices with a session token.
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": POOL_TAG, "Value": spec.name}]},
        ],
    }
    if spec.keyName:
        data["KeyName"] = spec.keyName
    if spec.iamInstanceProfile:
        key = "Arn" if spec.iamInstanceProfile.startswith("arn:") else "Name"
        data["IamInstanceProfile"] = {key: spec.iamInstanceProfile}
    if spec.securityGroups:
        data["SecurityGroupIds"] = list(spec.securityGroups)
    return data


def mixed_instances_policy(spec: PoolSpec) -> dict[str, Any]:
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": group_name(spec), "Version": "$Latest"},
            "Overrides": [{"InstanceType": t} for t in spec.instanceTypes],
        },
        "InstancesDistribution": {
            "OnDemandBaseCapacity": spec.onDemandBase,
            "OnDemandPercentageAboveBaseCapacity": spec.onDemandPercentAboveBase,
            "SpotAllocationStrategy": "capacity-optimized",
        },
    }


def fingerprint(server: str, spec: PoolSpec) -> str:
    """Changes when anything the template or the group is made from changes."""
    text = json.dumps([launch_template_data(server, spec), mixed_instances_policy(spec), spec.subnets,
                       spec.minNodes, spec.maxNodes], sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroupView:
    desired: int
    min_size: int
    max_size: int
    #: Live instance id -> lifecycle state.
    instances: dict[str, str]


class Ec2Pool:
    """One region's Auto Scaling and EC2 APIs, as the scaler uses them."""

    def __init__(self, autoscaling: Any, ec2: Any) -> None:
        self.autoscaling = autoscaling
        self.ec2 = ec2

    def ensure(self, server: str, spec: PoolSpec, desired: int) -> None:
        """Create the pool's launch template and group, or bring them up to date with ``spec``
        (a new template version; the group's sizes and instance policy). Running nodes are kept:
        new settings reach the nodes launched after."""
        name = group_name(spec)
        data = launch_template_data(server, spec)
        found = self.ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        )
        if found["LaunchTemplates"]:
            self.ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData=data)
        else:
            self.ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                TagSpecifications=[
                    {"ResourceType": "launch-template", "Tags": [{"Key": POOL_TAG, "Value": spec.name}]}
                ],
            )
        common: dict[str, Any] = {
            "AutoScalingGroupName": name,
            "MinSize": spec.minNodes,
            "MaxSize": spec.maxNodes,
            "MixedInstancesPolicy": mixed_instances_policy(spec),
            "VPCZoneIdentifier": ",".join(spec.subnets),
            "CapacityRebalance": True,
            "NewInstancesProtectedFromScaleIn": True,
        }
        if self.describe(spec) is None:
            self.autoscaling.create_auto_scaling_group(
                **common,
                DesiredCapacity=max(spec.minNodes, min(desired, spec.maxNodes)),
                Tags=[{"Key": POOL_TAG, "Value": spec.name, "PropagateAtLaunch": True}],
            )
            # AZ rebalancing would terminate nodes of its own choosing, busy or not.
            self.autoscaling.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=["AZRebalance"])
        else:
            self.autoscaling.update_auto_scaling_group(**common)

    def describe(self, spec: PoolSpec) -> GroupView | None:
        reply = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name(spec)])
        groups = reply.get("AutoScalingGroups") or []
        if not groups:
            return None
        group = groups[0]
        instances = {
            i["InstanceId"]: i["LifecycleState"]
            for i in group.get("Instances", [])
            if i.get("LifecycleState") in LIVE_STATES
        }
        return GroupView(
            int(group["DesiredCapacity"]), int(group["MinSize"]), int(group["MaxSize"]), instances
        )

    def set_desired(self, spec: PoolSpec, desired: int) -> None:
        self.autoscaling.set_desired_capacity(
            AutoScalingGroupName=group_name(spec), DesiredCapacity=desired, HonorCooldown=False
        )

    def terminate(self, instance_id: str) -> None:
        self.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
        )


__all__ = [
    "POOL_TAG",
    "Ec2Pool",
    "GroupView",
    "fingerprint",
    "group_name",
    "install_url",
    "launch_template_data",
    "make_clients",
    "mixed_instances_policy",
    "user_data",
]
