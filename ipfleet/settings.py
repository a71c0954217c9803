"""A stack's settings: parsed and validated once, at the edge, into typed objects.

These names are ipfleet's public interface: what users write in
`stacks/Pulumi.NAME.yaml`. Defaults live here and only here (the Pulumi CLI
would apply defaults from Pulumi.yaml, the SDK's mock runtime would not).

Every user mistake becomes a `SettingsError` naming the setting and the value,
raised before any resource is declared.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import json
import posixpath
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from bootstrap.ipfleet_node import wire
from bootstrap.ipfleet_node.paths import NODE_PATHS
from ipfleet.access import Access
from ipfleet.errors import UsageError
from ipfleet.images import DEFAULT_IMAGE, IMAGES
from ipfleet.names import REGION, STACK_NAME_RULE, is_stack_name
from ipfleet.partitions import Partition, partition_of

NAMESPACE = "ipfleet"

# Official images, looked up by owner and name at deploy time.
KNOWN_IMAGES = tuple(IMAGES)
AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
APT_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
# Mount points end up in systemd unit names and shell commands: keep them plain.
MOUNT_POINT = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# No `*` or `?`: in the IAM policy that scopes a mount to its prefix they are wildcards
# (`data*` would grant `data-private/`).
S3_PREFIX = re.compile(r"^[A-Za-z0-9!_.'()/-]*$")
VPC_ID = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
SSH_KEY = re.compile(r"^(\S+) ([A-Za-z0-9+/=]+)( .*)?$")
# EC2's ImportKeyPair takes these two kinds only (not ECDSA, not DSA).
EC2_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
# Trees of the node's own system: a mount at or anywhere below one would hide it.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
)

# Hosts of AWS's own endpoints (VPC endpoints' names included), by partition.
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def _no_control_characters(value: str) -> None:
    """URLs and requirements land in files the nodes read line by line."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{value!r} holds a line break or another control character")


# Limits of the AWS APIs, each checked here rather than half-way through `pulumi up`.
# Auto Scaling group sizes are 32-bit integers in the API.
ASG_SIZE_MAX = 2**31 - 1
# An Auto Scaling group takes at most 40 instance types.
INSTANCE_TYPES_MAX = 40
# A security group holds 60 inbound rules by default; ipfleet's own take 2.
ADMIN_CIDRS_MAX = 58
# AWS resources take 50 tags; ipfleet adds ipfleet:stack, Name and ipfleet:role.
RESERVED_TAG_KEYS = (wire.STACK_TAG, wire.ROLE_TAG, "Name")
USER_TAGS_MAX = 50 - len(RESERVED_TAG_KEYS)
# More engines on one node than any EC2 instance has vCPUs is a typo.
ENGINES_PER_NODE_MAX = 1024
# IAM, EFS and SSM accept tags of letters, separators, digits and these (keys 128, values 256).
TAG_PUNCTUATION = set("_.:/=+-@")

# ipyparallel task schedulers (`ipcontroller --scheme`).
Scheme = Literal["leastload", "lru", "twobin", "weighted", "plainrandom", "pure"]


class SettingsError(UsageError, ValueError):
    """User input that cannot make a cluster. `problems` holds one line each."""

    def __init__(self, problems: list[str], stack: str | None = None):
        self.problems = problems
        self.stack = stack
        super().__init__("\n".join(problems))

    def report(self, stack: str) -> str:
        """What users read: the stack, then one indented line per problem."""
        return f"stack {stack!r} has invalid settings:\n  " + "\n  ".join(self.problems)

    def message(self) -> str:
        return self.report(self.stack) if self.stack else "invalid settings:\n  " + "\n  ".join(self.problems)


class _Model(BaseModel):
    # camelCase in stack files, snake_case in Python; unknown keys are errors. Only the
    # camelCase name is accepted: `mountPoint` and `mount_point` side by side would be
    # the same setting twice.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid", frozen=True)


