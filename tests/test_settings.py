"""The stack settings interface: defaults, and one clear error per bad input."""

from __future__ import annotations

import pytest

from ipfleet.settings import SettingsError, architecture, parse_settings

BASE = {"aws:region": "us-east-1"}


def test_defaults_are_the_documented_ones():
    s = parse_settings("demo", BASE)
    assert s.engine_nodes == 2 and s.fleet_max == 2
    assert s.engines_per_node == "auto"
    assert s.on_demand_base == 0 and s.spot_max_price is None
    assert s.image == "debian-12"
    assert s.access == "ssm" and s.admin_cidrs == []
    assert s.shared_storage.enabled and s.shared_storage.mount_point == "/shared"
    assert s.shared_storage.retain_on_destroy
    assert s.ipyparallel.packer == "json" and s.ipyparallel.scheme == "leastload"
    assert len(s.engine_instance_types) >= 2
    assert s.rendezvous_parameter == "/ipfleet/demo/connection"


def test_values_arrive_as_strings_from_the_pulumi_engine():
    s = parse_settings("demo", {**BASE, "ipfleet:engineNodes": "5", "ipfleet:enginesPerNode": "3",
                                "ipfleet:s3Mounts": '[{"bucket": "my-data", "mountPoint": "/data"}]',
                                "ipfleet:sharedStorage": '{"enabled": false}'})
    assert s.engine_nodes == 5 and s.engines_per_node == 3
    assert s.s3_mounts[0].bucket == "my-data" and s.s3_mounts[0].read_only
    assert not s.shared_storage.enabled


# (config overrides, the setting the error must name, a value it must show)
BAD_INPUT = [
    ({"ipfleet:engineNodes": -1}, "ipfleet:engineNodes", "-1"),
    ({"ipfleet:engineNodes": 4, "ipfleet:maxEngineNodes": 2}, "ipfleet:maxEngineNodes", "2"),
    ({"ipfleet:onDemandBase": 3}, "ipfleet:onDemandBase", "3"),
    ({"ipfleet:enginesPerNode": 0}, "ipfleet:enginesPerNode", "0"),
    ({"ipfleet:enginesPerNode": "many"}, "ipfleet:enginesPerNode", "many"),
    ({"ipfleet:spotMaxPrice": -0.5}, "ipfleet:spotMaxPrice", "-0.5"),
    ({"ipfleet:image": "centos-7"}, "ipfleet:image", "centos-7"),
    ({"ipfleet:access": "vpn"}, "ipfleet:access", "vpn"),
    ({"ipfleet:ipyparallel": {"packer": "yaml"}}, "ipfleet:ipyparallel.packer", "yaml"),
    ({"ipfleet:ipyparallel": {"scheme": "fastest"}}, "ipfleet:ipyparallel.scheme", "fastest"),
    ({"ipfleet:access": "ssh", "ipfleet:adminCidrs": ["10.1.2.3/8"]}, "ipfleet:adminCidrs", "10.1.2.3/8"),
    ({"ipfleet:adminCidrs": ["my office"]}, "ipfleet:adminCidrs", "my office"),
    ({"ipfleet:access": "ssh", "ipfleet:adminCidrs": ["203.0.113.0/24"]}, "ipfleet:access", "ssh"),
    ({"ipfleet:notebook": True, "ipfleet:access": "direct", "ipfleet:adminCidrs": ["203.0.113.0/24"]},
     "ipfleet:notebook", "true"),
    ({"ipfleet:ssmAgentUrl": "ftp://mirror/agent.deb"}, "ipfleet:ssmAgentUrl", "ftp://mirror/agent.deb"),
    ({"ipfleet:s3Mounts": [{"bucket": "Bad_Bucket", "mountPoint": "/data"}]},
     "ipfleet:s3Mounts[0].bucket", "Bad_Bucket"),
    ({"ipfleet:s3Mounts": [{"bucket": "ok-bucket", "mountPoint": "data"}]},
     "ipfleet:s3Mounts[0].mountPoint", "data"),
    ({"ipfleet:s3Mounts": [{"bucket": "ok-a", "mountPoint": "/data"},
                           {"bucket": "ok-b", "mountPoint": "/data"}]},
     "ipfleet:s3Mounts[1].mountPoint", "/data"),
    ({"ipfleet:s3Mounts": [{"bucket": "ok-a", "mountPoint": "/shared"}]},
     "ipfleet:s3Mounts[0].mountPoint", "/shared"),
    ({"ipfleet:sharedStorage": {"mountPoint": "/usr"}}, "ipfleet:sharedStorage.mountPoint", "/usr"),
    ({"ipfleet:engineInstanceTypes": []}, "ipfleet:engineInstanceTypes", "[]"),
    ({"ipfleet:engineInstanceTypes": ["c6i.large", "m7g.large"]}, "ipfleet:engineInstanceTypes", "m7g.large"),
    ({"ipfleet:controllerInstanceType": "big"}, "ipfleet:controllerInstanceType", "big"),
    ({"ipfleet:access": "ssh"}, "ipfleet:access", "ssh"),
    ({"ipfleet:access": "direct"}, "ipfleet:access", "direct"),
    ({"ipfleet:pythonPackages": ["numpy>="]}, "ipfleet:pythonPackages", "numpy>="),
    ({"ipfleet:aptPackages": ["rm -rf /"]}, "ipfleet:aptPackages", "rm -rf /"),
    ({"ipfleet:packageIndexUrl": "https://user:pw@mirror.example/simple"},
     "ipfleet:packageIndexUrl", "user:pw"),
    ({"ipfleet:sshPublicKey": "not a key"}, "ipfleet:sshPublicKey", "not a key"),
    ({"ipfleet:subnetIds": ["subnet-0123abcd"]}, "ipfleet:subnetIds", "subnet-0123abcd"),
    ({"ipfleet:vpcId": "vpc-xyz"}, "ipfleet:vpcId", "vpc-xyz"),
    ({"ipfleet:tags": {"aws:owner": "me"}}, "ipfleet:tags", "aws:owner"),
    ({"ipfleet:engineNode": 3}, "ipfleet:engineNode", "ipfleet:engineNodes"),  # typo: suggestion
    ({"ipfleet:sharedStorage": {"mountpoint": "/x"}}, "ipfleet:sharedStorage.mountpoint", "/x"),
    ({"ipfleet:s3Mounts": "[{not json"}, "ipfleet:s3Mounts", "[{not json"),
    ({"aws:region": "mars-1"}, "aws:region", "mars-1"),
]


