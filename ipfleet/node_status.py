"""What each node of a stack says about itself: its record under /ipfleet/STACK/nodes/,
written by the node's agent (bootstrap/node/ipfleet_node.py: `report`, `watch`).

Read with the user's own AWS credentials: nobody logs in to learn that a bootstrap
failed, at which step, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ipfleet.settings import node_records_path


@dataclass(frozen=True)
class NodeRecord:
    role: str
    instance_id: str
    phase: str
    instance_type: str | None = None
    lifecycle: str | None = None
    zone: str | None = None
    address: str | None = None
    engines: dict = field(default_factory=dict)
    error: dict | None = None
    reason: str | None = None
    updated: str = ""
    # The controller's: what its keeper says of the engine group (idle guard, autoscaler).
    scaling: dict | None = None

    @classmethod
    def parse(cls, value: str) -> NodeRecord | None:
        try:
            raw = json.loads(value)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("format") != 1:
            return None
        return cls(
            role=raw.get("role", "?"),
            instance_id=raw.get("instanceId", "?"),
            phase=raw.get("phase", "?"),
            instance_type=raw.get("instanceType"),
            lifecycle=raw.get("lifecycle"),
            zone=raw.get("zone"),
            address=raw.get("address"),
            engines=raw.get("engines") or {},
            error=raw.get("error"),
            reason=raw.get("reason"),
            updated=raw.get("updated", ""),
            scaling=raw.get("scaling"),
        )

    @property
    def engines_text(self) -> str:
        if "registered" in self.engines:
            return f"{self.engines['registered']} registered"
        if "running" in self.engines:
            return f"{self.engines['running']}/{self.engines.get('expected', '?')} running"
        return "-"

    @property
    def error_text(self) -> str:
        if not self.error:
            return ""
        code = self.error.get("exitCode")
        return f"{self.error.get('step')}" + (f" (exit {code})" if code is not None else "")

    def as_json(self) -> dict:
        return {
            "role": self.role,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "lifecycle": self.lifecycle,
            "zone": self.zone,
            "address": self.address,
            "phase": self.phase,
            "engines": self.engines,
            "error": self.error,
            "reason": self.reason,
            "updated": self.updated,
            **({"scaling": self.scaling} if self.role == "controller" else {}),
        }


def read_records(ssm, stack: str) -> list[NodeRecord]:
    """Every node's record, the controller first."""
    records = []
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=node_records_path(stack)):
        for parameter in page["Parameters"]:
            record = NodeRecord.parse(parameter["Value"])
            if record is not None:
                records.append(record)
    return sorted(records, key=lambda r: (r.role != "controller", r.role, r.instance_id))


def failed_controller(records: list[NodeRecord]) -> NodeRecord | None:
    return next((r for r in records if r.role == "controller" and r.phase == "failed"), None)


def describe_failure(record: NodeRecord, lines: int = 15) -> str:
    """The failure as a user reads it: which node, which step, the log's last lines."""
    log = (record.error or {}).get("log") or []
    tail = "\n".join(f"    {line}" for line in log[-lines:])
    return f"the {record.role} {record.instance_id} failed its bootstrap at {record.error_text}" + (
        f"; its log ends:\n{tail}" if tail else ""
    )


def describe_scaling(scaling: dict | None) -> str:
    """The controller keeper's view of the engine group, in a sentence or two."""
    if not scaling:
        return "The controller's keeper has not reported on the engine group yet."
    line = (
        f"Engine group {scaling['group']}: {scaling['desired']} nodes wanted "
        f"(min {scaling['min']}, max {scaling['max']}), {scaling['inService']} in service."
    )
    minutes = scaling.get("idleMinutes") or 0
    if scaling.get("idledAt"):
        line += (
            f" Idle since {scaling.get('idleSince') or '?'}: the idle guard took it to "
            f"{scaling['desired']} at {scaling['idledAt']}; a client, a task or `ipfleet scale` brings it back."
        )
    elif minutes:
        since = scaling.get("idleSince")
        line += f" Idle guard: {minutes:g} min" + (f" (idle since {since})." if since else " (busy now).")
    else:
        line += " Idle guard off."
    if scaling.get("autoscale"):
        line += " Autoscaling on the queue."
    return line
