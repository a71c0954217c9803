"""The twin tier: a stack's exact user data boots real Debian nodes (systemd-nspawn,
systemd, cloud-init) in network namespaces, moto stands in for AWS, and a real
ipyparallel.Client in a client namespace runs work on the engines.

Needs root and debootstrap, systemd-container, iproute2 (`make test` installs them).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ipfleet.twin import cluster, laptop, plan_deploy, vpc
from ipfleet.twin.state import TwinError
from ipfleet.twin.vpc import existing_namespaces
from tests.conftest import twin_exec, write_stack

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
        outcome["demo"] = laptop.fetch_and_demo(state, timeout=300)
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
    engine_units = [
        "ipfleet-connection.service",
        "ipengine@1.service",
        "ipengine@2.service",
        "shared.mount",
        "data.mount",
    ]
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
    from ipfleet.twin.vpc import PUBLIC_ADDRESS

    assert twin["demo"]["access"] == "ssm"
    probed = [ports.SSH_PORT, ports.CLIENT_PORTS.first, ports.ENGINE_PORTS.first, ports.CONTROLLER_PORTS.last]
    for host in (twin["state"].controller.address, PUBLIC_ADDRESS):
        assert laptop.client_reaches(twin["state"], host, probed) == {p: False for p in probed}


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
    plan_deploy.put_object(state, "twin-data", "inputs/numbers.txt", "1 2 3\n")
    plan_deploy.put_object(state, "twin-data", "elsewhere/secret.txt", "not for the cluster\n")
    engine = state.engine_nodes[1]
    assert engine.run("cat", "/data/numbers.txt").stdout == "1 2 3\n"
    # Only the prefix is mounted, read-only.
    assert engine.run("ls", "/data").stdout.split() == ["numbers.txt"]
    assert engine.run("sh", "-c", "echo x > /data/new.txt").returncode != 0


def test_engines_got_their_connection_file_owner_only(twin):
    engine = twin["state"].engine_nodes[0]
    mode = engine.run(
        "stat", "-c", "%a %U", "/var/lib/ipfleet/ipython/profile_default/security/ipcontroller-engine.json"
    )
    assert mode.stdout.split() == ["600", "ipfleet"]


def test_user_data_on_the_node_is_the_plans(twin):
    """What cloud-init consumed is byte for byte what the Pulumi program produced."""
    import gzip
    import hashlib

    state = twin["state"]
    planned = state.user_data_file("controller").read_bytes()
    consumed = state.controller.run("sha256sum", "/var/lib/cloud/instance/user-data.txt").stdout.split()[0]
    assert consumed == hashlib.sha256(planned).hexdigest()
    text = gzip.decompress(planned).decode() if planned[:2] == b"\x1f\x8b" else planned.decode()
    assert text.startswith("#cloud-config\n# ipfleet controller node")
    assert "aws_endpoint_url" in text and vpc.ENDPOINT in text  # the documented knob


def test_status_reports_every_node_through_the_cli(twin):
    import json
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", "twin", "status", "twintier", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [n["name"] for n in report["nodes"]] == ["twintier-controller", "twintier-engine-1", "twintier-engine-2"]
    assert all(n["running"] and n["cloud_init"] == "done" for n in report["nodes"])
    assert report["nodes"][0]["units"]["ipcontroller.service"] == "active"
    assert report["nodes"][1]["units"]["ipengine@2.service"] == "active"


def test_nodes_run_the_stacks_image_release(twin):
    """ipfleet:image debian-13 (the default): the twin's nodes are Debian 13, s3fs 1.95."""
    engine = twin["state"].engine_nodes[0]
    assert 'VERSION_ID="13"' in engine.run("cat", "/etc/os-release").stdout
    assert "1.95" in engine.run("s3fs", "--version").stdout


IMDS_PROBE = """
import sys, urllib.error, urllib.request
base = "http://169.254.169.254/latest"
def get(path, headers={}):
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
print(get("/meta-data/instance-id")[0])
token = urllib.request.urlopen(urllib.request.Request(base + "/api/token", method="PUT",
    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}), timeout=5).read().decode()
print(*get("/meta-data/instance-id", {"X-aws-ec2-metadata-token": token}))
print(get("/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0])
"""


