"""`ipfleet scale STACK N`: set the engine group's size through Auto Scaling, and
watch the nodes arrive (engines registered) or leave (drained and gone).

The stack file owns the group's bounds (minEngineNodes, maxEngineNodes) and its
size at creation (engineNodes); the running size is this command's, the
autoscaler's and the idle guard's, and `pulumi up` leaves it alone
(components/engine_fleet.py). The group is found by its tags, so this needs AWS
credentials only, no tunnel to the controller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bootstrap.ipfleet_node import wire
from ipfleet.errors import IpfleetError
from ipfleet.node_status import NodeRecord, read_records


class ScaleError(IpfleetError, RuntimeError):
    pass


@dataclass(frozen=True)
class EngineGroup:
    name: str
    desired: int
    minimum: int
    maximum: int
    # Instance id -> Auto Scaling lifecycle state (InService, Pending, Terminating:Wait...).
    instances: dict[str, str]

    @classmethod
    def parse(cls, raw: dict) -> EngineGroup:
        return cls(
            raw["AutoScalingGroupName"],
            raw["DesiredCapacity"],
            raw["MinSize"],
            raw["MaxSize"],
            {i["InstanceId"]: i["LifecycleState"] for i in raw.get("Instances", [])},
        )

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "desired": self.desired,
            "min": self.minimum,
            "max": self.maximum,
            "instances": self.instances,
        }


def find_group(autoscaling, stack: str) -> EngineGroup:
    found = autoscaling.describe_auto_scaling_groups(Filters=wire.tagged(stack, "engine"))["AutoScalingGroups"]
    if not found:
        raise ScaleError(f"stack {stack!r} has no engine group in this region (not deployed, or another region?)")
    if len(found) > 1:
        names = ", ".join(g["AutoScalingGroupName"] for g in found)
        raise ScaleError(f"stack {stack!r} has {len(found)} engine groups ({names}); expected one")
    return EngineGroup.parse(found[0])


@dataclass(frozen=True)
class Progress:
    """The engine nodes as their records and the group tell it, at one moment."""

    running: int  # engine nodes whose engines all run
    booting: int
    leaving: int  # draining or drained, not yet gone
    failed: int
    engines_running: int
    registered: int | None  # what the controller has registered (its record)

    @classmethod
    def of(cls, records: list[NodeRecord], members: set[str] | None = None) -> Progress:
        """MEMBERS: the group's instances. An engine record counts only if its instance is
        one of them, and a controller record only if its instance is not: a node can
        claim any role in its record, but not a place in the group."""
        records = counted(records, members)
        engines = [r for r in records if r.role == "engine"]
        controller = next((r for r in records if r.role == "controller"), None)
        running = [
            r for r in engines if r.phase == "running" and r.engines.get("running", 0) >= r.engines.get("expected", 1)
        ]
        return cls(
            running=len(running),
            booting=sum(1 for r in engines if r.phase == "booting" or (r.phase == "running" and r not in running)),
            leaving=sum(1 for r in engines if r.phase in ("draining", "drained")),
            failed=sum(1 for r in engines if r.phase == "failed"),
            engines_running=sum(r.engines.get("running", 0) for r in running),
            registered=controller.engines.get("registered") if controller else None,
        )

    def done(self, wanted: int) -> bool:
        """WANTED nodes run their engines, every one registered, and no other node is left."""
        return (
            self.running == wanted and not self.booting and not self.leaving and self.registered == self.engines_running
        )

    def text(self, wanted: int) -> str:
        parts = [f"{self.running}/{wanted} engine nodes running"]
        for count, label in ((self.booting, "booting"), (self.leaving, "draining"), (self.failed, "failed")):
            if count:
                parts.append(f"{count} {label}")
        if self.registered is not None:
            parts.append(f"{self.registered} engines registered")
        return ", ".join(parts)


def counted(records: list[NodeRecord], members: set[str] | None) -> list[NodeRecord]:
    """The records that count, given the group's instances (None: not known, all count)."""
    if members is None:
        return records
    return [r for r in records if (r.instance_id in members) == (r.role == "engine")]


def scale(
    autoscaling,
    ssm,
    s3,
    stack: str,
    nodes: int,
    wait: bool,
    timeout: float,
    report: Callable[[str], None] = lambda _: None,
    poll: float = 2.0,
) -> dict:
    """Set STACK's engine group to NODES; with WAIT, until the nodes are there (or gone)."""
    group = find_group(autoscaling, stack)
    if not group.minimum <= nodes <= group.maximum:
        raise ScaleError(
            f"{nodes} engine nodes is outside the group's bounds, {group.minimum} to {group.maximum} "
            f"(ipfleet:minEngineNodes and ipfleet:maxEngineNodes in the stack file; change them there "
            "and run `pulumi up` to allow it)"
        )
    started = time.monotonic()
    autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=nodes, HonorCooldown=False)
    result = {
        "stack": stack,
        "group": group.name,
        "from": group.desired,
        "to": nodes,
        "min": group.minimum,
        "max": group.maximum,
        "waited": wait,
    }
    report(f"{group.name}: engine nodes {group.desired} -> {nodes}")
    if not wait:
        return result
    deadline = started + timeout
    last = None
    while True:
        members = set(find_group(autoscaling, stack).instances)
        progress = Progress.of(read_records(ssm, s3, stack), members)
        line = progress.text(nodes)
        if line != last:
            report(f"{time.monotonic() - started:5.0f} s  {line}")
            last = line
        if progress.failed:
            raise ScaleError(
                f"{progress.failed} engine node(s) failed their bootstrap; `ipfleet status {stack}` says where and why"
            )
        if progress.done(nodes):
            break
        if time.monotonic() > deadline:
            raise ScaleError(f"not there after {timeout:.0f} s: {line}")
        time.sleep(poll)
    result.update(
        seconds=round(time.monotonic() - started, 1),
        engines=progress.registered,
        nodes=find_group(autoscaling, stack).as_json()["instances"],
    )
    return result
