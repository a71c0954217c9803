"""ipfleet's keeper, on the controller: sizes the engine group to the work.

Every few seconds it asks the controller (ipyparallel's hub, through its query
socket) how many tasks are waiting or running, counts the clients connected to
the client ports, and reads the engine group from Auto Scaling. Then:

- idle guard (ipfleet:idleMinutes): after that long with no task and no client,
  the group goes to its minimum; the first client (or task) after that brings
  back the size it had. `ipfleet scale` overrides it at any time.
- autoscaler (ipfleet:autoscale, off by default): the group follows the queue,
  tasksPerEngine outstanding tasks per engine, between the group's minimum and
  maximum, changing at most once per cooldown (scale-out sooner than scale-in).

It runs as the service user, as ipcontroller does: it reads that user's client file
and sees that user's sockets, and root reads nothing it writes. What it decided goes
to STATE_DIR/keeper.json (its memory across restarts) and to the stack's keeper
parameter, where `ipfleet status` shows it. The controller's role may set the desired
capacity of its own group only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import agent as node
from . import limits
from .wire import CLIENT_PORTS as CLIENT_PORT_RANGE
from .wire import tagged

# The controller's client-facing sockets: a TCP connection to one of them is a client;
# the keeper's own query goes to the registration socket, which is not among them.
CLIENT_PORTS = range(CLIENT_PORT_RANGE[0], CLIENT_PORT_RANGE[1] + 1)
INTERVAL = 5.0


@dataclass(frozen=True)
class Policy:
    idle_minutes: float
    min_engine_nodes: int
    autoscale: bool
    tasks_per_engine: int
    cooldown_seconds: int
    # The heartbeat period: what the controller's engine capacity is measured against.
    ping_ms: int = 1000


@dataclass(frozen=True)
class Observation:
    outstanding: int  # tasks waiting or running
    completed: int  # tasks ever completed (a change is activity)
    clients: int  # connections on the client ports
    engines: int  # engines registered now
    desired: int
    minimum: int
    maximum: int
    in_service: int  # the group's nodes in service


@dataclass
class Memory:
    """What the keeper remembers between looks (and across its own restarts)."""

    last_activity: float
    completed: int = -1
    # The size before the idle guard took the group down; None when it did not.
    idled_from: int | None = None
    idled_at: float | None = None
    last_change: float = 0.0
    # Since when the queue has wanted fewer nodes than the group has (autoscaler).
    low_since: float | None = None
    per_node: int = 1
    # The desired capacity at the last look (after any change the keeper made).
    desired: int | None = None
    changes: list = field(default_factory=list)


def decide(policy: Policy, now: float, seen: Observation, memory: Memory) -> tuple[int | None, str]:
    """The desired capacity to set now (None: leave it) and why. Updates MEMORY."""
    target, why = _decide(policy, now, seen, memory)
    memory.desired = seen.desired if target is None else target
    return target, why


def _decide(policy: Policy, now: float, seen: Observation, memory: Memory) -> tuple[int | None, str]:
    floor = max(policy.min_engine_nodes, seen.minimum)
    # Someone grew the group (`ipfleet scale`): as much a sign of life as a task.
    grown = memory.desired is not None and seen.desired > memory.desired
    # More tasks completed is activity; fewer is not (the controller restarted and
    # counts from zero again).
    active = (
        grown
        or seen.outstanding > 0
        or seen.clients > 0
        or (memory.completed >= 0 and seen.completed > memory.completed)
    )
    memory.completed = seen.completed
    if active:
        memory.last_activity = now
    if seen.engines and seen.in_service:
        memory.per_node = max(1, round(seen.engines / seen.in_service))

    if memory.idled_from is not None:
        if seen.desired != floor:  # someone scaled it (`ipfleet scale`): theirs now
            memory.idled_from = memory.idled_at = None
        elif active:
            target = min(max(memory.idled_from, floor), seen.maximum)
            memory.idled_from = memory.idled_at = None
            return (target if target != seen.desired else None), "woken: a client or a task arrived"
        else:
            return None, "idle"

    if policy.autoscale:
        wanted = math.ceil(seen.outstanding / (policy.tasks_per_engine * memory.per_node))
        wanted = min(max(wanted, floor), seen.maximum)
        since_change = now - memory.last_change
        if wanted > seen.desired:
            memory.low_since = None
            if since_change >= policy.cooldown_seconds / 3:
                return wanted, f"autoscale: {seen.outstanding} tasks outstanding"
        elif wanted < seen.desired:
            memory.low_since = memory.low_since or now
            if now - memory.low_since >= policy.cooldown_seconds and since_change >= policy.cooldown_seconds:
                return wanted, f"autoscale: {seen.outstanding} tasks outstanding"
        else:
            memory.low_since = None

    if policy.idle_minutes > 0 and seen.desired > floor and now - memory.last_activity >= policy.idle_minutes * 60:
        memory.idled_from, memory.idled_at = seen.desired, now
        return floor, f"idle for {policy.idle_minutes:g} min: no task and no client"
    return None, "ok"


# --- looking ------------------------------------------------------------------------


class Hub:
    """The controller's query socket, asked with a bound (it may be restarting)."""

    def __init__(self, facts: dict):
        self.file = node.security_dir(facts) / "ipcontroller-client.json"
        self.socket: Any = None

    def _connect(self) -> None:
        import zmq
        from jupyter_client.session import Session

        info = json.loads(self.file.read_text())
        self.session = Session(
            key=info["key"].encode(),
            signature_scheme=info["signature_scheme"],
            packer=info.get("pack", "json"),
            unpacker=info.get("unpack", "json"),
        )
        socket: Any = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        if info.get("curve_serverkey"):  # access: direct
            public, secret = zmq.curve_keypair()
            socket.curve_serverkey = info["curve_serverkey"].encode()
            socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.connect(f"{info['interface']}:{info['registration']}")
        self.socket = socket

    def ask(self, msg_type: str, content: dict, timeout: float = 5.0) -> dict:
        if self.socket is None:
            self._connect()
        self.session.send(self.socket, msg_type, content=content)
        if not self.socket.poll(timeout * 1000):
            self.socket.close()  # a late answer must not be read as the next one
            self.socket = None
            raise TimeoutError(f"the controller did not answer {msg_type} in {timeout:.0f} s")
        _, parts = self.session.feed_identities(self.socket.recv_multipart())
        return self.session.deserialize(parts)["content"]

    def work(self) -> tuple[int, int, int]:
        """(tasks outstanding, tasks completed, engines registered)."""
        status = self.ask("queue_request", {"targets": None, "verbose": False})
        engines = {str(k) for k in self.ask("connection_request", {})["engines"]}
        outstanding, completed = int(status.get("unassigned", 0)), 0
        for key, counts in status.items():
            if not isinstance(counts, dict):
                continue
            # Completed counts every engine ever registered, so an engine leaving is
            # not a change; outstanding counts registered engines only, since a
            # departed engine's entry keeps the tasks it held when it went (they
            # were retried elsewhere) for good.
            completed += counts.get("completed", 0)
            if key in engines:
                outstanding += counts.get("queue", 0) + counts.get("tasks", 0)
        return outstanding, completed, len(engines)


