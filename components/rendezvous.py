"""Where the controller publishes connection info at boot, and who may touch it.

An SSM SecureString (encrypted with the account's aws/ssm KMS key) at a path
derived from the stack name, so `ipfleet fetch STACK` needs nothing else. The
stack creates it holding a placeholder and never manages its value: the keys
are made on the controller, so they appear neither in user data nor in state.
`pulumi destroy` deletes it, keys included.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

TYPE = "ipfleet:cluster:Rendezvous"
from bootstrap.node.ipfleet_node import PENDING  # placeholder until the controller publishes


@dataclass(frozen=True)
class RendezvousArgs:
    parameter_name: str
    publisher_role: pulumi.Input[str]
    reader_roles: list[pulumi.Input[str]]


class Rendezvous(pulumi.ComponentResource):
    def __init__(self, name: str, args: RendezvousArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.parameter = aws.ssm.Parameter(
            f"{name}-parameter",
            name=args.parameter_name,
            type="SecureString",
            value=PENDING,
            description="ipfleet connection info, published by the controller at boot",
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["value"]),
        )
        arn = self.parameter.arn
        aws.iam.RolePolicy(
            f"{name}-publish",
            role=args.publisher_role,
            policy=_policy(arn, ["ssm:PutParameter", "ssm:GetParameter"]),
            opts=child,
        )
        for index, role in enumerate(args.reader_roles):
            aws.iam.RolePolicy(
                f"{name}-read-{index}", role=role, policy=_policy(arn, ["ssm:GetParameter"]), opts=child
            )
        self.parameter_name = self.parameter.name
        self.register_outputs({"parameter_name": self.parameter_name})


def _policy(arn: pulumi.Output[str], actions: list[str]) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": arn}],
    })
