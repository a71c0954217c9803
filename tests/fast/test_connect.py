"""The laptop side: `ipfleet connect`, its ssh entry (read back by the real ssh), the
version check, and `ipfleet.client()`'s refusal to guess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from ipfleet import versions
from ipfleet.connect import ensure_include, find_identity, include_line, ssm_proxy_command, tunnel_for
from ipfleet.fetch import FetchError, PublishedController
from tests.conftest import PUBLIC_KEY

STACK = "lab"


def keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(private)], check=True)
    return private, (directory / f"{name}.pub").read_text().strip()


def client_info(address: str) -> dict:
    """ipyparallel's client connection info as ipfleet's controller writes it."""
    names = ("registration", "control", "mux", "task", "iopub", "notification", "broadcast")
    ports = {name: 10101 + i for i, name in enumerate(names)}
    return {
        "ssh": "",
        "interface": "tcp://127.0.0.1",
        **ports,
        "task_scheme": "leastload",
        "key": "0123456789abcdef" * 4,
        "curve_serverkey": None,
        "location": address,
        "pack": "json",
        "unpack": "json",
        "signature_scheme": "hmac-sha256",
    }


def published(access: str, public_key: str | None, python: str | None = None) -> dict:
    local = versions.local_versions()
    return {
        "format": 1,
        "stack": STACK,
        "published_at": "2026-11-21T10:00:00+00:00",
        "controller": {
            "address": "10.0.1.5",
            "public_address": "203.0.113.9" if access != "ssm" else None,
            "instance_id": "i-0123456789abcdef0",
            "access": access,
            "versions": {**local, "python": python or local["python"]},
            "ssh": {
                "user": "ipfleet-admin",
                "authorized_key": public_key,
                "host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHostKeyHostKeyHost"],
            },
        },
        "client": client_info("10.0.1.5"),
        "engine": {},
    }


def ssh_resolves(config: Path, host: str) -> dict[str, str]:
    """What the real ssh makes of the entry (`ssh -G` prints its resolved settings)."""
    out = subprocess.run(["ssh", "-G", "-F", str(config), host], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_ssm_entry_is_what_ssh_and_session_manager_expect(tmp_path):
    private, public = keypair(tmp_path / ".ssh")
    doc = published("ssm", public)
    tunnel = tunnel_for(STACK, "eu-west-1", PublishedController.parse(doc["controller"]), private, tmp_path / ".ssh")
    entry = tmp_path / "entry.conf"
    entry.write_text(tunnel.config_entry(STACK))
    resolved = ssh_resolves(entry, "ipfleet-lab")
    assert resolved["hostname"] == "i-0123456789abcdef0"  # Session Manager targets the instance id
    assert resolved["user"] == "ipfleet-admin"
    assert resolved["proxycommand"] == (
        "aws ssm start-session --target %h --document-name "
        "AWS-StartSSHSession --parameters portNumber=%p --region eu-west-1"
    )
    assert resolved["proxycommand"] == ssm_proxy_command("eu-west-1")
    assert resolved["stricthostkeychecking"] == "true"
    assert resolved["hostkeyalias"] == "ipfleet-lab"
    assert resolved["identityfile"] == str(private)
    assert resolved["controlmaster"] == "auto"


def test_ssh_entry_dials_the_public_address_with_no_proxy(tmp_path):
    private, public = keypair(tmp_path / ".ssh")
    controller = PublishedController.parse(published("ssh", public)["controller"])
    tunnel = tunnel_for(STACK, "us-east-1", controller, private, tmp_path / ".ssh")
    entry = tmp_path / "entry.conf"
    entry.write_text(tunnel.config_entry(STACK))
    resolved = ssh_resolves(entry, "ipfleet-lab")
    assert resolved["hostname"] == "203.0.113.9"
    assert "proxycommand" not in resolved
    # The plain command says the same thing without the entry.
    assert tunnel.ssh_command()[-1] == "ipfleet-admin@203.0.113.9"


def test_include_goes_first_keeps_everything_and_is_added_once(tmp_path):
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    mine = "Host work\n    HostName work.example\n    User me\n"
    (ssh / "config").write_text(mine)
    os.chmod(ssh / "config", 0o644)
    assert ensure_include(ssh) is True
    text = (ssh / "config").read_text()
    assert text.splitlines()[1] == include_line(ssh) and text.endswith(mine)
    assert stat.S_IMODE((ssh / "config").stat().st_mode) == 0o644  # the user's mode is kept
    assert ensure_include(ssh) is False
    assert (ssh / "config").read_text() == text


def test_identity_is_the_key_the_stack_authorizes(tmp_path):
    ssh = tmp_path / ".ssh"
    keypair(ssh, "id_ed25519")
    other, other_public = keypair(ssh, "cluster_key")
    assert find_identity(other_public, None, ssh) == other
    with pytest.raises(FetchError, match="no key in .* matches the stack's sshPublicKey"):
        find_identity("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINotMineNotMineNotMineNotMineNotMineNotMi x", None, ssh)
    with pytest.raises(FetchError, match="has no ipfleet:sshPublicKey"):
        find_identity(None, None, ssh)


def test_mismatched_python_minor_warns_with_both_versions():
    here = {"python": "3.11.7", "ipyparallel": "9.2.0", "cloudpickle": "3.1.2"}
    assert versions.mismatches({**here, "python": "3.11.2"}, here) == []
    [problem] = versions.mismatches({**here, "python": "3.12.1"}, here)
    assert "Python 3.11 here but 3.12 on the engines" in problem
    problems = versions.mismatches(
        {**here, "ipyparallel": "8.8.0", "cloudpickle": "3.0.0"}, {**here, "cloudpickle": None}
    )
    assert any("ipyparallel 9.2.0 here but 8.8.0" in p for p in problems)
    assert any("cloudpickle is not installed here but 3.0.0" in p for p in problems)


def run_connect(aws_env: dict, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **aws_env, "HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", "connect", STACK, "--region", "us-east-1", "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def publish(aws_env: dict, document: dict) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    ssm.put_parameter(
        Name=f"/ipfleet/{STACK}/connection", Value=json.dumps(document), Type="SecureString", Overwrite=True
    )


def test_client_without_any_region_says_so(tmp_path, monkeypatch):
    """Nothing saved, no stack file, no AWS configuration: a clear error, not boto3's traceback."""
    import ipfleet

    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(FetchError, match="no AWS region for stack 'nowhere'"):
        ipfleet.client("nowhere", timeout=1)