def clients_connected() -> int:
    """TCP connections to the client ports from anything but the controller itself
    (its schedulers talk to its hub over the same ports): laptops, directly or
    through sshd's tunnels."""
    out = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True, text=True).stdout
    connections = [line.split() for line in out.splitlines() if len(line.split()) >= 4]
    own = {fields[2] for fields in connections if '"ipcontroller"' in " ".join(fields[4:])}
    return sum(
        1
        for fields in connections
        if fields[2].rsplit(":", 1)[-1].isdigit()
        and int(fields[2].rsplit(":", 1)[-1]) in CLIENT_PORTS
        and fields[3] not in own
    )


def find_group(autoscaling, stack: str) -> dict | None:
    found = autoscaling.describe_auto_scaling_groups(Filters=tagged(stack, "engine"))["AutoScalingGroups"]
    return found[0] if found else None


def keeper_file(facts: dict) -> Path:
    return node.node_path(facts, "state_dir") / "keeper.json"


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else None


def keep(interval: float = INTERVAL) -> None:
    facts = node.load_facts()
    policy = Policy(**facts["keeper"])
    state_file = keeper_file(facts)
    memory = Memory(last_activity=time.time())
    try:  # an idle group stays known as idle across restarts
        saved = json.loads(state_file.read_text()).get("memory", {})
        memory.idled_from, memory.idled_at = saved.get("idled_from"), saved.get("idled_at")
    except (OSError, ValueError):
        pass
    hub = Hub(facts)
    autoscaling = node.aws_client(facts, "autoscaling", patient=True)
    ssm = node.ssm_client(facts, patient=True)
    last_written = None
    controller = limits.Controller()
    said: list[str] = []
    while True:
        time.sleep(interval)
        try:
            group = find_group(autoscaling, facts["stack"])
            outstanding, completed, engines = hub.work()
        except Exception as e:  # controller restarting, AWS throttling: look again later
            node.log(f"keeper: cannot look yet: {type(e).__name__}: {e}")
            continue
        if group is None:
            continue
        in_service = sum(1 for i in group["Instances"] if i["LifecycleState"] == "InService")
        seen = Observation(
            outstanding,
            completed,
            clients_connected(),
            engines,
            group["DesiredCapacity"],
            group["MinSize"],
            group["MaxSize"],
            in_service,
        )
        now = time.time()
        target, why = decide(policy, now, seen, memory)
        if target is not None and target != seen.desired:
            try:
                autoscaling.set_desired_capacity(
                    AutoScalingGroupName=group["AutoScalingGroupName"], DesiredCapacity=target, HonorCooldown=False
                )
                memory.last_change = now
                memory.changes = [
                    *memory.changes,
                    {"at": _iso(now), "from": seen.desired, "to": target, "reason": why},
                ][-3:]
                node.log(f"keeper: engine nodes {seen.desired} -> {target} ({why})")
                seen = Observation(**{**asdict(seen), "desired": target})
            except Exception as e:
                memory.desired = seen.desired
                node.log(f"keeper: could not set the desired capacity to {target}: {type(e).__name__}: {e}")
        near = limits.warnings(controller.read(engines, policy.ping_ms))
        for line in near:
            if line not in said:
                node.log(f"keeper: the controller is near a limit: {line}")
        said = near
        summary = {
            "group": group["AutoScalingGroupName"],
            "desired": seen.desired,
            "min": seen.minimum,
            "max": seen.maximum,
            "inService": in_service,
            "busy": outstanding > 0,
            "clients": seen.clients,
            "autoscale": policy.autoscale,
            "idleMinutes": policy.idle_minutes,
            "idleSince": _iso(memory.last_activity) if not (outstanding or seen.clients) else None,
            "idledAt": _iso(memory.idled_at),
            "lastChanges": memory.changes,
            "limits": near,
            "memory": {"idled_from": memory.idled_from, "idled_at": memory.idled_at},
        }
        # Written when something a reader cares about changed, not every look.
        key = json.dumps(summary, sort_keys=True)
        if key != last_written:
            node._write_private(state_file, json.dumps(summary))
            try:
                ssm.put_parameter(
                    Name=node.parameter(facts, "keeper_parameter"),
                    Value=json.dumps(summary),
                    Type="String",
                    Overwrite=True,
                )
                last_written = key
            except Exception as e:  # said again at the next look
                node.log(f"keeper: could not publish its summary: {type(e).__name__}: {e}")


if __name__ == "__main__":
    keep(float(sys.argv[1]) if len(sys.argv) > 1 else INTERVAL)
