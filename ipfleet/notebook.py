"""`ipfleet notebook`: the controller's JupyterLab, forwarded over ssh to this machine.

JupyterLab binds the controller's 127.0.0.1 only (no security group rule, no
public port); its token was made with the cluster's keys and travels in the
encrypted rendezvous parameter, never in user data.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ipfleet.connect import Connection
from ipfleet.errors import IpfleetError

READY_TIMEOUT = 60.0


class NotebookError(IpfleetError, RuntimeError):
    pass


@dataclass(frozen=True)
class NotebookUrl:
    url: str
    process: subprocess.Popen

    def __str__(self) -> str:
        return self.url


def tunnel_command(connection: Connection, local_port: int) -> list[str]:
    if not connection.notebook:
        raise NotebookError(
            f"stack {connection.stack!r} runs no notebook: set ipfleet:notebook: true in its stack file and `pulumi up`"
        )
    if not connection.ssh_host:
        raise NotebookError(
            f"the notebook needs the ssh tunnel: run `ipfleet connect {connection.stack}` (without --no-ssh-config)"
        )
    remote = connection.notebook["port"]
    # Its own connection (not the control master), so Ctrl-C here closes exactly this forward.
    return [
        "ssh",
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-L",
        f"127.0.0.1:{local_port}:127.0.0.1:{remote}",
        connection.ssh_host,
    ]


@contextmanager
def forward(connection: Connection, local_port: int, timeout: float = READY_TIMEOUT) -> Iterator[NotebookUrl]:
    """Forward the notebook to 127.0.0.1:local_port while the block runs; yields its URL.

    The token goes only to a port this tunnel holds: a port something else already
    listens on is refused before ssh starts (ssh itself then fails to bind, and the
    other program would be taken for the notebook)."""
    if not _free(local_port):
        raise NotebookError(f"127.0.0.1:{local_port} is in use by another program: pass --port with a free one")
    process = subprocess.Popen(
        tunnel_command(connection, local_port), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while not _accepts(local_port):
            if process.poll() is not None:
                error = process.stderr.read().strip() if process.stderr else ""
                raise NotebookError(f"ssh ended (exit {process.returncode}): {error}")
            if time.monotonic() > deadline:
                raise NotebookError(f"the tunnel to the notebook did not open in {timeout:.0f} s")
            time.sleep(0.3)
        time.sleep(0.2)
        if process.poll() is not None:  # ssh could not bind: the listener is another program's
            raise NotebookError(f"ssh ended (exit {process.returncode}) and 127.0.0.1:{local_port} is not its tunnel")
        if connection.notebook is None:
            raise NotebookError("the controller published no notebook (set ipfleet:notebook: true)")
        token = connection.notebook["token"]
        yield NotebookUrl(f"http://127.0.0.1:{local_port}/lab?token={token}", process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