def test_instance_metadata_is_imdsv2_only_as_on_ec2(twin):
    """http_tokens: required. A request without a session token gets 401, as s3fs 1.90 would."""
    state = twin["state"]
    for node in state.nodes:
        result = node.run("python3", "-c", IMDS_PROBE)
        assert result.stdout.split("\n")[:3] == ["401", f"200 {node.instance_id}", "401"], result.stderr
    # And the laptop cannot reach the metadata address at all.
    from ipfleet.twin.vpc import METADATA_ADDRESS

    assert laptop.client_reaches(state, METADATA_ADDRESS, [80]) == {80: False}


def test_service_group_has_the_fixed_gid_the_s3_mount_uses(twin):
    engine = twin["state"].engine_nodes[0]
    assert engine.run("getent", "group", "ipfleet").stdout.split(":")[2] == "2001"
    assert engine.run("stat", "-c", "%u %g", "/data/numbers.txt").stdout.split() == ["2001", "2001"]


def test_units_that_use_the_shared_storage_require_its_mount(twin):
    state = twin["state"]
    shown = state.controller.run("systemctl", "show", "-p", "RequiresMountsFor", "ipcontroller.service")
    assert shown.stdout.strip() == "RequiresMountsFor=/shared"
    shown = state.engine_nodes[0].run("systemctl", "show", "-p", "Requires", "ipengine@1.service")
    assert "shared.mount" in shown.stdout


# -- trust boundaries on the nodes (docs/security.md) --------------------------


def as_service_user(node, script: str):
    """SCRIPT run by the service user, as user code on the node runs."""
    return node.run("runuser", "-u", "ipfleet", "--", "sh", "-c", script)


def test_no_image_default_user_and_no_sudo_for_anyone(twin):
    for node in twin["state"].nodes:
        name = node.run(
            "python3",
            "-c",
            "import yaml; print(yaml.safe_load(open('/etc/cloud/cloud.cfg'))['system_info']['default_user']['name'])",
        ).stdout.strip()
        assert name, node.name
        assert node.run("getent", "passwd", name).returncode == 2, f"{node.name}: {name} exists"
        sudoers = node.run("sh", "-c", "cat /etc/sudoers.d/* 2>/dev/null").stdout
        assert "NOPASSWD" not in sudoers, (node.name, sudoers)


def test_root_runs_only_its_own_units_and_user_code_cannot_feed_them(twin):
    """Of ipfleet's units only the watch (records, drain) and the keys run as root; the
    keeper runs as the service user; root's folder and the keys file are read-only to it."""
    controller = twin["state"].controller
    users = {}
    units = ("ipfleet-watch", "ipfleet-keys", "ipfleet-keeper", "ipcontroller", "ipfleet-publish", "ipfleet-records")
    for unit in units:
        users[unit] = controller.run("systemctl", "show", "-p", "User", "--value", f"{unit}.service").stdout.strip()
    assert users == {
        "ipfleet-watch": "",
        "ipfleet-keys": "",
        "ipfleet-keeper": "ipfleet",
        "ipcontroller": "ipfleet",
        "ipfleet-publish": "ipfleet",
        "ipfleet-records": "ipfleet",
    }
    keys = controller.run("stat", "-c", "%U:%G %a", "/var/lib/ipfleet-node/keys.json").stdout.split()
    assert keys == ["root:ipfleet", "640"]
    assert as_service_user(controller, "cat /var/lib/ipfleet-node/keys.json >/dev/null").returncode == 0
    for attempt in (
        "echo '{}' > /var/lib/ipfleet-node/keys.json",
        "echo 'not json' > /var/lib/ipfleet-node/bootstrap-failure.json",
        "ln -s /etc/shadow /var/lib/ipfleet-node/keys.json.tmp",
        "mv /var/lib/ipfleet-node/keys.json /var/lib/ipfleet-node/old",
    ):
        denied = as_service_user(controller, attempt)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, attempt
    # Where root once read the failure file: user code may write there, root reads it no more.
    planted = as_service_user(controller, "echo 'not json' > /var/lib/ipfleet/bootstrap-failure.json")
    assert planted.returncode == 0
    assert controller.run("systemctl", "is-active", "ipfleet-watch.service").stdout.strip() == "active"
    assert controller.run("test", "-e", "/var/lib/ipfleet-node/bootstrap-failure.json").returncode == 1


