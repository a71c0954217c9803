"""The laptop's side of a twin: a client namespace on a subnet of its own, its own
home (~/.ssh, ~/.ipython), and the ipfleet commands a user runs there (connect,
fetch, the demo, status)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ipfleet.access import Access
from ipfleet.twin import vpc
from ipfleet.twin.client_env import client_source
from ipfleet.twin.instances import process_alive
from ipfleet.twin.state import TwinError, TwinState
from ipfleet.twin.vpc import (
    ENDPOINT,
    in_namespace,
)


def client_env(state: TwinState) -> dict[str, str]:
    """The laptop's environment: throwaway credentials, the twin's endpoint, its own IPython dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ENDPOINT_URL": ENDPOINT,
            "AWS_ACCESS_KEY_ID": "twin",
            "AWS_SECRET_ACCESS_KEY": "twin",
            "AWS_DEFAULT_REGION": state.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "IPYTHONDIR": str(state.client_ipython_dir),
            "NO_COLOR": "1",
            "HOME": str(state.client_home),
            # The laptop's Python has ipfleet's dependencies; ipfleet itself is a copy of this one.
            "PYTHONPATH": str(client_source()),
            # And it is the `python` the laptop's commands find (`ipfleet run ... -- python job.py`).
            "PATH": os.pathsep.join([str(Path(state.client_python).parent), env.get("PATH", "/usr/bin:/bin")]),
        }
    )
    return env


def as_client(state: TwinState, command: list[str]) -> list[str]:
    """COMMAND as the laptop: in the client namespace, with a home of its own.

    ssh finds ~/.ssh through the password database, not $HOME. In a private
    mount namespace the client sees a copy of /etc/passwd that gives root the
    client's home, so the machine's own ~/.ssh is neither read nor touched.
    """
    passwd = state.work_dir / "client-passwd"
    if not passwd.exists():
        lines = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[2] == str(os.getuid()):
                fields[5] = str(state.client_home)
            lines.append(":".join(fields))
        passwd.write_text("\n".join(lines) + "\n")
    return in_namespace(
        state.client_namespace,
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/passwd && exec "$@"',
            str(passwd),
            *command,
        ],
    )


def client_python(state: TwinState, args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        as_client(state, [state.client_python or sys.executable, *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=client_env(state),
    )
    if not check:
        return result
    if result.returncode != 0:
        raise TwinError(f"`{' '.join(args[:3])}` in the client namespace failed:\n{result.stderr.strip()[-3000:]}")
    return result


REACH_PROBE = """
import json, socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def reach(port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
print(json.dumps({port: reach(port) for port in ports}))
"""


def client_reaches(state: TwinState, host: str, ports: list[int]) -> dict[int, bool]:
    """Which of PORTS on HOST accept a TCP connection from the laptop (2 s each)."""
    result = client_python(state, ["-c", REACH_PROBE, host, *map(str, ports)], timeout=60)
    return {int(k): v for k, v in json.loads(result.stdout).items()}


def session_proxy_command(state: TwinState) -> str:
    """ssh's ProxyCommand standing in for Session Manager's (see ipfleet/twin/session_manager.py)."""
    return f"{sys.executable} -m ipfleet.twin.session_manager --stack {state.stack} --target %h %p"


def connect(state: TwinState, timeout: float = 300) -> dict:
    """As a laptop: `ipfleet connect STACK --json` (Session Manager's relay stands in for ssm)."""
    args = ["-m", "ipfleet.cli", "connect", state.stack, "--region", state.region, "--json", "--timeout", str(timeout)]
    if Access(state.access) is Access.SSM:
        args += ["--proxy-command", session_proxy_command(state)]
    return json.loads(client_python(state, args, timeout=timeout + 30).stdout)


def engines_registered_at(state: TwinState) -> float:
    """When the controller had registered every expected engine (wall clock, from its journal)."""
    out = state.controller.run(
        "journalctl",
        "-u",
        "ipcontroller",
        "-o",
        "short-unix",
        "--no-pager",
        "--grep",
        "engine::Engine Connected",
        timeout=60,
    ).stdout
    seen: dict[str, float] = {}
    for line in out.splitlines():
        stamp, _, rest = line.partition(" ")
        seen.setdefault(rest.rsplit(":", 1)[-1].strip(), float(stamp))
    if len(seen) < state.engines_expected:
        raise TwinError(f"the controller's journal shows {len(seen)} of {state.engines_expected} engines")
    return sorted(seen.values())[state.engines_expected - 1]


def fetch_and_demo(state: TwinState, timeout: float = 300, log=print) -> dict:
    """As a laptop: `ipfleet connect`, then StarCluster's demo through `ipfleet.client()`."""
    connected = connect(state, timeout)
    log(
        f"connected ({state.access}: {connected['ssh_command'] or 'direct, CurveZMQ'}); "
        f"waiting for {state.engines_expected} engines"
    )
    demo = client_python(
        state,
        ["-m", "ipfleet.twin.client_demo", state.stack, str(state.engines_expected), str(timeout)],
        timeout=timeout + 30,
    )
    result = json.loads(demo.stdout)
    registered = engines_registered_at(state)
    with state.locked():
        # The cluster's own view (the hub's log), then what the laptop saw: it starts
        # only once the controller has published, and pays for its tunnel and imports.
        state.timings["boot_to_registered"] = round(registered - state.booted_at, 2)
        state.timings["boot_to_client_ready"] = round(result.pop("registered_at") - state.booted_at, 2)
        state.timings["boot_to_demo_done"] = round(result.pop("done_at") - state.booted_at, 2)
    return {**result, "access": state.access, "timings": dict(state.timings)}


def status(state: TwinState) -> dict:
    nodes = []
    for node in state.nodes:
        entry: dict[str, Any] = {
            "name": node.name,
            "role": node.role,
            "address": node.address,
            "running": node.running(),
        }
        if entry["running"]:
            try:
                entry["cloud_init"] = node.run("cloud-init", "status", timeout=15).stdout.split(":", 1)[-1].strip()
                units = (
                    ["ipcontroller.service", "ipfleet-publish.service"]
                    if node.role == "controller"
                    else ["ipfleet-connection.service", "ipengine@*.service"]
                )
                listing = node.run("systemctl", "list-units", "--no-legend", "--plain", *units, timeout=15).stdout
                entry["units"] = {line.split()[0]: line.split()[2] for line in listing.splitlines() if line.strip()}
            except Exception as e:
                entry["error"] = str(e)
        nodes.append(entry)
    return {
        "stack": state.stack,
        "nodes": nodes,
        "timings": state.timings,
        "namespaces": state.namespaces,
        "aws_endpoint": ENDPOINT,
    }


def stop_client_processes(state: TwinState) -> list[str]:
    """The laptop's ssh control masters and tunnels outlive the demo by design: stop them."""
    if state.client_namespace not in vpc.existing_namespaces():
        return []
    listing = subprocess.run(["ip", "netns", "pids", state.client_namespace], capture_output=True, text=True)
    pids = [int(p) for p in listing.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [f"client process {p} still running" for p in pids if process_alive(p)]
