"""`ipfleet connect` against moto on loopback: the published document read, the ssh
entry written and read back by the real ssh (the offline cases are in
tests/fast/test_connect.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from ipfleet import versions
from tests.conftest import free_port
from tests.fast.test_connect import STACK, keypair, publish, published, run_connect, ssh_resolves


def test_connect_writes_the_entry_pins_host_keys_and_prints_the_snippet(aws_env, tmp_path):
    home = tmp_path / "home"
    private, public = keypair(home / ".ssh")
    publish(aws_env, published("ssm", public))
    result = run_connect(aws_env, home)
    assert result.returncode == 0, result.stderr
    assert 'import ipfleet\n    rc = ipfleet.client("lab")' in result.stdout
    assert "ssh ipfleet-lab" in result.stdout
    # Versions match; the one warning: moto's EC2 has no controller to confirm the document by.
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "could not be confirmed" in warned[0], warned
    entry = home / ".ssh" / "ipfleet" / "lab.conf"
    resolved = ssh_resolves(home / ".ssh" / "config", "ipfleet-lab")  # found through the Include
    assert resolved["hostname"] == "i-0123456789abcdef0"
    assert entry.exists()
    known = (home / ".ssh" / "ipfleet" / "lab.known_hosts").read_text()
    assert known.startswith("ipfleet-lab ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey")
    saved = json.loads(
        (Path(aws_env["IPYTHONDIR"]) / "profile_ipfleet-lab" / "security" / "ipfleet-connection.json").read_text()
    )
    assert saved["ssh_host"] == "ipfleet-lab" and saved["identity"] == str(private)


def test_connect_warns_when_python_differs_from_the_engines(aws_env, tmp_path):
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    publish(aws_env, published("ssm", public, python="3.9.18"))
    result = run_connect(aws_env, home, "--json")
    assert result.returncode == 0, result.stderr
    minor = ".".join(versions.local_versions()["python"].split(".")[:2])
    assert f"warning: Python {minor} here but 3.9 on the engines" in result.stderr
    assert json.loads(result.stdout)["warnings"]


def test_client_helper_warns_before_connecting(aws_env, tmp_path, monkeypatch):
    """ipfleet.client() raises the version warning before any socket is opened."""
    import ipfleet
    from ipfleet.connect import Connection

    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    document = published("direct", public, python="3.9.18")
    # A controller on loopback where nothing listens: the client gives up without
    # anything leaving this machine.
    document["controller"]["public_address"] = document["client"]["location"] = "127.0.0.1"
    document["client"]["interface"] = "tcp://127.0.0.1"
    document["client"]["registration"] = free_port()
    publish(aws_env, document)
    assert run_connect(aws_env, home).returncode == 0
    assert Connection.load(STACK).access == "direct"
    # Nothing listens at the published port: Client() gives up on loopback after its timeout.
    with warnings.catch_warnings(record=True) as caught, pytest.raises(TimeoutError):
        warnings.simplefilter("always")
        ipfleet.client(STACK, timeout=1)
    assert any(issubclass(w.category, versions.VersionMismatchWarning) for w in caught)


def test_no_ssh_config_prints_the_command_and_leaves_ssh_config_alone(aws_env, tmp_path):
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    publish(aws_env, published("ssm", public))
    result = run_connect(aws_env, home, "--no-ssh-config", "--json")
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)["ssh_command"]
    assert "'ProxyCommand=aws ssm start-session --target %h" in command
    assert command.endswith("ipfleet-admin@i-0123456789abcdef0")
    assert not (home / ".ssh" / "config").exists()
    assert (home / ".ssh" / "ipfleet" / "lab.known_hosts").exists()
