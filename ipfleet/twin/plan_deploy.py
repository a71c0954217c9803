"""The deploy of a plan: what `pulumi up` would leave in AWS, read from the plan the
Pulumi program declares and made in moto (parameters, buckets and objects, the engine
group), and the user data each role's nodes will find written."""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from bootstrap.ipfleet_node import paths, wire
from ipfleet.access import Access
from ipfleet.twin import vpc
from ipfleet.twin.instances import SHARED_SOURCE, WHEELHOUSE_MOUNT
from ipfleet.twin.laptop import client_python
from ipfleet.twin.state import TwinError, TwinState
from ipfleet.twin.vpc import (
    ENDPOINT,
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


def twin_config(config: dict[str, Any], admin_public_key: str | None = None) -> dict[str, Any]:
    """The stack's config plus the twin's knobs; shared storage becomes the twin's host folder.

    The twin's client namespace is the admin: its key is the stack's
    sshPublicKey, and its subnet the adminCidrs of a mode that opens a port.
    """
    out = {**config, **TWIN_KNOBS}
    if admin_public_key:
        out["ipfleet:sshPublicKey"] = admin_public_key
    if config.get("ipfleet:access") in [mode.value for mode in Access if mode.opens_port]:
        out["ipfleet:adminCidrs"] = [vpc.CLIENT_SUBNET]
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


def cluster_ingress(plan) -> list[tuple[int, int]]:
    """The security group's rules that admit its own members (node to node), from the plan."""
    from ipfleet.checks import INGRESS_RULE

    return [
        (int(rule.inputs["fromPort"]), int(rule.inputs["toPort"]))
        for rule in plan.of_type(INGRESS_RULE)
        if rule.inputs.get("referencedSecurityGroupId") and rule.inputs.get("ipProtocol") == "tcp"
    ]


def cidr_ingress(plan) -> list[tuple[str, int, int]]:
    """The security group's rules that admit addresses (not the group itself), from the plan."""
    from ipfleet.checks import INGRESS_RULE

    rules = []
    for rule in plan.of_type(INGRESS_RULE):
        cidr = rule.inputs.get("cidrIpv4") or rule.inputs.get("cidrIpv6")
        if cidr and rule.inputs.get("ipProtocol") == "tcp":
            rules.append((cidr, int(rule.inputs["fromPort"]), int(rule.inputs["toPort"])))
    return rules


def deploy_plan(state: TwinState, plan, settings) -> dict:
    """What `pulumi up` leaves in AWS, made in moto from the plan: the parameters with
    their placeholders, the buckets and objects (the node runtime's wheel, byte for
    byte), the VPC's subnet, the controller's instance at its address, the engine group
    (in that subnet, so EC2 gives each engine node its address) with its hook. Returns
    {"group", "subnet", "instances": [the controller's id]}."""
    parameters = stack_parameters(plan)
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
        "network": {"vpc_cidr": vpc.VPC_CIDR, "subnet_cidr": vpc.CLUSTER_SUBNET, "zone": f"{settings.region}a"},
        "instances": [controller_instance_spec(state, state.controller.address)],
        "group": engine_group_spec(state, plan),
    }
    spec_file = state.work_dir / "aws-spec.json"
    spec_file.write_text(json.dumps(spec))
    made = client_python(state, ["-m", "ipfleet.twin.moto_deploy", f"@{spec_file}"], timeout=60)
    return json.loads(made.stdout)


def stack_parameters(plan) -> list[dict]:
    """The stack's SSM parameters as `pulumi up` leaves them: the controller's hold the
    placeholder (their values are the nodes'), the others their planned value."""
    return [
        {
            "name": p.inputs["name"],
            "type": p.inputs["type"],
            "value": p.inputs.get("insecureValue") or wire.PENDING,
        }
        for p in plan.of_type("aws:ssm/parameter:Parameter")
    ]


def controller_instance_spec(state: TwinState, address: str, subnet: str | None = None) -> dict:
    """The controller's instance as EC2 lists it: its address, the stack's tags, and the
    public address the twin routes to it when the stack gives it one."""
    return {
        "address": address,
        "instance_type": state.instance_types["controller"],
        "tags": {wire.STACK_TAG: state.stack, wire.ROLE_TAG: "controller"},
        "public_address": vpc.PUBLIC_ADDRESS if state.public_ip else None,
        **({"subnet": subnet} if subnet else {}),
    }


def run_controller_instance(state: TwinState, address: str) -> str:
    """A replacement controller's instance at ADDRESS (the twin's one public address stays
    with the first). Returns its id."""
    instance = {**controller_instance_spec(state, address, state.subnet_id), "public_address": None}
    spec = {"region": state.region, "instances": [instance]}
    made = client_python(state, ["-m", "ipfleet.twin.moto_deploy", json.dumps(spec)], timeout=60)
    return json.loads(made.stdout)["instances"][0]


def terminate_instances(state: TwinState, instance_ids: list[str]) -> None:
    spec = {"region": state.region, "terminate": instance_ids}
    client_python(state, ["-m", "ipfleet.twin.moto_deploy", json.dumps(spec)], timeout=60)


def engine_group_spec(state: TwinState, plan) -> dict:
    """The engine group as the plan declares it (the twin names it; AWS would add a suffix)."""
    return group_spec_of(plan, f"{state.stack}-engines-{state.tag}", state.instance_types["engine"], f"{state.region}a")


def group_spec_of(plan, name: str, instance_type: str, zone: str) -> dict:
    """moto_deploy's group spec from the plan's group and drain hook: bounds, size, tags,
    the engines' user data, the hook; NAME, the type and the zone as the caller places it."""
    from ipfleet.plan_view import encoded_user_data

    group = plan.one("aws:autoscaling/group:Group").inputs
    hook = plan.one("aws:autoscaling/lifecycleHook:LifecycleHook").inputs
    return {
        "name": name,
        "min": group["minSize"],
        "max": group["maxSize"],
        "desired": group["desiredCapacity"],
        "user_data": encoded_user_data(plan, "engine"),
        "instance_type": instance_type,
        "zone": zone,
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
    client_python(state, ["-m", "ipfleet.twin.moto_deploy", json.dumps(spec)], timeout=60)
