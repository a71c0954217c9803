"""The operations suite (tests/operations.py) against moto on loopback. The stack is
deployed into moto as `pulumi up` leaves AWS: the plan's parameters and engine group
(through the twin's own moto_deploy), a controller instance in EC2; each node's record
is written by the agent's own `report`, from the facts its user data writes, with its
identity from the instance metadata service; the controller's document is published
where it publishes it. The twin runs the same tests on booted nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from bootstrap.ipfleet_node import wire
from ipfleet.twin.moto_deploy import create_engine_group, create_network, run_instance
from ipfleet.twin.plan_deploy import group_spec_of, node_facts_of, stack_parameters, user_data_of, written_files
from tests.conftest import plan_of, run_cli, running_collector
from tests.fast.test_connect import client_info, published
from tests.operations import (  # noqa: F401 (the shared tests, collected here)
    Deployed,
    test_fetch_names_the_controller_that_status_shows,
    test_scale_refuses_a_size_outside_the_groups_bounds_and_changes_nothing,
    test_status_shows_the_controller_and_each_engine_node_of_the_group,
)

STACK = "ops"
ENGINE_NODES, MAX_ENGINE_NODES = 2, 3


# The VPC's subnet, in 127.0.0.0/16: EC2 gives each instance a loopback address, which its
# agent sends from, so the controller's collector tells the nodes apart as on AWS.
NETWORK = {"vpc_cidr": "127.0.0.0/16", "subnet_cidr": "127.0.0.0/24", "zone": "us-east-1a"}
CONTROLLER_ADDRESS = "127.0.0.10"


def deploy_plan(aws_env: dict, plan) -> tuple[str, dict]:
    """The plan's parameters (placeholders), the subnet, the controller's instance, and
    the engine group with its hook, in moto. Returns the group's name and the controller."""
    clients = {s: boto3.client(s, region_name="us-east-1") for s in ("ssm", "ec2", "autoscaling")}
    for p in stack_parameters(plan):
        clients["ssm"].put_parameter(Name=p["name"], Type=p["type"], Value=p["value"])
    # The stack's bucket (where the controller's collector keeps the engine nodes' records).
    for bucket in {o.inputs["bucket"] for o in plan.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)
    subnet = create_network(clients["ec2"], NETWORK)
    controller_id = run_instance(
        clients["ec2"],
        {
            "subnet": subnet,
            "address": CONTROLLER_ADDRESS,
            "instance_type": "t3.medium",
            "tags": {wire.STACK_TAG: STACK, wire.ROLE_TAG: "controller"},
        },
    )
    [controller] = clients["ec2"].describe_instances(InstanceIds=[controller_id])["Reservations"][0]["Instances"]
    spec = group_spec_of(plan, f"{STACK}-engines-test", "t3.medium", "us-east-1a")
    return create_engine_group(clients["autoscaling"], clients["ec2"], {**spec, "subnet": subnet}), controller


def node_facts(node: dict, role: str, plan, aws_env: dict, tmp_path) -> dict[str, str]:
    """NODE's facts file (from its role's user data) in a folder of its own; returns the
    environment that points the agent at it."""
    facts = node_facts_of(written_files(user_data_of(plan, role)))
    folder = tmp_path / node["InstanceId"]
    folder.mkdir(exist_ok=True)
    facts.update(aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"], node_state_dir=str(folder), profile_dir=str(folder))
    if role == "controller":
        facts["records_address"] = node["PrivateIpAddress"]
    (folder / "node.json").write_text(json.dumps(facts))
    return {**os.environ, "IPFLEET_NODE_FACTS": str(folder / "node.json")}


def report_as(node: dict, role: str, plan, aws_env: dict, imds, tmp_path) -> None:
    """The agent's `report running` on NODE (an EC2 instance of moto's), as its unit runs
    it: the controller writes its record, an engine node sends its to the collector."""
    base, metadata = imds
    metadata.write_text(
        json.dumps(
            {
                "127.0.0.1": {
                    "instance-id": node["InstanceId"],
                    "instance-type": node["InstanceType"],
                    "instance-life-cycle": "on-demand",
                    "placement/availability-zone": node["Placement"]["AvailabilityZone"],
                    "local-ipv4": node["PrivateIpAddress"],
                    "iam-role": f"{STACK}-{role}",
                }
            }
        )
    )
    stamp = os.stat(metadata).st_mtime + 1  # the service re-reads on a new mtime
    os.utime(metadata, (stamp, stamp))
    env = {**node_facts(node, role, plan, aws_env, tmp_path), "IPFLEET_METADATA_URL": base}
    done = subprocess.run(
        [sys.executable, "-m", "bootstrap.ipfleet_node", "report", "running"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def deployed(aws_env, imds, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("an engine node reports from a port below 1024, which needs root")
    plan = plan_of(STACK, engineNodes=ENGINE_NODES, maxEngineNodes=MAX_ENGINE_NODES)
    group, controller = deploy_plan(aws_env, plan)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    report_as(controller, "controller", plan, aws_env, imds, tmp_path)
    document = published("ssm", None)
    address = controller["PrivateIpAddress"]
    document["stack"] = STACK
    document["controller"].update(address=address, instance_id=controller["InstanceId"])
    document["client"] = client_info(address)
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=wire.connection_parameter(STACK), Value=json.dumps(document), Type="SecureString", Overwrite=True
    )
    members = boto3.client("autoscaling", region_name="us-east-1").describe_auto_scaling_groups(
        AutoScalingGroupNames=[group]
    )["AutoScalingGroups"][0]["Instances"]
    assert len(members) == ENGINE_NODES
    with running_collector(node_facts(controller, "controller", plan, aws_env, tmp_path), tmp_path / "collector.log"):
        for member in members:
            [node] = ec2.describe_instances(InstanceIds=[member["InstanceId"]])["Reservations"][0]["Instances"]
            report_as(node, "engine", plan, aws_env, imds, tmp_path)
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, "--region", "us-east-1", env={**os.environ, "HOME": str(home), "NO_COLOR": "1"})

    return Deployed(STACK, run, minimum=0, maximum=MAX_ENGINE_NODES)
