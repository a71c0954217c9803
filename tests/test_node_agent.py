"""The node agent's boot-time chores, run for real where they can be: the mount wait
against a resolver that fails first, sshd's forwarding file, and engines following a
controller that moved (real boto3 against moto)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import boto3
import pytest

from bootstrap.ipfleet_node import agent


@pytest.fixture
def facts(tmp_path, monkeypatch):
    def write(**values):
        path = tmp_path / "node.json"
        path.write_text(json.dumps(values))
        monkeypatch.setattr(agent, "FACTS_FILE", path)
        return values

    return write


def test_mount_waits_for_the_file_systems_name_then_retries_the_mount(facts, monkeypatch):
    """An EFS name resolves only once its mount target exists; the mount may fail once more after."""
    facts(
        mounts=[
            {"what": "fs-1.efs.us-east-1.amazonaws.com:/", "where": "/shared", "type": "nfs4", "unit": "shared.mount"}
        ]
    )
    lookups, starts, sleeps = [], [], []

    def resolve(host, *args, **kwargs):
        lookups.append(host)
        if len(lookups) < 3:
            raise socket.gaierror(-2, "Name or service not known")
        return [("inet",)]

    def run(command, **kwargs):
        starts.append(command)
        return subprocess.CompletedProcess(command, 1 if len(starts) == 1 else 0, "", "mount.nfs4: timed out")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(agent.subprocess, "run", run)
    monkeypatch.setattr(agent.time, "sleep", sleeps.append)
    agent.mount("shared.mount", timeout=600)
    assert lookups == ["fs-1.efs.us-east-1.amazonaws.com"] * 4
    assert starts == [["systemctl", "start", "shared.mount"]] * 2
    assert sleeps == [2.0, 4.0, 8.0]  # backing off, bounded by the timeout


def test_mount_gives_up_at_its_bound_and_says_why(facts, monkeypatch):
    facts(
        mounts=[
            {"what": "fs-1.efs.us-east-1.amazonaws.com:/", "where": "/shared", "type": "nfs4", "unit": "shared.mount"}
        ]
    )
    clock = iter(range(0, 10_000, 7))
    monkeypatch.setattr(agent.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "Name or service not known"))
    )
    with pytest.raises(
        SystemExit, match="/shared not mounted after 60 s: fs-1.efs.us-east-1.amazonaws.com does not resolve yet"
    ):
        agent.mount("shared.mount", timeout=60)


def test_sshd_forwarding_names_this_nodes_own_address(facts, monkeypatch, tmp_path):
    facts(loopback_forward_ports=[8888])
    target = tmp_path / "10-ipfleet-forwarding.conf"
    monkeypatch.setattr(agent, "SSHD_FORWARDING", target)
    monkeypatch.setattr(agent, "private_address", lambda: "10.0.3.7")
    agent.sshd_forwarding()
    own = " ".join(f"10.0.3.7:{port}" for port in range(10101, 10110))  # client ports and registration
    assert target.read_text().splitlines()[-1] == f"PermitOpen {own} 127.0.0.1:8888"


RENDEZVOUS = "/ipfleet/mv/connection"


@pytest.fixture
def engine_node(facts, aws_env, tmp_path):
    """An engine node's facts naming a rendezvous parameter in moto. Returns a function
    that publishes a controller at an address there, and the engine file's path."""
    ssm = boto3.client("ssm", region_name="us-east-1")
    values = facts(
        region="us-east-1",
        rendezvous_parameter=RENDEZVOUS,
        profile_dir=str(tmp_path / "profile"),
        aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"],
    )
    assert values["rendezvous_parameter"] == RENDEZVOUS

    def publish(address: str) -> None:
        document = {
            "format": agent.FORMAT,
            "stack": "mv",
            "published_at": "2026-11-23T10:00:00+00:00",
            "controller": {"address": address},
            "engine": {"location": address, "key": "k"},
        }
        ssm.put_parameter(Name=RENDEZVOUS, Value=json.dumps(document), Type="SecureString", Overwrite=True)

    return publish, tmp_path / "profile" / "security" / "ipcontroller-engine.json"


def test_engines_follow_a_controller_that_moved(engine_node, capsys):
    """What an engine does at every start: re-read the rendezvous, rewrite its file if it changed."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    agent.wait_connection(timeout=5)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.10"
    agent.wait_connection(timeout=5)
    assert "unchanged" in capsys.readouterr().out
    publish("10.0.0.42")  # a replaced controller published its new address
    agent.wait_connection(timeout=5)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    assert "controller at 10.0.0.42 (was 10.0.0.10)" in capsys.readouterr().out
    assert oct(engine_file.stat().st_mode & 0o777) == "0o600"


def test_an_engine_file_just_read_is_used_without_asking_again(engine_node, capsys):
    """Engines started right after the boot's read skip theirs; one restarted later reads again."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    agent.wait_connection(timeout=5)
    publish("10.0.0.42")
    agent.wait_connection(timeout=5, fresh_within=60)  # just read: not asked again
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.10"
    assert "used as it is" in capsys.readouterr().out
    old = time.time() - 120
    os.utime(engine_file, (old, old))  # read two minutes ago: a restarted engine asks again
    agent.wait_connection(timeout=5, fresh_within=60)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    agent.wait_connection(timeout=5)  # unchanged, but confirmed: fresh again
    assert time.time() - engine_file.stat().st_mtime < 5


