"""`ipfleet run STACK [--nodes N] -- COMMAND`: a batch job on N engine nodes that gives
them back.

Scale the engine group to N and wait for their engines; run COMMAND here, on the
laptop, with the stack's connection at hand (`ipfleet.client()` needs no argument
inside it) and its output streamed; then scale the group back to its minimum however
COMMAND ended (exit, failure, Ctrl-C), say how many node-hours it used, and exit with
COMMAND's code. The seeds' batch pipeline ("spins up EC2 instances to run batch jobs,
terminates them when done; reads from S3 and writes to S3") is this with S3 mounts.

The decisions live in `run_batch`, which takes the group's operations as functions,
so every way a command can end is tested without AWS; the CLI wires boto3 in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipfleet.connect import STACK_VARIABLE
from ipfleet.errors import UsageError
from ipfleet.scaling import EngineGroup


@dataclass(frozen=True)
class BatchResult:
    stack: str
    nodes: int
    exit_code: int
    node_hours: float
    released: bool  # scaled back to the group's minimum (not with --keep)
    minimum: int
    seconds: float

    def as_json(self) -> dict:
        return {
            "stack": self.stack,
            "nodes": self.nodes,
            "exit_code": self.exit_code,
            "node_hours": round(self.node_hours, 4),
            "released": self.released,
            "minimum": self.minimum,
            "seconds": round(self.seconds, 1),
        }


def check_request(group: EngineGroup, nodes: int, command: Sequence[str]) -> None:
    """Bad input, refused before anything changes."""
    if not command:
        raise UsageError("no COMMAND to run: ipfleet run STACK [--nodes N] -- python job.py")
    if not group.minimum < nodes <= group.maximum:
        raise UsageError(
            f"--nodes {nodes}: the group of this stack takes {group.minimum + 1} to {group.maximum} nodes for a run "
            f"(its minimum is {group.minimum}, its maximum {group.maximum}: ipfleet:minEngineNodes and "
            "ipfleet:maxEngineNodes in the stack file)"
        )


def run_batch(
    stack: str,
    group: EngineGroup,
    nodes: int,
    command: Sequence[str],
    scale: Callable[[int, bool], None],
    keep: bool = False,
    env: dict[str, str] | None = None,
    report: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
) -> BatchResult:
    """Scale to NODES (waiting), run COMMAND, release the nodes whatever happens.

    SCALE(n, wait) sets the group's desired capacity (and waits for it when asked).
    Node-hours count from the scale-up to the release, at NODES nodes: what the
    group was asked to hold, which is what AWS bills (the nodes' boot included)."""
    check_request(group, nodes, command)
    started = clock()
    exit_code = 1
    try:
        report(f"{stack}: scaling the engine group to {nodes} nodes and waiting for their engines")
        scale(nodes, True)
        report(f"{stack}: {nodes} nodes ready; running {' '.join(command)}")
        exit_code = _run(command, {**(env if env is not None else os.environ), STACK_VARIABLE: stack})
    finally:
        ended = clock()
        if not keep:
            report(f"{stack}: releasing the nodes (the group back to {group.minimum})")
            scale(group.minimum, False)
    return BatchResult(
        stack=stack,
        nodes=nodes,
        exit_code=exit_code,
        node_hours=nodes * (ended - started) / 3600,
        released=not keep,
        minimum=group.minimum,
        seconds=ended - started,
    )


def _run(command: Sequence[str], env: dict[str, str]) -> int:
    """COMMAND with this terminal (output streams as it comes); Ctrl-C reaches it too
    (same process group), and the release waits for it to end."""
    try:
        process = subprocess.Popen(list(command), env=env)
    except OSError as e:  # no such program: the nodes are released all the same
        print(f"ipfleet: cannot run {command[0]!r}: {e.strerror}", flush=True)
        return 127
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
