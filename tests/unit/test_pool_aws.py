"""What a pool's nodes are launched with (issue 21): the boot script and the launch template, built
from the pool's settings alone, so these checks need no cloud."""

from __future__ import annotations

import base64
import shlex

import pytest

from perdure.pool.aws import install_url, launch_template_data, mixed_instances_policy, user_data
from perdure.pool.scaler import target_size
from perdure.poolconfig import PoolSpec


def spec(**overrides: object) -> PoolSpec:
    fields: dict[str, object] = {
        "name": "gpu",
        "clientgroup": "g.1",
        "instanceTypes": ["g5.xlarge", "g4dn.xlarge"],
        "subnets": ["subnet-0123456789abcdef0"],
        "ami": "ami-0123456789abcdef0",
        "slotsPerNode": 4,
        "minNodes": 1,
        "maxNodes": 5,
        **overrides,
    }
    return PoolSpec.model_validate(fields)


def test_the_boot_script_runs_the_servers_installer_for_the_pool() -> None:
    pool = spec(workpath="/data/perdure")
    url = install_url("http://10.0.0.5:8001", pool)
    assert url == (
        "http://10.0.0.5:8001/api/v1/scripts/install-worker?server=http%3A%2F%2F10.0.0.5%3A8001"
        "&group=g.1&slots=4&workpath=%2Fdata%2Fperdure"
    )
    script = user_data("http://10.0.0.5:8001", pool)
    (fetch,) = [line for line in script.splitlines() if line.startswith("curl ")]
    assert shlex.split(fetch)[-3:] == [url, "|", "sh"]  # the URL is one quoted word ("&" is not the shell's)
    assert "PERDURE_TOKEN" not in script  # no token unless the pool names a parameter


def test_a_token_is_read_on_the_node_from_ssm_never_written_into_the_template() -> None:
    script = user_data("https://perdure.example", spec(tokenParameter="/perdure/g1-token"))
    assert "aws ssm get-parameter --with-decryption" in script and "--name /perdure/g1-token" in script
    assert script.index("export PERDURE_TOKEN") < script.index("curl ")


def test_the_launch_template_and_the_mixed_policy() -> None:
    data = launch_template_data("http://s:1", spec(iamInstanceProfile="arn:aws:iam::1:instance-profile/w"))
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert data["IamInstanceProfile"] == {"Arn": "arn:aws:iam::1:instance-profile/w"}
    assert "KeyName" not in data and "SecurityGroupIds" not in data
    assert base64.b64decode(data["UserData"]).decode().startswith("#!/bin/sh\n")
    assert launch_template_data("http://s:1", spec(iamInstanceProfile="w"))["IamInstanceProfile"] == {
        "Name": "w"
    }
    policy = mixed_instances_policy(spec(onDemandBase=1, onDemandPercentAboveBase=25))
    assert policy["InstancesDistribution"] == {
        "OnDemandBaseCapacity": 1,
        "OnDemandPercentageAboveBaseCapacity": 25,
        "SpotAllocationStrategy": "capacity-optimized",
    }
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["g5.xlarge", "g4dn.xlarge"]


@pytest.mark.parametrize(("demand", "nodes"), [(0, 1), (1, 1), (4, 1), (5, 2), (12, 3), (21, 5), (10_000, 5)])
def test_the_target_is_the_work_over_the_slots_within_min_and_max(demand: int, nodes: int) -> None:
    assert target_size(spec(), demand) == nodes
