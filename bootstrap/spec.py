"""What a node needs to know to configure itself, derived from a stack's Settings.

A NodeSpec is everything a template may use; nothing else reaches user data.
It holds no secret by construction: the cluster's keys are made on the
controller at boot and travel through the rendezvous parameter.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Literal

from bootstrap.ipfleet_node import wire
from bootstrap.pins import MSGPACK, NODE_PACKAGES, NOTEBOOK_PACKAGES, UV, locked, locked_closure
from ipfleet import ports
from ipfleet.access import Access
from ipfleet.settings import Settings, controller_record_parameter, keeper_parameter, notebook_parameter

Role = Literal["controller", "engine"]
ROLES: tuple[Role, ...] = ("controller", "engine")

# The service user that runs ipcontroller/ipengine. A fixed uid keeps file
# ownership consistent across nodes on the shared file system.
SERVICE_USER = "ipfleet"
SERVICE_UID = 2001

# Who logs in to the controller for tunnels (and for a look around): the same
# name on every image, unlike the images' default users (admin, ubuntu...).
LOGIN_USER = "ipfleet-admin"

# JupyterLab listens here on the controller's loopback only.
NOTEBOOK_PORT = 8888

# AWS publishes the SSM agent for Debian per region and architecture; Ubuntu's
# AMIs already carry it (as a snap).
# AWS's regional bucket of the agent, in the region's partition (ipfleet/partitions.py).
SSM_AGENT_URL = "{s3}/amazon-ssm-{region}/latest/debian_{arch}/amazon-ssm-agent.deb"

# EFS over NFS 4.1 with the options AWS documents for EFS clients.
EFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,_netdev,nofail"


@dataclass(frozen=True)
class Mount:
    """A file system the node mounts through a systemd .mount unit."""

    what: str
    where: str
    type: str
    options: str

    @property
    def unit(self) -> str:
        """systemd's name for the mount unit of `where` (`systemd-escape --path --suffix=mount`)."""
        return escape_path(self.where) + ".mount"


# The engine group's termination lifecycle hook: a leaving engine node drains, then
# completes it (components/engine_fleet.py declares it, the agent completes it).
DRAIN_HOOK = wire.DRAIN_HOOK


@dataclass(frozen=True)
class NodeSpec:
    role: Role
    stack: str
    region: str
    rendezvous_parameter: str
    keys_parameter: str
    access: str
    # Installed by uv into the venv: ipfleet's node packages pinned and the stack's
    # pythonPackages (requirements), every dependency held to this project's version
    # (constraints, bootstrap/pins.py), and the uv to fetch when the image has none.
    python_requirements: tuple[str, ...]
    python_constraints: tuple[str, ...]
    uv_requirement: str
    apt_packages: tuple[str, ...]
    package_index_url: str | None
    engines_per_node: int | str
    packer: str
    scheme: str
    ping_ms: int
    high_water_mark: int
    fleet_nodes: int
    keep_tasks: int
    mounts: tuple[Mount, ...] = ()
    shared_mount_point: str | None = None
    # The shared file system is one the stack made (EFS): the bootstrap hands its root to
    # the service user. Another's (nfs:, bind:) keeps the owner it has.
    shared_made_by_stack: bool = False
    # Engines (and the notebook's kernels) import from the shared storage (ipfleet:sharedImports).
    shared_imports: bool = False
    # The controller's own record, its keeper's summary and the notebook's token
    # (ipfleet/settings.py): parameters only the controller's role may write.
    controller_record_parameter: str = ""
    keeper_parameter: str = ""
    notebook_parameter: str = ""
    # Where boto3 and s3fs send AWS API calls; None means AWS itself.
    aws_endpoint_url: str | None = None
    client_ports: tuple[int, ...] = tuple(ports.CLIENT_PORTS.as_list())
    engine_ports: tuple[int, ...] = tuple(ports.ENGINE_PORTS.as_list())
    internal_ports: tuple[int, ...] = tuple(ports.INTERNAL_PORTS.as_list())
    # CurveZMQ on the controller's sockets (access: direct).
    curve: bool = False
    # The controller's login for tunnels: user and key (ssm and ssh modes).
    login_user: str = LOGIN_USER
    ssh_public_key: str | None = None
    # Passwordless sudo for that login (ipfleet:adminSudo, off by default).
    admin_sudo: bool = False
    # Where the login may forward to (sshd PermitOpen): these ports on the controller's
    # own address (what the client file names), and these on its loopback (the notebook).
    loopback_forward_ports: tuple[int, ...] = ()
    # Download URL of the SSM agent's package; None: not installed by ipfleet.
    ssm_agent_url: str | None = None
    ssm_agent_sha256: str | None = None
    notebook_port: int | None = None
    service_user: str = SERVICE_USER
    service_uid: int = SERVICE_UID
    # Environment of the ipfleet services, and so of user code on the engines.
    environment: tuple[tuple[str, str], ...] = field(default=())
    # The controller's keeper (bootstrap/ipfleet_node/keeper.py): the idle guard and
    # the autoscaler, within the engine group's floor. Engine nodes leave these empty.
    keeper: tuple[tuple[str, float | int | bool], ...] = ()
    # Where the controller's hub answers clients' queries from (besides its own address);
    # empty: from anywhere (engines as clients, and engine nodes).
    client_networks: tuple[str, ...] = ()
    # The stack's bucket holding the node runtime's wheel (components/node_runtime.py).
    runtime_bucket: str = ""


