"""A cluster's life after boot, on a twin: the four faults of `ipfleet twin demo --fault`
hit a 200-task map from the laptop and lose nothing; `ipfleet status` and
`restart-engines` run through `ipfleet twin exec`; a node whose bootstrap fails says
where and why in its record.

One twin (ssm access, 3 engine nodes of 2 engines) takes the faults in an order that
leaves it whole for the next: restart and replacement first, then the two losses.
"""

from __future__ import annotations

import json
import time

import pytest

from ipfleet.twin import cluster
from ipfleet.twin.faults import run_fault
from tests.conftest import running_twin, skip_without_twin, twin_exec, write_stack

STACK = "faults"
CONFIG = {"aws:region": "us-east-1", "ipfleet:engineNodes": 3, "ipfleet:enginesPerNode": 2}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    yield from running_twin(tmp_path_factory.mktemp("faults"), STACK, CONFIG)


def test_status_lists_every_node_from_its_own_record(twin):
    deadline = time.monotonic() + 60
    while True:  # the watch services report within seconds of a change
        shown = twin_exec(STACK, "ipfleet", "status", STACK, "--json")
        assert shown.returncode == 0, shown.stderr
        nodes = json.loads(shown.stdout)["nodes"]
        settled = (
            len(nodes) == 4 and all(n["phase"] == "running" for n in nodes) and nodes[0]["engines"] == {"registered": 6}
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert [n["role"] for n in nodes] == ["controller", "engine", "engine", "engine"]
    by_id = {n.instance_id: n for n in twin.nodes}
    for record in nodes:
        node = by_id[record["instanceId"]]
        assert (record["address"], record["phase"], record["error"]) == (node.address, "running", None)
        assert record["lifecycle"] == ("on-demand" if node.role == "controller" else "spot")
        assert record["zone"] == "us-east-1a" and record["instanceType"]
    assert nodes[0]["engines"] == {"registered": 6}
    assert all(n["engines"] == {"running": 2, "expected": 2} for n in nodes[1:])
    table = twin_exec(STACK, "ipfleet", "status", STACK)
    assert twin.controller.instance_id in table.stdout and "running" in table.stdout


def test_restart_engines_restarts_every_engine_process(twin):
    pids_before = {
        n.name: twin.node(n.name)
        .run("systemctl", "show", "-p", "MainPID", "--value", "ipengine@1.service")
        .stdout.strip()
        for n in twin.engine_nodes
    }
    done = twin_exec(STACK, "ipfleet", "restart-engines", STACK, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["engines_before"] == result["engines_after"] == 6
    assert not set(result["old_ids"]) & set(result["new_ids"])
    for node in twin.engine_nodes:
        pid = node.run("systemctl", "show", "-p", "MainPID", "--value", "ipengine@1.service").stdout.strip()
        assert pid != pids_before[node.name]


@pytest.mark.parametrize("kind", ["controller-restart", "controller-replace", "spot-interruption", "engine-loss"])
def test_a_fault_in_the_middle_of_a_map_loses_nothing(twin, kind):
    result = run_fault(twin, kind, tasks=200, seconds=0.2, timeout=600)
    print(json.dumps(result))
    assert result["lost"] == 0 and result["results_correct"] == 200, result
    assert result["recovery_s"] is not None, result
    if kind == "controller-restart":
        assert result["engine_ids_kept"] and result["engines_after"] == result["engines_before"]
        assert result["sent_again"] > 0  # what the old scheduler held came back from the laptop
    elif kind == "controller-replace":
        assert result["reconnected"] and result["engines_after"] == result["engines_before"]
    else:
        # The group replaces the lost node, as EC2 Auto Scaling does: the cluster comes back
        # to its size, and recovery_s is how long that took.
        assert result["engines_after"] == result["engines_before"] == 6, result
        assert result["retried"] is not None


def test_a_failed_bootstrap_is_named_with_its_step_and_log(tmp_path):
    """A typo in pythonPackages: the controller's uv fails, as it would on AWS; the node's
    record says so, `ipfleet status` shows it, and `ipfleet fetch` stops waiting at once."""
    skip_without_twin()
    config = {
        "aws:region": "us-east-1",
        "ipfleet:engineNodes": 0,
        "ipfleet:pythonPackages": ["ipfleet-no-such-package-xyz"],
    }
    state = cluster.up(str(write_stack(tmp_path, "broken", config)))
    try:
        deadline = time.monotonic() + 300
        while True:
            shown = twin_exec("broken", "ipfleet", "status", "broken", "--json")
            nodes = json.loads(shown.stdout)["nodes"] if shown.returncode == 0 else []
            if nodes and nodes[0]["phase"] == "failed":
                break
            assert time.monotonic() < deadline, shown.stdout + shown.stderr + cluster.describe_node(state.controller)
            time.sleep(2)
        [record] = nodes
        assert record["instanceId"] == state.controller.instance_id
        assert record["error"]["step"] == "python environment" and record["error"]["exitCode"] != 0
        assert any("ipfleet-no-such-package-xyz" in line for line in record["error"]["log"])
        table = twin_exec("broken", "ipfleet", "status", "broken")
        assert "failed" in table.stdout and "python environment" in table.stderr
        started = time.monotonic()
        fetched = twin_exec("broken", "ipfleet", "fetch", "broken", "--timeout", "300")
        assert fetched.returncode == 1 and time.monotonic() - started < 60
        assert "failed its bootstrap at python environment" in fetched.stderr
        assert "ipfleet-no-such-package-xyz" in fetched.stderr
    finally:
        assert cluster.down(state) == []
