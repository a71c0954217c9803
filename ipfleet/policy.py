"""`ipfleet check`'s security rules as a Pulumi CrossGuard policy pack (policy/), so that
`pulumi preview` and `pulumi up --policy-pack policy` enforce them against the real
provider's view of the stack: the same rule functions (ipfleet/checks.py), fed with the
resources Pulumi hands the pack instead of the offline plan.

The rules read resources as `ipfleet plan --json` shows them, Pulumi's camelCase
properties, which is also how a Python policy pack receives them. The one thing a
rule needs beyond the resources, the stack's adminCidrs, comes from the pack's
config: `ipfleet check STACK --policy-config` prints it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipfleet.checks import RULES, Finding, RuleContext
from ipfleet.plan import Plan, PlannedResource

PACK_NAME = "ipfleet"
CONFIG_SCHEMA = {"adminCidrs": {"type": "array", "items": {"type": "string"}}}


@dataclass(frozen=True)
class PackContext:
    admin_cidrs: list[str] = field(default_factory=list)


def policy_name(rule: Callable) -> str:
    return rule.__name__.replace("_", "-")


# What a value Pulumi cannot know during preview (an id AWS assigns) becomes for the rules:
# the same kind of placeholder the offline plan shows for it.
UNKNOWN = "<unknown during preview>"


def known_values(value: Any) -> Any:
    """A plain copy of a resource's properties with every value Pulumi cannot know yet
    replaced by UNKNOWN. CrossGuard's properties raise on an unknown value as soon as it
    is read; copied whole (`dict(props)`), one unknown made the whole policy advisory in
    preview. Copied value by value, the rules judge every value that is known."""
    from pulumi_policy.proxy import UnknownValueError

    def read(container: Any, key: Any) -> Any:
        try:
            return known_values(container[key])
        except UnknownValueError:
            return UNKNOWN

    if isinstance(value, Mapping):
        return {key: read(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [read(value, index) for index in range(len(value))]
    return value


def plan_of(resources: Iterable[Any]) -> tuple[Plan, dict[str, str]]:
    """The policy pack's resources as a Plan the rules read, and each one's URN by how
    a finding names it."""
    plan = Plan(stack="policy")
    urns: dict[str, str] = {}
    for resource in resources:
        planned = PlannedResource(
            resource.resource_type, resource.name, None, known_values(resource.props), custom=True
        )
        plan.resources.append(planned)
        urns[f"{resource.resource_type.split(':')[-1]} {resource.name}"] = resource.urn
    return plan, urns


def findings(
    rule: Callable[[Plan, RuleContext], list[Finding]], resources: Iterable[Any], config: dict
) -> list[tuple[str, str | None]]:
    """(message, URN) for each violation of RULE among RESOURCES."""
    plan, urns = plan_of(resources)
    context = PackContext(admin_cidrs=list(config.get("adminCidrs") or []))
    return [(f.message, urns.get(f.resource)) for f in rule(plan, context)]


def validator(rule: Callable[[Plan, RuleContext], list[Finding]]):
    def validate(args, report_violation) -> None:
        for message, urn in findings(rule, args.resources, dict(args.get_config())):
            report_violation(message, urn)

    return validate


def policies() -> list:
    """One mandatory stack policy per rule of `ipfleet check`."""
    from pulumi_policy import EnforcementLevel, PolicyConfigSchema, StackValidationPolicy

    return [
        StackValidationPolicy(
            name=policy_name(rule),
            description=(rule.__doc__ or rule.__name__).strip().splitlines()[0],
            validate=validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
            config_schema=PolicyConfigSchema(properties=CONFIG_SCHEMA),
        )
        for rule in RULES
    ]


def pack_config(admin_cidrs: list[str]) -> str:
    """The pack's config for a stack (`pulumi preview --policy-pack-config FILE`)."""
    return json.dumps({policy_name(rule): {"adminCidrs": admin_cidrs} for rule in RULES}, indent=2)
