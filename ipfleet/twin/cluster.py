"""Bring a twin up, watch it, run the demo on it, take it down, leaving nothing behind."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bootstrap.ipfleet_node import paths, wire
from ipfleet.access import Access
from ipfleet.errors import IpfleetError
from ipfleet.twin import network
from ipfleet.twin.client_env import client_source
from ipfleet.twin.network import (
    METADATA_ADDRESS,
    PUBLIC_ADDRESS,
    ROUTER_ADDRESS,
    Host,
    TwinNetwork,
    in_namespace,
)
from ipfleet.twin.node import SHARED_SOURCE, WHEELHOUSE_MOUNT, Node, process_alive, stop_group

STATE_ROOT = Path("/run/ipfleet/twin")
WORK_ROOT = Path("/var/lib/ipfleet/twin")
ENDPOINT = f"http://{ROUTER_ADDRESS}"
REQUIRED_TOOLS = (
    "ip",
    "systemd-nspawn",
    "debootstrap",
    "nsenter",
    "mount",
    "unshare",
    "cloud-init",
    "nft",
    "ssh",
    "ssh-keygen",
)

# The only differences between what AWS nodes get and what twin nodes get: settings
# users have reasons to want too (docs/twin.md).
TWIN_KNOBS = {
    "ipfleet:awsEndpointUrl": ENDPOINT,
    "ipfleet:packageIndexUrl": f"file://{WHEELHOUSE_MOUNT}/simple",
    # Session Manager does not exist here (a relay stands in for its transport),
    # so nodes install no SSM agent: the setting for images that bring their own.
    "ipfleet:ssmAgentUrl": "",
}


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


def check_platform() -> None:
    if platform.system() != "Linux":
        raise TwinError(f"the twin runs on Linux only (this is {platform.system()})")
    if os.geteuid() != 0:
        raise TwinError("the twin needs root (network namespaces, mounts, systemd-nspawn)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise TwinError(
            f"missing tools: {', '.join(missing)} (apt-get install iproute2 systemd-container debootstrap cloud-init)"
        )
    import importlib.util

    # The twin's own Python dependencies (moto's server stands in for AWS) are an extra.
    if importlib.util.find_spec("moto") is None:
        raise TwinError("the twin needs ipfleet's twin extra: pip install 'ipfleet[twin]'")


def twin_config(config: dict[str, Any], admin_public_key: str | None = None) -> dict[str, Any]:
    """The stack's config plus the twin's knobs; shared storage becomes the twin's host folder.

    The twin's client namespace is the admin: its key is the stack's
    sshPublicKey, and its subnet the adminCidrs of a mode that opens a port.
    """
    out = {**config, **TWIN_KNOBS}
    if admin_public_key:
        out["ipfleet:sshPublicKey"] = admin_public_key
    if config.get("ipfleet:access") in [mode.value for mode in Access if mode.opens_port]:
        out["ipfleet:adminCidrs"] = [network.CLIENT_SUBNET]
    shared = dict(config.get("ipfleet:sharedStorage") or {})
    if isinstance(shared, dict) and shared.get("enabled", True):
        shared["source"] = f"bind:{SHARED_SOURCE}"
        out["ipfleet:sharedStorage"] = shared
    return out


def user_data_of(plan, role: str) -> bytes:
    """The exact bytes EC2 would hand this role's nodes (gzip stays gzip: cloud-init unpacks it)."""
    import base64

    from ipfleet.plan_view import encoded_user_data

    return base64.b64decode(encoded_user_data(plan, role))


def written_files(user_data: bytes) -> dict[str, str]:
    """{path: content} of what the user data's write_files puts on a node."""
    import gzip

    if user_data[:2] == b"\x1f\x8b":
        user_data = gzip.decompress(user_data)
    return {
        entry["path"]: entry.get("content", "") for entry in yaml.safe_load(user_data.decode()).get("write_files") or []
    }


def written(files: dict[str, str], path: str) -> str:
    if path not in files:
        raise TwinError(f"the user data writes no {path}")
    return files[path]


