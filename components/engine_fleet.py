"""The engine nodes: a spot fleet, declared as an Auto Scaling group.

A mixed-instances policy over several instance types (100% spot above the
on-demand base, capacity-optimized allocation, capacity rebalancing) is the
AWS-recommended form of a spot fleet; SpotFleetRequest is the legacy API.

The stack file owns the group's bounds (minEngineNodes, maxEngineNodes); its size
belongs to the running cluster. `engineNodes` is the size the group is created
with; after that `ipfleet scale`, the autoscaler and the idle guard set the
desired capacity, and `pulumi up` leaves it alone (ignoreChanges), so a deploy
never undoes a scale or wakes an idle cluster. AWS clamps the size into new
bounds by itself.

Scale-in drains: a termination lifecycle hook holds a leaving node until its
agent has stopped its engines (the controller retries their tasks elsewhere) and
completed the hook, or for DRAIN_TIMEOUT at most. The hook is a resource of its own:
the provider replaces a whole group for any change to its `initial_lifecycle_hooks`
(terraform-provider-aws #34260), so a group declared before the hook existed, or a
change to the hook, would otherwise start a second group and drain the first to zero.

The roles' grants on the group name it by pattern (Pulumi names it NAME-group-XXXXXXX)
rather than by its ARN, so they exist before it and go after it: `pulumi destroy`
deletes the group while its nodes may still complete their hook.

A new image or bootstrap makes a new launch template version, and the group
rolls its nodes onto it with an instance refresh (half of them at a time);
without one, running nodes would keep the old version for good.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bootstrap.ipfleet_node import wire
from bootstrap.spec import DRAIN_HOOK
from components.hardening import IMDS_V2, encrypted_root_mapping
from ipfleet.partitions import AWS, Partition

TYPE = "ipfleet:cluster:EngineFleet"
# Seconds a leaving node may take to drain before AWS terminates it anyway.
DRAIN_TIMEOUT = 120


@dataclass(frozen=True)
class EngineFleetArgs:
    image_id: str
    root_device_name: str
    instance_types: list[str]
    subnet_ids: list[str]
    security_group_id: pulumi.Input[str]
    instance_profile_arn: pulumi.Input[str]
    user_data_base64: pulumi.Input[str]
    desired: int
    maximum: int
    # The role that acts on this group, by name: the controller sets its size
    # (autoscaler, idle guard) and lets drained nodes go.
    controller_role: pulumi.Input[str]
    minimum: int = 0
    on_demand_base: int = 0
    spot_max_price: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    partition: Partition = AWS
    region: str = "*"
    # What must exist before a node boots (IAM grants, mount targets, the controller).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class EngineFleet(pulumi.ComponentResource):
    def __init__(self, name: str, args: EngineFleetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        node_tags = {**args.tags, "Name": f"{name}-node", wire.ROLE_TAG: "engine"}
        self.launch_template = aws.ec2.LaunchTemplate(
            f"{name}-template",
            image_id=args.image_id,
            iam_instance_profile={"arn": args.instance_profile_arn},
            vpc_security_group_ids=[args.security_group_id],
            user_data=args.user_data_base64,
            metadata_options=IMDS_V2,
            block_device_mappings=[encrypted_root_mapping(args.root_device_name)],
            # Provider default tags do not reach instances an ASG launches.
            tag_specifications=[{"resource_type": kind, "tags": node_tags} for kind in ("instance", "volume")],
            update_default_version=True,
            opts=child,
        )
        distribution = {
            "on_demand_base_capacity": args.on_demand_base,
            "on_demand_percentage_above_base_capacity": 0,
            "spot_allocation_strategy": "capacity-optimized",
        }
        if args.spot_max_price is not None:
            distribution["spot_max_price"] = f"{args.spot_max_price:g}"
        # Least privilege on this one group: describing cannot be scoped (AWS
        # evaluates Describe* on "*"), changing it can.
        group_arn = group_arn_pattern(args.partition, args.region, name)
        self.policies = [
            aws.iam.RolePolicy(
                f"{name}-controller-scaling",
                name="ipfleet-engine-group",
                role=args.controller_role,
                policy=group_policy(group_arn, CONTROLLER_ACTIONS, CONTROLLER_DESCRIBE),
                opts=child,
            )
        ]
        self.group = aws.autoscaling.Group(
            f"{name}-group",
            min_size=args.minimum,
            desired_capacity=args.desired,
            max_size=args.maximum,
            vpc_zone_identifiers=args.subnet_ids,
            capacity_rebalance=True,
            mixed_instances_policy={
                "instances_distribution": distribution,
                "launch_template": {
                    "launch_template_specification": {
                        "launch_template_id": self.launch_template.id,
                        "version": self.launch_template.latest_version.apply(str),
                    },
                    "overrides": [{"instance_type": t} for t in args.instance_types],
                },
            },
            # Engines configure themselves; `pulumi up` need not wait for spot capacity.
            wait_for_capacity_timeout="0",
            # A new launch template version replaces running nodes, half at a time.
            instance_refresh={
                "strategy": "Rolling",
                "preferences": {"min_healthy_percentage": 50, "skip_matching": True},
            },
            tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in node_tags.items()],
            # initialLifecycleHooks: a group deployed when the hook was declared here keeps it
            # (the LifecycleHook below adopts it by name) instead of being replaced.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*args.depends_on, *self.policies],
                ignore_changes=["desiredCapacity", "initialLifecycleHooks"],
            ),
        )
        self.drain_hook = aws.autoscaling.LifecycleHook(
            f"{name}-drain-hook",
            autoscaling_group_name=self.group.name,
            name=DRAIN_HOOK,
            lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
            heartbeat_timeout=DRAIN_TIMEOUT,
            default_result="CONTINUE",
            opts=child,
        )
        self.group_name = self.group.name
        self.register_outputs({"group_name": self.group_name})


# What the controller may do to the group: find it, size it, and let a drained node go
# (its collector completes the node's drain hook). Engine nodes may do nothing to it: a
# node that could complete hooks could let any other go before it has drained. Describing
# cannot be scoped to a group (AWS evaluates Describe* on "*").
CONTROLLER_ACTIONS = ("autoscaling:SetDesiredCapacity", "autoscaling:CompleteLifecycleAction")
CONTROLLER_DESCRIBE = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances")


def group_arn_pattern(partition: Partition, region: str, name: str) -> str:
    """The group's ARN before it exists: Pulumi names the group NAME-group- and 7 random
    characters, which `???????` matches exactly (no other stack's group, whatever its name)."""
    return partition.arn("autoscaling", region, "*", f"autoScalingGroup:*:autoScalingGroupName/{name}-group-???????")


def group_policy(group_arn: str, actions: tuple[str, ...], describe: tuple[str, ...]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": list(describe), "Resource": "*"},
                {"Effect": "Allow", "Action": list(actions), "Resource": group_arn},
            ],
        }
    )
