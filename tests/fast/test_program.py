"""The whole Pulumi program (__main__.py) under Pulumi's mock runtime."""

from __future__ import annotations

import json

import pytest
import yaml

from bootstrap.render import decode_user_data
from ipfleet.plan_view import user_data
from ipfleet.twin.plan_deploy import apt_packages_of, written_files
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
    # Connection info, keys, notebook token, the controller's record and its keeper's
    # summary; and where the engine nodes' records are.
    assert types.count("aws:ssm/parameter:Parameter") == 6
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
        (ports.CLIENT_FACING_PORTS.first, ports.CLIENT_FACING_PORTS.last)
    ]


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
    parameters = {
        p.inputs["name"]: p for p in example.of_type("aws:ssm/parameter:Parameter") if p.parent == "example-rendezvous"
    }
    secret = {"/ipfleet/example/connection", "/ipfleet/example/keys", "/ipfleet/example/notebook"}
    plain = {"/ipfleet/example/controller", "/ipfleet/example/keeper"}  # status records, no secret
    assert set(parameters) == secret | plain
    for name, parameter in parameters.items():
        assert parameter.inputs["type"] == ("SecureString" if name in secret else "String")
        assert parameter.inputs["value"] == "[secret]"  # masked in the plan, a placeholder in truth
        assert parameter.options["ignoreChanges"] == ["value"]


def test_iam_grants_the_rendezvous_to_exactly_the_parameters(example):
    policies = {r.name: json.loads(r.inputs["policy"]) for r in example.of_type(ROLE_POLICY)}
    publish = policies["example-rendezvous-publish"]["Statement"]
    read = policies["example-rendezvous-read-0"]["Statement"]
    assert publish == [
        {
            "Effect": "Allow",
            "Action": ["ssm:PutParameter", "ssm:GetParameter"],
            "Resource": [
                "<example-rendezvous-parameter.arn>",
                "<example-rendezvous-keys.arn>",
                "<example-rendezvous-notebook.arn>",
                "<example-rendezvous-controller-record.arn>",
                "<example-rendezvous-keeper.arn>",
            ],
        }
    ]
    # Engines read the connection info, never the keys or the notebook's token.
    assert read == [
        {"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": ["<example-rendezvous-parameter.arn>"]}
    ]


def test_s3_mounts_grant_exactly_the_named_buckets_and_prefixes():
    plan = plan_of(
        s3Mounts=[
            {"bucket": "inputs-bucket", "prefix": "run-1", "mountPoint": "/data/in"},
            {"bucket": "results-bucket", "mountPoint": "/data/out", "readOnly": False},
        ]
    )
    policies = [json.loads(r.inputs["policy"]) for r in plan.of_type(ROLE_POLICY) if "-s3-" in r.name]
    assert len(policies) == 2  # controller and engines
    statements = policies[0]["Statement"]
    resources = sorted(s["Resource"] for s in statements)
    assert resources == [
        "arn:aws:s3:::inputs-bucket",
        "arn:aws:s3:::inputs-bucket/run-1/*",
        "arn:aws:s3:::results-bucket",
        "arn:aws:s3:::results-bucket/*",
    ]
    by_resource = {s["Resource"]: s for s in statements}
    assert by_resource["arn:aws:s3:::inputs-bucket/run-1/*"]["Action"] == ["s3:GetObject"]
    assert "s3:PutObject" in by_resource["arn:aws:s3:::results-bucket/*"]["Action"]
    assert by_resource["arn:aws:s3:::inputs-bucket"]["Condition"] == {"StringLike": {"s3:prefix": ["run-1", "run-1/*"]}}
    for statement in statements:
        assert statement["Resource"] != "*"


def test_no_statement_grants_write_on_everything(example):
    for r in example.of_type(ROLE_POLICY):
        for statement in json.loads(r.inputs["policy"])["Statement"]:
            if statement["Resource"] == "*":
                # Only Session Manager's channel actions, and Auto Scaling's and EC2's
                # reads, which AWS evaluates on "*".
                assert all(
                    a.startswith(
                        ("ssmmessages:", "ssm:UpdateInstanceInformation", "autoscaling:Describe", "ec2:Describe")
                    )
                    for a in statement["Action"]
                ), statement


def test_ssh_mode_has_no_session_manager_grant():
    plan = plan_of(access="ssh", adminCidrs=["203.0.113.0/24"], sshPublicKey=PUBLIC_KEY)
    assert not [r for r in plan.of_type(ROLE_POLICY) if "session-manager" in r.name]