def node_facts_of(files: dict[str, str]) -> dict:
    """The node's facts file, from its user data's written files."""
    return json.loads(written(files, paths.FACTS_FILE))


def apt_packages_of(files: dict[str, str]) -> list[str]:
    """The Debian packages a node's bootstrap installs if its image lacks them: its
    `wanted=(...)` line (bootstrap.sh.j2), read the way bash reads it."""
    for line in written(files, paths.BOOTSTRAP_SCRIPT).splitlines():
        if line.startswith("wanted=(") and line.endswith(")"):
            return shlex.split(line.removeprefix("wanted=(").removesuffix(")"))
    raise TwinError(f"{paths.BOOTSTRAP_SCRIPT} in the user data names no packages (no wanted=(...) line)")


def python_lines_of(files: dict[str, str], path: str) -> list[str]:
    """A node's pinned Python requirements or constraints (PATH: where the user data writes them)."""
    return [line.strip() for line in written(files, path).splitlines() if line.strip()]


def twin_suite(image: str) -> str:
    """The Debian release the twin builds for the stack's `ipfleet:image`."""
    from ipfleet.images import IMAGES

    official = IMAGES.get(image)
    if official is None:
        raise TwinError(
            f"ipfleet:image {image!r}: the twin cannot know what that AMI holds; "
            "run the twin with an official image (debian-13, debian-12)"
        )
    if official.twin_suite is None:
        raise TwinError(
            f"ipfleet:image {image!r}: the twin builds Debian images only "
            "(only Debian's archive is reachable here); try it with debian-13"
        )
    return official.twin_suite


def host_name(stack: str, role: str) -> str:
    """A node's hostname: the stack's name cut to fit hostnames (64 characters, no _ or .)."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', stack)[:40]}-{role}"


def node_on(state: TwinState, host: Host, name: str, role: str, image: str, instance_id: str | None = None) -> Node:
    """A twin node on HOST (its namespace and address), its files under the twin's work folder."""
    return Node(
        name=name,
        role=role,
        namespace=host.namespace,
        address=host.address,
        work_dir=str(state.work_dir / name),
        instance_id=instance_id or new_instance_id(),
        image=image,
    )


def new_instance_id() -> str:
    return "i-" + secrets.token_hex(9)[:17]


