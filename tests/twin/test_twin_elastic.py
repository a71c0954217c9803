"""An elastic cluster on a twin that plays the Auto Scaling group: `ipfleet scale`
grows it under a connected client, shrinks it in the middle of a map without
losing a result, and the idle guard takes it to zero by itself, until the next
client brings it back. Everything runs as the laptop, through `ipfleet twin exec`.

One twin (ssm access, 1 to 3 engine nodes of 2 engines, idle after 1 minute, a
read-only and a writable S3 mount), in this order: the operations suite shared with
moto on loopback (tests/operations.py), out, in, idle, wake, and a batch run
(`ipfleet run`) that reads from S3, writes to S3 and gives its nodes back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import running_twin, twin_exec
from tests.operations import (  # noqa: F401 (the shared tests, collected here first)
    Deployed,
    test_fetch_names_the_controller_that_status_shows,
    test_scale_refuses_a_size_outside_the_groups_bounds_and_changes_nothing,
    test_status_shows_the_controller_and_each_engine_node_of_the_group,
)

STACK = "elastic"
CONFIG = {
    "aws:region": "us-east-1",
    "ipfleet:engineNodes": 1,
    "ipfleet:maxEngineNodes": 3,
    "ipfleet:enginesPerNode": 2,
    "ipfleet:idleMinutes": 1,
    "ipfleet:s3Mounts": [
        {"bucket": "elastic-data", "prefix": "in", "mountPoint": "/data/in"},
        {"bucket": "elastic-data", "prefix": "out", "mountPoint": "/data/out", "readOnly": False},
    ],
}
SCRIPT = str(Path(__file__).resolve().parent / "twin_scripts" / "elastic_client.py")
JOB = str(Path(__file__).resolve().parent / "twin_scripts" / "batch_job.py")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    yield from running_twin(tmp_path_factory.mktemp("elastic"), STACK, CONFIG)


@pytest.fixture
def deployed(twin):
    """The operations suite's backend (tests/operations.py): the laptop in the twin."""

    def run(*args: str):
        return twin_exec(STACK, "ipfleet", *args, timeout=300)

    return Deployed(STACK, run, minimum=0, maximum=CONFIG["ipfleet:maxEngineNodes"])


def laptop(*args: str) -> dict:
    result = twin_exec(STACK, "python", SCRIPT, *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def status() -> dict:
    shown = twin_exec(STACK, "ipfleet", "status", STACK, "--json", timeout=120)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_scale_out_joins_the_connected_client_and_status_shows_the_group(twin):
    # (A size outside the bounds is refused: tests/operations.py, run on this twin first.)
    out = laptop("scale-out", STACK, "3")
    print(f"\nscale 1 -> 3: engines registered {out['seconds_to_registered']} s after `ipfleet scale`")
    # The client connected before the scale used every new engine, on every node.
    assert (out["engines_before"], out["engines_after"]) == (2, 6)
    assert out["engines_used"] == 6 and out["hosts_used"] == 3
    shown = status()
    engines = [n for n in shown["nodes"] if n["role"] == "engine"]
    assert sorted(n["instanceId"] for n in engines) == sorted(out["nodes"]) == sorted(shown["group"]["instances"])
    assert all(n["groupState"] == "InService" and n["engines"]["running"] == 2 for n in engines)


def test_scale_in_in_the_middle_of_a_map_loses_no_result(twin):
    out = laptop("scale-in", STACK, "1")
    print(f"\nscale 3 -> 1 mid-map: drained, gone and unregistered {out['seconds_to_drained']} s after `ipfleet scale`")
    assert out["results_correct"] == out["tasks"] == 200
    assert (out["engines_before"], out["engines_after"]) == (6, 2)
    log = (twin.work_dir / "reconciler.log").read_text()
    assert log.count("is leaving the group: Terminating:Wait") == 2
    assert "timed out" not in log  # each node drained and completed its hook itself


def test_idle_guard_takes_the_group_to_zero_and_a_client_brings_it_back(twin):
    deadline = time.monotonic() + 240  # one idle minute, the keeper's look, the drain
    # What the keeper saw at each look: on a failure, which signal kept the group awake.
    seen: list[tuple[str, object, object, object]] = []
    while True:
        shown = status()
        scaling = next(n for n in shown["nodes"] if n["role"] == "controller")["scaling"] or {}
        engines = [n for n in shown["nodes"] if n["role"] == "engine"]
        seen.append((time.strftime("%H:%M:%S"), scaling.get("busy"), scaling.get("clients"), scaling.get("idleSince")))
        if scaling.get("idledAt") and not engines and not shown["group"]["instances"]:
            break
        assert time.monotonic() < deadline, (
            f"not idle yet: {scaling}, {len(engines)} engine nodes; (time, busy, clients, idle since): {seen}"
        )
        time.sleep(5)
    assert shown["group"]["desired"] == 0
    assert scaling["lastChanges"][-1]["reason"].startswith("idle for 1 min")
    told = twin_exec(STACK, "ipfleet", "status", STACK, timeout=120).stdout
    assert "the idle guard took it to 0" in told

    woken = laptop("wake", STACK, "2")
    print(f"\nidle -> woken by a client: engines registered {woken['seconds_to_registered']} s after it connected")
    assert woken["answer"] == 49


def test_a_batch_run_reads_and_writes_s3_and_gives_its_nodes_back(twin):
    from ipfleet.twin import plan_deploy

    files = [f"part-{i}.txt" for i in range(6)]
    for name in files:
        plan_deploy.put_object(twin, "elastic-data", f"in/{name}", f"line of {name}\n")
    done = twin_exec(STACK, "ipfleet", "run", STACK, "--nodes", "2", "--", "python", JOB, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    job = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"files"')))
    assert job["files"] == files and len(job["hosts"]) == 2  # both nodes worked
    assert "node-hours" in done.stderr and "released (the group back to 0)" in done.stderr
    listed = twin_exec(
        STACK,
        "python",
        "-c",
        "import boto3, json; s3 = boto3.client('s3'); "
        "objects = s3.list_objects_v2(Bucket='elastic-data', Prefix='out/')['Contents']; "
        "print(json.dumps({o['Key']: s3.get_object(Bucket='elastic-data', Key=o['Key'])['Body'].read().decode() "
        "for o in objects}))",
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {f"out/{name}.upper": f"LINE OF {name.upper()}\n" for name in files}
    assert status()["group"]["desired"] == 0

    # A command that fails: its exit code comes back, and the nodes go all the same.
    failed = twin_exec(STACK, "ipfleet", "run", STACK, "--nodes", "1", "--", "python", "-c", "raise SystemExit(3)")
    assert failed.returncode == 3, failed.stderr[-2000:]
    assert status()["group"]["desired"] == 0