def test_the_published_controller_is_parsed_once_into_a_typed_object():
    from ipfleet.access import Access

    controller = PublishedController.parse(published("ssh", PUBLIC_KEY)["controller"])
    assert controller.access is Access.SSH and controller.address == "10.0.1.5"
    assert controller.ssh is not None and controller.ssh.user == "ipfleet-admin" and len(controller.ssh.host_keys) == 1
    assert controller.as_json()["public_address"] == "203.0.113.9"
    assert PublishedController.parse({"address": "10.0.0.1"}).access is Access.DIRECT  # from before access modes
    with pytest.raises(FetchError, match="published access 'vpn'"):
        PublishedController.parse({"address": "10.0.0.1", "access": "vpn"})
    with pytest.raises(FetchError, match="names no controller address"):
        PublishedController.parse({"access": "ssm"})


def test_a_symlinked_ssh_config_stays_a_link(tmp_path):
    """A config kept in a dotfiles checkout and linked into ~/.ssh: the Include goes into
    the file it points at, and the link stays."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    dotfiles = tmp_path / "dotfiles" / "ssh_config"
    dotfiles.parent.mkdir()
    dotfiles.write_text("Host work\n    User me\n")
    (ssh / "config").symlink_to(dotfiles)
    assert ensure_include(ssh) is True
    assert (ssh / "config").is_symlink()
    assert dotfiles.read_text().splitlines()[1] == include_line(ssh)
    assert "Host work" in dotfiles.read_text()


def test_the_notebook_token_goes_only_to_a_port_this_tunnel_holds(tmp_path):
    """Something already listens on the local port: refused before ssh starts, so the
    token is never printed for another program's listener."""
    import socket

    from ipfleet.connect import Connection
    from ipfleet.notebook import NotebookError, forward

    connection = Connection(
        stack=STACK,
        region="us-east-1",
        access="ssm",
        client_file=str(tmp_path / "client.json"),
        ssh_host="ipfleet-lab",
        identity=None,
        versions={},
        notebook={"port": 8888, "token": "t" * 43},
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(NotebookError, match=f"127.0.0.1:{port} is in use by another program"):
            with forward(connection, port):
                pass
