"""What the laptop, the Pulumi program, the nodes and the twin must agree on, in one place.

Each fact of the wire lives here once: the program and the laptop import it from
here, and the nodes run this same file. Standard library only (it runs everywhere).
"""

from __future__ import annotations

import re as _re

# What a stack's parameters hold before the controller has published (set by the stack).
PENDING = "pending"
# The format of the connection document the controller publishes.
FORMAT = 1
# The format of the cluster's keys in the keys parameter.
KEYS_FORMAT = 1
# The format of a node's record.
RECORD_FORMAT = 1
# The format of the document holding every engine node's record, and where it lives in
# the stack's bucket (records_location_parameter() names the bucket).
RECORDS_FORMAT = 1
RECORDS_KEY = "records/nodes.json"

# The controller's ports. Clients (a laptop's ipyparallel.Client) connect to the first
# range; engines to the second, whose first port is the registration socket.
CLIENT_PORTS = (10101, 10108)
ENGINE_PORTS = (CLIENT_PORTS[1] + 1, CLIENT_PORTS[1] + 16)
# What a client outside the cluster dials: the client ports and the registration socket.
CLIENT_FACING_PORTS = (CLIENT_PORTS[0], ENGINE_PORTS[0])
# The controller's record collector: engine nodes send their records here (from root).
RECORDS_PORT = CLIENT_PORTS[0] - 1

# The controller's answer to "which of these tasks do you know?", for any number of
# tasks in one round trip (a client recovering what a restarted controller lost).
TASK_STATUS_REQUEST = "ipfleet_task_status_request"
TASK_STATUS_REPLY = "ipfleet_task_status_reply"

# Tags the program puts on what it makes, by which nodes and laptops find it.
STACK_TAG = "ipfleet:stack"
ROLE_TAG = "ipfleet:role"


def tagged(stack: str, role: str) -> list[dict]:
    """EC2 and Auto Scaling filters for what STACK made for ROLE (controller, engine)."""
    return [{"Name": f"tag:{STACK_TAG}", "Values": [stack]}, {"Name": f"tag:{ROLE_TAG}", "Values": [role]}]


# An EC2 instance id: i- and 8 hex digits (before 2016) or 17 (since). Records are
# named after it; the laptop's schemas hold the cluster's documents to it.
INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8}(?:[0-9a-f]{9})?$"


def is_instance_id(text: str) -> bool:
    return _re.fullmatch(INSTANCE_ID_PATTERN, text) is not None


# The engine group's lifecycle hook: a node leaving the group waits in it until drained.
DRAIN_HOOK = "ipfleet-drain"

# ipfleet:enginesPerNode's value for StarCluster's rule: one engine per vCPU.
ENGINES_PER_VCPU = "auto"


def engines_on(engines_per_node: int | str, vcpus: int) -> int:
    """How many engines a node with VCPUS runs for ipfleet:enginesPerNode's value."""
    return vcpus if engines_per_node == ENGINES_PER_VCPU else int(engines_per_node)


# Where a stack's parameters live in SSM Parameter Store, under /ipfleet/STACK/.
def stack_prefix(stack: str) -> str:
    return f"/ipfleet/{stack}"


def connection_parameter(stack: str) -> str:
    """The connection document: the controller publishes, engines and laptops read."""
    return f"{stack_prefix(stack)}/connection"


def keys_parameter(stack: str) -> str:
    """The cluster's keys (a SecureString the controller alone reads and writes)."""
    return f"{stack_prefix(stack)}/keys"


def controller_record_parameter(stack: str) -> str:
    """The controller's own record: outside the engines' path, so no engine can write it."""
    return f"{stack_prefix(stack)}/controller"


def keeper_parameter(stack: str) -> str:
    """What the controller's keeper says of the engine group (idle guard, autoscaler)."""
    return f"{stack_prefix(stack)}/keeper"


def notebook_parameter(stack: str) -> str:
    """The notebook's token (a SecureString): the controller and laptops read it, engines not."""
    return f"{stack_prefix(stack)}/notebook"


def records_location_parameter(stack: str) -> str:
    """The bucket holding the engine nodes' records (RECORDS_KEY): a String the program
    writes and no node may change; read by `ipfleet status` and `scale --wait`."""
    return f"{stack_prefix(stack)}/records"
