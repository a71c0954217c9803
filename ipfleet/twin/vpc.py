"""The twin's private network: network namespaces on a bridge of their own.

    router namespace  (bridge br0: 10.213.0.1/24 and 169.254.169.254, moto server;
      │                nftables: the stack's security group, the controller's public address)
      ├── veth ── controller namespace  10.213.0.10     ┐ the VPC: one subnet
      ├── veth ── engine-1 namespace    10.213.0.11 ... ┘
      └── veth ── client namespace      10.213.1.250    the laptop, "on the internet"

Nothing is attached to the machine's own (root) namespace: all traffic stays
between namespaces this twin created. Every node's default route points at the
router namespace, where the AWS stand-in answers both the API endpoint and the
instance metadata address, as AWS does for an EC2 instance.

The client sits on its own subnet, routed through the router namespace, so
whatever reaches a node from it crosses the forward hook, where the stack's
planned ingress rules (CIDR sources) are the only accept rules: a port the
security group does not open is closed to the client, as on AWS. The address
EC2 would give the controller as its public IP is translated to the controller
there, as an internet gateway does.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from ipfleet.errors import IpfleetError

SUBNET_PREFIX = "10.213.0"
ROUTER_ADDRESS = f"{SUBNET_PREFIX}.1"
CLUSTER_SUBNET = f"{SUBNET_PREFIX}.0/24"
# The VPC EC2 (moto) holds the cluster's subnet in: it gives each instance its address there.
VPC_CIDR = "10.213.0.0/16"
METADATA_ADDRESS = "169.254.169.254"
# The laptop's side: a subnet of its own, "outside the VPC".
CLIENT_PREFIX = "10.213.1"
CLIENT_SUBNET = f"{CLIENT_PREFIX}.0/24"
CLIENT_GATEWAY = f"{CLIENT_PREFIX}.1"
CLIENT_HOST = 250
FIRST_NODE_HOST = 10
# What moto's instance metadata calls every node's public IPv4 address.
PUBLIC_ADDRESS = "198.51.100.1"


class NetworkError(IpfleetError, RuntimeError):
    pass


def _node_to_node(cluster: list[tuple[int, int]] | None) -> str:
    """Between nodes on the bridge: new TCP connections only to the ports the group admits."""
    if cluster is None:
        return ""
    admitted = ", ".join(f"{first}-{last}" if first != last else str(first) for first, last in cluster)
    refuse = f"tcp dport != {{ {admitted} }} " if admitted else ""
    return f"""table bridge ipfleet_twin_sg
