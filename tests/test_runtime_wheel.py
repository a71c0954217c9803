"""The node runtime's wheel: the same bytes from the same source on any machine, the
source's files inside, installable by uv, and refused by a node when S3 hands it
anything but the bytes the stack's hash names (real uv, real boto3 against moto)."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from bootstrap.ipfleet_node import pyenv
from bootstrap.runtime_wheel import SOURCE, build, runtime_wheel, source_files

UV = Path(sys.executable).parent / "uv"


def test_the_same_source_makes_the_same_bytes_and_the_wheel_holds_it_as_it_is():
    first, again = build(source_files()), build(source_files())
    assert first.data == again.data and first.sha256 == runtime_wheel().sha256
    assert first.key == f"node-runtime/{first.sha256}/ipfleet_node-1-py3-none-any.whl"
    wheel = zipfile.ZipFile(io.BytesIO(first.data))
    for path in sorted(SOURCE.glob("*.py")):
        assert wheel.read(f"ipfleet_node/{path.name}") == path.read_bytes(), path.name
    # Every RECORD line names a file of the wheel with its digest and size.
    record = wheel.read("ipfleet_node-1.dist-info/RECORD").decode().splitlines()
    for line in record[:-1]:
        name, digest, size = line.split(",")
        content = wheel.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}" and int(size) == len(content), name
    assert {i.date_time for i in wheel.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_any_change_to_the_source_is_a_new_hash():
    files = source_files()
    changed = dict(files)
    changed["ipfleet_node/agent.py"] = files["ipfleet_node/agent.py"] + b"\n"
    assert build(changed).sha256 != build(files).sha256


def test_uv_installs_it_and_the_units_commands_run(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    wheel = tmp_path / runtime_wheel().key.rsplit("/", 1)[-1]
    wheel.write_bytes(runtime_wheel().data)
    subprocess.run([UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python", wheel], check=True)
    # As the units run it: -I, from a folder that holds nothing of ipfleet's.
    shown = subprocess.run(
        [venv / "bin" / "python", "-I", "-m", "ipfleet_node", "-h"], cwd=tmp_path, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "engine-count" in shown.stdout
    wire = subprocess.run(
        [venv / "bin" / "python", "-I", "-c", "import ipfleet_node.wire as w; print(w.CLIENT_PORTS)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert wire.stdout.strip() == "(10101, 10108)"


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
