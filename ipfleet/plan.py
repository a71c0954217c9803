"""Run the Pulumi program offline, under the SDK's own mock runtime, and record what it declares.

This is `ipfleet plan`: a credential-free review artifact for pull requests. It
runs the very `__main__.py` that `pulumi up` runs. Lookups the program makes of
the AWS account (image, default VPC, subnets) are answered with labelled
placeholders, and values AWS computes at deploy time (ids, ARNs, DNS names)
show as `<name.attribute>`. Secret inputs are masked.
"""

from __future__ import annotations

import asyncio
import hashlib
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from ipfleet.settings import Settings
from ipfleet.stack_config import as_engine_config

SECRET = "[secret]"
PROJECT = "ipfleet"

# Attributes AWS computes at deploy time that the program reads back.
COMPUTED = ("arn", "dnsName", "privateIp", "keyName", "latestVersion")


@dataclass
class PlannedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool
    # Resource options a reviewer should see (retainOnDelete, ignoreChanges...).
    options: dict[str, Any] = field(default_factory=dict)
    # What must exist before this resource is created: the resources named in
    # depends_on and those whose outputs its inputs use, by name, sorted.
    depends_on: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        out = {
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "inputs": self.inputs,
            "dependsOn": self.depends_on,
        }
        if self.options:
            out["options"] = self.options
        return out


