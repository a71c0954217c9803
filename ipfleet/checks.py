"""Security rules over a stack's planned resources: `ipfleet check STACK`.

Each rule is a plain function `rule(plan, settings) -> list[Finding]`, reading
the resources exactly as `ipfleet plan --json` shows them (Pulumi's camelCase
inputs). Adding a rule means writing one function and listing it in RULES.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ipfleet.plan import Plan, PlannedResource
from ipfleet.plan_view import INSTANCE, LAUNCH_TEMPLATE
from ipfleet.settings import Settings

SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
VOLUME = "aws:ebs/volume:Volume"
FILE_SYSTEM = "aws:efs/fileSystem:FileSystem"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
POLICY_TYPES = (
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/policy:Policy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
)
WORLD = ("0.0.0.0/0", "::/0")
# Verbs that only read. Anything else on "*" counts as a write.
READ_VERBS = ("Get", "List", "Describe", "Head", "View")
# Actions AWS offers no resource type for, so "*" is the only way to grant them:
# Session Manager's session channels (access: ssm). They move no stored data.
STAR_ONLY_ACTIONS = frozenset(
    {
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    }
)
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


class RuleContext(Protocol):
    """What a rule may know of the stack beyond its resources: `ipfleet check` passes the
    stack's Settings; the CrossGuard pack (ipfleet/policy.py) passes its own config."""

    @property
    def admin_cidrs(self) -> list[str]: ...


@dataclass(frozen=True)
class Finding:
    rule: str
    resource: str
    message: str

    def as_json(self) -> dict:
        return {"rule": self.rule, "resource": self.resource, "message": self.message}


def _truthy(value: Any) -> bool:
    # Pulumi hands some booleans through as strings ("true"), launch template EBS among them.
    return value is True or str(value).lower() == "true"


def _finding(rule: Callable, resource: PlannedResource, message: str) -> Finding:
    return Finding(rule.__name__, f"{resource.type.split(':')[-1]} {resource.name}", message)


def no_ingress_from_the_internet(plan: Plan, settings: RuleContext) -> list[Finding]:
    """No inbound rule from 0.0.0.0/0 or ::/0, unless the stack lists it in adminCidrs."""
    allowed = set(settings.admin_cidrs)
    found = []
    sources: list[tuple[PlannedResource, str]] = []
    for r in plan.of_type(INGRESS_RULE):
        sources += [(r, r.inputs[k]) for k in ("cidrIpv4", "cidrIpv6") if r.inputs.get(k)]
    for r in plan.of_type(LEGACY_RULE):
        if r.inputs.get("type") == "ingress":
            sources += [(r, c) for c in r.inputs.get("cidrBlocks", []) + r.inputs.get("ipv6CidrBlocks", [])]
    for r in plan.of_type(SECURITY_GROUP):  # inline rules
        for rule in r.inputs.get("ingress") or []:
            sources += [(r, c) for c in rule.get("cidrBlocks", []) + rule.get("ipv6CidrBlocks", [])]
    for resource, cidr in sources:
        if cidr in WORLD and cidr not in allowed:
            found.append(
                _finding(
                    no_ingress_from_the_internet,
                    resource,
                    f"allows inbound traffic from {cidr}, which ipfleet:adminCidrs does not list",
                )
            )
    return found


def imdsv2_everywhere(plan: Plan, settings: RuleContext) -> list[Finding]:
    """Every instance and launch template requires IMDSv2 session tokens."""
    found = []
    for r in plan.of_type(INSTANCE) + plan.of_type(LAUNCH_TEMPLATE):
        tokens = (r.inputs.get("metadataOptions") or {}).get("httpTokens")
        if tokens != "required":
            found.append(
                _finding(
                    imdsv2_everywhere,
                    r,
                    f"metadataOptions.httpTokens is {tokens!r}, "
                    "not 'required' (IMDSv1 lets any SSRF read the node's credentials)",
                )
            )
    return found


def storage_encrypted(plan: Plan, settings: RuleContext) -> list[Finding]:
    """Root volumes, extra volumes and file systems are encrypted at rest."""
    found = []

    def check(resource: PlannedResource, what: str, value: Any) -> None:
        if not _truthy(value):
            found.append(_finding(storage_encrypted, resource, f"{what} is not encrypted"))

    for r in plan.of_type(INSTANCE):
        check(r, "the root volume", (r.inputs.get("rootBlockDevice") or {}).get("encrypted"))
        for device in r.inputs.get("ebsBlockDevices") or []:
            check(r, f"volume {device.get('deviceName')}", device.get("encrypted"))
    for r in plan.of_type(LAUNCH_TEMPLATE):
        mappings = r.inputs.get("blockDeviceMappings") or []
        if not mappings:
            found.append(
                _finding(storage_encrypted, r, "declares no block device, so the image's unencrypted default applies")
            )
        for mapping in mappings:
            check(r, f"volume {mapping.get('deviceName')}", (mapping.get("ebs") or {}).get("encrypted"))
    for r in plan.of_type(VOLUME) + plan.of_type(FILE_SYSTEM):
        check(r, "it", r.inputs.get("encrypted"))
    return found


def buckets_block_public_access(plan: Plan, settings: RuleContext) -> list[Finding]:
    """Every bucket the stack creates has all four public-access blocks on."""
    blocked = set()
    for r in plan.of_type(PUBLIC_ACCESS_BLOCK):
        if all(_truthy(r.inputs.get(flag)) for flag in PUBLIC_ACCESS_FLAGS):
            blocked.add(r.inputs.get("bucket"))
    found = []
    for bucket_type in BUCKETS:
        for r in plan.of_type(bucket_type):
            # The block names its bucket by the bucket's id: <name.id> before deploy.
            if not ({f"<{r.name}.id>", r.inputs.get("bucket"), r.name} & blocked):
                found.append(
                    _finding(buckets_block_public_access, r, "has no BucketPublicAccessBlock with all four blocks on")
                )
    return found


def no_write_on_everything(plan: Plan, settings: RuleContext) -> list[Finding]:
    """No IAM statement allows a non-read action on Resource "*"."""
    found = []
    for r in (r for t in POLICY_TYPES for r in plan.of_type(t)):
        for statement in _statements(r.inputs.get("policy")):
            if statement.get("Effect") != "Allow" or "*" not in _as_list(statement.get("Resource")):
                continue
            writes = [a for a in _as_list(statement.get("Action")) if a not in STAR_ONLY_ACTIONS and not _is_read(a)]
            if writes:
                found.append(
                    _finding(no_write_on_everything, r, f'allows {", ".join(writes)} on "*"; name the resources')
                )
    return found


def _is_read(action: str) -> bool:
    verb = action.split(":", 1)[-1]
    return verb != "*" and verb.startswith(READ_VERBS)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value] if value is not None else []


def _statements(policy: Any) -> Iterator[dict]:
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError:
            return
    if isinstance(policy, dict):
        yield from _as_list(policy.get("Statement"))


RULES: tuple[Callable[[Plan, RuleContext], list[Finding]], ...] = (
    no_ingress_from_the_internet,
    imdsv2_everywhere,
    storage_encrypted,
    buckets_block_public_access,
    no_write_on_everything,
)


def run_checks(settings: Settings, plan: Plan) -> list[Finding]:
    return [finding for rule in RULES for finding in rule(plan, settings)]