class SharedStorage(_Model):
    """A file system shared by every node (StarCluster's NFS /home).

    `source` is where it comes from: `efs` (the stack creates an encrypted EFS),
    `nfs:HOST:/EXPORT` (an NFS server you already run), or `bind:/PATH` (a
    directory the image or the host already provides on every node).
    """

    enabled: bool = True
    mount_point: str = "/shared"
    retain_on_destroy: bool = True
    source: str = "efs"

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v == "efs":
            return v
        kind, _, rest = v.partition(":")
        if kind == "nfs" and re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*:(/[A-Za-z0-9_.-]+)*/?$", rest):
            return v
        if kind == "bind" and MOUNT_POINT.match(rest):
            return v
        raise ValueError("must be efs, nfs:HOST:/EXPORT or bind:/PATH")

    @property
    def creates_efs(self) -> bool:
        return self.enabled and self.source == "efs"


class S3Mount(_Model):
    """A bucket (or a prefix of one) mounted on every node with s3fs."""

    bucket: str
    prefix: str = ""
    mount_point: str
    read_only: bool = True

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET_NAME.match(v) or ".." in v or _looks_like_ip(v):
            raise ValueError("not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not S3_PREFIX.match(v) or ".." in v.split("/"):
            raise ValueError(
                "S3 prefix may hold only letters, digits and !_.'()/- (no * or ?: IAM reads them as wildcards)"
            )
        return v


class IpyparallelSettings(_Model):
    packer: Literal["json", "pickle", "msgpack"] = "json"
    scheme: Scheme = "leastload"
    # Heartbeat period. ipyparallel's default (3000 ms) makes registration take
    # about 6 s; 1000 ms registers in about 1 s for little extra traffic.
    ping_ms: int = Field(default=1000, ge=100, le=60_000)
    # Tasks the scheduler hands each engine before its first finishes (TaskScheduler.hwm).
    # 1 keeps the queue at the controller: engines added by scale-out get work at once, the
    # autoscaler sees the queue, and a lost node takes only its running tasks. 0 (no limit)
    # ran short tasks 1.1x to 1.5x faster in benchmarks/throughput.py, for a fixed fleet.
    high_water_mark: int = Field(default=1, ge=0, le=1000)
    # Finished tasks the controller keeps (task database and hub), the newest; older
    # ones are culled. 0 keeps all: a long run then grows the controller without bound.
    keep_tasks: int = Field(default=100_000, ge=0, le=10_000_000)

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v == "pure":
            raise ValueError(
                "is ZeroMQ's own scheduler, which cannot resubmit the tasks of a lost engine (retries) or "
                "record them in the task database, and ipfleet's spot nodes rely on both; use leastload "
                "(the default), lru, twobin, weighted or plainrandom"
            )
        return v


class Autoscale(_Model):
    """Engine nodes from the queue: the controller sets the group's desired capacity."""

    enabled: bool = False
    # Outstanding tasks (waiting or running) per engine that justify another node.
    tasks_per_engine: int = Field(default=2, ge=1, le=10_000)
    # Seconds between two changes: the group does not flap while nodes boot or drain.
    cooldown_seconds: int = Field(default=180, ge=10, le=86_400)


class Settings(_Model):
    """Everything a stack says about its cluster."""

    stack: str
    region: str
    engine_nodes: int = Field(default=2, ge=0)
    max_engine_nodes: int | None = Field(default=None, ge=0)
    # The floor for `ipfleet scale`, the autoscaler and the idle guard.
    min_engine_nodes: int = Field(default=0, ge=0)
    # The idle guard: engine nodes go to minEngineNodes after this long without a
    # task or a client (0: never). Minutes, fractions allowed.
    idle_minutes: float = Field(default=60, ge=0, le=10_080, allow_inf_nan=False)
    autoscale: Autoscale = Field(default_factory=Autoscale)
    engine_instance_types: list[str] = Field(default_factory=lambda: ["c6i.large", "c5.large", "m6i.large"])
    engines_per_node: int | Literal["auto"] = "auto"
    on_demand_base: int = Field(default=0, ge=0)
    spot_max_price: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    controller_instance_type: str = "t3.medium"
    image: str = DEFAULT_IMAGE
    # Replace the controller on purpose: a running controller keeps its image and
    # bootstrap through `pulumi up` until this number changes.
    controller_revision: int = Field(default=1, ge=1, le=1_000_000)
    python_packages: list[str] = Field(default_factory=list)
    apt_packages: list[str] = Field(default_factory=list)
    package_index_url: str | None = None
    aws_endpoint_url: str | None = None
    shared_storage: SharedStorage = Field(default_factory=SharedStorage)
    s3_mounts: list[S3Mount] = Field(default_factory=list)
    ssh_public_key: str | None = None
    # Passwordless sudo for the controller's ipfleet-admin login: opt-in.
    admin_sudo: bool = False
    access: Access = Access.SSM
    admin_cidrs: list[str] = Field(default_factory=list)
    # Where nodes download the SSM agent from (access: ssm). None: AWS's own
    # regional package; "": the image already has it (Ubuntu, or a baked AMI).
    ssm_agent_url: str | None = None
    # The sha256 of the package at ssmAgentUrl (a fixed version): checked before dpkg.
    ssm_agent_sha256: str | None = None
    # JupyterLab on the controller, bound to its localhost, reached by tunnel.
    notebook: bool = False
    # StarCluster's habit: engines run in the shared storage and import modules put there.
    # Off: any node's user code could plant a module that every engine, and the
    # controller's notebook, would then import (docs/security.md).
    shared_imports: bool = False
    # Engines may act as clients of the controller (tasks that submit tasks): its client
    # ports open to the cluster's nodes. Off: engines reach its engine-facing ports only.
    engines_as_clients: bool = False
    ipyparallel: IpyparallelSettings = Field(default_factory=IpyparallelSettings)
    vpc_id: str | None = None
    subnet_ids: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)

    # --- single fields -----------------------------------------------------

    @field_validator("stack")
    @classmethod
    def _stack(cls, v: str) -> str:
        if not is_stack_name(v):
            raise ValueError(f"stack names are {STACK_NAME_RULE}")
        return v

    @field_validator(
        "engine_nodes", "max_engine_nodes", "min_engine_nodes", "on_demand_base", "controller_revision", mode="before"
    )
    @classmethod
    def _not_a_boolean(cls, v: Any) -> Any:
        # YAML's `true` would otherwise count as 1.
        if isinstance(v, bool):
            raise ValueError("must be a whole number, not true or false")
        return v

    @field_validator("idle_minutes", mode="before")
    @classmethod
    def _minutes(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number of minutes (0 turns the idle guard off), not true or false")
        return v

    @field_validator("engine_nodes", "max_engine_nodes", "min_engine_nodes", "on_demand_base")
    @classmethod
    def _group_size(cls, v: int | None) -> int | None:
        if v is not None and v > ASG_SIZE_MAX:
            raise ValueError(
                f"must be at most {ASG_SIZE_MAX}, the largest size the Auto Scaling API takes "
                "(your account's EC2 quotas are far lower)"
            )
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not REGION.match(v):
            raise ValueError("not an AWS region name such as us-east-1")
        partition_of(v)  # UnsupportedPartition (a ValueError) says which and why
        return v

    @field_validator("engines_per_node", mode="before")
    @classmethod
    def _engines_per_node(cls, v: Any) -> int | str:
        if v == wire.ENGINES_PER_VCPU:
            return v
        try:
            number = int(v)
        except (TypeError, ValueError):
            number = 0
        if isinstance(v, bool) or number < 1 or str(number) != str(v).strip():
            raise ValueError("must be 'auto' or a whole number of at least 1")
        if number > ENGINES_PER_NODE_MAX:
            raise ValueError(f"must be at most {ENGINES_PER_NODE_MAX}; no EC2 instance has that many vCPUs")
        return number

    @field_validator("engine_instance_types")
    @classmethod
    def _engine_types(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one instance type")
        if len(v) > INSTANCE_TYPES_MAX:
            raise ValueError(f"lists {len(v)} types; an Auto Scaling group takes at most {INSTANCE_TYPES_MAX}")
        for t in v:
            _check_instance_type(t)
        if len(set(v)) != len(v):
            raise ValueError("lists an instance type twice")
        if len({architecture(t) for t in v}) > 1:
            raise ValueError("mixes arm64 (Graviton) and x86_64 types; one image cannot boot both")
        return v

    @field_validator("controller_instance_type")
    @classmethod
    def _controller_type(cls, v: str) -> str:
        _check_instance_type(v)
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v not in KNOWN_IMAGES and not AMI_ID.match(v):
            raise ValueError(f"must be one of {', '.join(KNOWN_IMAGES)} or an AMI id (ami-...)")
        return v

    @field_validator("python_packages")
    @classmethod
    def _python_packages(cls, v: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for item in v:
            _no_control_characters(item)
            try:
                requirement = Requirement(item)
            except InvalidRequirement as e:
                reason = str(e).splitlines()[0]
                raise ValueError(f"{item!r} is not a pip requirement ({reason})") from None
            if requirement.url and not requirement.url.startswith(("https://", "git+https://")):
                raise ValueError(f"{item!r}: a direct URL must be https:// (plain http:// is refused)")
        return v

    @field_validator("apt_packages")
    @classmethod
    def _apt_packages(cls, v: list[str]) -> list[str]:
        for item in v:
            if not APT_PACKAGE.match(item):
                raise ValueError(f"{item!r} is not a Debian package name")
        return v

    @field_validator("package_index_url")
    @classmethod
    def _index_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        _no_control_characters(v)
        parts = urlsplit(v)
        if parts.scheme not in ("https", "file") or not (parts.netloc or parts.path):
            # Plain HTTP lets anyone on the way swap the packages nodes install as root.
            raise ValueError("must be an https:// or file:// URL (plain http:// is refused)")
        if parts.username or parts.password:
            # User data is readable by anything on the node: no credentials in it.
            raise ValueError("must not embed credentials (user data is not secret)")
        if any(c in v for c in " '\"`$\\"):
            raise ValueError("must not contain spaces, quotes, $ or backslashes")
        return v

    @field_validator("aws_endpoint_url")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        match = re.match(r"^(https?)://([A-Za-z0-9.-]+)(:\d{1,5})?/?$", v)
        if not match:
            raise ValueError("must be an http(s)://HOST[:PORT] URL")
        scheme, host = match.group(1), match.group(2).lower()
        # Every AWS call of the nodes goes there, signed with their role's credentials, and
        # the cluster's keys with them: AWS itself (a VPC endpoint's name included), or an
        # address inside the VPC (a stand-in such as the twin's), nothing else.
        if scheme == "https" and host.endswith(AWS_DOMAINS):
            return v.rstrip("/")
        if _looks_like_ip(host):
            address = ipaddress.ip_address(host)
            if address.is_private or address.is_loopback:
                return v.rstrip("/")
        raise ValueError(
            "must be https:// to an AWS host (" + ", ".join(AWS_DOMAINS) + ") or an address inside the VPC: "
            "the endpoint receives the nodes' signed calls and the cluster's keys"
        )

    @field_validator("ssm_agent_sha256")
    @classmethod
    def _agent_sha256(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be a sha256 in 64 lowercase hex digits")
        return v

    @field_validator("ssm_agent_url")
    @classmethod
    def _agent_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return v
        if not re.match(r"^https://[A-Za-z0-9.-]+(:\d{1,5})?/[A-Za-z0-9_./+-]*\.deb$", v):
            raise ValueError("must be an https:// URL of a .deb package, or empty for an image that has the agent")
        return v

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        match = SSH_KEY.match(v)
        if not match:
            raise ValueError("not an OpenSSH public key (the one line of ~/.ssh/id_ed25519.pub)")
        kind, body = match.group(1), match.group(2)
        if kind not in EC2_KEY_TYPES:
            raise ValueError(
                f"key type {kind}: EC2 imports only ssh-ed25519 and ssh-rsa keys (make one with ssh-keygen -t ed25519)"
            )
        try:
            blob = base64.b64decode(body, validate=True)
        except ValueError:
            blob = b""
        # The key's body names its own type: a pasted key cut short or mixed up fails here.
        if blob[4 : 4 + len(kind)] != kind.encode() or int.from_bytes(blob[:4], "big") != len(kind):
            raise ValueError(f"the key's body is not a {kind} key (cut short or mixed up?)")
        return v

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        if len(v) > ADMIN_CIDRS_MAX:
            raise ValueError(
                f"lists {len(v)} blocks; a security group holds 60 inbound rules by default "
                f"and ipfleet uses 2, so at most {ADMIN_CIDRS_MAX}"
            )
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item, strict=True)))
            except ValueError as e:
                raise ValueError(f"{item!r} is not a CIDR block ({e})") from None
        return out

    @field_validator("vpc_id")
    @classmethod
    def _vpc(cls, v: str | None) -> str | None:
        if v is not None and not VPC_ID.match(v):
            raise ValueError("not a VPC id (vpc-...)")
        return v

    @field_validator("subnet_ids")
    @classmethod
    def _subnets(cls, v: list[str]) -> list[str]:
        for item in v:
            if not SUBNET_ID.match(item):
                raise ValueError(f"{item!r} is not a subnet id (subnet-...)")
        if len(set(v)) != len(v):
            raise ValueError("lists a subnet twice")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > USER_TAGS_MAX:
            raise ValueError(f"has {len(v)} tags; AWS resources take 50 and ipfleet sets 3, so at most {USER_TAGS_MAX}")
        for key, value in v.items():
            if key.lower().startswith("aws:") or key in RESERVED_TAG_KEYS:
                raise ValueError(f"tag key {key!r} is reserved (aws:*, {', '.join(RESERVED_TAG_KEYS)})")
            if not 0 < len(key) <= 128 or not _tag_text(key):
                raise ValueError(
                    f"tag key {key!r} must be 1-128 letters, digits, spaces or _.:/=+-@ "
                    "(IAM, EFS and SSM refuse others)"
                )
            if len(value) > 256 or not _tag_text(value):
                raise ValueError(
                    f"tag {key!r} has value {value!r}; values are up to 256 letters, digits, "
                    "spaces or _.:/=+-@ (IAM, EFS and SSM refuse others)"
                )
        return v

    # --- settings that depend on each other ---------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        maximum = self.max_engine_nodes
        if maximum is not None and maximum < self.engine_nodes:
            raise _FieldError(
                "maxEngineNodes",
                maximum,
                f"is below engineNodes ({self.engine_nodes}); the fleet could never reach it",
            )
        if self.min_engine_nodes > self.engine_nodes:
            raise _FieldError(
                "minEngineNodes",
                self.min_engine_nodes,
                f"is above engineNodes ({self.engine_nodes}); the group starts between its minimum and maximum",
            )
        if self.autoscale.enabled and self.fleet_max == self.min_engine_nodes:
            raise _FieldError(
                "autoscale",
                self.autoscale.enabled,
                f"has nothing to scale: minEngineNodes and the maximum are both {self.fleet_max} "
                "(set ipfleet:maxEngineNodes above it)",
            )
        if self.on_demand_base > self.fleet_max:
            raise _FieldError(
                "onDemandBase",
                self.on_demand_base,
                f"is above the fleet's maximum size ({self.fleet_max})",
            )
        if self.access.opens_port and not self.admin_cidrs:
            raise _FieldError(
                "access",
                self.access,
                "opens a port, so ipfleet:adminCidrs must say who may reach it "
                "(or use access: ssm, which opens nothing)",
            )
        if self.access is Access.SSH and not self.ssh_public_key:
            raise _FieldError(
                "access",
                self.access,
                "logs in with a key, so ipfleet:sshPublicKey must hold your public key "
                "(the contents of ~/.ssh/id_ed25519.pub, say)",
            )
        if self.notebook and not self.access.tunnelled:
            raise _FieldError(
                "notebook",
                self.notebook,
                "is reached through the SSH tunnel, which access: direct does not have (use access: ssm or ssh)",
            )
        if self.subnet_ids and not self.vpc_id:
            raise _FieldError("subnetIds", self.subnet_ids, "needs ipfleet:vpcId as well")
        if self.admin_sudo and not (self.ssh_public_key and self.access.tunnelled):
            raise _FieldError(
                "adminSudo",
                self.admin_sudo,
                "applies to the ipfleet-admin login, which exists only with access ssm or ssh "
                "and an ipfleet:sshPublicKey",
            )
        image = IMAGES.get(self.image)
        if self.s3_mounts and image is not None and not image.s3fs_imdsv2:
            raise _FieldError(
                "s3Mounts",
                [m.bucket for m in self.s3_mounts],
                f"cannot work on image {self.image}: its s3fs gets no IAM role credentials when IMDSv2 is "
                "required (fixed in s3fs 1.91), and ipfleet requires IMDSv2; use image debian-13 "
                "(the default) or ubuntu-24.04",
            )
        if self.ssm_agent_sha256 and not self.ssm_agent_url:
            raise _FieldError(
                "ssmAgentSha256",
                self.ssm_agent_sha256,
                "needs ipfleet:ssmAgentUrl naming that exact package: AWS's default URL is its latest agent, "
                "whose sha256 changes with every release",
            )
        self._check_mounts()
        return self

    def _check_mounts(self) -> None:
        seen: dict[str, str] = {}
        wanted = [(f"s3Mounts[{i}].mountPoint", m.mount_point) for i, m in enumerate(self.s3_mounts)]
        if self.shared_storage.enabled:
            wanted.insert(0, ("sharedStorage.mountPoint", self.shared_storage.mount_point))
        for key, point in wanted:
            if not point.startswith("/"):
                raise _FieldError(key, point, "must be an absolute path")
            if not MOUNT_POINT.match(point) or posixpath.normpath(point) != point or ".." in point.split("/"):
                raise _FieldError(key, point, "must be a plain absolute path (letters, digits, _ . -)")
            for used in NODE_PATHS:
                if _at_or_below(point, used) or _at_or_below(used, point):
                    raise _FieldError(key, point, f"would hide ipfleet's own files on the node ({used})")
            if point == "/" or any(_at_or_below(point, tree) for tree in SYSTEM_TREES):
                raise _FieldError(key, point, "would hide part of the node's own system")
            for other, other_key in seen.items():
                if _at_or_below(point, other) or _at_or_below(other, point):
                    raise _FieldError(key, point, f"collides with {other_key} {other!r}")
            seen[point] = key
        self._check_bind_source(NODE_PATHS)

    def _check_bind_source(self, node_paths: tuple[str, ...]) -> None:
        """A `bind:/PATH` source becomes the service user's (the bootstrap shares it with the
        engines): never a system tree, a home, or ipfleet's own files."""
        storage = self.shared_storage
        kind, _, source = storage.source.partition(":")
        if not storage.enabled or kind != "bind":
            return
        key = "sharedStorage.source"
        if posixpath.normpath(source) != source or ".." in source.split("/"):
            raise _FieldError(key, storage.source, "must be a plain absolute path")
        refused = (*SYSTEM_TREES, "/home", *node_paths)
        for tree in refused:
            if _at_or_below(source, tree) or _at_or_below(tree, source):
                raise _FieldError(
                    key,
                    storage.source,
                    f"would hand {tree} to the cluster's service user; bind a folder of its own "
                    "(e.g. bind:/srv/shared)",
                )

    # --- derived values -----------------------------------------------------

    @property
    def fleet_max(self) -> int:
        return self.engine_nodes if self.max_engine_nodes is None else self.max_engine_nodes

    @property
    def engine_architecture(self) -> str:
        return architecture(self.engine_instance_types[0])

    @property
    def controller_architecture(self) -> str:
        return architecture(self.controller_instance_type)

    @property
    def rendezvous_parameter(self) -> str:
        """Where the controller publishes connection info (an SSM SecureString)."""
        return rendezvous_parameter(self.stack)

    @property
    def keys_parameter(self) -> str:
        return keys_parameter(self.stack)

    @property
    def records_location_parameter(self) -> str:
        return records_location_parameter(self.stack)

    @property
    def controller_parameters(self) -> tuple[str, ...]:
        """Every parameter only the controller's role writes, in the order its policy lists
        them (components/rendezvous.py): rendezvous, keys, notebook token, record, keeper."""
        stack = self.stack
        return (
            self.rendezvous_parameter,
            self.keys_parameter,
            notebook_parameter(stack),
            controller_record_parameter(stack),
            keeper_parameter(stack),
        )

    @property
    def partition(self) -> Partition:
        """The region's partition: how ARNs begin and where endpoints live."""
        return partition_of(self.region)

    @property
    def curve(self) -> bool:
        """CurveZMQ encryption: required where client ports face a network (direct).

        ipyparallel's ssh tunnels skip Curve on client sockets, so ssm and ssh
        modes rely on SSH's encryption between laptop and controller instead.
        """
        return self.access.curve


# The stack's parameter paths: the wire contract's (bootstrap/ipfleet_node/wire.py).
rendezvous_parameter = wire.connection_parameter
keys_parameter = wire.keys_parameter
records_location_parameter = wire.records_location_parameter
controller_record_parameter = wire.controller_record_parameter
keeper_parameter = wire.keeper_parameter
notebook_parameter = wire.notebook_parameter


def architecture(instance_type: str) -> str:
    """arm64 for Graviton families (m7g, c6gn, t4g...), x86_64 otherwise.

    The generation digit is followed by attribute letters; a `g` among them marks
    Graviton. A leading `g` (g5, g4dn) is a GPU family, which is x86_64.
    """
    family = instance_type.split(".", 1)[0]
    m = re.match(r"^[a-z]+?(\d+)([a-z-]*)$", family)
    return "arm64" if m and "g" in m.group(2) else "x86_64"


def _check_instance_type(v: str) -> None:
    if not INSTANCE_TYPE.match(v):
        raise ValueError(f"{v!r} is not an EC2 instance type such as c6i.large")


def _at_or_below(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _tag_text(text: str) -> bool:
    """IAM's tag pattern [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*: letters, separators, numbers, and _.:/=+-@."""
    return all(c in TAG_PUNCTUATION or unicodedata.category(c)[0] in "LZN" for c in text)


def _looks_like_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


class _FieldError(ValueError):
    """A cross-field problem, attributed to one setting."""

    def __init__(self, key: str, value: Any, message: str):
        self.key, self.value, self.message = key, value, message
        super().__init__(message)


# --- parsing raw stack config ----------------------------------------------

_FIELDS = {info.alias or name: name for name, info in Settings.model_fields.items() if name not in ("stack", "region")}


def parse_settings(stack: str, config: Mapping[str, Any]) -> Settings:
    """Turn a stack's raw config (keys like `ipfleet:engineNodes`) into Settings.

    Values may be native (from a YAML stack file) or strings (how the Pulumi
    engine hands config to a program, objects and lists as JSON).
    """
    problems: list[str] = []
    raw: dict[str, Any] = {"stack": stack}
    region = config.get("aws:region")
    if region is None:
        problems.append("aws:region: required; the stack file must say which region the cluster lives in")
    else:
        raw["region"] = region
    for full_key, value in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if key not in _FIELDS:
            hint = difflib.get_close_matches(key, list(_FIELDS), n=1)
            suggestion = f"; did you mean {NAMESPACE}:{hint[0]}?" if hint else ""
            problems.append(f"{full_key}: unknown setting{suggestion}")
            continue
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                problems.append(f"{full_key}: not valid JSON ({e.msg}) (got {value!r})")
                continue
        raw[key] = value
    # Validate what is known even when something is not: every mistake at once.
    lines: list[str] = list(problems)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            line = _describe(err)
            # A union (enginesPerNode) fails once per branch: say it once.
            if not any(line.split(": ", 1)[0] == seen.split(": ", 1)[0] for seen in lines):
                lines.append(line)
    if lines:
        raise SettingsError(lines, stack)
    return settings


def _describe(err: Mapping[str, Any]) -> str:
    """One line per problem: the setting as the user wrote it, what is wrong, the value."""
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _FieldError):
        return f"{NAMESPACE}:{ctx_error.key}: {ctx_error.message} (got {_show(ctx_error.value)})"
    loc = [str(p) for p in err["loc"]]
    # Unions report the branch they tried (e.g. `int`, `literal['auto']`): drop it.
    loc = [p for p in loc if not p.startswith(("int", "literal[", "function-", "str"))]
    if loc and loc[0] == "region":
        key = "aws:region"
    elif loc and loc[0] == "stack":
        key = "stack name"
    else:
        path = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
        key = f"{NAMESPACE}:{path}" if path else NAMESPACE
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if err["type"] == "extra_forbidden":
        message = "unknown setting"
    elif err["type"] == "missing":
        message = "required"
    value = err.get("input", None)
    shown = "" if err["type"] == "missing" else f" (got {_show(value)})"
    return f"{key}: {message}{shown}"


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
