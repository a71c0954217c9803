"""Each component on its own under the mock runtime: its children and their inputs."""

from __future__ import annotations

import json

import pulumi

from bootstrap.ipfleet_node import wire
from bootstrap.spec import DRAIN_HOOK
from components.engine_fleet import DRAIN_TIMEOUT, EngineFleet, EngineFleetArgs
from components.node_role import NodeRole, NodeRoleArgs
from components.node_runtime import NodeRuntime, NodeRuntimeArgs
from components.rendezvous import Rendezvous, RendezvousArgs
from components.security_group import SecurityGroup, SecurityGroupArgs
from components.shared_storage import SharedStorage, SharedStorageArgs
from ipfleet import ports
from tests.conftest import declare, settings_of


def children_of(plan, parent: str) -> list:
    return [r for r in plan.resources if r.parent == parent]


def test_security_group_ssm_mode_has_only_self_referencing_ingress():
    plan = declare(settings_of(), lambda: SecurityGroup("net", SecurityGroupArgs("vpc-1", "ssm", [])))
    ingress = [r.inputs for r in plan.resources if r.type.endswith("SecurityGroupIngressRule")]
    # Engines reach the engine-facing ports (registration first among them), not the
    # client ports: holding the cluster's key does not make an engine a client.
    # The controller's collector takes engine nodes' records on a port of its own.
    assert {(r["fromPort"], r["toPort"]) for r in ingress} == {
        (ports.ENGINE_PORTS.first, ports.ENGINE_PORTS.last),
        (ports.RECORDS_PORT, ports.RECORDS_PORT),
        (2049, 2049),
    }
    assert ports.RECORDS_PORT < ports.CLIENT_PORTS.first
    assert ports.CLIENT_PORTS.last < ports.ENGINE_PORTS.first
    assert all(r["referencedSecurityGroupId"] == "<net-sg.id>" for r in ingress)
    assert {r.parent for r in plan.resources if r.custom} == {"net"}


def test_engines_act_as_clients_only_when_the_stack_says_so():
    args = SecurityGroupArgs("vpc-1", "ssm", [], engines_as_clients=True)
    plan = declare(settings_of(), lambda: SecurityGroup("net", args))
    ingress = [r.inputs for r in plan.resources if r.type.endswith("SecurityGroupIngressRule")]
    assert (ports.CONTROLLER_PORTS.first, ports.CONTROLLER_PORTS.last) in {
        (r["fromPort"], r["toPort"]) for r in ingress
    }


def test_security_group_ignores_admin_cidrs_in_ssm_mode():
    plan = declare(settings_of(), lambda: SecurityGroup("net", SecurityGroupArgs("vpc-1", "ssm", ["198.51.100.0/24"])))
    ingress = [r.inputs for r in plan.resources if r.type.endswith("SecurityGroupIngressRule")]
    assert not any("cidrIpv4" in r for r in ingress)


def test_shared_storage_one_mount_target_per_zone():
    subnets = [("subnet-a1", "us-east-1a"), ("subnet-a2", "us-east-1a"), ("subnet-b1", "us-east-1b")]
    plan = declare(settings_of(), lambda: SharedStorage("fs", SharedStorageArgs(subnets, "sg-1")))
    targets = [r.inputs for r in plan.resources if r.type == "aws:efs/mountTarget:MountTarget"]
    assert sorted(t["subnetId"] for t in targets) == ["subnet-a1", "subnet-b1"]
    assert all(t["securityGroups"] == ["sg-1"] for t in targets)
    assert len(children_of(plan, "fs")) == 3


