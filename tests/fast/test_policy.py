"""The CrossGuard policy pack (policy/, ipfleet/policy.py): `ipfleet check`'s rules as
mandatory stack policies, their validators called directly with the resources Pulumi
would hand them (the example stack's planned resources, then broken ones)."""

from __future__ import annotations

import json

import pytest
from pulumi_policy import EnforcementLevel, PolicyResource, StackValidationArgs

from ipfleet import checks, policy
from tests.conftest import ROOT, plan_of, run_cli


def resources_of(plan) -> list[PolicyResource]:
    options = None  # no rule reads resource options
    return [
        PolicyResource(
            r.type, r.inputs, f"urn:pulumi:test::ipfleet::{r.type}::{r.name}", r.name, options, None, None, [], {}
        )
        for r in plan.resources
        if r.custom
    ]


def violations(resources, config=None) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for p in policy.policies():
        found: list[tuple[str, str | None]] = []
        p.validate(
            StackValidationArgs(resources, config or {}),
            lambda message, urn=None, into=found: into.append((message, urn)),
        )
        out[p.name] = found
    return out


@pytest.fixture(scope="module")
def example():
    return plan_of()


def test_one_mandatory_policy_per_rule_of_ipfleet_check():
    names = [p.name for p in policy.policies()]
    assert names == [rule.__name__.replace("_", "-") for rule in checks.RULES]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in policy.policies())


def test_the_example_stack_passes_every_policy(example):
    assert violations(resources_of(example)) == {p.name: [] for p in policy.policies()}


def test_a_port_open_to_the_internet_is_a_violation_unless_the_config_lists_it(example):
    resources = resources_of(example)
    rule_type = checks.INGRESS_RULE
    resources.append(
        PolicyResource(
            rule_type,
            {"cidrIpv4": "0.0.0.0/0", "fromPort": 22, "toPort": 22},
            f"urn:pulumi:test::ipfleet::{rule_type}::open",
            "open",
            None,
            None,
            None,
            [],
            {},
        )
    )
    found = violations(resources)["no-ingress-from-the-internet"]
    assert found == [
        (
            "allows inbound traffic from 0.0.0.0/0, which ipfleet:adminCidrs does not list",
            f"urn:pulumi:test::ipfleet::{rule_type}::open",
        )
    ]
    config = json.loads(policy.pack_config(["0.0.0.0/0"]))["no-ingress-from-the-internet"]
    assert violations(resources, config)["no-ingress-from-the-internet"] == []


def test_imdsv1_on_the_controller_is_a_violation(example):
    resources = resources_of(example)
    controller = next(r for r in resources if r.resource_type == "aws:ec2/instance:Instance")
    controller.props = {**controller.props, "metadataOptions": {"httpTokens": "optional"}}
    found = violations(resources)["imdsv2-everywhere"]
    assert len(found) == 1 and found[0][1] == controller.urn


def test_the_pack_and_its_config_command(tmp_path):
    manifest = (ROOT / "policy" / "PulumiPolicy.yaml").read_text()
    assert "runtime: python" in manifest
    result = run_cli("check", "example", "--policy-config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {p.name: {"adminCidrs": []} for p in policy.policies()}


def test_known_values_are_judged_in_preview_when_others_are_unknown(example):
    """In preview, CrossGuard hands properties that raise on an unknown value (an id AWS
    assigns later); a violation among the known values is still mandatory."""
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

    resources = []
    for r in resources_of(example):
        props = json.loads(json.dumps(dict(r.props)))
        if r.resource_type == "aws:ec2/instance:Instance":
            props["subnetId"] = UNKNOWN_STRING_VALUE  # not known before the subnet exists
            props["vpcSecurityGroupIds"] = [UNKNOWN_STRING_VALUE]
            props["metadataOptions"]["httpTokens"] = "optional"  # IMDSv1: known, and wrong
        resources.append(
            PolicyResource(r.resource_type, unknown_checking_proxy(props), r.urn, r.name, None, None, None, [], {})
        )
    found = violations(resources)
    imds = [message for message, _ in found["imdsv2-everywhere"]]
    assert len(imds) == 1, found
    assert sum(len(v) for v in found.values()) == len(imds)
