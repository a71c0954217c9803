"""Runs in the twin's client namespace, as a laptop would: a long map through
`ipfleet.client()` that a fault hits in the middle (ipfleet/twin/faults.py injects it).

Usage: python -m ipfleet.twin.fault_client SPEC_JSON
SPEC: stack, engines, tasks, seconds, timeout, run_dir, shared_log (or null).
Writes RUN_DIR/progress.json as it goes; reads RUN_DIR/fault.json (when the fault
hit, and how many engines the cluster should have after it); prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def task(x: int, seconds: float, shared_log: str | None) -> int:
    """About SECONDS of work; notes each start on the shared storage (to count re-runs)."""
    import os
    import socket
    import time

    if shared_log:
        with open(shared_log, "a") as f:  # O_APPEND: one short line is one write
            f.write(f"{x} {socket.gethostname()} {os.getpid()}\n")
    time.sleep(seconds)
    return x * x


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def main() -> None:
    import ipfleet
    from ipfleet.fleet_client import ControllerUnreachable
    from ipfleet.twin.client_demo import wait_for_engines

    spec = json.loads(sys.argv[1])
    run_dir = Path(spec["run_dir"])
    timeout, tasks = float(spec["timeout"]), int(spec["tasks"])
    deadline = time.monotonic() + timeout
    rc = wait_for_engines(ipfleet.client(spec["stack"], timeout=60), spec["stack"], spec["engines"], timeout)
    ids_before = rc.engine_ids()
    view = rc.load_balanced_view()
    started = time.time()
    pending = [view.apply_async(task, x, spec["seconds"], spec.get("shared_log")) for x in range(tasks)]
    recovered_at, done_after_fault = None, None
    reconnected = False
    fault_file = run_dir / "fault.json"
    # Until every task is done and, once the fault hit, the cluster has recovered.
    while (
        not all(r.ready() for r in pending) or (fault_file.exists() and recovered_at is None)
    ) and time.monotonic() < deadline:
        done = sum(r.ready() for r in pending)
        write_json(run_dir / "progress.json", {"done": done, "at": time.time()})
        fault = json.loads(fault_file.read_text()) if fault_file.exists() else None
        if fault and recovered_at is None and time.time() > fault["at"] + 1:
            # Recovered: the controller has the engines it should, and work is flowing again
            # (a task finished since the fault took hold).
            done_after_fault = done if done_after_fault is None else done_after_fault
            try:
                ids = rc.engine_ids(timeout=2)
                replaced = len(set(ids) - set(ids_before)) >= fault.get("new_engines", 0)
                if len(ids) == fault["engines_after"] and replaced and done > done_after_fault:
                    recovered_at = time.time()
            except ControllerUnreachable:
                if fault.get("reconnect") and not reconnected:
                    # A replaced controller: connect again (what `ipfleet connect` does), and
                    # send what the old controller never finished through the new one.
                    from ipfleet.connect import connect

                    connect(spec["stack"], spec["region"], timeout=120, proxy_command=spec.get("proxy_command"))
                    new = ipfleet.client(spec["stack"], timeout=60)
                    rc.hand_over(new)
                    rc = new
                    reconnected = True
        time.sleep(0.25)
    results, lost = [], 0
    for x, r in enumerate(pending):
        try:
            results.append(r.get(timeout=max(1.0, deadline - time.monotonic())) == x * x)
        except Exception:
            lost += 1
    ids_after = rc.engine_ids()
    print(
        json.dumps(
            {
                "tasks": tasks,
                "results_correct": sum(results),
                "lost": lost,
                "sent_again": rc.tasks_sent_again,
                "engines_before": len(ids_before),
                "engines_after": len(ids_after),
                "engine_ids_kept": set(ids_before) <= set(ids_after),
                "started_at": started,
                "recovered_at": recovered_at,
                "done_at": time.time(),
                "reconnected": reconnected,
            }
        )
    )
    rc.close()


if __name__ == "__main__":
    main()