def up(stack: str, log=print, engine_nodes: int | None = None, baked: bool = False) -> TwinState:
    """Boot the twin of STACK. On any failure, everything made so far is taken down.

    BAKED: boot an image that already holds the nodes' Python environment (built
    once and cached), instead of one that installs it from the package index."""
    check_platform()
    from ipfleet.plan import run_plan
    from ipfleet.project import resolve_stack
    from ipfleet.settings import parse_settings
    from ipfleet.stack_config import read_stack_file
    from ipfleet.twin.client_env import ensure_client_python
    from ipfleet.twin.rootfs import ensure_baked_image, ensure_rootfs, image_python_version
    from ipfleet.twin.wheelhouse import ensure_wheelhouse

    ref = resolve_stack(stack)
    clear_left_behind(ref.name, log)
    admin_key = _client_key(WORK_ROOT / ref.name / "client-home")
    config = twin_config(read_stack_file(ref.path), admin_key)
    if engine_nodes is not None:
        config["ipfleet:engineNodes"] = engine_nodes
    settings = parse_settings(ref.name, config)
    from components.preflight import preflight

    preflight(settings)
    plan = run_plan(ref.project_dir, ref.name, config, settings)
    user_data = {role: user_data_of(plan, role) for role in ("controller", "engine")}

    started = time.monotonic()
    suite = twin_suite(settings.image)
    # Each role's user data, parsed once: what its nodes will find written.
    files = {role: written_files(data) for role, data in user_data.items()}
    image = ensure_rootfs(suite, apt_packages_of(files["controller"]) + apt_packages_of(files["engine"]), log)
    # What the nodes' user data asks for, uv included, is what the package index holds.
    requirements = {line for role in files for line in python_lines_of(files[role], paths.PYTHON_REQUIREMENTS)}
    constraints = {line for role in files for line in python_lines_of(files[role], paths.PYTHON_CONSTRAINTS)}
    python_facts = node_facts_of(files["controller"])["python"]
    python_version = image_python_version(image)
    wheelhouse = ensure_wheelhouse(requirements | {python_facts["uv"]}, constraints, python_version, log)
    if baked:
        # The environment in the image, as a baked AMI holds it: the nodes only check it.
        image = ensure_baked_image(
            image, wheelhouse, requirements, constraints, python_facts, written(files["controller"], paths.PYENV), log
        )
    client_python = ensure_client_python(".".join(python_version.split(".")[:2]), log)
    prepare_seconds = time.monotonic() - started

    per_node = wire.engines_on(settings.engines_per_node, os.cpu_count() or 1)
    state = TwinState(
        stack=ref.name,
        tag=secrets.token_hex(2),
        region=settings.region,
        rendezvous_parameter=settings.rendezvous_parameter,
        engines_expected=settings.engine_nodes * per_node,
        engines_per_node=per_node,
        access=settings.access,
        client_python=client_python,
        public_ip=bool(plan.one("aws:ec2/instance:Instance").inputs.get("associatePublicIpAddress")),
        shared_mount_point=settings.shared_storage.mount_point if settings.shared_storage.enabled else None,
        instance_types={"controller": settings.controller_instance_type, "engine": settings.engine_instance_types[0]},
    )
    state.timings["prepare_image_and_packages"] = round(prepare_seconds, 2)
    net = TwinNetwork(state.tag)
    controller = net.host("controller", network.FIRST_NODE_HOST)
    client = net.client()
    state.namespaces = net.namespaces([controller, client])
    state.client_namespace = client.namespace
    name = host_name(ref.name, "controller")
    state.nodes = [node_on(state, controller, name, "controller", str(image))]
    state.save()  # from here on, `down` can clean up whatever exists
    try:
        net.create_router()
        net.attach(controller)
        net.attach_client(client)
        state.ingress = _cidr_ingress(plan)
        state.cluster_ingress = _cluster_ingress(plan)
        net.apply_security_group(state.ingress, state.controller.address, state.cluster_ingress)
        for role, data in user_data.items():
            state.user_data_file(role).parent.mkdir(parents=True, exist_ok=True)
            state.user_data_file(role).write_bytes(data)
        write_metadata(state)
        _start_aws(state, plan, settings)
        _make_shared_storage(state)
        state.booted_at = time.time()
        state.controller.prepare(image, user_data["controller"])
        state.controller.boot(state.shared_dir, wheelhouse)
        state.save()
        # The engine nodes are the group's: the reconciler boots what moto launched.
        _start_reconciler(state)
        _wait_for_engine_nodes(state, settings.engine_nodes)
        log(f"booted {len(state.nodes)} nodes: " + ", ".join(f"{n.name} ({n.address})" for n in state.nodes))
    except BaseException:
        down(state, log=lambda *_: None)
        raise
    return state


def _make_shared_storage(state: TwinState) -> None:
    """The folder standing in for the stack's EFS. The bootstrap hands the root of a file
    system the stack made to the service user, and of a bind: source to nobody; the twin
    binds this folder in place of the EFS, so it does here what the bootstrap does there."""
    from bootstrap.spec import SERVICE_UID

    state.shared_dir.mkdir(parents=True, exist_ok=True)
    os.chown(state.shared_dir, SERVICE_UID, SERVICE_UID)


def _start_reconciler(state: TwinState) -> None:
    log_file = state.work_dir / "reconciler.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "ipfleet.twin.reconciler", state.stack],
        stdout=log_file.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ),
    )
    with state.locked():
        state.reconciler_pid = process.pid


def _wait_for_engine_nodes(state: TwinState, count: int, timeout: float = 120) -> None:
    """Until the reconciler has booted COUNT engine nodes (as EC2 has them running)."""
    deadline = time.monotonic() + timeout
    while len(state.refresh().engine_nodes) < count or not all(n.pid for n in state.engine_nodes):
        if state.reconciler_pid is None or not process_alive(state.reconciler_pid):
            raise TwinError(f"the twin's reconciler stopped; see {state.work_dir / 'reconciler.log'}")
        if time.monotonic() > deadline:
            raise TwinError(
                f"the reconciler booted {len(state.engine_nodes)} of {count} engine nodes "
                f"in {timeout:.0f} s; see {state.work_dir / 'reconciler.log'}"
            )
        time.sleep(0.2)


