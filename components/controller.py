"""The controller node: one on-demand instance running ipcontroller.

Update semantics (README, "Updating a running cluster"):
- A newer image (official images are looked up as the most recent) does not
  replace a running controller: its AMI is pinned by `ignoreChanges`.
- Changed user data (settings the controller's bootstrap uses) replaces it, as
  `pulumi preview` shows; the keys survive (the keys parameter), engines follow
  the rendezvous to the new address, and laptops run `ipfleet connect` again.
- `ipfleet:controllerRevision` replaces it on purpose, on the current image: a
  new revision is a new resource, created from the program's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from bootstrap.ipfleet_node import wire
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
    # None: the subnet's default. True where laptops dial the controller directly.
    public_ip: bool | None = None
    # ipfleet:controllerRevision: a new number is a new controller.
    revision: int = 1
    # What must exist before the node boots (IAM grants, mount targets).
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class Controller(pulumi.ComponentResource):
    def __init__(self, name: str, args: ControllerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        node_name = f"{name}-node" if args.revision == 1 else f"{name}-node-r{args.revision}"
        self.instance = aws.ec2.Instance(
            node_name,
            ami=args.image_id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            iam_instance_profile=args.instance_profile,
            associate_public_ip_address=args.public_ip,
            user_data_base64=args.user_data_base64,
            # A changed bootstrap means a new controller: nodes configure themselves only at boot.
            user_data_replace_on_change=True,
            metadata_options=IMDS_V2,
            root_block_device=encrypted_root(),
            tags={"Name": name, wire.ROLE_TAG: "controller"},
            # The resolved image is pinned: Debian's monthly AMIs must not replace a running controller.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ami"], depends_on=args.depends_on),
        )
        self.instance_id = self.instance.id
        self.private_ip = self.instance.private_ip
        self.public_ip = self.instance.public_ip
        self.register_outputs({"instance_id": self.instance_id, "private_ip": self.private_ip})
