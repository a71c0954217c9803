"""The whole Pulumi program (__main__.py) under Pulumi's mock runtime."""

from __future__ import annotations

import json

import pytest
import yaml

from bootstrap.render import decode_user_data
from ipfleet.plan_view import user_data
from tests.conftest import PUBLIC_KEY, plan_of

SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


@pytest.fixture(scope="module")
def example():
    return plan_of("example")


def test_example_stack_declares_the_cluster(example):
    types = [r.type for r in example.resources]
    assert types.count(INSTANCE) == 1
    assert types.count(LAUNCH_TEMPLATE) == 1
    assert types.count(GROUP) == 1
    assert types.count("aws:efs/fileSystem:FileSystem") == 1
    assert types.count("aws:efs/mountTarget:MountTarget") == 3  # one per zone of the default VPC
    assert types.count("aws:ssm/parameter:Parameter") == 2  # connection info, keys
    assert "aws:ec2/spotFleetRequest:SpotFleetRequest" not in types


def test_every_aws_resource_is_parented_to_a_component(example):
    components = {r.name for r in example.resources if not r.custom}
    for r in example.resources:
        if r.custom and not r.type.startswith("pulumi:providers:"):
            assert r.parent in components, (r.type, r.name, r.parent)


def test_nothing_is_open_to_the_internet_by_default(example):
    rules = example.of_type(SG_INGRESS)
    assert rules, "intra-cluster rules expected"
    for rule in rules:
        assert "cidrIpv4" not in rule.inputs and "cidrIpv6" not in rule.inputs, rule.inputs
        assert rule.inputs["referencedSecurityGroupId"] == rule.inputs["securityGroupId"]


def test_egress_is_declared_explicitly(example):
    egress = {(r.inputs["ipProtocol"], r.inputs.get("fromPort")) for r in example.of_type(SG_EGRESS)}
    assert egress == {("-1", None), ("tcp", 443), ("tcp", 80)}


def test_ssh_access_opens_port_22_to_admin_cidrs_only():
    plan = plan_of(access="ssh", adminCidrs=["203.0.113.0/24", "2001:db8::/32"], sshPublicKey=PUBLIC_KEY)
    external = [r.inputs for r in plan.of_type(SG_INGRESS) if "referencedSecurityGroupId" not in r.inputs]
    assert sorted(r.get("cidrIpv4") or r.get("cidrIpv6") for r in external) == ["2001:db8::/32", "203.0.113.0/24"]
    assert all(r["fromPort"] == r["toPort"] == 22 for r in external)


def test_direct_access_opens_client_ports_only():
    from ipfleet import ports

    plan = plan_of(access="direct", adminCidrs=["203.0.113.0/24"])
    external = [r.inputs for r in plan.of_type(SG_INGRESS) if "referencedSecurityGroupId" not in r.inputs]
    assert [(r["fromPort"], r["toPort"]) for r in external] == [
        (ports.CLIENT_FACING_PORTS.first, ports.CLIENT_FACING_PORTS.last)]


def test_imdsv2_and_encrypted_volumes_everywhere(example):
    controller = example.one(INSTANCE).inputs
    assert controller["metadataOptions"]["httpTokens"] == "required"
    assert controller["rootBlockDevice"]["encrypted"] is True
    template = example.one(LAUNCH_TEMPLATE).inputs
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert [m["ebs"]["encrypted"] for m in template["blockDeviceMappings"]] == ["true"]
    assert example.one("aws:efs/fileSystem:FileSystem").inputs["encrypted"] is True


def test_engine_fleet_is_a_spot_mixed_instances_group(example):
    group = example.one(GROUP).inputs
    policy = group["mixedInstancesPolicy"]
    distribution = policy["instancesDistribution"]
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 0
    assert distribution["spotAllocationStrategy"] == "capacity-optimized"
    assert [o["instanceType"] for o in policy["launchTemplate"]["overrides"]] == ["c6i.large", "c5.large", "m6i.large"]
    assert group["capacityRebalance"] is True
    assert (group["desiredCapacity"], group["maxSize"]) == (2, 4)


def test_counts_follow_the_settings():
    plan = plan_of(engineNodes=5, maxEngineNodes=8, onDemandBase=1, spotMaxPrice=0.2)
    group = plan.one(GROUP).inputs
    assert (group["desiredCapacity"], group["maxSize"]) == (5, 8)
    distribution = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandBaseCapacity"] == 1
    assert distribution["spotMaxPrice"] == "0.2"
    assert plan.outputs["engineNodes"] == 5


def test_rendezvous_parameters_are_secure_and_never_hold_the_keys(example):
    parameters = {p.inputs["name"]: p for p in example.of_type("aws:ssm/parameter:Parameter")}
    assert set(parameters) == {"/ipfleet/example/connection", "/ipfleet/example/keys"}
    for parameter in parameters.values():
        assert parameter.inputs["type"] == "SecureString"
        assert parameter.inputs["value"] == "[secret]"  # masked in the plan, a placeholder in truth
        assert parameter.options["ignoreChanges"] == ["value"]


def test_iam_grants_the_rendezvous_to_exactly_the_parameters(example):
    policies = {r.name: json.loads(r.inputs["policy"]) for r in example.of_type(ROLE_POLICY)}
    publish = policies["example-rendezvous-publish"]["Statement"]
    read = policies["example-rendezvous-read-0"]["Statement"]
    assert publish == [{"Effect": "Allow", "Action": ["ssm:PutParameter", "ssm:GetParameter"],
                        "Resource": ["<example-rendezvous-parameter.arn>", "<example-rendezvous-keys.arn>"]}]
    # Engines read the connection info, never the keys parameter.
    assert read == [{"Effect": "Allow", "Action": ["ssm:GetParameter"],
                     "Resource": ["<example-rendezvous-parameter.arn>"]}]


