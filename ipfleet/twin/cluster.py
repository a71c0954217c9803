"""Bring a twin up, watch it, run the demo on it, take it down, leaving nothing behind."""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bootstrap.ipfleet_node import paths, wire
from ipfleet.twin import vpc
from ipfleet.twin.instances import Node, process_alive, stop_group
from ipfleet.twin.laptop import stop_client_processes
from ipfleet.twin.plan_deploy import (
    apt_packages_of,
    cidr_ingress,
    cluster_ingress,
    deploy_plan,
    node_facts_of,
    python_lines_of,
    run_controller_instance,
    terminate_instances,
    twin_config,
    user_data_of,
    written,
    written_files,
)
from ipfleet.twin.state import STATE_ROOT, WORK_ROOT, TwinError, TwinState
from ipfleet.twin.vpc import (
    ENDPOINT,
    METADATA_ADDRESS,
    PUBLIC_ADDRESS,
    ROUTER_ADDRESS,
    Host,
    TwinNetwork,
    in_namespace,
)

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
    from ipfleet.twin.amis import ensure_baked_image, ensure_rootfs, image_python_version
    from ipfleet.twin.client_env import ensure_client_python
    from ipfleet.twin.package_index import ensure_wheelhouse

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
    controller = net.host("controller", vpc.FIRST_NODE_HOST)
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
        state.ingress = cidr_ingress(plan)
        state.cluster_ingress = cluster_ingress(plan)
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
        state, [sys.executable, "-m", "ipfleet.twin.moto_server", "-H", ROUTER_ADDRESS, "-p", "80"], "aws.log"
    )
    state.save()
    state.metadata_pid = _start_in_router(
        state,
        [
            sys.executable,
            "-m",
            "ipfleet.twin.instance_metadata",
            str(state.metadata_file),
            "--address",
            METADATA_ADDRESS,
        ],
        "metadata.log",
    )
    state.save()
    made = deploy_plan(state, plan, settings)
    with state.locked():
        state.group_name, state.subnet_id = made["group"], made["subnet"]
        # EC2 names the controller's instance: its metadata says so from now on.
        state.controller.instance_id = made["instances"][0]
        write_metadata(state)


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
    new = node_on(state, host, name, "controller", old.image, run_controller_instance(state, host.address))
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
    terminate_instances(state, [old.instance_id])
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
    from ipfleet.twin.autoscaling import TwinGroup

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
    return max([int(n.address.rsplit(".", 1)[1]) for n in state.nodes] + [vpc.FIRST_NODE_HOST + state.launched]) + 1


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


# How long `down` lets a node power off cleanly before it kills it. A controller's
# container can sit past its units' stop for the whole grace (seen: 30 s), with nothing
# left to run that matters to a twin being taken away.
DOWN_GRACE = 10.0


def down(state: TwinState, log=print) -> list[str]:
    """Stop every node and process, unmount, delete namespaces and files. Returns leftovers."""
    leftovers = []
    # The reconciler first, so that it boots nothing more; then what it had booted.
    state.refresh()
    if state.reconciler_pid and process_alive(state.reconciler_pid):
        stop_group(state.reconciler_pid)
        state.refresh()

    # Every node powers off at once (as EC2 terminates a stack's instances): a node's
    # shutdown takes seconds, and one after another they added up to half a minute. A
    # node not off within DOWN_GRACE is killed: nothing of the twin outlives this call.
    def stop(node: Node) -> str | None:
        try:
            node.stop(timeout=DOWN_GRACE)
        except Exception as e:
            return f"{node.name}: {e}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, len(state.nodes))) as pool:
        leftovers += [problem for problem in pool.map(stop, state.nodes) if problem]
    for pid in (state.moto_pid, state.metadata_pid):
        if pid and process_alive(pid):
            stop_group(pid)
    leftovers += stop_client_processes(state)
    leftovers += TwinNetwork(state.tag).destroy(state.namespaces)
    mounted = [n.name for n in state.nodes if os.path.ismount(n.root)]
    leftovers += [f"{name}: still mounted" for name in mounted]
    if not mounted:
        shutil.rmtree(state.work_dir, ignore_errors=True)
    shutil.rmtree(state.state_dir, ignore_errors=True)
    log(f"twin of {state.stack!r} is down" + (f"; left behind: {leftovers}" if leftovers else ""))
    return leftovers
