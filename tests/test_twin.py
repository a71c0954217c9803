"""The twin tier: a stack's exact user data boots real Debian nodes (systemd-nspawn,
systemd, cloud-init) in network namespaces, moto stands in for AWS, and a real
ipyparallel.Client in a client namespace runs work on the engines.

Needs root and debootstrap, systemd-container, iproute2 (`make test` installs them).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ipfleet.twin import cluster
from ipfleet.twin.network import existing_namespaces
from tests.conftest import write_stack

pytestmark = pytest.mark.twin

STACK = {
    "aws:region": "us-east-1",
    "ipfleet:engineNodes": 2,
    "ipfleet:enginesPerNode": 2,
    "ipfleet:s3Mounts": [{"bucket": "twin-data", "prefix": "inputs", "mountPoint": "/data"}],
}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    if os.environ.get("IPFLEET_SKIP_TWIN") == "1":
        pytest.skip("IPFLEET_SKIP_TWIN=1")
    cluster.check_platform()  # fails loudly (not a skip) when the machine cannot run it
    path = write_stack(tmp_path_factory.mktemp("stack"), "twintier", STACK)
    state = cluster.up(str(path))
    outcome = {"state": state}
    try:
        cluster.wait_ready(state, timeout=600)
        outcome["demo"] = cluster.fetch_and_demo(state, timeout=300)
        yield outcome
    finally:
        outcome["leftovers"] = cluster.down(state)
        outcome["down"] = True


def test_cloud_init_done_without_errors_on_every_node(twin):
    for node in twin["state"].nodes:
        report = node.run("cloud-init", "status", "--long").stdout
        assert "status: done" in report, f"{node.name}:\n{report}\n{cluster.describe_node(node)}"


def test_units_are_active(twin):
    state = twin["state"]
    controller_units = ["ipcontroller.service", "ipfleet-publish.service", "shared.mount", "data.mount"]
    engine_units = ["ipfleet-connection.service", "ipengine@1.service", "ipengine@2.service",
                    "shared.mount", "data.mount"]
    for node in state.nodes:
        units = controller_units if node.role == "controller" else engine_units
        result = node.run("systemctl", "is-active", *units)
        assert result.stdout.split() == ["active"] * len(units), f"{node.name}: {result.stdout}"
    assert not state.controller.run("systemctl", "is-active", "ipengine@1.service").stdout.startswith("active")


def test_four_engines_ran_the_demo_on_both_engine_hosts(twin):
    demo = twin["demo"]
    assert demo["engines"] == 4
    assert demo["results"] == [x**30 for x in range(8)]
    assert demo["hostnames"] == ["twintier-engine-1", "twintier-engine-2"]
    timings = demo["timings"]
    assert 0 < timings["boot_to_controller_up"] <= timings["boot_to_published"] <= timings["boot_to_registered"]


def test_nothing_is_open_to_the_laptop_in_ssm_mode(twin):
    """access: ssm. The demo above ran through ssh over the Session Manager stand-in;
    no port of the controller, ssh included, accepts the laptop directly."""
    from ipfleet import ports
    from ipfleet.twin.network import PUBLIC_ADDRESS

    assert twin["demo"]["access"] == "ssm"
    probed = [ports.SSH_PORT, ports.CLIENT_PORTS.first, ports.ENGINE_PORTS.first, ports.CONTROLLER_PORTS.last]
    for host in (twin["state"].controller.address, PUBLIC_ADDRESS):
        assert cluster.client_reaches(twin["state"], host, probed) == {p: False for p in probed}


def test_shared_storage_is_shared(twin):
    first, second = twin["state"].engine_nodes
    written = first.run("sh", "-c", "echo written-on-engine-1 > /shared/hello.txt")
    assert written.returncode == 0, written.stderr
    assert second.run("cat", "/shared/hello.txt").stdout == "written-on-engine-1\n"
    assert twin["state"].controller.run("cat", "/shared/hello.txt").stdout == "written-on-engine-1\n"
    owner = second.run("stat", "-c", "%U", "/shared").stdout.strip()
    assert owner == "ipfleet"


def test_s3_mount_serves_an_object_put_into_the_bucket(twin):
    state = twin["state"]
    cluster.put_object(state, "twin-data", "inputs/numbers.txt", "1 2 3\n")
    cluster.put_object(state, "twin-data", "elsewhere/secret.txt", "not for the cluster\n")
    engine = state.engine_nodes[1]
    assert engine.run("cat", "/data/numbers.txt").stdout == "1 2 3\n"
    # Only the prefix is mounted, read-only.
    assert engine.run("ls", "/data").stdout.split() == ["numbers.txt"]
    assert engine.run("sh", "-c", "echo x > /data/new.txt").returncode != 0


def test_engines_got_their_connection_file_owner_only(twin):
    engine = twin["state"].engine_nodes[0]
    mode = engine.run("stat", "-c", "%a %U", "/var/lib/ipfleet/ipython/profile_default/security/ipcontroller-engine.json")
    assert mode.stdout.split() == ["600", "ipfleet"]


def test_user_data_on_the_node_is_the_plans(twin):
    """What cloud-init consumed is byte for byte what the Pulumi program produced."""
    state = twin["state"]
    seeded = state.controller.run("cat", "/var/lib/cloud/instance/user-data.txt").stdout
    assert seeded.startswith("#cloud-config\n# ipfleet controller node")
    assert "aws_endpoint_url" in seeded and cluster.ENDPOINT in seeded  # the documented knob


def test_status_reports_every_node_through_the_cli(twin):
    import json
    import sys

    result = subprocess.run([sys.executable, "-m", "ipfleet.cli", "twin", "status", "twintier", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [n["name"] for n in report["nodes"]] == ["twintier-controller", "twintier-engine-1", "twintier-engine-2"]
    assert all(n["running"] and n["cloud_init"] == "done" for n in report["nodes"])
    assert report["nodes"][0]["units"]["ipcontroller.service"] == "active"
    assert report["nodes"][1]["units"]["ipengine@2.service"] == "active"


def test_down_leaves_nothing_behind(twin):
    state = twin["state"]
    # Run the teardown now (the fixture's finally will find nothing more to do).
    leftovers = cluster.down(state)
    assert leftovers == []
    assert not set(state.namespaces) & existing_namespaces()
    mounts = open("/proc/mounts").read()
    assert str(state.work_dir) not in mounts
    for pid in [n.pid for n in state.nodes] + [state.moto_pid]:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert not state.work_dir.exists() and not state.state_dir.exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"ipft{state.tag}" not in links


def test_twin_refuses_clearly_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(cluster.TwinError, match="needs root"):
        cluster.check_platform()
