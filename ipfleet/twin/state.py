"""The twin's state on this machine: what a twin is made of (nodes, namespaces, the
processes it started), kept in /run/ipfleet/twin/STACK and changed under a lock, since
the reconciler and the tests change it too."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ipfleet.errors import IpfleetError
from ipfleet.twin.instances import Node

STATE_ROOT = Path("/run/ipfleet/twin")


WORK_ROOT = Path("/var/lib/ipfleet/twin")


class TwinError(IpfleetError, RuntimeError):
    pass


@dataclass
class TwinState:
    stack: str
    tag: str
    region: str
    rendezvous_parameter: str
    engines_expected: int
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    client_namespace: str = ""
    access: str = "ssm"
    moto_pid: int | None = None
    metadata_pid: int | None = None
    # The laptop's interpreter: the nodes' Python minor version (twin/client_env.py).
    client_python: str = ""
    # The controller's address as AWS would make it reachable from outside (access ssh, direct).
    public_ip: bool = False
    # The security group's CIDR ingress rules (cidr, first port, last port), from the plan.
    ingress: list = field(default_factory=list)
    # Its rules for the group's own members (first port, last port): node to node.
    cluster_ingress: list = field(default_factory=list)
    # Where nodes mount the shared storage (None without), and what the metadata says of each role.
    shared_mount_point: str | None = None
    instance_types: dict[str, str] = field(default_factory=dict)
    engines_per_node: int = 1
    # Per node address: metadata values the twin adds (a spot notice, say).
    metadata_extra: dict[str, dict] = field(default_factory=dict)
    # The engine group in moto, the reconciler playing it (twin/reconciler.py), and
    # how many engine nodes it has launched so far (their names count up).
    group_name: str = ""
    subnet_id: str = ""  # the cluster's subnet in moto
    reconciler_pid: int | None = None
    launched: int = 0
    booted_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.stack

    @property
    def work_dir(self) -> Path:
        return WORK_ROOT / self.stack

    @property
    def shared_dir(self) -> Path:
        return self.work_dir / "efs"

    @property
    def client_ipython_dir(self) -> Path:
        return self.work_dir / "client-ipython"

    @property
    def metadata_file(self) -> Path:
        """What the instance metadata service serves, by node address."""
        return self.state_dir / "metadata.json"

    def user_data_file(self, role: str) -> Path:
        return self.work_dir / f"user-data-{role}"

    @property
    def client_home(self) -> Path:
        """The laptop's home: mounted over /root for the client's processes only (ssh reads ~/.ssh)."""
        return self.work_dir / "client-home"

    def save(self) -> None:
        """Write the state (only the process that made it, before a reconciler runs,
        should call this directly; afterwards change it inside `locked()`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {**self.__dict__, "nodes": [n.as_dict() for n in self.nodes]}
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_dir / "state.json")

    @contextmanager
    def locked(self) -> Iterator[TwinState]:
        """Read, change, write, with no other process in between: the reconciler
        adds and removes engine nodes while tests and faults change the rest."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.refresh()
            yield self
            self.save()

    def refresh(self) -> TwinState:
        """Take up what other processes wrote (nodes the reconciler booted or removed)."""
        path = self.state_dir / "state.json"
        if path.exists():
            self.__dict__.update(TwinState.load(self.stack).__dict__)
        return self

    @classmethod
    def load(cls, stack: str) -> TwinState:
        path = STATE_ROOT / stack / "state.json"
        if not path.exists():
            raise TwinError(f"no twin of {stack!r} is up (nothing at {path})")
        data = json.loads(path.read_text())
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        return cls(**data)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def controller(self) -> Node:
        """The newest controller (during a replacement, the old one is still listed first)."""
        return [n for n in self.nodes if n.role == "controller"][-1]

    @property
    def engine_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "engine"]
