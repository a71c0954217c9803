"""The controller's fixed ports: one source for the security group and the nodes.

ipyparallel binds random ports unless given pools. Fixed pools let the security
group open exactly what the controller uses, and nothing else.
Measured on ipyparallel 9.2: 6 client-facing sockets, 9 engine-facing sockets and
3 internal ones; the pools below leave room for more schedulers.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootstrap.ipfleet_node import wire


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.last < 65536:
            raise ValueError(f"bad port range {self.first}-{self.last}")

    def as_list(self) -> list[int]:
        return list(range(self.first, self.last + 1))


# Sockets that clients (a laptop's ipyparallel.Client) connect to.
CLIENT_PORTS = PortRange(*wire.CLIENT_PORTS)
# Sockets that engines connect to (registration, heartbeat, tasks, IOPub...).
# ipyparallel takes the registration socket, which clients use too, first from
# this pool: starting it right after CLIENT_PORTS keeps the client-facing ports
# one contiguous range.
ENGINE_PORTS = PortRange(*wire.ENGINE_PORTS)
# What a client outside the cluster needs (access: direct): client sockets + registration.
CLIENT_FACING_PORTS = PortRange(*wire.CLIENT_FACING_PORTS)
# Internal sockets between the controller's own processes, plus spare ports.
INTERNAL_PORTS = PortRange(ENGINE_PORTS.last + 1, ENGINE_PORTS.last + 20)

# Everything the controller may bind: opened to the cluster's own security group.
CONTROLLER_PORTS = PortRange(CLIENT_PORTS.first, INTERNAL_PORTS.last)

# The controller's collector of engine nodes' records (bootstrap/ipfleet_node/collector.py).
RECORDS_PORT = wire.RECORDS_PORT
SSH_PORT = 22
NFS_PORT = 2049
HTTPS_PORT = 443
HTTP_PORT = 80
