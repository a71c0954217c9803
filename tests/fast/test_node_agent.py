"""The node agent's boot-time chores, run for real where they can be: the mount wait
against a resolver that fails first, sshd's forwarding file, and engines following a
controller that moved (real boto3 against moto)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from bootstrap.ipfleet_node import agent


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


def test_root_writes_its_files_group_readable_and_never_through_a_planted_link(tmp_path):
    """The keys file as root writes it: root's, readable by the service user's group, and
    a link someone planted at the temporary name is replaced, not followed."""
    import grp

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
