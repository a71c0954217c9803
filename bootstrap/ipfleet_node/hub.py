"""The controller's hub, answering a client's queries only from where clients are.

ipyparallel's registration socket serves engines (registration) and clients (queue
status, stored results, purge, resubmit, shutdown) alike, and every engine must reach
it. The security group keeps engines off the client ports, which takes task submission
from them, but not this socket: without a check, user code on any engine node could
read every stored result or shut the controller down. This hub checks the address a
request came from (ZMQ's Peer-Address) and answers anything but an engine's own
registration only from the client networks: the controller itself (tunnels end here:
sshd, notebook kernels and the keeper connect from this node) and, in `direct` mode,
the stack's adminCidrs. ipfleet:enginesAsClients leaves it off.

Installed by the controller's ipcontroller_config.py (ipyparallel has no setting for
the hub's class; its app builds `Hub` by name).
"""

from __future__ import annotations

import inspect
import ipaddress

from ipyparallel.controller import app
from ipyparallel.controller.hub import Hub
from traitlets import List, Unicode

# What an engine sends on the registration socket: everything else is a client's.
ENGINE_REQUESTS = frozenset({"registration_request", "unregistration_request"})


class ClientNetworksHub(Hub):
    client_networks = List(
        Unicode(),
        config=True,
        help="Networks (CIDR) whose clients may query the hub; engines register from anywhere.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._networks = [ipaddress.ip_network(n, strict=False) for n in self.client_networks]
        # Frames, not bytes: only a frame carries the address it came from.
        self.query.stop_on_recv()
        self.query.on_recv(self.dispatch_checked_query, copy=False)

    def is_client_address(self, address: str | None) -> bool:
        try:
            found = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(found in network for network in self._networks)

    async def dispatch_checked_query(self, frames) -> None:
        peer = frames[0].get("Peer-Address")
        message = [frame.bytes for frame in frames]
        if not self.is_client_address(peer):
            try:
                idents, rest = self.session.feed_identities(message)
                parsed = self.session.deserialize(rest, content=False)
            except Exception:
                self.log.warning("refused an unreadable query from %s", peer)
                return
            msg_type = parsed["header"]["msg_type"]
            if msg_type not in ENGINE_REQUESTS:
                self.log.warning("refused %s from %s: not a client network", msg_type, peer)
                self.session.send(
                    self.query,
                    "hub_error",
                    ident=idents[0],
                    parent=parsed,
                    content={
                        "status": "error",
                        "ename": "PermissionError",
                        "evalue": f"{msg_type} is answered to clients only, not to {peer}",
                        "traceback": [],
                    },
                )
                return
        handled = self.dispatch_query(message)
        if inspect.isawaitable(handled):  # a coroutine in some ipyparallel releases, not all
            await handled


def install(config, networks: list[str]) -> None:
    """From ipcontroller_config.py, after the controller's location is set: the app builds
    this hub, for NETWORKS and the controller's own address (where tunnels end)."""
    app.Hub = ClientNetworksHub
    config.ClientNetworksHub.client_networks = [*networks, f"{config.IPController.location}/32"]
