"""Faults on a running twin, in the middle of a laptop's map: what a cluster on spot
capacity meets as a matter of course. `ipfleet twin demo STACK --fault KIND`.

The laptop (ipfleet/twin/fault_client.py, in the client namespace) maps TASKS
tasks of SECONDS each through `ipfleet.client()`; a quarter of the way in, the
fault is injected from outside, as AWS or an operator would:

- controller-restart: `systemctl restart ipcontroller` on the controller;
- controller-replace: a new controller instance (new address, empty disk), then
  the old one terminated (what `pulumi up` does on a replacement);
- engine-loss: an engine node lost without warning (network cut, then power);
- spot-interruption: EC2's two-minute notice in one engine node's instance
  metadata; the node drains by itself, then is terminated.

Reported: tasks, results_correct, lost, retried (tasks that started more than
once, counted on the shared storage), sent_again (by the client), engines before
and after, engine_ids_kept, and recovery_s: from the fault until the controller
has every engine it had again (after a loss or an interruption, the group's
replacement node booted and its engines registered).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from ipfleet.access import Access
from ipfleet.twin import cluster, laptop
from ipfleet.twin.state import TwinError, TwinState

FAULTS = ("controller-restart", "controller-replace", "engine-loss", "spot-interruption")
FAULT_LOG_DIR = ".ipfleet-faults"


def run_fault(
    state: TwinState, kind: str, tasks: int = 200, seconds: float = 0.2, timeout: float = 600, log=print
) -> dict:
    if kind not in FAULTS:
        raise TwinError(f"--fault {kind!r}: choose one of {', '.join(FAULTS)}")
    state.refresh()  # the reconciler may have booted or removed engine nodes
    if kind in ("engine-loss", "spot-interruption") and len(state.engine_nodes) < 2:
        raise TwinError(f"--fault {kind} needs at least 2 engine nodes (one is lost); try --engine-nodes 2")
    laptop.connect(state, timeout)
    old_controller = state.controller
    if kind == "controller-replace":
        # Create before delete, as `pulumi up` replaces: the new controller is up and has
        # published before the map starts; the fault is the old one's termination.
        cluster.boot_replacement(state, timeout, log)
    run_dir = state.work_dir / f"fault-{kind}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shared_log = None
    if state.shared_mount_point:
        folder = state.shared_dir / FAULT_LOG_DIR
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)  # the engines' service user writes here
        (folder / f"{kind}.log").unlink(missing_ok=True)
        shared_log = f"{state.shared_mount_point}/{FAULT_LOG_DIR}/{kind}.log"
    # What the cluster has now, and after the fault: as many again, since the group
    # replaces a lost or interrupted node to keep its desired capacity.
    per_node = state.engines_per_node
    engines_now = per_node * len(state.engine_nodes)
    engines_after = engines_now
    spec = {
        "stack": state.stack,
        "region": state.region,
        "engines": engines_now,
        "tasks": tasks,
        "seconds": seconds,
        "timeout": timeout,
        "run_dir": str(run_dir),
        "shared_log": shared_log,
        "proxy_command": laptop.session_proxy_command(state) if Access(state.access) is Access.SSM else None,
    }
    client = subprocess.Popen(
        laptop.as_client(state, [state.client_python, "-m", "ipfleet.twin.fault_client", json.dumps(spec)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=laptop.client_env(state),
    )
    try:
        _wait_for_progress(client, run_dir, tasks // 4, timeout)
        fault_at = time.time()
        (run_dir / "fault.json").write_text(
            json.dumps(
                {
                    "at": fault_at,
                    "engines_after": engines_after,
                    # Engines the recovered cluster has that it did not before: the
                    # replacement node's, after a loss or an interruption.
                    "new_engines": per_node if kind in ("engine-loss", "spot-interruption") else 0,
                    "reconnect": kind == "controller-replace",
                }
            )
        )
        log(f"{kind}: injecting the fault a quarter of the way through {tasks} tasks")
        victim = _inject(state, kind, old_controller, log)
        out, err = client.communicate(timeout=timeout + 60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise TwinError(f"the laptop's map failed:\n{err.strip()[-3000:]}")
    result = json.loads(out)
    starts: Counter[str] = Counter()
    if shared_log:
        for line in (state.shared_dir / FAULT_LOG_DIR / f"{kind}.log").read_text().splitlines():
            starts[line.split()[0]] += 1
    recovered_at = result.pop("recovered_at")
    return {
        "fault": kind,
        "victim": victim,
        "tasks": result["tasks"],
        "results_correct": result["results_correct"],
        "lost": result["lost"],
        "retried": sum(n - 1 for n in starts.values()) if shared_log else None,
        "sent_again": result["sent_again"],
        "engines_before": result["engines_before"],
        "engines_after": result["engines_after"],
        "engine_ids_kept": result["engine_ids_kept"],
        "recovery_s": round(recovered_at - fault_at, 1) if recovered_at else None,
        "map_s": round(result["done_at"] - result["started_at"], 1),
        "reconnected": result["reconnected"],
    }


def _wait_for_progress(client: subprocess.Popen, run_dir, done: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    progress = run_dir / "progress.json"
    while True:
        if client.poll() is not None:
            error = client.stderr.read() if client.stderr else ""
            raise TwinError(f"the laptop's map ended before the fault:\n{error[-3000:]}")
        if progress.exists() and json.loads(progress.read_text())["done"] >= done:
            return
        if time.monotonic() > deadline:
            raise TwinError(f"the map did not reach {done} tasks in {timeout:.0f} s")
        time.sleep(0.1)


def _inject(state: TwinState, kind: str, old_controller, log) -> str:
    """Do it; returns the name of the node it hit."""
    if kind == "controller-restart":
        result = old_controller.run("systemctl", "restart", "ipcontroller.service", timeout=120)
        if result.returncode != 0:
            raise TwinError(f"systemctl restart ipcontroller failed: {result.stderr}")
        return old_controller.name
    if kind == "controller-replace":
        cluster.retire_controller(state, old_controller, log)
        return old_controller.name
    victim = state.refresh().engine_nodes[0]
    if kind == "engine-loss":
        victim.kill()
        log(f"lost {victim.name} without warning")
    else:
        notice = {
            "action": "terminate",
            "time": (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        with state.locked():
            cluster.write_metadata(state, extra={victim.address: {"spot/instance-action": json.dumps(notice)}})
        log(f"spot interruption notice served to {victim.name}; waiting for it to drain")
        deadline = time.monotonic() + 120  # the notice's two minutes
        while victim.run("systemctl", "is-active", "--quiet", "ipengine@1.service").returncode == 0:
            if time.monotonic() > deadline:
                raise TwinError(f"{victim.name} did not drain within the two-minute notice")
            time.sleep(0.5)
        log(f"{victim.name} drained; terminating it")
        victim.stop()
    cluster.leave_group(state, victim)
    return victim.name
