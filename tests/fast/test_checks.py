"""`ipfleet check`: the security rules over planned resources, each shown able to fail."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from ipfleet import checks
from ipfleet.plan import PlannedResource
from tests.conftest import PUBLIC_KEY, plan_of, settings_of


@pytest.fixture(scope="module")
def example():
    return plan_of("example")


def rules_failing(plan, settings=None) -> set[str]:
    return {f.rule for f in checks.run_checks(settings or settings_of("example"), plan)}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"access": "ssh", "adminCidrs": ["203.0.113.0/24", "2001:db8::/32"], "sshPublicKey": PUBLIC_KEY},
        {"access": "direct", "adminCidrs": ["198.51.100.7/32"]},
        {"s3Mounts": [{"bucket": "results-bucket", "mountPoint": "/data", "readOnly": False}]},
    ],
)
def test_every_shape_of_stack_passes_every_rule(overrides):
    assert checks.run_checks(settings_of(**overrides), plan_of(**overrides)) == []


def test_world_cidr_passes_only_when_the_stack_lists_it():
    overrides = {"access": "direct", "adminCidrs": ["0.0.0.0/0"]}
    plan = plan_of(**overrides)
    assert checks.run_checks(settings_of(**overrides), plan) == []
    # The same plan judged against a stack that did not ask for it.
    findings = checks.no_ingress_from_the_internet(plan, settings_of(access="direct", adminCidrs=["10.0.0.0/8"]))
    assert findings and "0.0.0.0/0" in findings[0].message


def mutated(plan, type_: str, change) -> object:
    plan = copy.deepcopy(plan)
    for r in plan.of_type(type_):
        change(r.inputs)
    return plan


def test_imdsv1_fails(example):
    plan = mutated(example, checks.LAUNCH_TEMPLATE, lambda i: i["metadataOptions"].update(httpTokens="optional"))
    assert rules_failing(plan) == {"imdsv2_everywhere"}


def test_unencrypted_volumes_and_file_systems_fail(example):
    plan = mutated(example, checks.INSTANCE, lambda i: i["rootBlockDevice"].update(encrypted=False))
    plan = mutated(plan, checks.FILE_SYSTEM, lambda i: i.update(encrypted=False))
    findings = checks.storage_encrypted(plan, settings_of("example"))
    assert len(findings) == 2


def test_bucket_without_public_access_block_fails(example):
    plan = copy.deepcopy(example)
    plan.resources.append(PlannedResource("aws:s3/bucket:Bucket", "scratch", None, {}, True))
    assert rules_failing(plan) == {"buckets_block_public_access"}
    plan.resources.append(
        PlannedResource(
            checks.PUBLIC_ACCESS_BLOCK,
            "scratch-block",
            None,
            {"bucket": "<scratch.id>", **{flag: True for flag in checks.PUBLIC_ACCESS_FLAGS}},
            True,
        )
    )
    assert rules_failing(plan) == set()


@pytest.mark.parametrize(
    "action,fails",
    [
        ("s3:PutObject", True),
        ("ssm:*", True),
        ("*", True),
        ("ec2:DescribeInstances", False),
        ("ssmmessages:OpenDataChannel", False),
    ],
)
def test_write_on_star_fails(example, action, fails):
    plan = copy.deepcopy(example)
    plan.resources.append(
        PlannedResource(
            "aws:iam/rolePolicy:RolePolicy",
            "extra",
            None,
            {"policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": [action], "Resource": "*"}]})},
            True,
        )
    )
    assert (rules_failing(plan) == {"no_write_on_everything"}) is fails


def test_check_command_lists_failures_and_exits_1(monkeypatch):
    from ipfleet.cli import app

    runner = CliRunner()
    passed = runner.invoke(app, ["check", "example"])
    assert passed.exit_code == 0, passed.output
    assert "all 5 security rules pass" in passed.output

    def always(plan, settings):
        return [checks.Finding("always", "Instance x", "is made to fail")]

    monkeypatch.setattr(checks, "RULES", (*checks.RULES, always))
    failed = runner.invoke(app, ["check", "example"])
    assert failed.exit_code == 1
    assert "[always] Instance x: is made to fail" in failed.output
    as_json = runner.invoke(app, ["check", "example", "--json"])
    assert json.loads(as_json.output)["findings"] == [
        {"rule": "always", "resource": "Instance x", "message": "is made to fail"}
    ]