def test_s3_mounts_grant_exactly_the_named_buckets_and_prefixes():
    plan = plan_of(s3Mounts=[
        {"bucket": "inputs-bucket", "prefix": "run-1", "mountPoint": "/data/in"},
        {"bucket": "results-bucket", "mountPoint": "/data/out", "readOnly": False},
    ])
    policies = [json.loads(r.inputs["policy"]) for r in plan.of_type(ROLE_POLICY) if "-s3-" in r.name]
    assert len(policies) == 2  # controller and engines
    statements = policies[0]["Statement"]
    resources = sorted(s["Resource"] for s in statements)
    assert resources == ["arn:aws:s3:::inputs-bucket", "arn:aws:s3:::inputs-bucket/run-1/*",
                         "arn:aws:s3:::results-bucket", "arn:aws:s3:::results-bucket/*"]
    by_resource = {s["Resource"]: s for s in statements}
    assert by_resource["arn:aws:s3:::inputs-bucket/run-1/*"]["Action"] == ["s3:GetObject"]
    assert "s3:PutObject" in by_resource["arn:aws:s3:::results-bucket/*"]["Action"]
    assert by_resource["arn:aws:s3:::inputs-bucket"]["Condition"] == {
        "StringLike": {"s3:prefix": ["run-1", "run-1/*"]}}
    for statement in statements:
        assert statement["Resource"] != "*"


def test_no_statement_grants_write_on_everything(example):
    for r in example.of_type(ROLE_POLICY):
        for statement in json.loads(r.inputs["policy"])["Statement"]:
            if statement["Resource"] == "*":
                # Only Session Manager's channel actions, which AWS scopes to "*".
                assert all(a.startswith(("ssmmessages:", "ssm:UpdateInstanceInformation"))
                           for a in statement["Action"]), statement


def test_ssh_mode_has_no_session_manager_grant():
    plan = plan_of(access="ssh", adminCidrs=["203.0.113.0/24"], sshPublicKey=PUBLIC_KEY)
    assert not [r for r in plan.of_type(ROLE_POLICY) if "session-manager" in r.name]


def test_shared_storage_is_retained_unless_asked_and_can_be_disabled():
    assert plan_of().one("aws:efs/fileSystem:FileSystem").options == {"retainOnDelete": True}
    dropped = plan_of(sharedStorage={"retainOnDestroy": False})
    assert dropped.one("aws:efs/fileSystem:FileSystem").options == {}
    off = plan_of(sharedStorage={"enabled": False})
    assert not off.of_type("aws:efs/fileSystem:FileSystem")
    assert "nfs" not in user_data(off, "engine")
    assert off.outputs["sharedFileSystemId"] is None


def test_key_pair_only_when_a_public_key_is_given(example):
    assert not example.of_type("aws:ec2/keyPair:KeyPair")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0RDvBtSl0jJ1kdhv8xLd6hlFj8mo8hLNCHDAlUQ0A me@laptop"
    plan = plan_of(sshPublicKey=key)
    assert plan.one("aws:ec2/keyPair:KeyPair").inputs["publicKey"] == key
    assert plan.one(INSTANCE).inputs["keyName"] == "<test-key-key.keyName>"


def test_user_data_decodes_to_cloud_config_for_each_role(example):
    for role in ("controller", "engine"):
        text = user_data(example, role)
        assert text.startswith("#cloud-config\n")
        assert yaml.safe_load(text)["runcmd"]
    assert "ipcontroller" in user_data(example, "controller")
    assert "ipengine@" in user_data(example, "engine")
    # The EFS DNS name AWS assigns reaches the mount unit.
    assert "What=<example-shared-efs.dnsName>:/" in user_data(example, "engine")


def test_image_lookup_by_architecture_and_custom_ami():
    arm = plan_of(engineInstanceTypes=["m7g.large", "c7g.large"], controllerInstanceType="t4g.medium")
    assert arm.one(LAUNCH_TEMPLATE).inputs["imageId"] == "<debian-12 arm64 image>"
    custom = plan_of(image="ami-0123456789abcdef0")
    assert custom.one(INSTANCE).inputs["ami"] == "<ami-0123456789abcdef0 x86_64 image>"


def test_given_vpc_and_subnets_are_used():
    plan = plan_of(vpcId="vpc-0123abcd", subnetIds=["subnet-0123abcd", "subnet-4567abcd"])
    assert plan.one("aws:ec2/securityGroup:SecurityGroup").inputs["vpcId"] == "vpc-0123abcd"
    assert plan.one(GROUP).inputs["vpcZoneIdentifiers"] == ["subnet-0123abcd", "subnet-4567abcd"]
    assert plan.one(INSTANCE).inputs["subnetId"] == "subnet-0123abcd"


def test_tags_reach_every_resource_through_the_provider(example):
    provider = example.one("pulumi:providers:aws")
    default_tags = json.loads(provider.inputs["defaultTags"])  # provider config travels as JSON
    assert default_tags["tags"] == {"ipfleet:stack": "example", "project": "ipfleet-example"}
    tags = {t["key"]: t["value"] for t in example.one(GROUP).inputs["tags"]}
    assert tags["project"] == "ipfleet-example"  # ASG-launched instances need their own


def test_outputs_name_what_the_cli_needs(example):
    assert example.outputs["rendezvousParameter"] == "/ipfleet/example/connection"
    assert example.outputs["region"] == "us-east-1"
    assert example.outputs["connectCommand"] == "ipfleet connect example"
    assert example.outputs["access"] == "ssm"


def test_user_data_is_decodable_from_base64(example):
    encoded = example.one(LAUNCH_TEMPLATE).inputs["userData"]
    assert decode_user_data(encoded) == user_data(example, "engine")
