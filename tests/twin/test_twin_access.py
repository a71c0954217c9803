"""Access modes in the twin: the laptop (client namespace) reaches the cluster only
the way the stack's security group allows, checked both ways.

- ssh: port 22 from adminCidrs; the ZMQ ports stay closed, and the demo runs through
  ipyparallel's ssh tunnels; JupyterLab on the controller's loopback is forwarded.
- direct: the client ports from adminCidrs with CurveZMQ; a client without the
  server key cannot register; a Python mismatch is warned about.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ipfleet import ports
from ipfleet.twin import cluster, laptop
from ipfleet.twin.vpc import PUBLIC_ADDRESS
from tests.conftest import write_stack

BASE = {
    "aws:region": "us-east-1",
    "ipfleet:engineNodes": 1,
    "ipfleet:enginesPerNode": 2,
    # The adminCidrs the twin replaces with the client's subnet (docs/twin.md).
    "ipfleet:adminCidrs": ["203.0.113.0/24"],
}


def booted(tmp_path_factory, name: str, config: dict):
    if os.environ.get("IPFLEET_SKIP_TWIN") == "1":
        pytest.skip("IPFLEET_SKIP_TWIN=1")
    cluster.check_platform()
    path = write_stack(tmp_path_factory.mktemp(name), name, {**BASE, **config})
    state = cluster.up(str(path))
    try:
        cluster.wait_ready(state, timeout=600)
        demo = laptop.fetch_and_demo(state, timeout=300)
    except BaseException:
        cluster.down(state)
        raise
    return state, demo


@pytest.fixture(scope="module")
def ssh_twin(tmp_path_factory):
    # sshPublicKey is the twin client's own key (a twin knob).
    state, demo = booted(tmp_path_factory, "sshmode", {"ipfleet:access": "ssh", "ipfleet:notebook": True})
    try:
        yield state, demo
    finally:
        assert cluster.down(state) == []


@pytest.fixture(scope="module")
def direct_twin(tmp_path_factory):
    state, demo = booted(tmp_path_factory, "directmode", {"ipfleet:access": "direct"})
    try:
        yield state, demo
    finally:
        assert cluster.down(state) == []


ZMQ_PORTS = [ports.CLIENT_PORTS.first, ports.ENGINE_PORTS.first, ports.CLIENT_FACING_PORTS.last]


def test_ssh_mode_opens_only_ssh_and_the_demo_runs_through_the_tunnel(ssh_twin):
    state, demo = ssh_twin
    reached = laptop.client_reaches(state, PUBLIC_ADDRESS, [ports.SSH_PORT, *ZMQ_PORTS])
    assert reached == {ports.SSH_PORT: True, **{p: False for p in ZMQ_PORTS}}
    assert demo["access"] == "ssh"
    assert demo["engines"] == 2 and demo["results"] == [x**30 for x in range(8)]


def _ssh_as_laptop(state, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        laptop.as_client(state, ["ssh", "-o", "BatchMode=yes", *args]),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        input="",
        env=laptop.client_env(state),
    )


def test_ssh_login_forwards_only_to_the_controllers_client_ports_and_has_no_sudo(ssh_twin):
    """sshd's PermitOpen: the tunnel login reaches the controller's own client ports, not
    the rest of the VPC (here the AWS stand-in's address), and gets no sudo unless asked."""
    from ipfleet.twin.vpc import ROUTER_ADDRESS

    state, _ = ssh_twin
    alias = f"ipfleet-{state.stack}"
    # Without the connection's control master: through the mux a refusal reads only
    # "Session open refused by peer", so sshd's reason would not be seen.
    direct = ("-o", "ControlPath=none")
    allowed = _ssh_as_laptop(state, *direct, "-W", f"{state.controller.address}:{ports.CLIENT_PORTS.first}", alias)
    assert allowed.returncode == 0, allowed.stderr
    refused = _ssh_as_laptop(state, *direct, "-W", f"{ROUTER_ADDRESS}:80", alias)
    assert refused.returncode != 0 and "prohibited" in refused.stderr, refused.stderr
    refused = _ssh_as_laptop(state, *direct, "-W", f"{state.controller.address}:22", alias)
    assert refused.returncode != 0 and "prohibited" in refused.stderr, refused.stderr
    sudo = _ssh_as_laptop(state, alias, "sudo", "-n", "true")
    assert sudo.returncode != 0, sudo.stdout


NOTEBOOK_PROBE = """
import json, sys, urllib.request
from ipfleet.connect import Connection
from ipfleet.notebook import forward
with forward(Connection.load(sys.argv[1]), 18888) as url:
    api = str(url).replace("/lab?", "/api/status?")
    with urllib.request.urlopen(api, timeout=30) as response:
        status = response.status
    refused = None
    try:
        urllib.request.urlopen(api.split("?")[0], timeout=30)
    except urllib.error.HTTPError as e:
        refused = e.code
print(json.dumps({"status": status, "without_token": refused}))
"""


def test_notebook_is_on_the_controller_loopback_and_reached_through_the_tunnel(ssh_twin):
    state, _ = ssh_twin
    listening = state.controller.run("ss", "-Htln", "sport", "= :8888").stdout
    assert [line.split()[3] for line in listening.splitlines()] == ["127.0.0.1:8888"]
    result = laptop.client_python(state, ["-c", NOTEBOOK_PROBE, state.stack], timeout=180)
    assert json.loads(result.stdout) == {"status": 200, "without_token": 403}


def test_ssh_login_is_keys_only_as_the_admin_user(ssh_twin):
    state, _ = ssh_twin
    effective = state.controller.run("sshd", "-T").stdout
    assert "passwordauthentication no" in effective and "permitrootlogin no" in effective
    assert "allowtcpforwarding local" in effective


def test_direct_mode_opens_only_the_client_ports_with_curve(direct_twin):
    state, demo = direct_twin
    reached = laptop.client_reaches(state, PUBLIC_ADDRESS, [ports.SSH_PORT, *ZMQ_PORTS])
    assert reached == {
        ports.SSH_PORT: False,
        ports.CLIENT_PORTS.first: True,
        ports.ENGINE_PORTS.first: True,
        ports.CLIENT_FACING_PORTS.last: True,
    }
    assert demo["access"] == "direct" and demo["results"] == [x**30 for x in range(8)]


WITHOUT_SERVER_KEY = """
import json, sys
import ipyparallel as ipp
info = json.load(open(sys.argv[1]))
assert info["curve_serverkey"]
info.pop("curve_serverkey")
try:
    ipp.Client(info, timeout=5).close()
    print("registered")
except TimeoutError:
    print("timed out")
"""


def test_direct_client_without_the_server_key_cannot_register(direct_twin):
    state, _ = direct_twin
    client_file = state.client_ipython_dir / "profile_ipfleet-directmode" / "security" / "ipcontroller-client.json"
    result = laptop.client_python(state, ["-c", WITHOUT_SERVER_KEY, str(client_file)], timeout=60)
    assert result.stdout.strip() == "timed out"


REPUBLISH_WITH_OLD_PYTHON = """
import json, sys, boto3
ssm = boto3.client("ssm")
name = sys.argv[1]
document = json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
print(document["controller"]["versions"]["python"])
document["controller"]["versions"]["python"] = "3.9.18"
ssm.put_parameter(Name=name, Value=json.dumps(document), Type="SecureString", Overwrite=True)
"""


def test_a_python_mismatch_is_warned_about(direct_twin):
    state, _ = direct_twin
    node_python = state.controller.run(
        "/opt/ipfleet/venv/bin/python", "-c", "import platform; print(platform.python_version())"
    ).stdout.strip()
    published = laptop.client_python(
        state, ["-c", REPUBLISH_WITH_OLD_PYTHON, state.rendezvous_parameter], timeout=60
    ).stdout.strip()
    assert published == node_python  # what the controller published is what the engines run
    laptop_python = laptop.client_python(
        state, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=60
    ).stdout.strip()
    result = laptop.client_python(
        state, ["-m", "ipfleet.cli", "connect", state.stack, "--region", state.region], timeout=120
    )
    assert f"warning: Python {laptop_python} here but 3.9 on the engines" in result.stderr
