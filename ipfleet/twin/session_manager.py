"""The twin's stand-in for AWS Session Manager's transport: stdio to the controller's sshd.

On AWS, `aws ssm start-session --document-name AWS-StartSSHSession` carries ssh's
bytes through the Systems Manager service to the SSM agent on the instance,
which connects to the instance's own localhost:22. No port is open to anyone.
The service cannot run here; this relay plays the same part, started by ssh as
its ProxyCommand. Like `--target %h`, it finds the instance by its id (in the
twin's state, so a replaced controller is found too) and runs inside that
node's network namespace:

    ProxyCommand python -m ipfleet.twin.session_manager --stack STACK --target %h %p

Everything either side of it (ssh, the pinned host keys, sshd on the node,
ipyparallel's tunnels, the closed security group) is the real thing.

Usage: python -m ipfleet.twin.session_manager [--stack STACK --target INSTANCE_ID] PORT
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

CHUNK = 65536


def relay(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(sock, selectors.EVENT_READ)
    open_ends = 2
    while open_ends:
        for key, _ in selector.select():
            if key.fileobj == stdin:
                data = os.read(stdin, CHUNK)
                if data:
                    sock.sendall(data)
                else:  # ssh closed its side: half-close ours
                    selector.unregister(stdin)
                    sock.shutdown(socket.SHUT_WR)
                    open_ends -= 1
            else:
                data = sock.recv(CHUNK)
                if data:
                    while data:  # a pipe may take less than offered
                        data = data[os.write(stdout, data) :]
                else:
                    selector.unregister(sock)
                    open_ends -= 1
                    return  # sshd is gone: nothing more can come back
    sock.close()


def enter(stack: str, instance_id: str, port: str) -> None:
    """Become the relay inside the namespace of the node with that instance id."""
    from ipfleet.twin.state import TwinState

    node = next((n for n in TwinState.load(stack).nodes if n.instance_id == instance_id), None)
    if node is None:
        sys.exit(f"session relay: no instance {instance_id} in the twin of {stack!r} (TargetNotConnected)")
    os.execvp("ip", ["ip", "netns", "exec", node.namespace, sys.executable, "-m", "ipfleet.twin.session_manager", port])


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--stack" and sys.argv[3] == "--target":
        enter(sys.argv[2], sys.argv[4], sys.argv[5])
    relay(int(sys.argv[1]))
