"""A node installing the runtime wheel from S3 (real uv, real boto3 against moto): the
wheel the hash names, once, and never other bytes (the wheel's own tests are in
tests/fast/test_runtime_wheel.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from bootstrap.ipfleet_node import pyenv
from bootstrap.runtime_wheel import build, runtime_wheel, source_files
from tests.fast.test_runtime_wheel import UV


@pytest.fixture
def node(aws_env, tmp_path, monkeypatch):
    """A node's facts naming the runtime in a bucket of moto's, and an empty venv."""
    monkeypatch.setattr(pyenv, "UV_HOME", tmp_path / "uv-home")
    monkeypatch.setattr(pyenv, "UV_CACHE", str(tmp_path / "uv-cache"))
    (tmp_path / "uv-home").mkdir()
    (tmp_path / "uv-home" / "uv").symlink_to(UV)
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    wheel = runtime_wheel()
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="ipfleet-lab-runtime-0")
    facts = {
        "region": "us-east-1",
        "aws_endpoint_url": aws_env["AWS_ENDPOINT_URL"],
        "python": {"venv": str(venv)},
        "runtime": {"bucket": "ipfleet-lab-runtime-0", "key": wheel.key, "sha256": wheel.sha256},
    }
    return facts, s3, venv


def installed(venv: Path) -> bool:
    probe = subprocess.run([venv / "bin" / "python", "-I", "-c", "import ipfleet_node.agent"], capture_output=True)
    return probe.returncode == 0


def test_a_node_installs_the_wheel_the_hash_names_once(node, capsys):
    facts, s3, venv = node
    s3.put_object(Bucket="ipfleet-lab-runtime-0", Key=facts["runtime"]["key"], Body=runtime_wheel().data)
    pyenv.install_runtime(facts)
    assert installed(venv)
    assert (venv / "ipfleet-node-runtime.sha256").read_text().strip() == runtime_wheel().sha256
    pyenv.install_runtime(facts)  # a reboot: the same wheel is there already
    assert "already installed" in capsys.readouterr().out


def test_a_node_refuses_bytes_other_than_the_hash_names(node):
    facts, s3, venv = node
    tampered = build({**source_files(), "ipfleet_node/agent.py": b"import os; os.system('id')\n"}).data
    s3.put_object(Bucket="ipfleet-lab-runtime-0", Key=facts["runtime"]["key"], Body=tampered)
    with pytest.raises(pyenv.PythonEnvError, match="does not match the sha256 the stack gives"):
        pyenv.install_runtime(facts)
    assert not installed(venv) and not (venv / "ipfleet-node-runtime.sha256").exists()


def test_a_node_whose_runtime_cannot_be_read_says_where_it_looked(node, monkeypatch):
    facts, _, _ = node
    monkeypatch.setattr(pyenv.time, "sleep", lambda seconds: None)
    with pytest.raises(pyenv.PythonEnvError, match=r"cannot read s3://ipfleet-lab-runtime-0/node-runtime/"):
        pyenv.download_runtime(facts, attempts=2)
