"""One behaviour, two backends: what `ipfleet status`, `scale` and `fetch` do against a
deployed stack. tests/loopback/test_operations.py runs these against moto on loopback
(the plan deployed into it, the nodes reporting with the agent's own code);
tests/twin/test_twin_elastic.py against a booted twin, through `ipfleet twin exec`. Each
backend gives a `deployed` fixture; the tests are the same functions."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Deployed:
    stack: str
    # `ipfleet ARGS` as the laptop runs it (its credentials, its endpoint, its home).
    run: Callable[..., subprocess.CompletedProcess]
    # The group's bounds, as the stack file sets them.
    minimum: int
    maximum: int


def shown(deployed: Deployed, *args: str) -> dict:
    result = deployed.run(*args, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_status_shows_the_controller_and_each_engine_node_of_the_group(deployed):
    status = shown(deployed, "status", deployed.stack)
    assert status["ignored"] == []
    group = status["group"]
    assert (group["min"], group["max"]) == (deployed.minimum, deployed.maximum)
    engines = [node for node in status["nodes"] if node["role"] == "engine"]
    controllers = [node for node in status["nodes"] if node["role"] == "controller"]
    assert len(controllers) == 1 and controllers[0]["groupState"] is None
    assert controllers[0]["instanceId"] not in group["instances"]
    # Every engine node the group holds reports, under its own id, and nothing else does.
    assert sorted(node["instanceId"] for node in engines) == sorted(group["instances"])
    assert all(node["groupState"] == "InService" and node["phase"] == "running" for node in engines)


def test_fetch_names_the_controller_that_status_shows(deployed):
    status = shown(deployed, "status", deployed.stack)
    [controller] = [node for node in status["nodes"] if node["role"] == "controller"]
    fetched = shown(deployed, "fetch", deployed.stack)
    assert fetched["controller"]["address"] == controller["address"]
    assert fetched["controller"]["instance_id"] == controller["instanceId"]


def test_scale_refuses_a_size_outside_the_groups_bounds_and_changes_nothing(deployed):
    before = shown(deployed, "status", deployed.stack)["group"]
    refused = deployed.run("scale", deployed.stack, str(deployed.maximum + 1))
    assert refused.returncode == 1
    assert f"outside the group's bounds, {deployed.minimum} to {deployed.maximum}" in refused.stderr
    assert "maxEngineNodes" in refused.stderr
    assert shown(deployed, "status", deployed.stack)["group"]["desired"] == before["desired"]