# A bucket name as long as S3 allows, for what is checked or rendered before deploy.
RUNTIME_BUCKET_PLACEHOLDER = "ipfleet-runtime-" + "0" * 47


def node_spec(
    settings: Settings, role: Role, efs_dns_name: str | None, runtime_bucket: str = RUNTIME_BUCKET_PLACEHOLDER
) -> NodeSpec:
    """The spec of one role's nodes. `efs_dns_name` and `runtime_bucket` are known only after deploy."""
    mounts: list[Mount] = []
    # No python3-venv: uv makes the venv. iproute2: the agent's `ip`, the keeper's `ss`.
    apt = ["iproute2"]
    shared = settings.shared_storage
    if shared.enabled:
        mounts.append(_shared_mount(shared.source, shared.mount_point, efs_dns_name))
        if shared.source == "efs" or shared.source.startswith("nfs:"):
            apt.append("nfs-common")
    endpoint = settings.aws_endpoint_url
    for m in settings.s3_mounts:
        source = f"{m.bucket}:/{m.prefix}" if m.prefix else m.bucket
        options = [
            "_netdev",
            "nofail",
            "allow_other",
            "iam_role=auto",
            f"uid={SERVICE_UID}",
            f"gid={SERVICE_UID}",
            "umask=0022",
            f"url={endpoint or settings.partition.endpoint('s3', settings.region)}",
            f"endpoint={settings.region}",
        ]
        if m.prefix:
            # s3fs 1.93+ refuses to mount a prefix that has no directory object (an empty
            # or tool-written prefix) unless asked to accept directories without one.
            options.append("compat_dir")
        if endpoint:
            options.append("use_path_request_style")  # endpoints other than AWS's own
        if m.read_only:
            options.append("ro")
        mounts.append(Mount(source, m.mount_point, "fuse.s3fs", ",".join(options)))
    if settings.s3_mounts:
        apt.append("s3fs")
    tunnels = settings.access.tunnelled and role == "controller"
    if tunnels:
        apt.append("openssh-server")
    own = list(NODE_PACKAGES)
    if settings.ipyparallel.packer == "msgpack":
        own.append(MSGPACK)
    notebook = settings.notebook and role == "controller"
    if notebook:
        own += NOTEBOOK_PACKAGES
    python = [locked(name) for name in own]
    return NodeSpec(
        role=role,
        stack=settings.stack,
        region=settings.region,
        rendezvous_parameter=settings.rendezvous_parameter,
        keys_parameter=settings.keys_parameter,
        access=settings.access,
        python_requirements=tuple(python + list(settings.python_packages)),
        python_constraints=locked_closure(own),
        uv_requirement=locked(UV),
        apt_packages=tuple(dict.fromkeys(apt + list(settings.apt_packages))),
        package_index_url=settings.package_index_url,
        engines_per_node=settings.engines_per_node,
        packer=settings.ipyparallel.packer,
        scheme=settings.ipyparallel.scheme,
        ping_ms=settings.ipyparallel.ping_ms,
        high_water_mark=settings.ipyparallel.high_water_mark,
        keep_tasks=settings.ipyparallel.keep_tasks,
        fleet_nodes=settings.fleet_max,
        mounts=tuple(mounts),
        shared_mount_point=shared.mount_point if shared.enabled else None,
        shared_made_by_stack=shared.creates_efs,
        shared_imports=settings.shared_imports and shared.enabled,
        controller_record_parameter=controller_record_parameter(settings.stack),
        keeper_parameter=keeper_parameter(settings.stack),
        notebook_parameter=notebook_parameter(settings.stack),
        aws_endpoint_url=endpoint,
        curve=settings.curve,
        ssh_public_key=settings.ssh_public_key if tunnels else None,
        admin_sudo=settings.admin_sudo and tunnels,
        loopback_forward_ports=(NOTEBOOK_PORT,) if tunnels and notebook else (),
        ssm_agent_url=_ssm_agent_url(settings, role),
        ssm_agent_sha256=settings.ssm_agent_sha256,
        notebook_port=NOTEBOOK_PORT if notebook else None,
        runtime_bucket=runtime_bucket,
        client_networks=_client_networks(settings) if role == "controller" else (),
        environment=(("AWS_DEFAULT_REGION", settings.region),)
        + ((("AWS_ENDPOINT_URL", endpoint),) if endpoint else ()),
        keeper=_keeper(settings) if role == "controller" else (),
    )


