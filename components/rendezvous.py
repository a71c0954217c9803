"""Where the controller publishes connection info at boot, and who may touch it.

SSM parameters at paths derived from the stack name (ipfleet/settings.py), so
`ipfleet fetch STACK` needs nothing else. SecureStrings (the account's aws/ssm KMS key):

- `/ipfleet/STACK/connection`: what engines and laptops need (the controller
  writes it, engines read it);
- `/ipfleet/STACK/keys`: the cluster's HMAC key, Curve keypair and notebook
  token, which only the controller reads, so that a restarted or replaced
  controller keeps them and engines and laptops reconnect without a new fetch;
- `/ipfleet/STACK/notebook`: the notebook's token, for laptops (engines cannot read it).

Plain Strings, for `ipfleet status`: `/ipfleet/STACK/controller` (the controller's
record) and `/ipfleet/STACK/keeper` (its keeper's view of the engine group), which
only the controller's role may write. The engine nodes' records are in the stack's
bucket (components/node_runtime.py).

The stack creates the controller's parameters holding a placeholder and never
manages their values: the keys are made on the controller at its first boot, so
they appear neither in user data nor in Pulumi state. `pulumi destroy` deletes
them, keys included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from bootstrap.ipfleet_node.wire import PENDING  # placeholder until the controller publishes

TYPE = "ipfleet:cluster:Rendezvous"


@dataclass(frozen=True)
class RendezvousArgs:
    parameter_name: str
    keys_parameter_name: str
    notebook_parameter_name: str
    controller_record_name: str
    keeper_parameter_name: str
    publisher_role: pulumi.Input[str]
    reader_roles: list[pulumi.Input[str]]


class Rendezvous(pulumi.ComponentResource):
    def __init__(self, name: str, args: RendezvousArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def placeholder(suffix: str, parameter_name: str, description: str, kind: str = "SecureString"):
            return aws.ssm.Parameter(
                f"{name}-{suffix}",
                name=parameter_name,
                type=kind,
                value=PENDING,
                description=description,
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["value"]),
            )

        self.parameter = placeholder(
            "parameter", args.parameter_name, "ipfleet connection info, published by the controller at boot"
        )
        self.keys = placeholder(
            "keys", args.keys_parameter_name, "ipfleet cluster keys, made by the controller at first boot"
        )
        self.notebook = placeholder(
            "notebook", args.notebook_parameter_name, "ipfleet notebook token, published by the controller"
        )
        self.controller_record = placeholder(
            "controller-record", args.controller_record_name, "ipfleet controller record (ipfleet status)", "String"
        )
        self.keeper = placeholder(
            "keeper", args.keeper_parameter_name, "ipfleet keeper summary of the engine group", "String"
        )
        controller_only = [self.parameter, self.keys, self.notebook, self.controller_record, self.keeper]
        publish = aws.iam.RolePolicy(
            f"{name}-publish",
            name="ipfleet-rendezvous-publish",
            role=args.publisher_role,
            policy=_policy([parameter.arn for parameter in controller_only], PUBLISH_ACTIONS),
            opts=child,
        )
        readers = [
            aws.iam.RolePolicy(
                f"{name}-read-{index}",
                name="ipfleet-rendezvous-read",
                role=role,
                policy=_policy([self.parameter.arn], READ_ACTIONS),
                opts=child,
            )
            for index, role in enumerate(args.reader_roles)
        ]
        # By role: what the publisher's nodes and each reader's nodes need before they boot.
        self.publisher_policies = [publish]
        self.reader_policies = readers
        self.parameter_name = self.parameter.name
        self.keys_parameter_name = self.keys.name
        self.register_outputs({"parameter_name": self.parameter_name})


PUBLISH_ACTIONS = ("ssm:PutParameter", "ssm:GetParameter")
READ_ACTIONS = ("ssm:GetParameter",)


def policy_document(resources: list, actions: Sequence[str]) -> dict:
    """One Allow statement; resources may be Outputs (the stack) or strings (preflight)."""
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": resources}]}


def _policy(arns: list, actions: Sequence[str]) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps(policy_document(arns, actions))