def test_engines_reach_the_engine_ports_and_not_the_client_ports(twin):
    """The security group admits the cluster's nodes to the controller's engine-facing ports
    only: an engine holds the cluster's key, but cannot submit tasks or read others' output."""
    state = twin["state"]
    engine, address = state.engine_nodes[0], state.controller.address
    dial = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
    assert engine.run("python3", "-c", dial, address, "10109").returncode == 0  # registration
    for port in ("10101", "10104"):  # the client ports (mux, task, ...)
        refused = engine.run("python3", "-c", dial, address, port)
        assert refused.returncode != 0 and "timed out" in refused.stderr, (port, refused.stderr)
    # The registration socket answers clients' queries too: from an engine node, refused
    # (bootstrap/ipfleet_node/hub.py), with the cluster's own key.
    ask = (
        "import json, sys, zmq\n"
        "from jupyter_client.session import Session\n"
        "info = json.load(open(sys.argv[1]))\n"
        "session = Session(key=info['key'].encode(), signature_scheme=info['signature_scheme'], packer=info['pack'])\n"
        "sock = zmq.Context().socket(zmq.DEALER)\n"
        "sock.linger = 0\n"
        "sock.connect(f\"tcp://{info['location']}:{info['registration']}\")\n"
        "session.send(sock, sys.argv[2], content={'targets': None, 'verbose': False})\n"
        "assert sock.poll(15000), 'no reply'\n"
        "_, reply = session.feed_identities(sock.recv_multipart())\n"
        "reply = session.deserialize(reply)\n"
        "print(json.dumps([reply['header']['msg_type'], reply['content'].get('evalue', '')]))\n"
    )
    engine_file = "/var/lib/ipfleet/ipython/profile_default/security/ipcontroller-engine.json"
    for query in ("queue_request", "shutdown_request"):
        asked = engine.run("/opt/ipfleet/venv/bin/python", "-c", ask, engine_file, query)
        assert asked.returncode == 0, asked.stderr
        kind, why = json.loads(asked.stdout)
        assert kind == "hub_error" and f"{query} is answered to clients only" in why, (kind, why)
    # The refused shutdown left the controller running.
    assert state.controller.run("systemctl", "is-active", "ipcontroller.service").stdout.strip() == "active"


# A node's report to the controller's collector, sent from SOURCE_PORT (0: any the sender may bind).
SEND_RECORD = """
import http.client, json, sys
controller, port, instance, address, source_port = sys.argv[1:6]
record = {"format": 1, "role": "engine", "instanceId": instance, "address": address, "phase": "failed",
          "error": {"step": "planted"}}
connection = http.client.HTTPConnection(controller, int(port), timeout=10, source_address=(address, int(source_port)))
connection.request("PUT", "/nodes/" + instance, body=json.dumps(record))
print(connection.getresponse().status)
"""


