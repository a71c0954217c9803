"""How many engines one controller holds: registration storms and per-task cost.

Per row, a fresh controller from the exact ipcontroller_config.py ipfleet's user data
writes (its sockets on loopback), under the descriptor limit of the unit the user data
writes (or this machine's hard limit, when lower: the table says which), and a storm of
lightweight engines (benchmarks/light_engines.py) that all register at once:

  registered / purged   engines the hub took, and registrations it gave up on
  register_s            from the storm's start to the last engine registered
  ctl_cpu_ms_per_task   the controller's CPU (hub and schedulers, every process of the
                        unit) per no-op task through a load-balanced view, its idle CPU
                        (heartbeats) over the same time taken off
  fd_fraction           the most descriptors one controller process held, over its limit

The first rows validate the lightweight engines: the same controller with N real
`ipengine`s and with N lightweight ones; their per-task costs should agree.

    .venv/bin/python benchmarks/scale.py [STACK] [--engines 64 1024 2048] [--tasks 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()
PROJECT = HERE.parents[1]
sys.path.insert(0, str(PROJECT))

# Lightweight engines per swarm process: about 14 descriptors each, and the swarms
# spread over the machine's cores.
PER_SWARM = 400
STORM_TIMEOUT = 300.0


def _noop():
    return None


def unit_descriptor_limit(stack: str) -> int:
    """LimitNOFILE of the ipcontroller.service the controller's user data writes."""
    from bootstrap.ipfleet_node import paths
    from bootstrap.render import render_user_data
    from bootstrap.spec import node_spec
    from ipfleet.project import resolve_stack
    from ipfleet.settings import parse_settings
    from ipfleet.stack_config import read_stack_file
    from ipfleet.twin.plan_deploy import written, written_files

    ref = resolve_stack(stack)
    settings = parse_settings(ref.name, read_stack_file(ref.path))
    files = written_files(render_user_data(node_spec(settings, "controller", "fs-0.efs.example.invalid")).encode())
    del paths
    unit = written(files, "/etc/systemd/system/ipcontroller.service")
    found = re.search(r"^\s*LimitNOFILE=(\d+)\s*$", unit, re.MULTILINE)
    if not found:
        raise SystemExit("ipcontroller.service sets no LimitNOFILE: it would run with systemd's 1,024")
    return int(found.group(1))


def controller_config(stack: str, work: Path) -> str:
    sys.path.insert(0, str(HERE.parent))
    from throughput import ipfleet_controller_config

    return ipfleet_controller_config(stack, work)


@contextmanager
def controller(config: str, limit: int):
    """ipcontroller with CONFIG under descriptor limit LIMIT, in a session of its own."""
    work = Path(tempfile.mkdtemp(prefix="ipfleet-scale-"))
    profile = work / "profile"
    profile.mkdir()
    (profile / "ipcontroller_config.py").write_text(config)
    log_path = work / "controller.log"
    log = open(log_path, "w")

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    process = subprocess.Popen(
        [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={profile}", "--ip=127.0.0.1"],
        env={**os.environ, "IPYTHONDIR": str(work / "ipython"), "PYTHONPATH": str(PROJECT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=limited,
    )
    security = profile / "security"
    try:
        deadline = time.monotonic() + 60
        while not (security / "ipcontroller-engine.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ipcontroller did not start: {log_path}")
            time.sleep(0.2)
        time.sleep(1)  # the schedulers' processes bind their ports
        yield process.pid, security, log_path
    finally:
        stop_session(process.pid)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def stop_session(pid: int) -> None:
    from ipfleet.twin.instances import stop_group

    stop_group(pid)


def session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def most_descriptors(processes: list[psutil.Process]) -> int:
    counts = [0]
    for process in processes:
        try:
            counts.append(process.num_fds())
        except psutil.Error:
            continue
    return max(counts)


@contextmanager
def engines(kind: str, count: int, security: Path):
    """COUNT engines of KIND (`light` or `real`), started at once; yields their sessions."""
    work = Path(tempfile.mkdtemp(prefix="ipfleet-swarm-"))
    pids = []
    try:
        if kind == "real":
            for _ in range(count):
                pids.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "ipyparallel.engine", f"--file={security / 'ipcontroller-engine.json'}"],
                        env={**os.environ, "IPYTHONDIR": str(work / "ipython")},
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    ).pid
                )
        else:
            for index, start in enumerate(range(0, count, PER_SWARM)):
                size = min(PER_SWARM, count - start)
                pids.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE.parent / "light_engines.py"),
                            str(security / "ipcontroller-engine.json"),
                            str(size),
                            str(work / f"ready-{index}"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(work / f"swarm-{index}.log", "w"),
                        start_new_session=True,
                    ).pid
                )
        yield pids
    finally:
        for pid in pids:
            stop_session(pid)
        shutil.rmtree(work, ignore_errors=True)