def test_shared_storage_is_retained_unless_asked_and_can_be_disabled():
    assert plan_of().one("aws:efs/fileSystem:FileSystem").options == {"retainOnDelete": True}
    dropped = plan_of(sharedStorage={"retainOnDestroy": False})
    assert dropped.one("aws:efs/fileSystem:FileSystem").options == {}
    off = plan_of(sharedStorage={"enabled": False})
    assert not off.of_type("aws:efs/fileSystem:FileSystem")
    document = yaml.safe_load(user_data(off, "engine"))
    assert "nfs-common" not in apt_packages_of(written_files(user_data(off, "engine").encode()))
    assert not [f for f in document["write_files"] if "Type=nfs" in f["content"]]
    assert off.outputs["sharedFileSystemId"] is None


def test_no_ec2_key_pair_and_no_image_default_user():
    """The login's key reaches the ipfleet-admin user alone: no EC2 key pair (which the
    image's default user, with passwordless sudo, would accept) and no default user."""
    plan = plan_of(sshPublicKey=PUBLIC_KEY)
    assert not plan.of_type("aws:ec2/keyPair:KeyPair")
    assert "keyName" not in plan.one(INSTANCE).inputs
    assert "keyName" not in plan.one(LAUNCH_TEMPLATE).inputs
    for role in ("controller", "engine"):
        users = yaml.safe_load(user_data(plan, role))["users"]
        assert "default" not in users
        assert all(not user.get("sudo") for user in users), users


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
    assert arm.one(LAUNCH_TEMPLATE).inputs["imageId"] == "<debian-13 arm64 image>"
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


def test_nodes_boot_only_after_their_iam_grants_and_the_mount_targets(example):
    """An EFS name resolves only once a mount target exists in the node's zone, and a node's
    first AWS call needs its role's policies: both come before the node."""
    by_name = {r.name: r for r in example.resources}
    targets = {r.name for r in example.of_type("aws:efs/mountTarget:MountTarget")}
    controller = example.one(INSTANCE)
    assert targets <= set(controller.depends_on)
    assert {
        "example-controller-iam-profile",
        "example-controller-iam-session-manager",
        "example-rendezvous-publish",
        "example-runtime-records",
        "example-runtime-read-0",
        "example-runtime-wheel",
    } <= set(controller.depends_on)
    group = example.one(GROUP)
    assert targets <= set(group.depends_on)
    assert {
        "example-engine-iam-profile",
        "example-engine-iam-session-manager",
        "example-rendezvous-read-0",
        "example-controller-node",
        "example-runtime-read-1",
        "example-runtime-wheel",
    } <= set(group.depends_on)
    # The engines' grants are theirs, not the controller's.
    assert "example-rendezvous-publish" not in group.depends_on
    assert all(
        by_name[d].type != "aws:iam/rolePolicy:RolePolicy"
        or d
        in {
            "example-engine-iam-session-manager",
            "example-rendezvous-read-0",
            "example-runtime-read-1",
            # The group's own grant: the controller's sizing and drain hooks.
            "example-engines-controller-scaling",
        }
        for d in group.depends_on
    )


def test_s3_grants_come_before_the_nodes_that_mount():
    plan = plan_of(s3Mounts=[{"bucket": "inputs-bucket", "mountPoint": "/data"}])
    assert "test-s3-access-0" in plan.one(INSTANCE).depends_on
    assert "test-s3-access-1" in plan.one(GROUP).depends_on


def test_plan_json_shows_depends_on():
    from tests.conftest import run_cli

    result = run_cli("plan", "example", "--json")
    assert result.returncode == 0, result.stderr
    resources = {r["name"]: r for r in json.loads(result.stdout)["resources"]}
    assert "example-shared-mount-us-east-1a" in resources["example-controller-node"]["dependsOn"]


def test_a_newer_image_does_not_replace_the_running_controller(example):
    assert example.one(INSTANCE).options["ignoreChanges"] == ["ami"]
    # Changed user data still replaces it, visibly in `pulumi preview`.
    assert example.one(INSTANCE).inputs["userDataReplaceOnChange"] is True


def test_controller_revision_is_a_new_controller():
    assert plan_of().one(INSTANCE).name == "test-controller-node"
    assert plan_of(controllerRevision=2).one(INSTANCE).name == "test-controller-node-r2"


