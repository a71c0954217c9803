"""ipfleet as a package, outside any checkout: the wheel holds the CLI, the client, the
node side's templates and programs; installed in a fresh virtualenv with the lock's
dependencies, it renders user data and answers `--help` from a folder that is no
project, and finds nothing of this checkout on its path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run(*command: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the python of a fresh venv with it installed)."""
    work = tmp_path_factory.mktemp("package")
    uv = str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        uv = shutil.which("uv") or pytest.fail("uv is needed (it is in the lock)")
    run(uv, "build", "--wheel", "--out-dir", str(work / "dist"), str(ROOT), cwd=work)
    wheel = next((work / "dist").glob("ipfleet-*.whl"))
    venv = work / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    run(uv, "venv", "-q", "-p", sys.executable, str(venv), cwd=work, env=env)
    run(uv, "pip", "install", "-q", "-r", str(ROOT / "requirements.lock"), cwd=work, env=env)
    run(uv, "pip", "install", "-q", "--no-deps", str(wheel), cwd=work, env=env)
    return wheel, venv / "bin" / "python"


def test_the_wheel_holds_the_node_side_and_no_tests(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "ipfleet/cli.py",
        "ipfleet/twin/moto_server.py",
        "components/cluster.py",
        "bootstrap/templates/controller.yaml.j2",
        "bootstrap/templates/bootstrap.sh.j2",
        "bootstrap/ipfleet_node/agent.py",
        "bootstrap/ipfleet_node/keeper.py",
        "bootstrap/ipfleet_node/pyenv.py",
    ):
        assert needed in names, needed
    assert not any(name.startswith(("tests/", "stacks/", "benchmarks/")) for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Provides-Extra: twin" in text and "extra == 'twin'" in text


def test_installed_ipfleet_works_away_from_any_checkout(installed, tmp_path):
    _, python = installed
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    # The CLI teaches, and its commands are there.
    help_text = run(str(python.parent / "ipfleet"), "--help", cwd=tmp_path, env=env).stdout
    for command in ("plan", "connect", "fetch", "stacks", "twin"):
        assert command in help_text
    # The node side renders a stack's user data from the installed templates and programs.
    stack = tmp_path / "Pulumi.away.yaml"
    stack.write_text((ROOT / "stacks" / "Pulumi.example.yaml").read_text())
    script = (
        "import ipfleet, bootstrap, components\n"
        "from bootstrap.render import render_user_data\n"
        "from bootstrap.spec import node_spec\n"
        "from ipfleet.settings import parse_settings\n"
        "from ipfleet.stack_config import read_stack_file\n"
        "settings = parse_settings('away', read_stack_file(__import__('pathlib').Path('Pulumi.away.yaml')))\n"
        "text = render_user_data(node_spec(settings, 'engine', 'fs-1.efs.us-east-1.amazonaws.com'))\n"
        "assert 'ipengine' in text\n"
        "print(ipfleet.__file__, bootstrap.__file__, components.__file__)\n"
    )
    where = run(str(python), "-c", script, cwd=tmp_path, env=env).stdout.split()
    assert all("site-packages" in path and str(ROOT) not in path for path in where), where


PLAN_SCRIPT = """
import json, sys
from importlib.metadata import version
from pathlib import Path
from ipfleet.plan import run_plan
from ipfleet.plan_view import user_data
from ipfleet.settings import parse_settings
from ipfleet.stack_config import read_stack_file
project = Path(sys.argv[1])
config = read_stack_file(project / "stacks" / "Pulumi.example.yaml")
plan = run_plan(project, "example", config, parse_settings("example", config))
print(json.dumps({"jmespath": version("jmespath"), **{r: user_data(plan, r) for r in ("controller", "engine")}}))
"""


def test_a_plan_is_the_same_from_an_environment_with_other_versions(installed, tmp_path):
    """What `pulumi up` runs may resolve other versions than the lock (a newer botocore,
    say): the user data, and so the controller, must not change with them. The nodes'
    pins come from the repository (bootstrap/node-pins.json), not the interpreter.
    (Last in this file: it changes the shared venv.)"""
    _, other = installed
    uv = str(Path(sys.executable).with_name("uv"))
    env = {**os.environ, "VIRTUAL_ENV": str(other.parent.parent)}
    env.pop("PYTHONPATH", None)
    run(uv, "pip", "install", "-q", "jmespath==1.0.1", cwd=tmp_path, env=env)  # the lock says 1.1.0
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    for name in ("__main__.py", "Pulumi.yaml", "stacks/Pulumi.example.yaml"):
        shutil.copy(ROOT / name, project / name)
    here = json.loads(run(sys.executable, "-c", PLAN_SCRIPT, str(project), cwd=tmp_path).stdout)
    away = json.loads(run(str(other), "-c", PLAN_SCRIPT, str(project), cwd=tmp_path, env=env).stdout)
    assert here["jmespath"] != away["jmespath"] == "1.0.1"
    assert here["controller"] == away["controller"] and here["engine"] == away["engine"]
    assert "jmespath==1.1.0" in here["engine"]
