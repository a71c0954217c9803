"""The IAM role and instance profile of one node role (controller or engines).

The role starts with no permissions; other components grant exactly what they
need (the rendezvous parameter, the mounted buckets, Session Manager).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.naming import iam_name_prefix
from ipfleet.partitions import AWS, Partition

TYPE = "ipfleet:cluster:NodeRole"

ASSUME_BY_EC2 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def session_manager_statements(partition: Partition) -> list[dict]:
    """What the SSM agent needs for Session Manager (access: ssm): report the instance to
    Systems Manager (scoped to EC2 instances of the partition), and open the session
    channels, actions for which AWS offers no resource type, hence "*"."""
    return [
        {
            "Effect": "Allow",
            "Action": ["ssm:UpdateInstanceInformation"],
            "Resource": partition.arn("ec2", "*", "*", "instance/*"),
        },
        {
            "Effect": "Allow",
            "Action": [
                "ssmmessages:CreateControlChannel",
                "ssmmessages:CreateDataChannel",
                "ssmmessages:OpenControlChannel",
                "ssmmessages:OpenDataChannel",
            ],
            "Resource": "*",
        },
    ]


@dataclass(frozen=True)
class NodeRoleArgs:
    stack: str
    role: str  # "controller" or "engine"
    session_manager: bool
    partition: Partition = AWS


class NodeRole(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.role = aws.iam.Role(
            f"{name}-role",
            name_prefix=iam_name_prefix(args.stack, args.role),
            assume_role_policy=ASSUME_BY_EC2,
            description=f"ipfleet {args.role} nodes",
            opts=child,
        )
        # Everything granted to this role: nodes start only once these exist.
        self.policies: list[aws.iam.RolePolicy] = []
        if args.session_manager:
            self.policies.append(
                aws.iam.RolePolicy(
                    f"{name}-session-manager",
                    name="ipfleet-session-manager",
                    role=self.role.name,
                    policy=json.dumps(
                        {
                            "Version": "2012-10-17",
                            "Statement": session_manager_statements(args.partition),
                        }
                    ),
                    opts=child,
                )
            )
        self.profile = aws.iam.InstanceProfile(
            f"{name}-profile", name_prefix=iam_name_prefix(args.stack, args.role), role=self.role.name, opts=child
        )
        self.role_name = self.role.name
        self.profile_name = self.profile.name
        self.profile_arn = self.profile.arn
        self.register_outputs({"role_name": self.role_name, "profile_arn": self.profile_arn})
