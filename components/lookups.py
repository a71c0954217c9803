"""What the cluster needs to know about the account before declaring anything:
the image to boot and the network to boot it in. Plain lookups, no resources."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from ipfleet.settings import Settings

# Official images by publisher account and name pattern, per architecture.
IMAGE_SOURCES = {
    "debian-12": ("136693071363", "debian-12-{debian_arch}-*"),
    "ubuntu-24.04": ("099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{debian_arch}-server-*"),
}
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
    if settings.image in IMAGE_SOURCES:
        owner, pattern = IMAGE_SOURCES[settings.image]
        ami = aws.ec2.get_ami(
            owners=[owner],
            most_recent=True,
            filters=[
                {"name": "name", "values": [pattern.format(debian_arch=DEBIAN_ARCH[architecture])]},
                {"name": "architecture", "values": [architecture]},
                {"name": "state", "values": ["available"]},
            ],
            opts=opts,
        )
    else:
        ami = aws.ec2.get_ami(filters=[{"name": "image-id", "values": [settings.image]}], opts=opts)
    return Image(id=ami.id, root_device_name=ami.root_device_name)


def find_network(settings: Settings, opts: pulumi.InvokeOptions | None = None) -> Network:
    """The stack's VPC and subnets, or the region's default VPC and its default subnets."""
    if settings.vpc_id is None:
        vpc_id = aws.ec2.get_vpc(default=True, opts=opts).id
        filters = [{"name": "vpc-id", "values": [vpc_id]},
                   {"name": "default-for-az", "values": ["true"]}]
    else:
        vpc_id = settings.vpc_id
        filters = [{"name": "vpc-id", "values": [vpc_id]}]
    subnet_ids = settings.subnet_ids or sorted(aws.ec2.get_subnets(filters=filters, opts=opts).ids)
    if not subnet_ids:
        raise LookupError(f"VPC {vpc_id} has no subnets ipfleet can use; set ipfleet:subnetIds")
    subnets = []
    for subnet_id in subnet_ids:
        subnet = aws.ec2.get_subnet(id=subnet_id, opts=opts)
        if subnet.vpc_id != vpc_id:
            raise LookupError(f"ipfleet:subnetIds: {subnet_id} is in {subnet.vpc_id}, not in {vpc_id}")
        subnets.append((subnet_id, subnet.availability_zone))
    return Network(vpc_id=vpc_id, subnets=subnets)