delete table bridge ipfleet_twin_sg
table bridge ipfleet_twin_sg {{
  chain node_to_node {{
    type filter hook forward priority filter; policy accept;
    ether type ip ip saddr {CLUSTER_SUBNET} ip daddr {CLUSTER_SUBNET} tcp flags & (syn | ack) == syn {refuse}drop
  }}
}}
"""


def ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *args] if namespace is None else ["ip", "-n", namespace, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")


def existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@dataclass(frozen=True)
class Host:
    """One namespace on the bridge: a node or the client."""

    namespace: str
    address: str
    veth: str  # the router-side end of its veth pair


@dataclass(frozen=True)
class TwinNetwork:
    tag: str  # short and unique per twin: namespace and interface names derive from it

    @property
    def router(self) -> str:
        return f"ipft-{self.tag}-router"

    def host(self, name: str, number: int) -> Host:
        return Host(f"ipft-{self.tag}-{name}", f"{SUBNET_PREFIX}.{number}", f"ipft{self.tag}{number}")

    def namespaces(self, hosts: list[Host]) -> list[str]:
        return [self.router, *(h.namespace for h in hosts)]

    def create_router(self) -> None:
        ip("netns", "add", self.router)
        ip("link", "set", "lo", "up", namespace=self.router)
        ip("link", "add", "br0", "type", "bridge", namespace=self.router)
        ip("addr", "add", f"{ROUTER_ADDRESS}/24", "dev", "br0", namespace=self.router)
        ip("addr", "add", f"{METADATA_ADDRESS}/32", "dev", "br0", namespace=self.router)
        ip("link", "set", "br0", "up", namespace=self.router)

    def client(self) -> Host:
        return Host(f"ipft-{self.tag}-client", f"{CLIENT_PREFIX}.{CLIENT_HOST}", f"ipft{self.tag}c")

    def _plug(self, host: Host) -> None:
        """HOST's namespace, and a veth pair from the router to it (eth0 on HOST's side).
        Both ends are born inside their namespaces: the root namespace never holds either."""
        ip("netns", "add", host.namespace)
        ip("link", "set", "lo", "up", namespace=host.namespace)
        ip(
            "link",
            "add",
            host.veth,
            "netns",
            self.router,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.namespace,
        )

    def attach_client(self, host: Host) -> None:
        """The client on its own routed subnet (no bridge): its traffic is forwarded, so filtered."""
        self._plug(host)
        ip("addr", "add", f"{CLIENT_GATEWAY}/24", "dev", host.veth, namespace=self.router)
        ip("link", "set", host.veth, "up", namespace=self.router)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
        ip("link", "set", "eth0", "up", namespace=host.namespace)
        ip("route", "add", "default", "via", CLIENT_GATEWAY, namespace=host.namespace)

    def apply_security_group(
        self, ingress: list[tuple[str, int, int]], controller: str, cluster: list[tuple[int, int]] | None = None
    ) -> str:
        """Route between the subnets, filtered by the stack's CIDR ingress rules. Returns the ruleset.

        `ingress` holds (cidr, first_port, last_port) from the plan. Traffic from
        inside the VPC to the client subnet, and replies, pass; nothing else does.
        The instance metadata address answers the nodes only, as on EC2.
        `cluster` holds the (first_port, last_port) the group admits from its own
        members: on the bridge between nodes, a TCP connection to any other port is
        refused, as EC2 drops what no rule admits.
        """
        accepts = "\n".join(
            f"    ip saddr {cidr} ip daddr {CLUSTER_SUBNET} tcp dport {first}-{last} accept"
            for cidr, first, last in ingress
            if ":" not in cidr
        )
        # Declared, deleted and declared again: applying it twice (a replaced controller) starts afresh.
        ruleset = f"""table ip ipfleet_twin
delete table ip ipfleet_twin
table ip ipfleet_twin {{
  chain metadata_from_nodes_only {{
    type filter hook input priority filter; policy accept;
    ip daddr {METADATA_ADDRESS} ip saddr != {CLUSTER_SUBNET} drop
  }}
  chain public_address {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {PUBLIC_ADDRESS} dnat to {controller}
  }}
  chain security_group {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip saddr {CLUSTER_SUBNET} accept
{accepts}
  }}
}}
{_node_to_node(cluster)}"""
        result = subprocess.run(
            in_namespace(self.router, ["nft", "-f", "-"]), input=ruleset, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise NetworkError(f"nft refused the security group: {result.stderr.strip()}\n{ruleset}")
        forwarding = subprocess.run(
            in_namespace(self.router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]), capture_output=True, text=True
        )
        if forwarding.returncode != 0:
            raise NetworkError(f"cannot turn on forwarding: {forwarding.stderr.strip()}")
        return ruleset

    def attach(self, host: Host) -> None:
        self._plug(host)
        ip("link", "set", host.veth, "master", "br0", "up", namespace=self.router)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
        ip("link", "set", "eth0", "up", namespace=host.namespace)
        ip("route", "add", "default", "via", ROUTER_ADDRESS, namespace=host.namespace)

    def destroy(self, namespaces: list[str]) -> list[str]:
        """Delete the namespaces (their veths go with them). Returns what could not be deleted."""
        left = []
        present = existing_namespaces()
        for namespace in reversed(namespaces):
            if namespace in present:
                result = subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, text=True)
                if result.returncode != 0:
                    left.append(f"{namespace}: {result.stderr.strip()}")
        return left


def in_namespace(namespace: str, command: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


# Where the nodes and the laptop reach the AWS APIs (moto, in the router namespace).
ENDPOINT = f"http://{ROUTER_ADDRESS}"
