"""Hostile documents: what a process on a node could write where the laptop reads.

Each case publishes a document (or a node record) to a real moto server, runs the
real `ipfleet` command as a process with its own HOME, and asserts that it is
refused with the field named, that no command ran (a marker file the payload would
create stays absent), that nothing outside ipfleet's folders changed, and that no
escape sequence reached the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.conftest import PUBLIC_KEY
from tests.fast.test_connect import STACK

ESC = "\x1b"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ROOT with its content (links as their target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = os.readlink(path).encode()
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def run(aws_env: dict, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **aws_env, "HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def ssm(aws_env: dict):
    return boto3.client("ssm", region_name="us-east-1", endpoint_url=aws_env["AWS_ENDPOINT_URL"])


def publish(aws_env: dict, document) -> None:
    value = document if isinstance(document, str) else json.dumps(document)
    ssm(aws_env).put_parameter(Name=f"/ipfleet/{STACK}/connection", Value=value, Type="SecureString", Overwrite=True)


def mark(home: Path) -> Path:
    return home.parent / "PWNED"


def payload(home: Path) -> str:
    return f"$(touch {mark(home)})"


def setting(path: str, value):
    """A function that sets PATH (dotted) of a document to VALUE."""

    def change(document: dict) -> None:
        *parents, last = path.split(".")
        target = document
        for part in parents:
            target = target[part]
        target[last] = value

    return change


# (what is changed, the field the refusal names); {payload} is a command that leaves a mark.
HOSTILE = [
    ("controller.ssh.user", "ipfleet-admin\n    ProxyCommand {payload}", "controller.ssh.user"),
    ("controller.ssh.user", "root -oProxyCommand={payload}", "controller.ssh.user"),
    ("controller.instance_id", "i-0123456789abcdef0{payload}", "controller.instance_id"),
    ("controller.instance_id", "`touch PWNED`", "controller.instance_id"),
    ("controller.public_address", '203.0.113.9\nMatch exec "{payload}"', "controller.public_address"),
    ("controller.address", "10.0.1.5 -oProxyCommand={payload}", "controller.address"),
    (
        "controller.ssh.host_keys",
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey\n@cert-authority * ssh-rsa AAAA"],
        "host_keys",
    ),
    ("controller.ssh.host_keys", ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey other-host"], "host_keys"),
    ("controller.versions", {"python": "3.11\x1b]52;c;cm0gLXJmIH4=\x07"}, "controller.versions.python"),
    ("controller.versions", {"python": "[link=file:///etc/passwd]3.11[/link]"}, "controller.versions.python"),
    ("controller.access", "ssm\n", "access"),
    ("client.pack", "os.system", "client.pack"),
    ("client.unpack", "pickle.loads", "client.unpack"),
    ("client.registration", "10109", "client.registration"),
    ("client.registration", 99999, "client.registration"),
    ("client.location", "evil.example.com", "client.location"),
    ("client.interface", "ipc:///tmp/socket", "client.interface"),
    ("client.signature_scheme", "hmac-md5", "client.signature_scheme"),
    ("client.key", "k" * 5000, "client.key"),
    ("published_at", "\x1b[2J\x1b[Hall good", "published_at"),
    ("stack", "other", "stack"),
    ("notebook", {"port": 8888, "token": "x\ny"}, "notebook.token"),
]


def controller_instance(aws_env: dict, stack: str = STACK) -> dict:
    """A controller instance in moto's EC2, tagged as the program tags it."""
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    image = ec2.describe_images()["Images"][0]["ImageId"]
    [instance] = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "ipfleet:stack", "Value": stack}, {"Key": "ipfleet:role", "Value": "controller"}],
            }
        ],
    )["Instances"]
    return instance


def record(instance_id: str, role: str = "engine", **fields) -> str:
    return json.dumps({"format": 1, "role": role, "instanceId": instance_id, "phase": "running", **fields})


def test_a_public_key_in_the_stack_file_is_only_two_fields_on_the_laptop():
    from ipfleet.remote import SshLogin

    login = SshLogin.model_validate({"user": "ipfleet-admin", "authorized_key": PUBLIC_KEY, "host_keys": []})
    assert login.authorized_key == " ".join(PUBLIC_KEY.split()[:2])


def test_the_proxy_command_takes_only_a_region_name():
    from ipfleet.connect import ssm_proxy_command
    from ipfleet.names import InvalidRegion

    assert ssm_proxy_command("us-gov-west-1").endswith("--region us-gov-west-1")
    with pytest.raises(InvalidRegion):
        ssm_proxy_command("eu-west-1 && id")
