"""`ipfleet run`: every way a command can end gives the nodes back (the group's
operations played by a recorder; the twin proves the real group in test_twin_elastic)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from ipfleet.batch import run_batch
from ipfleet.errors import UsageError
from ipfleet.scaling import EngineGroup

GROUP = EngineGroup("g", desired=0, minimum=0, maximum=4, instances={})


class Recorder:
    def __init__(self):
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, count: int, wait: bool) -> None:
        self.calls.append((count, wait))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_command_runs_with_the_stack_named_and_its_exit_code_comes_back():
    scale = Recorder()
    result = run_batch(
        "lab", GROUP, 2, python("import os, sys; sys.exit(0 if os.environ['IPFLEET_STACK'] == 'lab' else 9)"), scale
    )
    assert result.exit_code == 0
    assert scale.calls == [(2, True), (0, False)]  # up, waiting; then back to the minimum
    assert result.released and result.node_hours > 0


def test_a_failing_command_still_releases_the_nodes():
    scale = Recorder()
    result = run_batch("lab", GROUP, 3, python("raise SystemExit(3)"), scale)
    assert (result.exit_code, scale.calls[-1]) == (3, (0, False))


def test_a_missing_program_releases_the_nodes_and_exits_127():
    scale = Recorder()
    result = run_batch("lab", GROUP, 1, ["ipfleet-no-such-program"], scale)
    assert (result.exit_code, scale.calls[-1]) == (127, (0, False))


def test_nodes_that_never_came_are_released_too():
    calls = []

    def scale(count: int, wait: bool) -> None:
        calls.append((count, wait))
        if wait:
            raise TimeoutError("not there after 900 s")

    with pytest.raises(TimeoutError):
        run_batch("lab", GROUP, 2, python("pass"), scale)
    assert calls == [(2, True), (0, False)]


def test_ctrl_c_reaches_the_command_and_the_nodes_are_released():
    scale = Recorder()
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_batch("lab", GROUP, 2, python("import time; time.sleep(30)"), scale)
    assert time.monotonic() - started < 20
    assert scale.calls == [(2, True), (0, False)]


def test_keep_leaves_the_nodes_up():
    scale = Recorder()
    result = run_batch("lab", GROUP, 2, python("pass"), scale, keep=True)
    assert scale.calls == [(2, True)] and not result.released


@pytest.mark.parametrize(
    "nodes,command,said",
    [(5, ["true"], "--nodes 5"), (0, ["true"], "--nodes 0"), (2, [], "no COMMAND to run")],
)
def test_bad_input_is_refused_before_anything_changes(nodes, command, said):
    scale = Recorder()
    with pytest.raises(UsageError, match=said):
        run_batch("lab", GROUP, nodes, command, scale)
    assert scale.calls == []


def test_client_without_a_stack_outside_ipfleet_run_says_what_it_needs(monkeypatch):
    import ipfleet
    from ipfleet.fetch import FetchError

    monkeypatch.delenv("IPFLEET_STACK", raising=False)
    with pytest.raises(FetchError, match="needs a stack"):
        ipfleet.client()