@pytest.mark.parametrize("overrides,key,shown", BAD_INPUT, ids=[c[1] + "=" + c[2] for c in BAD_INPUT])
def test_bad_input_names_the_setting_and_the_value(overrides, key, shown):
    with pytest.raises(SettingsError) as caught:
        parse_settings("demo", {**BASE, **overrides})
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(key + ":"), problems[0]
    assert shown in problems[0]


def test_region_is_required():
    with pytest.raises(SettingsError, match="aws:region: required"):
        parse_settings("demo", {"ipfleet:engineNodes": 1})


def test_several_mistakes_are_reported_together():
    with pytest.raises(SettingsError) as caught:
        parse_settings("demo", {**BASE, "ipfleet:engineNodes": -1, "ipfleet:image": "x"})
    assert len(caught.value.problems) == 2


def test_explicit_world_cidr_is_allowed_when_the_stack_asks_for_it():
    s = parse_settings("demo", {**BASE, "ipfleet:access": "direct", "ipfleet:adminCidrs": ["0.0.0.0/0"]})
    assert s.admin_cidrs == ["0.0.0.0/0"]
    assert s.curve  # direct mode always encrypts


@pytest.mark.parametrize("instance_type,arch", [
    ("c6i.large", "x86_64"), ("m7g.xlarge", "arm64"), ("c7gn.large", "arm64"),
    ("t4g.small", "arm64"), ("g5.xlarge", "x86_64"), ("g5g.xlarge", "arm64"), ("x2gd.large", "arm64"),
    ("inf1.xlarge", "x86_64"), ("r7iz.large", "x86_64"),
])
def test_architecture_of_instance_types(instance_type, arch):
    assert architecture(instance_type) == arch