def measure(kind: str, count: int, tasks: int, config: str, limit: int, applied: int) -> dict:
    from ipyparallel import Client

    with controller(config, applied) as (pid, security, log_path):
        processes = session_processes(pid)
        rc = Client(str(security / "ipcontroller-client.json"))
        started = time.monotonic()
        peak_fds = 0
        with engines(kind, count, security):
            registered_at = None
            while time.monotonic() - started < STORM_TIMEOUT:
                rc.spin()
                peak_fds = max(peak_fds, most_descriptors(processes))
                if len(rc.ids) >= count:
                    registered_at = time.monotonic() - started
                    break
                time.sleep(0.1)
            registered = len(rc.ids)
            time.sleep(3)  # the storm's tail: late hearts, the hub's state file
            view = rc.load_balanced_view()
            view.apply_sync(_noop)  # the function reaches the engines once
            idle_from = cpu_seconds(processes)
            time.sleep(3)
            idle_rate = (cpu_seconds(processes) - idle_from) / 3
            cpu_from, wall_from = cpu_seconds(processes), time.monotonic()
            pending = [view.apply_async(_noop) for _ in range(tasks)]
            for result in pending:
                result.get(timeout=600)
            wall = time.monotonic() - wall_from
            used = cpu_seconds(processes) - cpu_from - idle_rate * wall
            peak_fds = max(peak_fds, most_descriptors(processes))
            rc.close()
        purged = log_path.read_text().count("purging stalled registration")
    return {
        "engines": count,
        "kind": kind,
        "registered": registered,
        "purged": purged,
        "register_s": None if registered_at is None else round(registered_at, 1),
        "ctl_cpu_ms_per_task": round(1000 * used / tasks, 2),
        "idle_cpu_percent": round(100 * idle_rate, 1),
        "tasks_per_s": round(tasks / wall),
        "fd_fraction": round(peak_fds / limit, 4),
        "fds": peak_fds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", nargs="?", default="example")
    parser.add_argument("--engines", type=int, nargs="+", default=[64, 1024, 2048])
    parser.add_argument("--validate", type=int, default=8, help="real and lightweight engines compared (0: skip)")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    limit = unit_descriptor_limit(args.stack)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    applied = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    work = Path(tempfile.mkdtemp(prefix="ipfleet-scale-config-"))
    try:
        config = controller_config(args.stack, work)
        plan = [("real", args.validate), ("light", args.validate)] if args.validate else []
        plan += [("light", n) for n in args.engines]
        rows = []
        for kind, count in plan:
            row = measure(kind, count, args.tasks, config, limit, applied)
            print(f"  {kind} {count}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"unit_limit": limit, "applied_limit": applied, "tasks": args.tasks, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"descriptor limit: the unit's {limit}, applied here {applied}; {args.tasks} no-op tasks per row")
    print(
        "| engines | kind | registered | purged | register s | ctl CPU ms/task | vs first light "
        "| idle CPU % | tasks/s | fds | fd fraction |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = next((r for r in rows if r["kind"] == "light"), rows[0])
    for r in rows:
        ratio = r["ctl_cpu_ms_per_task"] / base["ctl_cpu_ms_per_task"] if base["ctl_cpu_ms_per_task"] else 0
        print(
            f"| {r['engines']} | {r['kind']} | {r['registered']} | {r['purged']} | {r['register_s']} | "
            f"{r['ctl_cpu_ms_per_task']} | {ratio:.2f}x | {r['idle_cpu_percent']} | {r['tasks_per_s']} | "
            f"{r['fds']} | {r['fd_fraction']} |"
        )


if __name__ == "__main__":
    main()
