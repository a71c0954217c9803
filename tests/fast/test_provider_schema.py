"""Would pulumi-aws accept every input of every planned resource? Checked against the
SDK's own input classes, for the example and varied stacks, and shown failing."""

from __future__ import annotations

import copy

import pulumi_aws as aws
import pytest

from ipfleet.provider_schema import check_inputs, check_plan
from tests.conftest import PUBLIC_KEY, plan_of

STACKS = {
    "example": {},
    "ssh-notebook-sudo": {
        "access": "ssh",
        "adminCidrs": ["203.0.113.0/24", "2001:db8::/32"],
        "sshPublicKey": PUBLIC_KEY,
        "notebook": True,
        "adminSudo": True,
    },
    "direct": {"access": "direct", "adminCidrs": ["198.51.100.0/24"]},
    "s3-and-prices": {
        "s3Mounts": [
            {"bucket": "inputs-bucket", "prefix": "runs/1", "mountPoint": "/data/in"},
            {"bucket": "results-bucket", "mountPoint": "/data/out", "readOnly": False},
        ],
        "spotMaxPrice": 0.25,
        "onDemandBase": 1,
        "engineNodes": 3,
        "maxEngineNodes": 6,
    },
    "own-vpc-arm": {
        "vpcId": "vpc-0123abcd",
        "subnetIds": ["subnet-0123abcd", "subnet-4567abcd"],
        "engineInstanceTypes": ["m7g.large", "c7g.large"],
        "controllerInstanceType": "t4g.medium",
    },
    "nfs-ubuntu-revision": {
        "sharedStorage": {"source": "nfs:files.internal:/export"},
        "image": "ubuntu-24.04",
        "controllerRevision": 3,
        "enginesPerNode": 4,
    },
    "no-shared-custom-ami": {
        "sharedStorage": {"enabled": False},
        "image": "ami-0123456789abcdef0",
        "tags": {"team": "ml", "cost-centre": "42"},
    },
}


@pytest.mark.parametrize("overrides", STACKS.values(), ids=STACKS.keys())
def test_every_input_is_one_the_provider_takes(overrides):
    plan = plan_of(**overrides)
    assert [str(p) for p in check_plan(plan)] == []
    assert sum(r.custom for r in plan.resources) >= 20


def test_the_check_catches_misspelt_misplaced_mistyped_and_missing_inputs():
    plan = plan_of()
    broken = copy.deepcopy(plan)
    by_type = {r.type: r for r in broken.resources}
    instance = by_type["aws:ec2/instance:Instance"].inputs
    instance["metadataOptions"]["httpToken"] = instance["metadataOptions"].pop("httpTokens")  # misspelt
    instance["rootBlockDevice"]["volumeSize"] = "20"  # mistyped
    template = by_type["aws:ec2/launchTemplate:LaunchTemplate"].inputs
    template["associatePublicIpAddress"] = True  # misplaced
    group = by_type["aws:autoscaling/group:Group"].inputs
    del group["maxSize"]  # missing
    found = {(p.resource, p.path) for p in check_plan(broken)}
    assert found == {
        ("test-controller-node", "metadataOptions.httpToken"),
        ("test-controller-node", "rootBlockDevice.volumeSize"),
        ("test-engines-template", "associatePublicIpAddress"),
        ("test-engines-group", "maxSize"),
    }


def test_nested_lists_of_objects_are_walked():
    problems = check_inputs(
        aws.autoscaling.GroupArgs,
        {
            "maxSize": 2,
            "minSize": 0,
            "tags": [{"key": "a", "value": "b", "propagateAtLaunch": "yes"}],
            "mixedInstancesPolicy": {"launchTemplate": {"overrides": [{"instanceTyp": "c6i.large"}]}},
        },
    )
    assert problems == [
        ("tags[0].propagateAtLaunch", "must be a bool, not str 'yes'"),
        (
            "mixedInstancesPolicy.launchTemplate.overrides[0].instanceTyp",
            "GroupMixedInstancesPolicyLaunchTemplateOverrideArgs has no property 'instanceTyp'",
        ),
        (
            "mixedInstancesPolicy.launchTemplate.launchTemplateSpecification",
            "required by GroupMixedInstancesPolicyLaunchTemplateArgs and missing",
        ),
    ]
