"""A twin left behind by a run that was killed: `twin up` takes it down when every process
it recorded has ended, and refuses while one still runs (real namespaces, real processes)."""

from __future__ import annotations

import subprocess

import pytest

from ipfleet.twin import vpc
from ipfleet.twin.cluster import clear_left_behind
from ipfleet.twin.instances import Node, process_alive
from ipfleet.twin.state import STATE_ROOT, TwinError, TwinState

STACK = "leftover"


def ended_process() -> int:
    """The id of a process of ours that has ended and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def left_behind():
    """What a killed run leaves: the state file, a namespace, a node's work folder."""
    tag = "f0e1"
    namespace = f"ipft-{tag}-router"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    state = TwinState(stack=STACK, tag=tag, region="us-east-1", rendezvous_parameter="/p", engines_expected=1)
    state.namespaces = [namespace]
    state.moto_pid = ended_process()
    state.work_dir.mkdir(parents=True, exist_ok=True)
    state.nodes = [
        Node(
            name=f"{STACK}-controller",
            role="controller",
            namespace=namespace,
            address="10.213.0.10",
            work_dir=str(state.work_dir / "controller"),
            pid=ended_process(),
        )
    ]
    state.save()
    try:
        yield state
    finally:
        if namespace in vpc.existing_namespaces():
            subprocess.run(["ip", "netns", "delete", namespace], check=False)
        subprocess.run(["rm", "-rf", str(state.state_dir), str(state.work_dir)], check=False)


def test_a_twin_whose_processes_all_ended_is_taken_down(left_behind):
    said = []
    clear_left_behind(STACK, log=said.append)
    assert left_behind.namespaces[0] not in vpc.existing_namespaces()
    assert not (STATE_ROOT / STACK).exists() and not left_behind.work_dir.exists()
    assert "left behind" in said[0]
    clear_left_behind(STACK)  # nothing there: nothing to do


def test_a_twin_with_a_running_process_is_refused_and_kept(left_behind):
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with left_behind.locked() as state:
            state.metadata_pid = sleeper.pid
        with pytest.raises(TwinError, match="already up"):
            clear_left_behind(STACK)
        assert process_alive(sleeper.pid)
        assert left_behind.namespaces[0] in vpc.existing_namespaces()
        assert (STATE_ROOT / STACK / "state.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
