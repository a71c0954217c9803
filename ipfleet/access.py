"""How a laptop reaches the controller (`ipfleet:access`), as one named type.

- ssm:    no inbound port; ssh rides on AWS Session Manager, ZMQ sockets through it.
- ssh:    port 22 open to adminCidrs; the same ssh tunnels.
- direct: the controller's client ports open to adminCidrs, every socket CurveZMQ.

What each mode implies is asked of the mode (`Access.SSM.tunnelled`), not spelt out
as string comparisons wherever it matters.
"""

from __future__ import annotations

from enum import StrEnum


class Access(StrEnum):
    SSM = "ssm"
    SSH = "ssh"
    DIRECT = "direct"

    @property
    def tunnelled(self) -> bool:
        """The laptop's sockets ride an ssh connection to the controller's login."""
        return self in (Access.SSM, Access.SSH)

    @property
    def opens_port(self) -> bool:
        """The security group opens a port to ipfleet:adminCidrs (and the controller gets a public address)."""
        return self in (Access.SSH, Access.DIRECT)

    @property
    def curve(self) -> bool:
        """Client ports face a network: CurveZMQ encrypts every socket."""
        return self is Access.DIRECT