def test_engine_group_rolls_onto_a_new_launch_template_version(example):
    group = example.one(GROUP).inputs
    assert group["instanceRefresh"] == {
        "strategy": "Rolling",
        "preferences": {"minHealthyPercentage": 50, "skipMatching": True},
    }
    version = group["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]["version"]
    assert version == "<example-engines-template.latestVersion>"
    assert example.one(LAUNCH_TEMPLATE).inputs["updateDefaultVersion"] is True


def _plan_with_gaps(monkeypatch, gaps, **overrides):
    from ipfleet.plan import _Answers

    monkeypatch.setattr(_Answers, "unoffered", frozenset(gaps))
    return plan_of(**overrides)


def test_controller_goes_to_a_zone_that_offers_its_type(monkeypatch):
    """us-east-1a here lacks t3.medium: the controller skips the first subnet."""
    plan = _plan_with_gaps(monkeypatch, {("t3.medium", "us-east-1a")})
    assert plan.one(INSTANCE).inputs["subnetId"] == "<default subnet b>"


def test_engines_use_only_zones_that_offer_one_of_their_types(monkeypatch):
    gaps = {(t, "us-east-1c") for t in ("c6i.large", "c5.large", "m6i.large")}
    plan = _plan_with_gaps(monkeypatch, gaps)
    assert plan.one(GROUP).inputs["vpcZoneIdentifiers"] == ["<default subnet a>", "<default subnet b>"]
    # No node boots in 1c, and no EFS mount target is made there.
    zones = sorted(r.name.rsplit("-", 1)[-1] for r in plan.of_type("aws:efs/mountTarget:MountTarget"))
    assert zones == ["1a", "1b"]


def test_a_type_no_zone_offers_is_a_clear_error(monkeypatch):
    import pulumi

    gaps = {("t3.medium", f"us-east-1{zone}") for zone in "abc"}
    with pytest.raises(pulumi.RunError) as caught:
        _plan_with_gaps(monkeypatch, gaps)
    assert (
        "ipfleet:controllerInstanceType: no zone of the cluster's subnets "
        "(us-east-1a, us-east-1b, us-east-1c) offers it (got 't3.medium')" in str(caught.value)
    )


# How long AWS lets each kind of name be, and how Pulumi names it when the program does not:
# the logical name, "-" and 7 random characters; a namePrefix gets AWS's 26-character suffix.
NAME_LIMITS = {
    "aws:iam/role:Role": 64,
    "aws:iam/instanceProfile:InstanceProfile": 128,
    "aws:iam/rolePolicy:RolePolicy": 128,
    "aws:ec2/launchTemplate:LaunchTemplate": 128,
    "aws:ec2/keyPair:KeyPair": 255,
    "aws:ec2/securityGroup:SecurityGroup": 255,
    "aws:autoscaling/group:Group": 255,
    "aws:ssm/parameter:Parameter": 1011,
}


def test_the_longest_stack_name_fits_every_aws_name():
    stack = "a-very-long-stack-name-" + "x" * 77
    assert len(stack) == 100
    plan = plan_of(stack, sshPublicKey=PUBLIC_KEY, s3Mounts=[{"bucket": "my-data", "mountPoint": "/data"}])
    checked = 0
    for r in plan.resources:
        limit = NAME_LIMITS.get(r.type)
        if limit is None:
            continue
        if "name" in r.inputs:
            length = len(r.inputs["name"])
        elif "namePrefix" in r.inputs:
            length = len(r.inputs["namePrefix"]) + 26
        else:
            length = len(r.name) + 8
        assert length <= limit, (r.type, r.name, length, limit)
        checked += 1
    assert checked >= 12
    roles = [r.inputs["namePrefix"] for r in plan.of_type("aws:iam/role:Role")]
    assert sorted(roles) == ["a-very-long-stack-name-xxx-controller-", "a-very-long-stack-name-xxxxxxx-engine-"]
    assert all(len(prefix) == 38 for prefix in roles)


def _role_of(reference: str) -> str:
    """Which node role a RolePolicy's `role` input (<NAME-controller-iam-role.name>) names."""
    return "controller" if "-controller-" in reference else "engine"


def _actions(document: dict) -> list[list[str]]:
    return [sorted(statement["Action"]) for statement in document["Statement"]]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"access": "ssh", "adminCidrs": ["203.0.113.0/24"], "sshPublicKey": PUBLIC_KEY},
        {"s3Mounts": [{"bucket": "data-bucket", "prefix": "in", "mountPoint": "/data"}]},
    ],
)
def test_the_iam_size_check_knows_every_policy_each_role_gets(overrides):
    """The preflight adds up what the program declares: the same policies per role, by
    name and by action, so a policy added to a component cannot escape the check."""
    from components.preflight import role_policies
    from tests.conftest import settings_of

    plan = plan_of(**overrides)
    declared: dict[str, dict[str, dict]] = {"controller": {}, "engine": {}}
    for r in plan.of_type(ROLE_POLICY):
        declared[_role_of(r.inputs["role"])][r.inputs["name"]] = json.loads(r.inputs["policy"])
    checked = role_policies(settings_of(**overrides))
    for role in ("controller", "engine"):
        assert set(declared[role]) == set(checked[role]), role
        for name, document in declared[role].items():
            assert _actions(document) == _actions(checked[role][name]), (role, name)