def test_a_failed_bootstrap_step_is_reported_and_fetch_stops_waiting(facts, aws_env, imds, tmp_path, monkeypatch):
    """A node's record (real boto3 against moto, metadata through IMDSv2 on loopback):
    `ipfleet status` reads the step, exit code and log lines, and `fetch` gives up at once."""
    from ipfleet.fetch import FetchError, fetch
    from ipfleet.node_status import read_records

    base, _nodes = imds
    monkeypatch.setattr(agent, "METADATA", base)
    boot_log = tmp_path / "cloud-init-output.log"
    boot_log.write_text("".join(f"line {i}\n" for i in range(40)) + "ERROR: No matching distribution for numpyy\n")
    monkeypatch.setattr(agent, "BOOT_LOG", boot_log)
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/ipfleet/bad/connection", Value="pending", Type="SecureString")
    facts(
        role="controller",
        stack="bad",
        region="us-east-1",
        controller_record_parameter="/ipfleet/bad/controller",
        profile_dir=str(tmp_path / "profile"),
        state_dir=str(tmp_path / "state"),
        node_state_dir=str(tmp_path / "root-state"),
        aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"],
    )

    agent.report("failed", step="python venv", exit_code=1)

    [record] = read_records(ssm, "bad")
    assert (record.role, record.instance_id, record.phase) == ("controller", "i-0123456789abcdef0", "failed")
    assert record.error["step"] == "python venv" and record.error["exitCode"] == 1
    assert record.error["log"][-1] == "ERROR: No matching distribution for numpyy"
    assert len(record.error["log"]) == 15
    # Later reports (the watch service's) keep saying it: the failure is kept on the node.
    assert json.loads((tmp_path / "root-state" / "bootstrap-failure.json").read_text())["step"] == "python venv"
    with pytest.raises(FetchError, match=r"(?s)failed its bootstrap at python venv \(exit 1\).*numpyy"):
        fetch("bad", "us-east-1", timeout=60, poll_seconds=0.1)


def test_interruption_notices_from_the_metadata(imds, monkeypatch):
    """What the watch service drains on: EC2's spot notice, or Auto Scaling taking the node out."""
    base, nodes = imds
    monkeypatch.setattr(agent, "METADATA", base)
    assert agent.interruption() is None  # 404: nothing pending
    values = json.loads(nodes.read_text())

    def serve(**extra):
        node = {**values["127.0.0.1"], **extra}
        nodes.write_text(json.dumps({"127.0.0.1": node}))

    serve(**{"autoscaling/target-lifecycle-state": "InService"})
    assert agent.interruption() is None
    serve(**{"spot/instance-action": json.dumps({"action": "terminate", "time": "2026-11-23T12:00:00Z"})})
    assert agent.interruption() == "spot interruption: terminate at 2026-11-23T12:00:00Z"
    serve(**{"autoscaling/target-lifecycle-state": "Terminated"})
    assert agent.interruption() == "auto scaling: Terminated"


def test_root_writes_its_files_group_readable_and_never_through_a_planted_link(tmp_path):
    """The keys file as root writes it: root's, readable by the service user's group, and
    a link someone planted at the temporary name is replaced, not followed."""
    import grp
    import os

    if os.geteuid() != 0:
        pytest.skip("root only")
    group = grp.getgrgid(65534).gr_name  # nogroup: a group that exists on Debian
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    target = tmp_path / "state" / "keys.json"
    target.parent.mkdir()
    (target.parent / "keys.json.tmp").symlink_to(victim)
    agent._write_private(target, '{"format": 1}', group)
    assert victim.read_text() == "untouched\n"
    info = target.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 65534, 0o640)
    assert target.read_text() == '{"format": 1}'


def test_a_malformed_failure_file_still_reads_as_failed(tmp_path):
    facts = {"node_state_dir": str(tmp_path)}
    assert agent.read_failure(facts) is None
    (tmp_path / "bootstrap-failure.json").write_text("{not json")
    assert agent.read_failure(facts) == {"step": "unknown (unreadable failure file)"}
    (tmp_path / "bootstrap-failure.json").write_text("[1, 2]")
    assert agent.read_failure(facts)["step"].startswith("unknown")