def test_each_engine_node_speaks_only_for_itself(twin):
    """Engine nodes hold no right to any record: the controller's collector writes each for
    the node the network says sent it (bootstrap/ipfleet_node/collector.py). User code on an
    engine node cannot report at all; root on one cannot report for another."""
    from bootstrap.ipfleet_node import wire

    state = twin["state"]
    a, b = state.engine_nodes[:2]
    controller = state.controller
    port = str(wire.RECORDS_PORT)

    def records() -> dict[str, str]:
        shown = twin_exec(state.stack, "ipfleet", "status", state.stack, "--json")
        assert shown.returncode == 0, shown.stderr
        return {n["instanceId"]: n["phase"] for n in json.loads(shown.stdout)["nodes"] if n["role"] == "engine"}

    before = records()
    assert before == {a.instance_id: "running", b.instance_id: "running"}
    # The service user on A: from any port it may bind (above 1024), refused.
    python = "/opt/ipfleet/venv/bin/python"
    arguments = f"{controller.address} {port} {a.instance_id} {a.address}"
    user = as_service_user(a, f"{python} -c '{SEND_RECORD}' {arguments} 0")
    assert user.stdout.strip() == "403", user.stderr
    # ... and a port below 1024 is root's.
    low = as_service_user(a, f"{python} -c '{SEND_RECORD}' {arguments} 700")
    assert "Permission denied" in low.stderr
    # Root on A, for B: refused.
    forged = a.run(python, "-c", SEND_RECORD, controller.address, port, b.instance_id, a.address, "701")
    assert forged.stdout.strip() == "403", forged.stderr
    assert records() == before
    journal = controller.run("journalctl", "--no-pager", "-u", "ipfleet-records.service").stdout
    assert f"may not speak for {b.instance_id}" in journal and "only root on a node reports" in journal
    # And the collector recorded each engine node's own reports, under its own id.
    assert f"{a.address}: recorded {a.instance_id}" in journal


def test_the_running_controller_has_the_descriptor_limit_its_unit_asks(twin):
    """65536, or as much of it as the node's own init may hand out: a twin node inherits
    this machine's hard limit (20,000 on some), an EC2 instance has the kernel's."""
    controller = twin["state"].controller

    def open_files(pid: str) -> list[int]:
        limits = controller.run("cat", f"/proc/{pid}/limits").stdout
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        return [int(value) for value in line.split()[3:5]]

    ceiling = open_files("1")[1]
    pid = controller.run("systemctl", "show", "-p", "MainPID", "--value", "ipcontroller.service").stdout.strip()
    expected = min(65536, ceiling)
    assert open_files(pid) == [expected, expected]
    assert expected > 4 * 1024  # far above the soft limit that stopped it at about 480 engines


def test_engines_do_not_run_in_the_shared_storage(twin):
    """ipengine puts its working directory first on sys.path: it is the node's own state
    folder, not the shared storage any node can write (ipfleet:sharedImports is off)."""
    for engine in twin["state"].engine_nodes:
        pid = engine.run("systemctl", "show", "-p", "MainPID", "--value", "ipengine@1.service").stdout.strip()
        assert pid not in ("", "0"), engine.name
        assert engine.run("readlink", f"/proc/{pid}/cwd").stdout.strip() == "/var/lib/ipfleet"


def test_engines_follow_a_replaced_controller(twin):
    """`pulumi up` replaced the controller: new instance, new address, empty disk. Engines
    notice the old one is gone, re-read the rendezvous and register with the new one; the
    laptop runs `ipfleet connect` again and the demo runs on every engine."""
    import time

    state = twin["state"]
    old = state.controller
    new = cluster.replace_controller(state, timeout=600)
    assert new.address != old.address and new.instance_id != old.instance_id
    started = time.monotonic()
    demo = laptop.fetch_and_demo(state, timeout=300)
    recovery = time.monotonic() - started
    assert demo["engines"] == 4 and demo["results"] == [x**30 for x in range(8)]
    assert demo["hostnames"] == ["twintier-engine-1", "twintier-engine-2"]
    log = state.engine_nodes[0].run("journalctl", "--no-pager", "-u", "ipengine@*").stdout
    assert f"controller at {new.address} (was {old.address})" in log
    print(f"engines registered with the replacement {recovery:.1f} s after it published")


def test_down_leaves_nothing_behind(twin):
    state = twin["state"]
    # Run the teardown now (the fixture's finally will find nothing more to do).
    leftovers = cluster.down(state)
    assert leftovers == []
    assert not set(state.namespaces) & existing_namespaces()
    mounts = open("/proc/mounts").read()
    assert str(state.work_dir) not in mounts
    for pid in [n.pid for n in state.nodes] + [state.moto_pid, state.metadata_pid]:
        assert (
            not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        )
    assert not state.work_dir.exists() and not state.state_dir.exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"ipft{state.tag}" not in links


def test_twin_refuses_clearly_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TwinError, match="needs root"):
        cluster.check_platform()