def test_node_role_trusts_only_ec2_and_starts_empty():
    plan = declare(settings_of(), lambda: NodeRole("engine", NodeRoleArgs("demo", "engine", session_manager=False)))
    role = plan.one("aws:iam/role:Role").inputs
    trust = json.loads(role["assumeRolePolicy"])["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    assert not plan.of_type("aws:iam/rolePolicy:RolePolicy")
    assert not plan.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")


def test_rendezvous_grants_publish_and_read_separately():
    plan = declare(
        settings_of(),
        lambda: Rendezvous(
            "rv",
            RendezvousArgs(
                "/ipfleet/x/connection",
                "/ipfleet/x/keys",
                "/ipfleet/x/notebook",
                "/ipfleet/x/controller",
                "/ipfleet/x/keeper",
                "controller-role",
                ["engine-role"],
            ),
        ),
    )
    policies: dict[tuple[str, str], dict] = {
        (r.inputs["role"], r.inputs["name"]): json.loads(r.inputs["policy"])
        for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
    }
    publish = policies["controller-role", "ipfleet-rendezvous-publish"]["Statement"]
    assert publish[0]["Action"] == ["ssm:PutParameter", "ssm:GetParameter"]
    # The controller's own parameters, each by its ARN: the record and the keeper's summary
    # lie outside the engines' path, so no engine can speak for the controller.
    names = {r.name: r.inputs["name"] for r in plan.of_type("aws:ssm/parameter:Parameter")}
    parts = ("parameter", "keys", "notebook", "controller-record", "keeper")
    assert [names[f"rv-{part}"] for part in parts] == [
        "/ipfleet/x/connection",
        "/ipfleet/x/keys",
        "/ipfleet/x/notebook",
        "/ipfleet/x/controller",
        "/ipfleet/x/keeper",
    ]
    assert publish[0]["Resource"] == [f"<rv-{part}.arn>" for part in parts]
    read = policies["engine-role", "ipfleet-rendezvous-read"]["Statement"]
    assert read == [{"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": ["<rv-parameter.arn>"]}]
    assert {name for _, name in policies} == {"ipfleet-rendezvous-publish", "ipfleet-rendezvous-read"}


def test_the_stacks_bucket_holds_the_runtime_and_the_records_only_the_controller_writes():
    plan = declare(
        settings_of(),
        lambda: NodeRuntime("rt", NodeRuntimeArgs(stack="x", roles=["controller-role", "engine-role"])),
    )
    policies: dict[tuple[str, str], dict] = {
        (r.inputs["role"], r.inputs["name"]): json.loads(r.inputs["policy"])
        for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
    }
    # Each role reads the wheel; the controller's collector alone reads and writes the
    # records document, and asks EC2 who sent a record. Engine nodes hold no right to it.
    assert set(policies) == {
        ("controller-role", "ipfleet-node-runtime"),
        ("engine-role", "ipfleet-node-runtime"),
        ("controller-role", "ipfleet-node-records"),
    }
    [records, describe] = policies["controller-role", "ipfleet-node-records"]["Statement"]
    assert records["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert records["Resource"].startswith("arn:aws:s3:::ipfleet-x-runtime-")
    assert records["Resource"].endswith("/" + wire.RECORDS_KEY)
    assert describe == {"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"}
    # Laptops find the bucket in a String of the stack's, value in the clear (a name).
    [location] = plan.of_type("aws:ssm/parameter:Parameter")
    assert location.inputs["name"] == wire.records_location_parameter("x") == "/ipfleet/x/records"
    assert location.inputs["type"] == "String"
    assert location.inputs["insecureValue"] == records["Resource"].split(":::")[1].split("/")[0]


def test_engine_fleet_template_and_group():
    def build():
        EngineFleet(
            "fleet",
            EngineFleetArgs(
                image_id="ami-1",
                root_device_name="/dev/sda1",
                instance_types=["c6i.large", "c5.large"],
                subnet_ids=["subnet-1", "subnet-2"],
                security_group_id="sg-1",
                instance_profile_arn="arn:profile",
                user_data_base64="I2Nsb3VkLWNvbmZpZwo=",
                desired=3,
                minimum=1,
                maximum=6,
                on_demand_base=1,
                tags={"team": "science"},
                controller_role="controller-role",
            ),
        )
        pulumi.export("done", True)

    plan = declare(settings_of(), build)
    template = plan.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert template["blockDeviceMappings"][0]["deviceName"] == "/dev/sda1"
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["iamInstanceProfile"] == {"arn": "arn:profile"}
    assert {t["resourceType"] for t in template["tagSpecifications"]} == {"instance", "volume"}
    group = plan.one("aws:autoscaling/group:Group").inputs
    assert (group["minSize"], group["desiredCapacity"], group["maxSize"]) == (1, 3, 6)
    assert group["mixedInstancesPolicy"]["instancesDistribution"]["onDemandBaseCapacity"] == 1
    assert group["waitForCapacityTimeout"] == "0"
    assert {"key": "team", "value": "science", "propagateAtLaunch": True} in group["tags"]


def test_engine_group_size_belongs_to_the_running_cluster_and_leaving_nodes_drain():
    """`pulumi up` keeps a scaled (or idle) group's size; the stack file owns the bounds;
    scale-in waits for the node's drain; each role may act on this group only."""
    plan = declare(
        settings_of(),
        lambda: EngineFleet(
            "fleet",
            EngineFleetArgs(
                image_id="ami-1",
                root_device_name="/dev/xvda",
                instance_types=["c6i.large"],
                subnet_ids=["subnet-1"],
                security_group_id="sg-1",
                instance_profile_arn="arn:profile",
                user_data_base64="I2Nsb3VkLWNvbmZpZwo=",
                desired=2,
                maximum=4,
                controller_role="controller-role",
            ),
        ),
    )
    group = plan.one("aws:autoscaling/group:Group")
    assert group.options["ignoreChanges"] == ["desiredCapacity", "initialLifecycleHooks"]
    # The hook is a resource of its own: the provider replaces the whole group for any
    # change to initialLifecycleHooks, and adding one to a group declared without it.
    assert "initialLifecycleHooks" not in group.inputs
    hook = plan.one("aws:autoscaling/lifecycleHook:LifecycleHook").inputs
    assert hook == {
        "autoscalingGroupName": "<fleet-group.name>",
        "name": DRAIN_HOOK,
        "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "heartbeatTimeout": DRAIN_TIMEOUT,
        "defaultResult": "CONTINUE",
    }
    # The grants exist before the group and go after it: destroy deletes the group while
    # a draining node may still complete its hook.
    assert "fleet-controller-scaling" in group.depends_on
    policies = {p.inputs["role"]: json.loads(p.inputs["policy"]) for p in plan.of_type("aws:iam/rolePolicy:RolePolicy")}
    # The controller finds and sizes its group and lets drained nodes go; engine nodes
    # may do nothing to it (one that could complete hooks could let another go undrained).
    assert set(policies) == {"controller-role"}
    describe, change = policies["controller-role"]["Statement"]
    assert describe == {
        "Effect": "Allow",
        "Action": ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances"],
        "Resource": "*",
    }
    assert change == {
        "Effect": "Allow",
        "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:CompleteLifecycleAction"],
        "Resource": "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/fleet-group-???????",
    }