def _client_key(home: Path) -> str:
    """The laptop's ssh key (made once per twin, like a user's ~/.ssh/id_ed25519)."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = ssh / "id_ed25519"
    if not private.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "twin-admin", "-f", str(private)], check=True
        )
    return (ssh / "id_ed25519.pub").read_text().strip()


def _cluster_ingress(plan) -> list[tuple[int, int]]:
    """The security group's rules that admit its own members (node to node), from the plan."""
    from ipfleet.checks import INGRESS_RULE

    return [
        (int(rule.inputs["fromPort"]), int(rule.inputs["toPort"]))
        for rule in plan.of_type(INGRESS_RULE)
        if rule.inputs.get("referencedSecurityGroupId") and rule.inputs.get("ipProtocol") == "tcp"
    ]


def _cidr_ingress(plan) -> list[tuple[str, int, int]]:
    """The security group's rules that admit addresses (not the group itself), from the plan."""
    from ipfleet.checks import INGRESS_RULE

    rules = []
    for rule in plan.of_type(INGRESS_RULE):
        cidr = rule.inputs.get("cidrIpv4") or rule.inputs.get("cidrIpv6")
        if cidr and rule.inputs.get("ipProtocol") == "tcp":
            rules.append((cidr, int(rule.inputs["fromPort"]), int(rule.inputs["toPort"])))
    return rules


def write_metadata(state: TwinState, extra: dict[str, dict] | None = None) -> None:
    """What each node's instance metadata says about it (the service re-reads this file).
    EXTRA adds values for a node, by address, for as long as the twin runs."""
    zone = f"{state.region}a"
    for address, more in (extra or {}).items():
        state.metadata_extra.setdefault(address, {}).update(more)
    values = {}
    for node in state.nodes:
        public = PUBLIC_ADDRESS if node.role == "controller" and state.public_ip else None
        values[node.address] = {
            "instance-id": node.instance_id,
            "local-ipv4": node.address,
            "public-ipv4": public,
            "placement/availability-zone": zone,
            "placement/region": state.region,
            "hostname": node.name,
            "iam-role": f"{state.stack}-{node.role}",
            "instance-type": state.instance_types.get(node.role),
            # The engines run on spot (the fleet's default); the controller on demand.
            "instance-life-cycle": "spot" if node.role == "engine" else "on-demand",
            # Auto Scaling's word to its nodes; the reconciler says Terminated when one leaves.
            **({"autoscaling/target-lifecycle-state": "InService"} if node.role == "engine" else {}),
            **state.metadata_extra.get(node.address, {}),
        }
    state.metadata_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.metadata_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=2))
    os.replace(tmp, state.metadata_file)


def _start_in_router(state: TwinState, command: list[str], log_name: str) -> int:
    log_file = state.work_dir / log_name
    log_file.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        in_namespace(state.namespaces[0], command),
        stdout=log_file.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process.pid