def _client_networks(settings: Settings) -> tuple[str, ...]:
    """Loopback, and the admin networks where clients dial the controller directly;
    nothing (no check) when engines are clients too."""
    if settings.engines_as_clients:
        return ()
    direct = () if settings.access.tunnelled else tuple(settings.admin_cidrs)
    return ("127.0.0.1/32", *direct)


def _keeper(settings: Settings) -> tuple[tuple[str, float | int | bool], ...]:
    scale = settings.autoscale
    return (
        ("idle_minutes", settings.idle_minutes),
        ("min_engine_nodes", settings.min_engine_nodes),
        ("autoscale", scale.enabled),
        ("tasks_per_engine", scale.tasks_per_engine),
        ("cooldown_seconds", scale.cooldown_seconds),
        ("ping_ms", settings.ipyparallel.ping_ms),
    )


def _ssm_agent_url(settings: Settings, role: Role) -> str | None:
    if settings.access is not Access.SSM:
        return None
    if settings.ssm_agent_url is not None:
        return settings.ssm_agent_url or None
    if settings.image.startswith("ubuntu"):
        return None
    architecture = settings.controller_architecture if role == "controller" else settings.engine_architecture
    return SSM_AGENT_URL.format(
        s3=settings.partition.endpoint("s3", settings.region),
        region=settings.region,
        arch="arm64" if architecture == "arm64" else "amd64",
    )


def _shared_mount(source: str, where: str, efs_dns_name: str | None) -> Mount:
    if source == "efs":
        if efs_dns_name is None:
            raise ValueError("shared storage comes from EFS but no EFS DNS name was given")
        return Mount(f"{efs_dns_name}:/", where, "nfs4", EFS_OPTIONS)
    kind, _, rest = source.partition(":")
    if kind == "nfs":
        return Mount(rest, where, "nfs4", "nfsvers=4.1,hard,timeo=600,retrans=2,_netdev,nofail")
    return Mount(rest, where, "none", "bind")


def escape_path(path: str) -> str:
    """systemd's path escaping (`systemd-escape --path`): slashes become dashes, and every
    byte but [A-Za-z0-9:_.] becomes \\xNN, as does a dot that starts the whole path
    (a dot starting a deeper component stays: /data/.cache is data-.cache)."""
    trimmed = posixpath.normpath(path).strip("/")
    if not trimmed:
        return "-"
    out = []
    for index, char in enumerate(trimmed):
        if char == "/":
            out.append("-")
        elif (char == "." and index == 0) or not re.fullmatch(r"[A-Za-z0-9:_.]", char):
            out.append("".join(f"\\x{b:02x}" for b in char.encode()))
        else:
            out.append(char)
    return "".join(out)
