"""The twin's stand-in for AWS Session Manager's transport: stdio to the controller's sshd.

On AWS, `aws ssm start-session --document-name AWS-StartSSHSession` carries ssh's
bytes through the Systems Manager service to the SSM agent on the instance,
which connects to the instance's own localhost:22. No port is open to anyone.
The service cannot run here; this relay plays the same part, started by ssh as
its ProxyCommand inside the controller's network namespace:

    ProxyCommand ip netns exec <controller namespace> python -m ipfleet.twin.session_relay %p

Everything either side of it (ssh, the pinned host keys, sshd on the node,
ipyparallel's tunnels, the closed security group) is the real thing.

Usage: python -m ipfleet.twin.session_relay PORT
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
                        data = data[os.write(stdout, data):]
                else:
                    selector.unregister(sock)
                    open_ends -= 1
                    return  # sshd is gone: nothing more can come back
    sock.close()


if __name__ == "__main__":
    relay(int(sys.argv[1]))
