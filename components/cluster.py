"""An ipfleet cluster: a controller, a spot fleet of engine nodes, shared storage,
S3 mounts and the rendezvous through which they find each other."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from bootstrap.ipfleet_node import wire
from bootstrap.render import encode_user_data, render_user_data
from bootstrap.runtime_wheel import runtime_wheel
from bootstrap.spec import Role, node_spec
from components.controller import Controller, ControllerArgs
from components.engine_fleet import EngineFleet, EngineFleetArgs
from components.lookups import Image, Network, Placement
from components.node_role import NodeRole, NodeRoleArgs
from components.node_runtime import NodeRuntime, NodeRuntimeArgs
from components.rendezvous import Rendezvous, RendezvousArgs
from components.s3_mounts import S3Mounts, S3MountsArgs
from components.security_group import SecurityGroup, SecurityGroupArgs
from components.shared_storage import SharedStorage, SharedStorageArgs
from ipfleet.access import Access
from ipfleet.settings import Settings, controller_record_parameter, keeper_parameter, notebook_parameter

TYPE = "ipfleet:index:Cluster"


@dataclass(frozen=True)
class ClusterArgs:
    settings: Settings
    network: Network
    placement: Placement
    controller_image: Image
    engine_image: Image


class Cluster(pulumi.ComponentResource):
    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)

        self.security_group = SecurityGroup(
            f"{name}-net",
            SecurityGroupArgs(
                vpc_id=args.network.vpc_id,
                access=s.access,
                admin_cidrs=s.admin_cidrs,
                engines_as_clients=s.engines_as_clients,
            ),
            child,
        )
        # No EC2 key pair: the login's key travels in user data to the ipfleet-admin user
        # alone, and an image default user (passwordless sudo) is never made.

        session_manager = s.access is Access.SSM
        controller_role = NodeRole(
            f"{name}-controller-iam", NodeRoleArgs(s.stack, "controller", session_manager, s.partition), child
        )
        engine_role = NodeRole(
            f"{name}-engine-iam", NodeRoleArgs(s.stack, "engine", session_manager, s.partition), child
        )
        roles = [controller_role.role_name, engine_role.role_name]
        # What each role's nodes need before they boot: a node whose first AWS call is
        # refused, or whose file system's name does not resolve yet, fails its bootstrap.
        controller_needs: list[pulumi.Resource] = [*controller_role.policies, controller_role.profile]
        engine_needs: list[pulumi.Resource] = [*engine_role.policies, engine_role.profile]

        self.rendezvous = Rendezvous(
            f"{name}-rendezvous",
            RendezvousArgs(
                parameter_name=s.rendezvous_parameter,
                keys_parameter_name=s.keys_parameter,
                notebook_parameter_name=notebook_parameter(s.stack),
                controller_record_name=controller_record_parameter(s.stack),
                keeper_parameter_name=keeper_parameter(s.stack),
                publisher_role=controller_role.role_name,
                reader_roles=[engine_role.role_name],
            ),
            child,
        )
        # The agent and keeper reach the nodes as a wheel in S3, not inside user data.
        self.runtime = NodeRuntime(
            f"{name}-runtime",
            NodeRuntimeArgs(stack=s.stack, roles=roles, partition=s.partition, tags={wire.STACK_TAG: s.stack}),
            child,
        )
        controller_needs += [self.runtime.policies[0], self.runtime.records_policy, self.runtime.wheel]
        engine_needs += [self.runtime.policies[1], self.runtime.wheel]
        controller_needs += self.rendezvous.publisher_policies
        engine_needs += self.rendezvous.reader_policies
        if s.s3_mounts:
            s3 = S3Mounts(f"{name}-s3", S3MountsArgs(mounts=s.s3_mounts, roles=roles, partition=s.partition), child)
            controller_needs.append(s3.policies[0])
            engine_needs.append(s3.policies[1])

        self.shared_storage = None
        efs_dns_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if s.shared_storage.creates_efs:
            self.shared_storage = SharedStorage(
                f"{name}-shared",
                SharedStorageArgs(
                    subnets=args.placement.node_subnets,
                    security_group_id=self.security_group.id,
                    retain_on_destroy=s.shared_storage.retain_on_destroy,
                ),
                child,
            )
            efs_dns_name = self.shared_storage.dns_name
            controller_needs += self.shared_storage.mount_targets
            engine_needs += self.shared_storage.mount_targets

        def user_data(role: Role) -> pulumi.Output[str]:
            return pulumi.Output.all(efs_dns_name, self.runtime.bucket_name).apply(
                lambda found: encode_user_data(render_user_data(node_spec(s, role, found[0], found[1])))
            )

        self.controller = Controller(
            f"{name}-controller",
            ControllerArgs(
                image_id=args.controller_image.id,
                root_device_name=args.controller_image.root_device_name,
                instance_type=s.controller_instance_type,
                subnet_id=args.placement.controller_subnet,
                security_group_id=self.security_group.id,
                instance_profile=controller_role.profile_name,
                user_data_base64=user_data("controller"),
                # ssh and direct dial the controller from outside the VPC.
                public_ip=True if s.access.opens_port else None,
                revision=s.controller_revision,
                depends_on=controller_needs,
            ),
            child,
        )
        self.engines = EngineFleet(
            f"{name}-engines",
            EngineFleetArgs(
                image_id=args.engine_image.id,
                root_device_name=args.engine_image.root_device_name,
                instance_types=s.engine_instance_types,
                subnet_ids=args.placement.engine_subnet_ids,
                security_group_id=self.security_group.id,
                instance_profile_arn=engine_role.profile_arn,
                user_data_base64=user_data("engine"),
                desired=s.engine_nodes,
                minimum=s.min_engine_nodes,
                maximum=s.fleet_max,
                controller_role=controller_role.role_name,
                on_demand_base=s.on_demand_base,
                spot_max_price=s.spot_max_price,
                tags={wire.STACK_TAG: s.stack, **s.tags},
                partition=s.partition,
                region=s.region,
                # Engines wait for the controller anyway; starting them after it is
                # created just saves spot hours spent waiting.
                depends_on=[*engine_needs, self.controller.instance],
            ),
            child,
        )
        self.outputs = {
            "stack": s.stack,
            "region": s.region,
            "rendezvousParameter": self.rendezvous.parameter_name,
            "controllerInstanceId": self.controller.instance_id,
            "controllerPrivateIp": self.controller.private_ip,
            "controllerPublicIp": self.controller.public_ip,
            "access": s.access,
            "engineGroupName": self.engines.group_name,
            "engineNodes": s.engine_nodes,
            "securityGroupId": self.security_group.id,
            "sharedFileSystemId": self.shared_storage.file_system_id if self.shared_storage else None,
            "connectCommand": f"ipfleet connect {s.stack}",
            # Which node runtime the nodes install: its wheel's sha256 (bootstrap/runtime_wheel.py).
            "nodeRuntime": runtime_wheel().sha256,
        }
        self.register_outputs(self.outputs)
