"""What the cluster says about itself, read as data and never as instructions.

The controller's published document and every node's record are written by the
nodes, and every process on a node that can reach the node's role can rewrite
them. So the laptop parses them here, once, against typed schemas: instance ids,
addresses, user names, host keys, ports and packers each have a shape, and a value
of another shape is refused with an error that names the field. Nothing from these
documents reaches an ssh config, a client file or a terminal except through the
typed values below; text meant for people goes through `printable` first.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bootstrap.ipfleet_node.wire import FORMAT, INSTANCE_ID_PATTERN, RECORD_FORMAT

# A POSIX login name as useradd takes it: what the ssh config's `User` may be.
LOGIN_USER_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
# The key types OpenSSH accepts for host and user keys, and base64 after one space.
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
SSH_KEY_PATTERN = r"^(?:" + "|".join(re.escape(t) for t in SSH_KEY_TYPES) + r") [A-Za-z0-9+/]{16,4096}={0,3}$"
ZONE_PATTERN = r"^[a-z]{2}(?:-[a-z]+)+-\d[a-z]$"
INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$"
# Package versions as the controller reports them (python, ipyparallel, ...).
VERSION_PATTERN = r"^[0-9A-Za-z.+_-]{1,40}$"
# ipyparallel's session key: the hex HMAC key the agent makes, or empty with CurveZMQ.
HMAC_KEY_PATTERN = r"^(?:[0-9a-f]{32,128})?$"
# A CurveZMQ public key in Z85: 40 characters.
CURVE_KEY_PATTERN = r"^[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$"
NOTEBOOK_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{16,128}$"
# The packers ipfleet's settings allow (ipfleet:ipyparallel.packer); ipyparallel would
# import any dotted name given here, so nothing else is ever written to a client file.
PACKERS = ("json", "pickle", "msgpack")
SCHEMES = ("leastload", "lru", "plainrandom", "weighted", "twobin", "pure")
PHASES = ("booting", "running", "failed", "draining", "drained")
ROLES = ("controller", "engine")
# Text shown to people: long enough for a log line, short enough for a terminal.
TEXT_LIMIT = 500
LOG_LINES_LIMIT = 50


class RemoteDataError(ValueError):
    """A document from the cluster that does not have ipfleet's shape; says which field."""


def _address(value: str) -> str:
    return str(ipaddress.ip_address(value))


Short = Annotated[str, StringConstraints(max_length=TEXT_LIMIT)]
InstanceId = Annotated[str, StringConstraints(pattern=INSTANCE_ID_PATTERN)]
Address = Annotated[str, StringConstraints(max_length=45), AfterValidator(_address)]
Port = Annotated[int, Field(ge=1, le=65535)]
SshKey = Annotated[str, StringConstraints(pattern=SSH_KEY_PATTERN)]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
Timestamp = Annotated[str, StringConstraints(max_length=40), AfterValidator(lambda v: datetime.fromisoformat(v) and v)]


class _Strict(BaseModel):
    # Exact types (no "5" for 5), and no field this ipfleet does not know is kept.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _authorized_key(value: str) -> str:
    """The user's own public key as the controller accepts it: type and key (no comment)."""
    parts = value.split()
    key = " ".join(parts[:2])
    if not re.match(SSH_KEY_PATTERN, key):
        raise ValueError("is not an OpenSSH public key")
    return key


class SshLogin(_Strict):
    """The controller's login for tunnels (access ssm and ssh)."""

    user: Annotated[str, StringConstraints(pattern=LOGIN_USER_PATTERN)]
    authorized_key: Annotated[str, StringConstraints(max_length=16384), AfterValidator(_authorized_key)] | None = None
    host_keys: Annotated[list[SshKey], Field(max_length=16)] = []


class ControllerFacts(_Strict):
    """The controller as it describes itself (the agent's `publish`)."""

    address: Address
    access: Literal["ssm", "ssh", "direct"] = "direct"  # controllers before access modes were direct
    public_address: Address | None = None
    instance_id: InstanceId | None = None
    versions: dict[Literal["python", "ipyparallel", "cloudpickle", "pyzmq"], Version] = {}
    ssh: SshLogin | None = None


def _interface(value: str) -> str:
    transport, _, host = value.partition("://")
    if transport != "tcp" or not host:
        raise ValueError("is not tcp://ADDRESS")
    if host != "*":
        _address(host)
    return value


