"""An EC2 key pair from the stack's public key, for `access: ssh` and rescue logins."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

TYPE = "ipfleet:cluster:KeyPair"


@dataclass(frozen=True)
class KeyPairArgs:
    public_key: str


class KeyPair(pulumi.ComponentResource):
    def __init__(self, name: str, args: KeyPairArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        self.key_pair = aws.ec2.KeyPair(
            f"{name}-key", public_key=args.public_key, opts=pulumi.ResourceOptions(parent=self)
        )
        self.key_name = self.key_pair.key_name
        self.register_outputs({"key_name": self.key_name})