@dataclass
class Plan:
    stack: str
    resources: list[PlannedResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> PlannedResource:
        found = self.of_type(type_)
        if len(found) != 1:
            raise LookupError(f"expected one {type_}, plan has {len(found)}")
        return found[0]

    def as_json(self) -> dict:
        return {"resources": [r.as_json() for r in self.resources], "outputs": self.outputs}


class _Answers(pulumi_mocks.Mocks):
    """The offline world: lookups answered with labelled placeholders.

    Every zone offers every instance type here unless `unoffered` (a set of
    (instance type, zone) pairs) says otherwise, as tests do to play a zone
    without a type.
    """

    unoffered: frozenset[tuple[str, str]] = frozenset()
    # VPCs (by id) whose DNS support or hostnames are off: tests play a custom VPC so.
    without_dns: frozenset[str] = frozenset()

    def __init__(self, settings: Settings):
        self.settings = settings

    def call(self, args: pulumi_mocks.MockCallArgs):
        token, a = args.token, args.args
        region = self.settings.region
        if token == "aws:ec2/getAmi:getAmi":
            arch = next((f["values"][0] for f in a.get("filters", []) if f["name"] == "architecture"), "x86_64")
            label = f"<{self.settings.image} {arch} image>"
            return {"id": label, "imageId": label, "architecture": arch, "rootDeviceName": "/dev/xvda", "name": label}
        if token == "aws:ec2/getVpc:getVpc":
            vpc_id = a.get("id") or "<default VPC>"
            dns = vpc_id not in self.without_dns
            return {"id": vpc_id, "default": "id" not in a, "enableDnsSupport": dns, "enableDnsHostnames": dns}
        if token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": [f"<default subnet {zone}>" for zone in "abc"]}
        if token == "aws:ec2/getSubnet:getSubnet":
            subnet_id = a["id"]
            zone = (
                subnet_id[-2]
                if subnet_id.startswith("<default subnet")
                else "abc"[self.settings.subnet_ids.index(subnet_id) % 3]
            )
            vpc = self.settings.vpc_id or "<default VPC>"
            return {"id": subnet_id, "vpcId": vpc, "availabilityZone": f"{region}{zone}"}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            types = next(f["values"] for f in a.get("filters", []) if f["name"] == "instance-type")
            pairs = [
                (t, f"{region}{zone}") for zone in "abc" for t in types if (t, f"{region}{zone}") not in self.unoffered
            ]
            return {
                "id": region,
                "instanceTypes": [t for t, _ in pairs],
                "locations": [z for _, z in pairs],
                "locationTypes": ["availability-zone"] * len(pairs),
            }
        raise NotImplementedError(f"ipfleet plan has no offline answer for {token}")

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        name = args.name
        state = dict(args.inputs)
        for attr in COMPUTED:
            state.setdefault(attr, f"<{name}.{attr}>")
        state.setdefault("name", f"<{name}.name>")
        if args.typ == "aws:s3/bucket:Bucket" and "bucketPrefix" in state:
            # AWS completes a prefix with 26 characters of its own: these depend on the
            # resource's name only, so a plan (and the twin's bucket) is repeatable.
            state.setdefault("bucket", state["bucketPrefix"] + hashlib.sha256(name.encode()).hexdigest()[:26])
        return f"<{name}.id>", state


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping every registration with its parent."""

    def __init__(self, answers: _Answers):
        super().__init__(answers)
        self.recorded: list[tuple[str, PlannedResource, str]] = []
        self.dependencies: dict[str, list[str]] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = _masked(rpc.deserialize_properties(request.object))
            options: dict[str, Any] = {}
            if request.retainOnDelete:
                options["retainOnDelete"] = True
            if request.ignoreChanges:
                options["ignoreChanges"] = list(request.ignoreChanges)
            resource = PlannedResource(request.type, request.name, None, inputs, bool(request.custom), options)
            self.recorded.append((response.urn, resource, request.parent))
            self.dependencies[response.urn] = list(request.dependencies)
        return response


def run_plan(project_dir: Path, stack: str, config: dict[str, Any], settings: Settings) -> Plan:
    """Run `project_dir/__main__.py` as stack `stack` with `config`; return what it declared."""
    program = project_dir / "__main__.py"
    return record(settings, config, lambda: runpy.run_path(str(program), run_name="__main__"))


def record(settings: Settings, config: dict[str, Any], declare: Callable[[], Any]) -> Plan:
    """Run `declare` under the mock runtime as stack `settings.stack`; return what it declared.

    `declare` is the whole program (run_plan) or, in tests, one component.
    """
    stack = settings.stack
    answers = _Answers(settings)
    monitor = _RecordingMonitor(answers)
    # A fresh event loop and root stack per run: runs in one process stay apart.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(as_engine_config(config))
    pulumi.runtime.set_mocks(answers, project=PROJECT, stack=stack, preview=False, monitor=monitor)

    outputs: dict[str, Any] = {}

    def run() -> Any:
        declare()
        root = pulumi_settings.get_root_resource()
        # The root is the program's Stack: its outputs are what pulumi.export declared.
        exported: dict[str, Any] = getattr(root, "outputs", {})

        async def collect():
            for key, value in exported.items():
                outputs[key] = _masked(await _resolve(value))

        return collect()

    try:
        _sync_await(run_pulumi_func(run))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
        _quiet_leftover_loops()

    names = {urn: resource.name for urn, resource, _ in monitor.recorded}
    plan = Plan(stack=stack)
    for urn, resource, parent_urn in monitor.recorded:
        resource.parent = names.get(parent_urn)
        resource.depends_on = sorted({names[d] for d in monitor.dependencies.get(urn, []) if d in names})
        plan.resources.append(resource)
    plan.outputs = outputs
    return plan


async def _resolve(value: Any) -> Any:
    if isinstance(value, pulumi.Output):
        is_secret = await value.is_secret()
        resolved = await value.future()
        return SECRET if is_secret else resolved
    return value


def _masked(value: Any) -> Any:
    """Secrets masked; whole floats back to ints (the wire format has only doubles)."""
    if rpc.is_rpc_secret(value):
        return SECRET
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _quiet_leftover_loops() -> None:
    """The SDK's invokes run in worker threads that each open an event loop and
    never close it; at interpreter exit those loops complain from __del__ about
    already-closed pipes. That noise is not ours to show to users."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        where = getattr(unraisable.object, "__qualname__", "")
        if where == "BaseEventLoop.__del__" and isinstance(unraisable.exc_value, ValueError):
            return
        previous(unraisable)

    if getattr(previous, "__name__", "") != "hook":
        sys.unraisablehook = hook
