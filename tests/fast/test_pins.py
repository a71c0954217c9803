"""The nodes' versions come from the repository: node-pins.json agrees with the lock,
and is what the venv made from the lock holds."""

from __future__ import annotations

import re

from bootstrap import pins
from bootstrap.spec import node_spec
from tests.conftest import ROOT, settings_of


def lock_versions() -> dict[str, str]:
    found = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;]+)", line)
        if match:
            found[pins.canonical(match.group(1))] = match.group(2)
    return found


def test_every_node_pin_is_the_locks_version():
    lock = lock_versions()
    for name, version in pins.node_pins()["versions"].items():
        assert lock.get(name) == version, f"{name}: node-pins.json {version}, requirements.lock {lock.get(name)}"


def test_node_pins_are_what_the_locked_venv_holds():
    """`make lock` rewrites the file (python -m bootstrap.pins); this fails when it was not run."""
    assert pins.installed_graph(pins.PINNED_ROOTS) == pins.node_pins(), "run `make lock`"


def test_a_node_spec_reads_the_file_not_the_interpreter(monkeypatch):
    def no_metadata(name):
        raise AssertionError(f"the spec asked the interpreter for {name}")

    monkeypatch.setattr(pins, "distribution", no_metadata)
    spec = node_spec(
        settings_of(notebook=True, ipyparallel={"packer": "msgpack"}), "controller", "fs-1.efs.us-east-1.amazonaws.com"
    )
    assert "ipyparallel==9.2.0" in spec.python_requirements
    assert {"msgpack", "jupyterlab"} <= set(spec.python_requirements)  # not in ipfleet's lock: unpinned
    assert any(c.startswith("pyzmq==") for c in spec.python_constraints)


def test_pulumi_runs_the_program_in_the_venv_made_from_the_lock():
    """With uv's toolchain and no uv.lock, `pulumi up` would resolve the newest releases."""
    import yaml

    options = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["runtime"]["options"]
    assert options == {"toolchain": "pip", "virtualenv": ".venv"}
    makefile = (ROOT / "Makefile").read_text()
    assert "VENV   := .venv" in makefile and "uv pip install --quiet -r requirements.lock" in makefile
    for workflow in (ROOT / ".github" / "workflows").glob("*.yml"):
        text = workflow.read_text()
        assert "--system" not in text, workflow.name
        if "pulumi/actions" in text:
            assert "make venv" in text and '"$PWD/.venv/bin" >> "$GITHUB_PATH"' in text, workflow.name
