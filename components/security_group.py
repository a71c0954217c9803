"""The cluster's security group: nothing open to the internet unless the stack asks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ipfleet import ports
from ipfleet.access import Access

TYPE = "ipfleet:cluster:SecurityGroup"


@dataclass(frozen=True)
class SecurityGroupArgs:
    vpc_id: pulumi.Input[str]
    # ssm: no inbound port at all; ssh: 22 from admin_cidrs; direct: the
    # controller's client ports from admin_cidrs (CurveZMQ required there).
    access: Access
    admin_cidrs: list[str] = field(default_factory=list)
    # ipfleet:enginesAsClients: engines may also use the controller's client ports.
    engines_as_clients: bool = False


class SecurityGroup(pulumi.ComponentResource):
    """Intra-cluster traffic by reference to the group itself, explicit egress."""

    def __init__(self, name: str, args: SecurityGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description="ipfleet cluster nodes",
            tags={"Name": name},
            opts=child,
        )
        group_id = self.group.id

        def ingress(rule: str, description: str, first: int, last: int, **source) -> None:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-in-{rule}",
                security_group_id=group_id,
                ip_protocol="tcp",
                from_port=first,
                to_port=last,
                description=description,
                opts=child,
                **source,
            )

        def egress(
            rule: str, description: str, protocol: str, first: int | None = None, last: int | None = None, **target
        ) -> None:
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-out-{rule}",
                security_group_id=group_id,
                ip_protocol=protocol,
                from_port=first,
                to_port=last,
                description=description,
                opts=child,
                **target,
            )

        # Inside the cluster: engines reach the controller's engine-facing ports (the
        # registration socket among them), and its client ports only when the stack lets
        # engines act as clients; nodes reach the EFS mount targets (this same group).
        cluster_ports = cluster_controller_ports(args.engines_as_clients)
        ingress(
            "ipyparallel",
            "ipyparallel controller, from cluster nodes",
            cluster_ports.first,
            cluster_ports.last,
            referenced_security_group_id=group_id,
        )
        ingress(
            "records",
            "ipfleet node records (the controller's collector), from cluster nodes",
            ports.RECORDS_PORT,
            ports.RECORDS_PORT,
            referenced_security_group_id=group_id,
        )
        ingress(
            "nfs",
            "EFS (NFS), from cluster nodes",
            ports.NFS_PORT,
            ports.NFS_PORT,
            referenced_security_group_id=group_id,
        )

        # From outside: only what the access mode needs, only from admin CIDRs.
        for index, cidr in enumerate(args.admin_cidrs):
            source = _cidr_source(cidr)
            if args.access is Access.SSH:
                ingress(f"ssh-{index}", f"SSH from admin {cidr}", ports.SSH_PORT, ports.SSH_PORT, **source)
            elif args.access is Access.DIRECT:
                ingress(
                    f"client-{index}",
                    f"ipyparallel clients from admin {cidr}",
                    ports.CLIENT_FACING_PORTS.first,
                    ports.CLIENT_FACING_PORTS.last,
                    **source,
                )

        # Egress is declared, not defaulted: the cluster itself, and HTTPS/HTTP for
        # AWS APIs and package mirrors (apt verifies signatures over plain HTTP).
        egress("cluster", "anything to cluster nodes", "-1", referenced_security_group_id=group_id)
        egress("https", "AWS APIs, package indexes", "tcp", ports.HTTPS_PORT, ports.HTTPS_PORT, cidr_ipv4="0.0.0.0/0")
        egress("http", "Debian/Ubuntu package mirrors", "tcp", ports.HTTP_PORT, ports.HTTP_PORT, cidr_ipv4="0.0.0.0/0")

        self.id = group_id
        self.register_outputs({"id": group_id})


def cluster_controller_ports(engines_as_clients: bool) -> ports.PortRange:
    """The controller's ports open to the cluster's own nodes."""
    return ports.CONTROLLER_PORTS if engines_as_clients else ports.ENGINE_PORTS


def _cidr_source(cidr: str) -> dict:
    network = ipaddress.ip_network(cidr)
    return {"cidr_ipv6": cidr} if network.version == 6 else {"cidr_ipv4": cidr}