class ClientInfo(_Strict):
    """ipyparallel's client connection info, as the controller wrote it: the fields the
    laptop uses to build its own client file (`client_file`), each of a fixed shape."""

    key: Annotated[str, StringConstraints(pattern=HMAC_KEY_PATTERN)]
    signature_scheme: Literal["hmac-sha256"]
    location: Address
    interface: Annotated[str, StringConstraints(max_length=60), AfterValidator(_interface)]
    registration: Port
    control: Port
    mux: Port
    task: Port
    iopub: Port
    notification: Port
    broadcast: Port
    task_scheme: Literal[SCHEMES]  # type: ignore[valid-type]
    pack: Literal[PACKERS]  # type: ignore[valid-type]
    unpack: Literal[PACKERS]  # type: ignore[valid-type]
    curve_serverkey: Annotated[str, StringConstraints(pattern=CURVE_KEY_PATTERN)] | None = None

    def client_file(self) -> dict[str, Any]:
        """The ipyparallel client file, built by ipfleet from these values alone: no `ssh`
        (the tunnels are ipfleet's to choose), the packer the same both ways."""
        if self.pack != self.unpack:
            raise RemoteDataError(f"client.unpack: {self.unpack!r} does not match client.pack {self.pack!r}")
        if not self.key and not self.curve_serverkey:
            raise RemoteDataError("client.key: empty, and no curve_serverkey either: the cluster would be unsigned")
        return {
            "key": self.key,
            "signature_scheme": self.signature_scheme,
            "location": self.location,
            "interface": self.interface,
            "registration": self.registration,
            "control": self.control,
            "mux": self.mux,
            "task": self.task,
            "iopub": self.iopub,
            "notification": self.notification,
            "broadcast": self.broadcast,
            "task_scheme": self.task_scheme,
            "pack": self.pack,
            "unpack": self.unpack,
            "curve_serverkey": self.curve_serverkey,
            "ssh": "",
        }


NotebookToken = Annotated[str, StringConstraints(pattern=NOTEBOOK_TOKEN_PATTERN)]


class NotebookInfo(_Strict):
    """Where the notebook listens; its token has a parameter of its own (engines read
    this document and must not read the token). Controllers before that published it here."""

    port: Port
    token: NotebookToken | None = None


class PublishedDocument(_Strict):
    """The rendezvous parameter's document (the agent's `publish`)."""

    format: Literal[FORMAT]  # type: ignore[valid-type]
    stack: Annotated[str, StringConstraints(max_length=128)]
    published_at: Timestamp
    controller: ControllerFacts
    client: ClientInfo
    notebook: NotebookInfo | None = None


class NodeError(_Strict):
    step: Short | None = None
    exitCode: int | None = None
    log: Annotated[list[Short], Field(max_length=LOG_LINES_LIMIT)] = []


Count = Annotated[int, Field(ge=0, le=1_000_000)]


class KeeperChange(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    at: Annotated[str, StringConstraints(max_length=40)]
    from_: Count = Field(alias="from")
    to: Count
    reason: Short


class KeeperSummary(_Strict):
    """The controller keeper's view of the engine group (ipfleet_keeper.py's summary)."""

    group: Short
    desired: Count
    min: Count
    max: Count
    inService: Count
    busy: bool = False
    clients: Count = 0
    autoscale: bool = False
    idleMinutes: Annotated[float, Field(ge=0)] = 0
    idleSince: Annotated[str, StringConstraints(max_length=40)] | None = None
    idledAt: Annotated[str, StringConstraints(max_length=40)] | None = None
    lastChanges: Annotated[list[KeeperChange], Field(max_length=10)] = []
    # The limits the controller is near (bootstrap/ipfleet_node/limits.py), a sentence each.
    limits: Annotated[list[Short], Field(max_length=10)] = []


class NodeRecordDocument(_Strict):
    """One node's record under /ipfleet/STACK/nodes/ (the agent's `node_record`)."""

    format: Literal[RECORD_FORMAT]  # type: ignore[valid-type]
    role: Literal[ROLES]  # type: ignore[valid-type]
    instanceId: InstanceId
    phase: Literal[PHASES]  # type: ignore[valid-type]
    instanceType: Annotated[str, StringConstraints(pattern=INSTANCE_TYPE_PATTERN, max_length=40)] | None = None
    lifecycle: Literal["spot", "on-demand", "scheduled", "capacity-block"] | None = None
    zone: Annotated[str, StringConstraints(pattern=ZONE_PATTERN, max_length=40)] | None = None
    address: Address | None = None
    engines: dict[Literal["registered", "running", "expected"], Count] = {}
    error: NodeError | None = None
    reason: Short | None = None
    updated: Annotated[str, StringConstraints(max_length=40)] = ""


def parse(model: type[_Strict], data: Any, where: str):
    """`model` from `data`, or a RemoteDataError naming the first field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for problem in e.errors()[:3]:
            field = ".".join(str(part) for part in problem["loc"]) or "(the document)"
            line = f"{field}: {problem['msg'].lower()}"
            if problem["type"] != "missing":
                value = problem.get("input")
                line += f" (got {printable(repr(value), 80) if not isinstance(value, dict | list) else 'a collection'})"
            problems.append(line)
        more = f" and {e.error_count() - 3} more" if e.error_count() > 3 else ""
        raise RemoteDataError(f"{where}: " + "; ".join(problems) + more) from None


# Every control character (C0, DEL, C1: escape sequences, OSC 8 links, OSC 52 clipboard
# writes, cursor moves) and every format character (bidirectional overrides).
def printable(text: Any, limit: int = TEXT_LIMIT) -> str:
    """`text` as one safe line for a terminal: control and format characters replaced by
    '?', cut to `limit` characters. Pass it to rich only as a `Text`, or escaped."""
    value = str(text)
    cleaned = "".join("?" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