def _start_aws(state: TwinState, plan, settings) -> None:
    """moto server (the AWS APIs) and the IMDSv2-only metadata service in the router
    namespace, readied as `pulumi up` would leave AWS. moto answers on the API address
    only: its own metadata endpoint would also answer IMDSv1, which EC2 refuses here."""
    state.moto_pid = _start_in_router(
        state, [sys.executable, "-m", "ipfleet.twin.aws_server", "-H", ROUTER_ADDRESS, "-p", "80"], "aws.log"
    )
    state.save()
    state.metadata_pid = _start_in_router(
        state,
        [sys.executable, "-m", "ipfleet.twin.metadata", str(state.metadata_file), "--address", METADATA_ADDRESS],
        "metadata.log",
    )
    state.save()
    parameters = [
        {"name": p.inputs["name"], "type": p.inputs["type"], "value": "pending"}
        for p in plan.of_type("aws:ssm/parameter:Parameter")
    ]
    # What the stack stores in S3 (the node runtime's wheel), byte for byte, in the bucket
    # the plan names; the S3 mounts' buckets are the user's, made empty.
    objects = [
        {"bucket": o.inputs["bucket"], "key": o.inputs["key"], "body_base64": o.inputs["contentBase64"]}
        for o in plan.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    ]
    spec = {
        "region": settings.region,
        "parameters": parameters,
        "buckets": sorted({m.bucket for m in settings.s3_mounts} | {o["bucket"] for o in objects}),
        "objects": objects,
        "group": _engine_group_spec(state, plan),
    }
    spec_file = state.work_dir / "aws-spec.json"
    spec_file.write_text(json.dumps(spec))
    made = client_python(state, ["-m", "ipfleet.twin.aws", f"@{spec_file}"], timeout=60)
    state.group_name = json.loads(made.stdout)["group"]
    state.save()


def _engine_group_spec(state: TwinState, plan) -> dict:
    """The engine group as the plan declares it (the twin names it; AWS would add a suffix)."""
    from ipfleet.plan_view import encoded_user_data

    group = plan.one("aws:autoscaling/group:Group").inputs
    hook = plan.one("aws:autoscaling/lifecycleHook:LifecycleHook").inputs
    return {
        "name": f"{state.stack}-engines-{state.tag}",
        "min": group["minSize"],
        "max": group["maxSize"],
        "desired": group["desiredCapacity"],
        "user_data": encoded_user_data(plan, "engine"),
        "instance_type": state.instance_types["engine"],
        "zone": f"{state.region}a",
        "tags": {t["key"]: t["value"] for t in group["tags"]},
        "hook": {
            "name": hook["name"],
            "transition": hook["lifecycleTransition"],
            "timeout": hook["heartbeatTimeout"],
            "result": hook["defaultResult"],
        },
    }


def put_object(state: TwinState, bucket: str, key: str, body: str) -> None:
    spec = {"region": state.region, "objects": [{"bucket": bucket, "key": key, "body": body}]}
    client_python(state, ["-m", "ipfleet.twin.aws", json.dumps(spec)], timeout=60)


