"""What each node of a stack says about itself: the controller's record in its own
parameter, each engine node's in the records document the controller's collector keeps
in the stack's bucket (bootstrap/ipfleet_node/collector.py), written from the nodes'
agents (bootstrap/ipfleet_node/agent.py: `report`, `watch`).

Read with the user's own AWS credentials: nobody logs in to learn that a bootstrap
failed, at which step, and why.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from bootstrap.ipfleet_node import wire
from bootstrap.ipfleet_node.wire import PENDING
from ipfleet import remote
from ipfleet.remote import printable
from ipfleet.settings import controller_record_parameter, keeper_parameter, records_location_parameter


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
    # The controller's: what its keeper says of the engine group (idle guard, autoscaler),
    # from the keeper's own parameter.
    scaling: dict | None = None

    @classmethod
    def parse(cls, value: str, where: str = "a node record") -> NodeRecord:
        """The record against its schema (ipfleet/remote.py), or a RemoteDataError naming
        the field: what a node wrote is data, and a wrong type is refused, not a traceback."""
        if len(value) > RECORD_LIMIT:
            raise remote.RemoteDataError(f"{where}: {len(value)} characters, more than a record holds")
        try:
            raw = json.loads(value)
        except ValueError:
            raise remote.RemoteDataError(f"{where}: not JSON") from None
        doc = remote.parse(remote.NodeRecordDocument, raw, where)
        return cls(
            role=doc.role,
            instance_id=doc.instanceId,
            phase=doc.phase,
            instance_type=doc.instanceType,
            lifecycle=doc.lifecycle,
            zone=doc.zone,
            address=doc.address,
            engines={str(k): v for k, v in doc.engines.items()},
            error=doc.error.model_dump() if doc.error else None,
            reason=doc.reason,
            updated=printable(doc.updated, 40),
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
        return printable(self.error.get("step"), 80) + (f" (exit {code})" if code is not None else "")

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


# SSM's standard parameters hold 4 KB; the agent cuts its records to fit.
RECORD_LIMIT = 4096


@dataclass
class Records:
    """The stack's node records that parse, and a line for each that does not."""

    valid: list[NodeRecord]
    refused: list[str]


# The records document of 10,000 engine nodes at 4 KB each: anything longer is not ours.
RECORDS_DOCUMENT_LIMIT = 10_000 * RECORD_LIMIT


def read_all_records(ssm, s3, stack: str) -> Records:
    """Every node's record, the controller first, in a constant number of AWS calls
    whatever the fleet's size: the controller's record and its keeper's summary (their
    own parameters, which only the controller's role may write), and the engine nodes'
    document (one object). An engine record under another node's name, claiming another
    role, or of the wrong shape is refused with a line."""
    valid: list[NodeRecord] = []
    refused: list[str] = []
    controller = _controller_record(ssm, stack, refused)
    if controller is not None:
        valid.append(_with_scaling(ssm, stack, controller, refused))
    for owner, value, where in _engine_records(ssm, s3, stack, refused):
        try:
            record = NodeRecord.parse(value, where)
        except remote.RemoteDataError as e:
            refused.append(str(e))
            continue
        if record.instance_id != owner:
            refused.append(f"{where}: speaks for {record.instance_id}, not for {printable(owner, 40)}")
            continue
        if record.role != "engine":
            refused.append(f"{where}: claims the {record.role}'s role among the engine nodes' records")
            continue
        valid.append(record)
    valid.sort(key=lambda r: (r.role != "controller", r.role, r.instance_id))
    return Records(valid, refused)


