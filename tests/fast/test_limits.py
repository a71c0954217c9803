"""The controller says when it is near a limit: what it says (pure), what it reads of a
real process, and how `ipfleet status` shows it."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from dataclasses import replace

from bootstrap.ipfleet_node import limits
from ipfleet import remote
from ipfleet.node_status import describe_scaling

QUIET = limits.Reading(
    descriptors=100,
    descriptor_limit=65536,
    memory=1 << 30,
    memory_total=8 << 30,
    busiest_cpu=0.2,
    engines=2000,
    ping_ms=1000,
)


def test_a_controller_within_every_limit_says_nothing():
    assert limits.warnings(QUIET) == []


def test_each_limit_is_said_with_its_figure_in_steps_of_ten_percent():
    near = replace(QUIET, descriptors=40_000, memory=7 << 30, busiest_cpu=0.97, engines=2001)
    said = limits.warnings(near)
    assert [line.split(":")[0] for line in said] == ["descriptors", "memory", "CPU", "engines"]
    assert "60% of its limit of 65536" in said[0]
    assert "80% of this node's" in said[1] and "90% of a core" in said[2]
    assert "2001 registered, more than the 2000 measured at a 1000 ms ping" in said[3]
    # A slower ping holds more engines.
    assert not [w for w in limits.warnings(replace(near, ping_ms=5000)) if "engines" in w]


def test_the_controllers_processes_are_read_as_they_are(tmp_path):
    """A process found by its command line (as ipcontroller's processes are), holding 300 descriptors under a
    limit of 500: the reading says so, and the keeper would warn."""
    holder = tmp_path / "ipfleet_limits_test_stand_in.py"
    holder.write_text(
        "import os, resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (500, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "held = [os.open(os.devnull, os.O_RDONLY) for _ in range(300)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        controller = limits.Controller(names=(holder.name,))
        controller.read(engines=0, ping_ms=1000)
        time.sleep(0.2)
        seen = controller.read(engines=0, ping_ms=1000)
        assert seen.descriptor_limit == 500 and 300 <= seen.descriptors < 320
        assert seen.memory > 0 and seen.memory_total > seen.memory
        assert limits.warnings(seen)[0].startswith("descriptors: a controller process holds 60%")
    finally:
        process.kill()
        process.wait()
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != 500  # the test's own limit untouched


def test_status_shows_what_the_keeper_says_and_nothing_it_should_not():
    summary = {"group": "g", "desired": 1, "min": 0, "max": 4, "inService": 1, "limits": ["CPU: \x1b[2Jbusy"]}
    scaling = remote.parse(remote.KeeperSummary, summary, "keeper").model_dump()
    text = describe_scaling(scaling)
    assert "The controller is near a limit: CPU:" in text and "\x1b" not in text