def client_env(state: TwinState) -> dict[str, str]:
    """The laptop's environment: throwaway credentials, the twin's endpoint, its own IPython dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ENDPOINT_URL": ENDPOINT,
            "AWS_ACCESS_KEY_ID": "twin",
            "AWS_SECRET_ACCESS_KEY": "twin",
            "AWS_DEFAULT_REGION": state.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "IPYTHONDIR": str(state.client_ipython_dir),
            "NO_COLOR": "1",
            "HOME": str(state.client_home),
            # The laptop's Python has ipfleet's dependencies; ipfleet itself is a copy of this one.
            "PYTHONPATH": str(client_source()),
            # And it is the `python` the laptop's commands find (`ipfleet run ... -- python job.py`).
            "PATH": os.pathsep.join([str(Path(state.client_python).parent), env.get("PATH", "/usr/bin:/bin")]),
        }
    )
    return env


def as_client(state: TwinState, command: list[str]) -> list[str]:
    """COMMAND as the laptop: in the client namespace, with a home of its own.

    ssh finds ~/.ssh through the password database, not $HOME. In a private
    mount namespace the client sees a copy of /etc/passwd that gives root the
    client's home, so the machine's own ~/.ssh is neither read nor touched.
    """
    passwd = state.work_dir / "client-passwd"
    if not passwd.exists():
        lines = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[2] == str(os.getuid()):
                fields[5] = str(state.client_home)
            lines.append(":".join(fields))
        passwd.write_text("\n".join(lines) + "\n")
    return in_namespace(
        state.client_namespace,
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/passwd && exec "$@"',
            str(passwd),
            *command,
        ],
    )


def client_python(state: TwinState, args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        as_client(state, [state.client_python or sys.executable, *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=client_env(state),
    )
    if not check:
        return result
    if result.returncode != 0:
        raise TwinError(f"`{' '.join(args[:3])}` in the client namespace failed:\n{result.stderr.strip()[-3000:]}")
    return result


def wait_ready(state: TwinState, timeout: float = 600, log=print) -> None:
    """Watch the controller come up and publish (node-side facts, read through nsenter)."""
    deadline = time.monotonic() + timeout
    controller = state.controller
    milestones = [("boot_to_controller_up", "ipcontroller.service"), ("boot_to_published", "ipfleet-publish.service")]
    for label, unit in milestones:
        while True:
            if not controller.running():
                raise TwinError(f"{controller.name} stopped; see {controller.console_log}")
            if _unit_active(controller, unit):
                with state.locked():
                    state.timings[label] = round(time.time() - state.booted_at, 2)
                log(f"{label.replace('_', ' ')}: {state.timings[label]} s")
                break
            if time.monotonic() > deadline:
                raise TwinError(
                    f"{unit} on {controller.name} not active after {timeout:.0f} s:\n" + describe_node(controller)
                )
            time.sleep(0.5)


def _unit_active(node: Node, unit: str) -> bool:
    try:
        return node.run("systemctl", "is-active", "--quiet", unit, timeout=15).returncode == 0
    except Exception:  # systemd not up yet, or the node is mid-boot
        return False


def describe_node(node: Node) -> str:
    """What a user debugging a node wants first: cloud-init's verdict and the units."""
    lines = []
    for command in (
        ["cloud-init", "status", "--long"],
        ["systemctl", "--no-pager", "--failed"],
        [
            "journalctl",
            "--no-pager",
            "-n",
            "40",
            "-u",
            "cloud-final",
            "-u",
            "ipcontroller",
            "-u",
            "ipfleet-publish",
            "-u",
            "ipfleet-connection",
            "-u",
            "ipengine@*",
        ],
    ):
        try:
            result = node.run(*command, timeout=30)
            lines.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
        except Exception as e:
            lines.append(f"$ {' '.join(command)}\n({e})")
    return "\n".join(lines)


REACH_PROBE = """
import json, socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def reach(port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
print(json.dumps({port: reach(port) for port in ports}))
"""


def client_reaches(state: TwinState, host: str, ports: list[int]) -> dict[int, bool]:
    """Which of PORTS on HOST accept a TCP connection from the laptop (2 s each)."""
    result = client_python(state, ["-c", REACH_PROBE, host, *map(str, ports)], timeout=60)
    return {int(k): v for k, v in json.loads(result.stdout).items()}


def session_proxy_command(state: TwinState) -> str:
    """ssh's ProxyCommand standing in for Session Manager's (see ipfleet/twin/session_relay.py)."""
    return f"{sys.executable} -m ipfleet.twin.session_relay --stack {state.stack} --target %h %p"


def connect(state: TwinState, timeout: float = 300) -> dict:
    """As a laptop: `ipfleet connect STACK --json` (Session Manager's relay stands in for ssm)."""
    args = ["-m", "ipfleet.cli", "connect", state.stack, "--region", state.region, "--json", "--timeout", str(timeout)]
    if Access(state.access) is Access.SSM:
        args += ["--proxy-command", session_proxy_command(state)]
    return json.loads(client_python(state, args, timeout=timeout + 30).stdout)


def engines_registered_at(state: TwinState) -> float:
    """When the controller had registered every expected engine (wall clock, from its journal)."""
    out = state.controller.run(
        "journalctl",
        "-u",
        "ipcontroller",
        "-o",
        "short-unix",
        "--no-pager",
        "--grep",
        "engine::Engine Connected",
        timeout=60,
    ).stdout
    seen: dict[str, float] = {}
    for line in out.splitlines():
        stamp, _, rest = line.partition(" ")
        seen.setdefault(rest.rsplit(":", 1)[-1].strip(), float(stamp))
    if len(seen) < state.engines_expected:
        raise TwinError(f"the controller's journal shows {len(seen)} of {state.engines_expected} engines")
    return sorted(seen.values())[state.engines_expected - 1]


