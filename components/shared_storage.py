"""The shared file system: encrypted EFS with a mount target in each subnet's zone.

StarCluster shared /home over NFS from the master; EFS needs no master and
survives the cluster when `retainOnDestroy` is true (the default): nothing the
user stored is lost to `pulumi destroy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

TYPE = "ipfleet:cluster:SharedStorage"


@dataclass(frozen=True)
class SharedStorageArgs:
    # (subnet id, availability zone) pairs; EFS allows one mount target per zone.
    subnets: list[tuple[str, str]]
    security_group_id: pulumi.Input[str]
    retain_on_destroy: bool = True


class SharedStorage(pulumi.ComponentResource):
    def __init__(self, name: str, args: SharedStorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        self.file_system = aws.efs.FileSystem(
            f"{name}-efs",
            encrypted=True,
            performance_mode="generalPurpose",
            throughput_mode="elastic",
            lifecycle_policies=[{"transition_to_ia": "AFTER_30_DAYS"}],
            tags={"Name": name},
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain_on_destroy),
        )
        seen_zones: set[str] = set()
        # Nodes mount only once these exist: the file system's name resolves in a
        # zone only when that zone has a mount target.
        self.mount_targets: list[aws.efs.MountTarget] = []
        for subnet_id, zone in args.subnets:
            if zone in seen_zones:
                continue
            seen_zones.add(zone)
            self.mount_targets.append(
                aws.efs.MountTarget(
                    f"{name}-mount-{zone}",
                    file_system_id=self.file_system.id,
                    subnet_id=subnet_id,
                    security_groups=[args.security_group_id],
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        self.file_system_id = self.file_system.id
        self.dns_name = self.file_system.dns_name
        self.register_outputs({"file_system_id": self.file_system_id, "dns_name": self.dns_name})
