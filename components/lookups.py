"""What the cluster needs to know about the account before declaring anything:
the image to boot and the network to boot it in. Plain lookups, no resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from ipfleet.images import IMAGES
from ipfleet.settings import Settings, SettingsError

DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


@dataclass(frozen=True)
class Image:
    id: str
    root_device_name: str


@dataclass(frozen=True)
class Network:
    vpc_id: str
    # (subnet id, availability zone) for every subnet the cluster may use.
    subnets: list[tuple[str, str]]

    @property
    def subnet_ids(self) -> list[str]:
        return [subnet for subnet, _ in self.subnets]


def find_image(settings: Settings, architecture: str, opts: pulumi.InvokeOptions | None = None) -> Image:
    if settings.image in IMAGES:
        image = IMAGES[settings.image]
        ami = aws.ec2.get_ami(
            owners=[image.owner],
            most_recent=True,
            filters=[
                {"name": "name", "values": [image.name_pattern.format(arch=DEBIAN_ARCH[architecture])]},
                {"name": "architecture", "values": [architecture]},
                {"name": "state", "values": ["available"]},
            ],
            opts=opts,
        )
    else:
        ami = aws.ec2.get_ami(filters=[{"name": "image-id", "values": [settings.image]}], opts=opts)
    return Image(id=ami.id, root_device_name=ami.root_device_name)


def check_vpc_dns(vpc: Any) -> None:
    """Nodes mount EFS by its DNS name, which resolves in a VPC only with DNS support and
    DNS hostnames on; without them the mount waits out its bound and the controller never
    starts. Refused before anything is created, naming the setting."""
    missing = [
        attribute
        for attribute, on in (("DNS support", vpc.enable_dns_support), ("DNS hostnames", vpc.enable_dns_hostnames))
        if not on
    ]
    if missing:
        raise SettingsError(
            [
                f"ipfleet:vpcId: VPC {vpc.id} has {' and '.join(missing)} turned off, which mounting the stack's EFS "
                f"by name needs (got {vpc.id!r}); turn them on (aws ec2 modify-vpc-attribute --vpc-id {vpc.id} "
                "--enable-dns-support / --enable-dns-hostnames), or set ipfleet:sharedStorage.source to nfs: or bind:"
            ]
        )


def find_network(settings: Settings, opts: pulumi.InvokeOptions | None = None) -> Network:
    """The stack's VPC and subnets, or the region's default VPC and its default subnets."""
    if settings.vpc_id is None:
        vpc_id = aws.ec2.get_vpc(default=True, opts=opts).id
        filters: list[Any] = [{"name": "vpc-id", "values": [vpc_id]}, {"name": "default-for-az", "values": ["true"]}]
    else:
        vpc_id = settings.vpc_id
        filters = [{"name": "vpc-id", "values": [vpc_id]}]
        if settings.shared_storage.creates_efs:
            check_vpc_dns(aws.ec2.get_vpc(id=vpc_id, opts=opts))
    subnet_ids = settings.subnet_ids or sorted(aws.ec2.get_subnets(filters=filters, opts=opts).ids)
    if not subnet_ids:
        raise SettingsError([f"ipfleet:vpcId: VPC {vpc_id} has no subnets ipfleet can use; set ipfleet:subnetIds"])
    subnets = []
    for subnet_id in subnet_ids:
        subnet = aws.ec2.get_subnet(id=subnet_id, opts=opts)
        if subnet.vpc_id != vpc_id:
            raise SettingsError(
                [f"ipfleet:subnetIds: {subnet_id} is in {subnet.vpc_id}, not in {vpc_id} (got {subnet_id!r})"]
            )
        subnets.append((subnet_id, subnet.availability_zone))
    return Network(vpc_id=vpc_id, subnets=subnets)


@dataclass(frozen=True)
class Placement:
    """Which of the network's subnets each role may use: only zones that offer its types."""

    controller_subnet: str
    # (subnet id, zone) pairs for the engine group.
    engine_subnets: list[tuple[str, str]]
    # Every (subnet id, zone) a node may boot in: shared storage needs a mount target there.
    node_subnets: list[tuple[str, str]]

    @property
    def engine_subnet_ids(self) -> list[str]:
        return [subnet for subnet, _ in self.engine_subnets]


def place(settings: Settings, network: Network, opts: pulumi.InvokeOptions | None = None) -> Placement:
    """Put the controller in the first subnet whose zone offers its instance type, and the
    engines in every subnet whose zone offers one of theirs (not every zone offers every
    type: us-east-1e has no t3, for one). A type no zone offers is a settings error."""
    types = sorted({settings.controller_instance_type, *settings.engine_instance_types})
    offerings = aws.ec2.get_instance_type_offerings(
        filters=[{"name": "instance-type", "values": types}], location_type="availability-zone", opts=opts
    )
    offered: dict[str, set[str]] = {}
    for instance_type, zone in zip(offerings.instance_types, offerings.locations, strict=True):
        offered.setdefault(zone, set()).add(instance_type)
    zones = sorted({zone for _, zone in network.subnets})
    problems = []
    controller = [
        subnet for subnet, zone in network.subnets if settings.controller_instance_type in offered.get(zone, set())
    ]
    if not controller:
        problems.append(
            f"ipfleet:controllerInstanceType: no zone of the cluster's subnets ({', '.join(zones)}) "
            f"offers it (got {settings.controller_instance_type!r}); pick another type or set "
            "ipfleet:subnetIds"
        )
    for instance_type in settings.engine_instance_types:
        if not any(instance_type in offered.get(zone, set()) for zone in zones):
            problems.append(
                f"ipfleet:engineInstanceTypes: no zone of the cluster's subnets ({', '.join(zones)}) "
                f"offers {instance_type!r}; drop it or set ipfleet:subnetIds"
            )
    if problems:
        raise SettingsError(problems)
    engines = [
        (subnet, zone)
        for subnet, zone in network.subnets
        if offered.get(zone, set()) & set(settings.engine_instance_types)
    ]
    used = {controller[0], *(subnet for subnet, _ in engines)}
    return Placement(
        controller_subnet=controller[0],
        engine_subnets=engines,
        node_subnets=[(subnet, zone) for subnet, zone in network.subnets if subnet in used],
    )