def fetch_and_demo(state: TwinState, timeout: float = 300, log=print) -> dict:
    """As a laptop: `ipfleet connect`, then StarCluster's demo through `ipfleet.client()`."""
    connected = connect(state, timeout)
    log(
        f"connected ({state.access}: {connected['ssh_command'] or 'direct, CurveZMQ'}); "
        f"waiting for {state.engines_expected} engines"
    )
    demo = client_python(
        state,
        ["-m", "ipfleet.twin.client_demo", state.stack, str(state.engines_expected), str(timeout)],
        timeout=timeout + 30,
    )
    result = json.loads(demo.stdout)
    registered = engines_registered_at(state)
    with state.locked():
        # The cluster's own view (the hub's log), then what the laptop saw: it starts
        # only once the controller has published, and pays for its tunnel and imports.
        state.timings["boot_to_registered"] = round(registered - state.booted_at, 2)
        state.timings["boot_to_client_ready"] = round(result.pop("registered_at") - state.booted_at, 2)
        state.timings["boot_to_demo_done"] = round(result.pop("done_at") - state.booted_at, 2)
    return {**result, "access": state.access, "timings": dict(state.timings)}


def status(state: TwinState) -> dict:
    nodes = []
    for node in state.nodes:
        entry: dict[str, Any] = {
            "name": node.name,
            "role": node.role,
            "address": node.address,
            "running": node.running(),
        }
        if entry["running"]:
            try:
                entry["cloud_init"] = node.run("cloud-init", "status", timeout=15).stdout.split(":", 1)[-1].strip()
                units = (
                    ["ipcontroller.service", "ipfleet-publish.service"]
                    if node.role == "controller"
                    else ["ipfleet-connection.service", "ipengine@*.service"]
                )
                listing = node.run("systemctl", "list-units", "--no-legend", "--plain", *units, timeout=15).stdout
                entry["units"] = {line.split()[0]: line.split()[2] for line in listing.splitlines() if line.strip()}
            except Exception as e:
                entry["error"] = str(e)
        nodes.append(entry)
    return {
        "stack": state.stack,
        "nodes": nodes,
        "timings": state.timings,
        "namespaces": state.namespaces,
        "aws_endpoint": ENDPOINT,
    }


