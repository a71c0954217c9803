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


def test_a_new_runtime_shows_in_a_plan_diff_as_its_hash(monkeypatch):
    """What a reviewer sees when the node runtime changed: the wheel's hash in the facts,
    the object's key and content as hashes, the nodeRuntime output, one line each."""
    from bootstrap import runtime_wheel as wheels
    from ipfleet import plan_diff
    from tests.conftest import plan_of

    before, old = plan_of("lab").as_json(), runtime_wheel()
    files = source_files()
    changed = {**files, "ipfleet_node/agent.py": files["ipfleet_node/agent.py"] + b"# a fix\n"}
    monkeypatch.setattr(wheels, "source_files", lambda: changed)
    wheels.runtime_wheel.cache_clear()
    try:
        after = plan_of("lab").as_json()
        new = wheels.runtime_wheel()
    finally:
        wheels.runtime_wheel.cache_clear()
    text = plan_diff.render_text(plan_diff.diff("lab", "main", before, after))
    assert f"nodeRuntime: {old.sha256} -> {new.sha256}" in text
    assert f"~ runtime.sha256: {old.sha256} -> {new.sha256}" in text
    assert f"contentBase64: <{len(old.data)} bytes, sha256 {old.sha256}> -> <{len(new.data)} bytes" in text
    assert "UEsDB" not in text and '{"role"' not in text  # no base64 of the wheel, no whole facts line
    assert max(len(line) for line in text.splitlines()) < 500  # policies and keys, compacted
