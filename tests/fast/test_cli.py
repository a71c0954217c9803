"""The `ipfleet` command as a user runs it: a real process, real output, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import run_cli as ipfleet
from tests.conftest import write_stack


def test_help_teaches_the_workflow_and_imports_nothing_heavy():
    result = ipfleet("--help")
    assert result.returncode == 0
    for word in ("plan", "render", "fetch", "pulumi up -s NAME"):
        assert word in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ipfleet.cli; heavy = [m for m in ('pulumi', 'boto3', 'ipyparallel', 'jinja2', 'pydantic') "
            "if m in sys.modules]; print(heavy)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_plan_json_lists_resources_and_outputs():
    result = ipfleet("plan", "example", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert set(plan) == {"resources", "outputs"}
    for resource in plan["resources"]:
        assert {"type", "name", "parent", "inputs"} <= set(resource)
    parameter = next(r for r in plan["resources"] if r["type"] == "aws:ssm/parameter:Parameter")
    assert parameter["inputs"]["value"] == "[secret]"
    assert plan["outputs"]["rendezvousParameter"] == "/ipfleet/example/connection"


def test_plan_text_is_a_stable_tree():
    first, second = ipfleet("plan", "example"), ipfleet("plan", "example")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # deterministic: reviewable as a diff
    assert "example-controller-node  (aws:ec2/instance:Instance)" in first.stdout
    assert "Outputs:" in first.stdout


def test_plan_takes_a_path_to_a_stack_file(tmp_path):
    path = write_stack(tmp_path, "elsewhere", {"aws:region": "eu-west-1", "ipfleet:engineNodes": 1})
    result = ipfleet("plan", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"]["region"] == "eu-west-1"


def test_bad_settings_exit_2_with_the_setting_named_and_no_traceback(tmp_path):
    path = write_stack(
        tmp_path, "broken", {"aws:region": "us-east-1", "ipfleet:engineNodes": -2, "ipfleet:acess": "ssh"}
    )
    result = ipfleet("plan", str(path))
    assert result.returncode == 2
    assert "ipfleet:engineNodes: must be greater than or equal to 0 (got -2)" in result.stderr
    assert "ipfleet:acess: unknown setting; did you mean ipfleet:access?" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_stack_lists_the_known_ones():
    result = ipfleet("plan", "nope")
    assert result.returncode == 2
    assert "no stack 'nope'" in result.stderr and "example" in result.stderr


def test_render_prints_each_roles_cloud_config():
    controller = ipfleet("render", "example", "--role", "controller")
    engine = ipfleet("render", "example", "--role", "engine")
    assert controller.returncode == engine.returncode == 0
    assert yaml.safe_load(controller.stdout)["write_files"]
    assert "ipcontroller.service" in controller.stdout and "ipengine@.service" not in controller.stdout
    assert "ipengine@.service" in engine.stdout and "ipcontroller.service" not in engine.stdout


def test_render_rejects_an_unknown_role():
    result = ipfleet("render", "example", "--role", "scheduler")
    assert result.returncode == 2
    assert "scheduler" in result.stderr


def test_a_stack_file_with_a_key_twice_exits_2_and_declares_nothing(tmp_path):
    path = tmp_path / "Pulumi.twice.yaml"
    path.write_text("config:\n  aws:region: us-east-1\n  ipfleet:engineNodes: 2\n  ipfleet:engineNodes: 3\n")
    result = ipfleet("plan", str(path))
    assert result.returncode == 2
    assert "ipfleet:engineNodes: set twice in Pulumi.twice.yaml (lines 3 and 4)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_every_error_ipfleet_reports_has_one_base_and_an_exit_code():
    from ipfleet.errors import IpfleetError, UsageError
    from ipfleet.fetch import FetchError
    from ipfleet.notebook import NotebookError
    from ipfleet.plan_diff import PlanDiffError
    from ipfleet.project import StackNotFound
    from ipfleet.scaling import ScaleError
    from ipfleet.settings import SettingsError
    from ipfleet.twin.instances import NodeError
    from ipfleet.twin.state import TwinError

    for failure in (FetchError, NotebookError, ScaleError, TwinError, NodeError):
        assert issubclass(failure, IpfleetError) and failure.exit_code == 1, failure
    for mistake in (SettingsError, StackNotFound, PlanDiffError):
        assert issubclass(mistake, UsageError) and mistake.exit_code == 2, mistake
    assert SettingsError(["ipfleet:x: bad"], "demo").message() == "stack 'demo' has invalid settings:\n  ipfleet:x: bad"


def test_the_cli_turns_an_ipfleet_error_into_one_line_and_its_code():
    """In process, through typer's runner: one handler for every command."""
    from typer.testing import CliRunner

    from ipfleet.cli import app

    result = CliRunner().invoke(app, ["stacks", "--changed-since", "no-such-ref"])
    assert result.exit_code == 2
    assert result.output.startswith("ipfleet: git knows no commit 'no-such-ref' here")
    assert "Traceback" not in result.output


def test_twin_commands_take_a_stack_file_path_as_up_and_demo_do(tmp_path, monkeypatch):
    """`twin exec` and `twin down` name the twin by the stack file as well as by its name."""
    from typer.testing import CliRunner

    from ipfleet.cli import app
    from ipfleet.twin import cluster
    from ipfleet.twin_cli import twin_name

    assert twin_name("stacks/Pulumi.science.yaml") == "science"
    assert twin_name("science") == "science"
    monkeypatch.setattr(cluster, "STATE_ROOT", tmp_path)
    for args in (
        ["twin", "down", "stacks/Pulumi.science.yaml"],
        ["twin", "exec", "stacks/Pulumi.science.yaml", "--", "true"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "science" in result.output and "Pulumi.science.yaml/state.json" not in result.output
    refused = CliRunner().invoke(app, ["twin", "down", "--", "../etc"])
    assert refused.exit_code == 2 and "is not a stack name" in refused.output