def _stop_client_processes(state: TwinState) -> list[str]:
    """The laptop's ssh control masters and tunnels outlive the demo by design: stop them."""
    if state.client_namespace not in network.existing_namespaces():
        return []
    listing = subprocess.run(["ip", "netns", "pids", state.client_namespace], capture_output=True, text=True)
    pids = [int(p) for p in listing.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [f"client process {p} still running" for p in pids if process_alive(p)]


def replace_controller(state: TwinState, timeout: float = 600, log=print) -> Node:
    """What `pulumi up` does when the controller is replaced: a new instance (new id, new
    address, empty disk) boots from the same user data; once it has published, the old
    one is terminated and its address is gone. Returns the new controller."""
    old = state.controller
    new = boot_replacement(state, timeout, log)
    retire_controller(state, old, log)
    return new


def boot_replacement(state: TwinState, timeout: float = 600, log=print) -> Node:
    """The first half of a replacement: the new controller boots and publishes, while the
    old one still serves (create before delete)."""
    old = state.controller
    net = TwinNetwork(state.tag)
    number = next_host_number(state)
    host = net.host(f"controller{number}", number)
    name = host_name(state.stack, f"controller-{number}")
    new = node_on(state, host, name, "controller", old.image)
    with state.locked():
        state.namespaces.append(host.namespace)
        state.nodes.append(new)
    net.attach(host)
    started = time.monotonic()
    new.prepare(Path(old.image), state.user_data_file("controller").read_bytes())
    new.boot(state.shared_dir, Path(old.wheelhouse))
    with state.locked():
        state.nodes = [new if n.name == new.name else n for n in state.nodes]
        write_metadata(state)
    log(f"booted the replacement controller {name} ({new.address}); waiting for it to publish")
    deadline = time.monotonic() + timeout
    while not _unit_active(new, "ipfleet-publish.service"):
        if not new.running() or time.monotonic() > deadline:
            raise TwinError(f"the replacement controller did not publish:\n{describe_node(new)}")
        time.sleep(0.5)
    state.timings["replacement_published"] = round(time.monotonic() - started, 2)
    return new


def retire_controller(state: TwinState, old: Node, log=print) -> None:
    """The second half: the old instance powers off and its address leaves the network."""
    old.stop()
    net = TwinNetwork(state.tag)
    net.destroy([old.namespace])
    with state.locked():
        state.nodes = [n for n in state.nodes if n.name != old.name]
        state.namespaces.remove(old.namespace)
        write_metadata(state)
    net.apply_security_group(
        [tuple(rule) for rule in state.ingress],
        state.controller.address,
        [tuple(rule) for rule in state.cluster_ingress],
    )
    log(f"terminated {old.name} ({old.address})")


def leave_group(state: TwinState, node: Node, timeout: float = 60) -> None:
    """A lost or interrupted engine node leaves its group, which launches a replacement
    to keep its desired capacity, as AWS does (the reconciler boots it). Returns once
    the reconciler has taken the lost node away."""
    from ipfleet.twin.group import TwinGroup

    group = TwinGroup(state.namespaces[0], ENDPOINT, state.region, state.group_name)
    try:
        group.lose(node.instance_id)
    finally:
        group.close()
    deadline = time.monotonic() + timeout
    while any(n.name == node.name for n in state.refresh().nodes):
        if time.monotonic() > deadline:
            raise TwinError(f"the reconciler did not take {node.name} away in {timeout:.0f} s")
        time.sleep(0.2)


def next_host_number(state: TwinState) -> int:
    """A free address for a new node: above every node there is (and ever was, for engines)."""
    return max([int(n.address.rsplit(".", 1)[1]) for n in state.nodes] + [network.FIRST_NODE_HOST + state.launched]) + 1


def clear_left_behind(stack: str, log=print) -> None:
    """Refuse to boot over a running twin of STACK; take down one whose processes have all ended.

    A twin outlives `twin up` by design, so only its processes say whether it is in use. When
    every one has ended (its maker was killed, the machine's processes were stopped), nothing
    runs that a teardown could stop by mistake, and its namespaces and mounts are only in the way."""
    if not (STATE_ROOT / stack / "state.json").exists():
        return
    left = TwinState.load(stack)
    if any(process_alive(pid) for pid in recorded_processes(left)):
        raise TwinError(f"a twin of {stack!r} is already up; `ipfleet twin down {stack}` first")
    log(f"a twin of {stack!r} was left behind with all its processes ended; taking it down first")
    down(left, log=log)


def recorded_processes(state: TwinState) -> list[int]:
    """Every process the twin started and recorded: nodes, moto, metadata, reconciler."""
    pids = [n.pid for n in state.nodes] + [state.moto_pid, state.metadata_pid, state.reconciler_pid]
    return [pid for pid in pids if pid]


def down(state: TwinState, log=print) -> list[str]:
    """Stop every node and process, unmount, delete namespaces and files. Returns leftovers."""
    leftovers = []
    # The reconciler first, so that it boots nothing more; then what it had booted.
    state.refresh()
    if state.reconciler_pid and process_alive(state.reconciler_pid):
        stop_group(state.reconciler_pid)
        state.refresh()
    for node in state.nodes:
        try:
            node.stop()
        except Exception as e:
            leftovers.append(f"{node.name}: {e}")
    for pid in (state.moto_pid, state.metadata_pid):
        if pid and process_alive(pid):
            stop_group(pid)
    leftovers += _stop_client_processes(state)
    leftovers += TwinNetwork(state.tag).destroy(state.namespaces)
    mounted = [n.name for n in state.nodes if os.path.ismount(n.root)]
    leftovers += [f"{name}: still mounted" for name in mounted]
    if not mounted:
        shutil.rmtree(state.work_dir, ignore_errors=True)
    shutil.rmtree(state.state_dir, ignore_errors=True)
    log(f"twin of {state.stack!r} is down" + (f"; left behind: {leftovers}" if leftovers else ""))
    return leftovers