def test_a_role_over_iams_limit_is_refused_counting_every_policy():
    """Enough S3 prefixes that the mounts, the rendezvous and Session Manager fit, but not
    with the engine group's policy too: refused before anything exists (it used to pass
    and fail at the last policy of `pulumi up`)."""
    from components.preflight import ROLE_POLICY_CHARACTERS, check_role_policy_size, policy_characters, role_policies
    from ipfleet.settings import SettingsError
    from tests.conftest import settings_of

    for count in range(1, 80):
        mounts = [
            {"bucket": f"bucket-{i:03d}", "prefix": f"prefix-{i:03d}", "mountPoint": f"/m{i}"} for i in range(count)
        ]
        settings = settings_of(s3Mounts=mounts)
        policies = role_policies(settings)["controller"]
        total = sum(policy_characters(d) for d in policies.values())
        without_group = total - policy_characters(policies["ipfleet-engine-group"])
        if without_group <= ROLE_POLICY_CHARACTERS < total:
            break
    else:
        pytest.fail("no mount count lands between the two totals")
    with pytest.raises(SettingsError, match="the controller role's inline policies would total"):
        check_role_policy_size(settings)


def test_govcloud_arns_and_endpoints_follow_the_partition():
    """ARNs begin with the region's partition and endpoints use its DNS suffix: in
    GovCloud an `arn:aws:` policy grants nothing, and Session Manager could not register."""
    plan = plan_of(
        "gov",
        **{"aws:region": "us-gov-west-1"},
        engineInstanceTypes=["c5.large"],
        s3Mounts=[{"bucket": "gov-data", "prefix": "in", "mountPoint": "/data"}],
    )
    resources = []
    for r in plan.of_type(ROLE_POLICY):
        for statement in json.loads(r.inputs["policy"])["Statement"]:
            listed = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            resources += [arn for arn in listed if arn.startswith("arn:")]
    assert resources and all(arn.startswith("arn:aws-us-gov:") for arn in resources), resources
    assert "https://s3.us-gov-west-1.amazonaws.com/amazon-ssm-us-gov-west-1/" in user_data(plan, "controller")


@pytest.mark.parametrize("region,said", [("cn-north-1", "aws-cn partition"), ("us-isob-east-1", "ISO partition")])
def test_partitions_ipfleet_does_not_support_are_refused_by_name(region, said):
    from ipfleet.settings import SettingsError, parse_settings

    with pytest.raises(SettingsError) as caught:
        parse_settings("demo", {"aws:region": region})
    assert caught.value.problems[0].startswith("aws:region:")
    assert said in caught.value.problems[0] and region in caught.value.problems[0]


def test_a_custom_vpc_without_dns_is_refused_when_the_stack_makes_efs(monkeypatch):
    """Mounting EFS by name needs the VPC's DNS support and hostnames: without them the
    controller would wait 600 s for its mount and never start."""
    import pulumi

    from ipfleet.plan import _Answers

    vpc = "vpc-0123456789abcdef0"
    subnets = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    monkeypatch.setattr(_Answers, "without_dns", frozenset({vpc}))
    with pytest.raises(pulumi.RunError) as caught:
        plan_of(vpcId=vpc, subnetIds=subnets)
    assert f"ipfleet:vpcId: VPC {vpc} has DNS support and DNS hostnames turned off" in str(caught.value)
    # Without an EFS of the stack's, nothing is mounted by name.
    plan_of(vpcId=vpc, subnetIds=subnets, sharedStorage={"source": "bind:/srv/shared"})
    monkeypatch.setattr(_Answers, "without_dns", frozenset())
    plan_of(vpcId=vpc, subnetIds=subnets)


def test_plan_diff_knows_what_replaces_every_type_the_program_declares():
    """A resource type added to a component must say which of its inputs replace it."""
    from ipfleet.plan_diff import REPLACING_INPUTS

    plan = plan_of(
        s3Mounts=[{"bucket": "b-1", "mountPoint": "/data"}],
        access="ssh",
        adminCidrs=["203.0.113.0/24"],
        sshPublicKey=PUBLIC_KEY,
    )
    declared = {r.type for r in plan.resources if r.custom and not r.type.startswith("pulumi:providers:")}
    assert declared - set(REPLACING_INPUTS) == set()


def test_the_controller_unit_lifts_the_descriptor_limit(example):
    """Two descriptors per engine in the heart monitor: systemd's soft limit of 1,024
    stopped a controller at about 480 engines, silently."""
    document = yaml.safe_load(user_data(example, "controller"))
    unit = next(f["content"] for f in document["write_files"] if f["path"].endswith("/ipcontroller.service"))
    assert "LimitNOFILE=524288" in unit.splitlines()
