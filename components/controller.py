"""The controller node: one on-demand instance running ipcontroller."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.hardening import IMDS_V2, encrypted_root

TYPE = "ipfleet:cluster:Controller"


@dataclass(frozen=True)
class ControllerArgs:
    image_id: str
    root_device_name: str
    instance_type: str
    subnet_id: str
    security_group_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    user_data_base64: pulumi.Input[str]
    key_name: pulumi.Input[str] | None = None
    # None: the subnet's default. True where laptops dial the controller directly.
    public_ip: bool | None = None


class Controller(pulumi.ComponentResource):
    def __init__(self, name: str, args: ControllerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        self.instance = aws.ec2.Instance(
            f"{name}-node",
            ami=args.image_id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            iam_instance_profile=args.instance_profile,
            key_name=args.key_name,
            associate_public_ip_address=args.public_ip,
            user_data_base64=args.user_data_base64,
            # A changed bootstrap means a new controller: nodes configure themselves only at boot.
            user_data_replace_on_change=True,
            metadata_options=IMDS_V2,
            root_block_device=encrypted_root(),
            tags={"Name": name, "ipfleet:role": "controller"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.instance_id = self.instance.id
        self.private_ip = self.instance.private_ip
        self.public_ip = self.instance.public_ip
        self.register_outputs({"instance_id": self.instance_id, "private_ip": self.private_ip})