def _engine_records(ssm, s3, stack: str, refused: list[str]) -> list[tuple[str, str, str]]:
    """(instance id it is filed under, record text, where) for each engine node's record."""
    bucket = _value(ssm, records_location_parameter(stack))
    if bucket is None:
        return []
    where = printable(f"s3://{bucket}/{wire.RECORDS_KEY}", 200)
    try:
        found = s3.get_object(Bucket=bucket, Key=wire.RECORDS_KEY)
    except s3.exceptions.NoSuchKey:
        return []  # no engine node has reported yet
    if int(found.get("ContentLength") or 0) > RECORDS_DOCUMENT_LIMIT:
        refused.append(f"{where}: {found['ContentLength']} bytes, more than the records of 10,000 nodes")
        return []
    try:
        document = json.loads(found["Body"].read(RECORDS_DOCUMENT_LIMIT + 1))
    except ValueError:
        refused.append(f"{where}: not JSON")
        return []
    nodes = document.get("nodes") if isinstance(document, dict) else None
    if not isinstance(document, dict) or document.get("format") != wire.RECORDS_FORMAT or not isinstance(nodes, dict):
        refused.append(f"{where}: not a records document of format {wire.RECORDS_FORMAT}")
        return []
    return [(str(owner), json.dumps(record), f"{where}: {printable(owner, 40)}") for owner, record in nodes.items()]


def _controller_record(ssm, stack: str, refused: list[str]) -> NodeRecord | None:
    name = controller_record_parameter(stack)
    value = _value(ssm, name)
    if value is None:
        return None
    try:
        record = NodeRecord.parse(value, name)
    except remote.RemoteDataError as e:
        refused.append(str(e))
        return None
    if record.role != "controller":
        refused.append(f"{name}: holds a record of role {record.role}")
        return None
    return record


def _with_scaling(ssm, stack: str, record: NodeRecord, refused: list[str]) -> NodeRecord:
    """The controller's record with what its keeper says of the engine group (its own
    parameter), when that parses."""
    summary = _value(ssm, keeper_parameter(stack))
    if summary is None:
        return record
    try:
        scaling = remote.parse(remote.KeeperSummary, json.loads(summary), keeper_parameter(stack))
    except (ValueError, remote.RemoteDataError) as e:
        refused.append(str(e) if isinstance(e, remote.RemoteDataError) else f"{keeper_parameter(stack)}: not JSON")
        return record
    return dataclasses.replace(record, scaling=scaling.model_dump(by_alias=True))


def _value(ssm, name: str) -> str | None:
    """A parameter's value; None while it is missing or still the stack's placeholder."""
    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None
    return None if value == PENDING else str(value)


def read_records(ssm, s3, stack: str) -> list[NodeRecord]:
    """Every valid node record, the controller first."""
    return read_all_records(ssm, s3, stack).valid


def controller_record(ssm, stack: str) -> NodeRecord | None:
    """The controller's record alone, without its keeper's summary (what `fetch` waits on), if valid."""
    return _controller_record(ssm, stack, [])


def describe_failure(record: NodeRecord, lines: int = 15) -> str:
    """The failure as a user reads it: which node, which step, the log's last lines."""
    log = (record.error or {}).get("log") or []
    tail = "\n".join(f"    {printable(line)}" for line in log[-lines:])
    return f"the {record.role} {record.instance_id} failed its bootstrap at {record.error_text}" + (
        f"; its log ends:\n{tail}" if tail else ""
    )


def describe_scaling(scaling: dict | None) -> str:
    """The controller keeper's view of the engine group, in a sentence or two."""
    if not scaling:
        return "The controller's keeper has not reported on the engine group yet."
    line = (
        f"Engine group {printable(scaling['group'], 120)}: {scaling['desired']} nodes wanted "
        f"(min {scaling['min']}, max {scaling['max']}), {scaling['inService']} in service."
    )
    minutes = scaling.get("idleMinutes") or 0
    if scaling.get("idledAt"):
        line += (
            f" Idle since {printable(scaling.get('idleSince') or '?', 40)}: the idle guard took it to "
            f"{scaling['desired']} at {printable(scaling['idledAt'], 40)}; "
            "a client, a task or `ipfleet scale` brings it back."
        )
    elif minutes:
        since = scaling.get("idleSince")
        line += f" Idle guard: {minutes:g} min"
        line += f" (idle since {printable(since, 40)})." if since else " (busy now)."
    else:
        line += " Idle guard off."
    if scaling.get("autoscale"):
        line += " Autoscaling on the queue."
    for near in scaling.get("limits") or []:
        line += f"\nThe controller is near a limit: {printable(near)}."
    return line
