"""How many engines one controller holds: registration storms and per-task cost.

Per row, a fresh controller from the exact ipcontroller_config.py ipfleet's user data
writes (its sockets on loopback), under the descriptor limit of the unit the user data
writes (or this machine's hard limit, when lower: the table says which), and a storm of
lightweight engines (benchmarks/light_engines.py) that all register at once:

  registered / purged   engines the hub took, and registrations it gave up on
  gave_up               registrations an engine gave up on (no reply in a real engine's
                        5 s; it starts again 3 s later, as systemd restarts a real one)
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
import signal
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
    from bootstrap.render import render_user_data
    from bootstrap.spec import node_spec
    from ipfleet.project import resolve_stack
    from ipfleet.settings import parse_settings
    from ipfleet.stack_config import read_stack_file
    from ipfleet.twin.plan_deploy import written, written_files

    ref = resolve_stack(stack)
    settings = parse_settings(ref.name, read_stack_file(ref.path))
    files = written_files(render_user_data(node_spec(settings, "controller", "fs-0.efs.example.invalid")).encode())
    unit = written(files, "/etc/systemd/system/ipcontroller.service")
    found = re.search(r"^\s*LimitNOFILE=(\d+)\s*$", unit, re.MULTILINE)
    if not found:
        raise SystemExit("ipcontroller.service sets no LimitNOFILE: it would run with systemd's 1,024")
    return int(found.group(1))


def controller_config(stack: str, work: Path) -> str:
    sys.path.insert(0, str(HERE.parent))
    from throughput import ipfleet_controller_config

    return ipfleet_controller_config(stack, work)


def start_controller(profile: Path, log, limit: int) -> subprocess.Popen:
    """ipcontroller for PROFILE under descriptor limit LIMIT, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={profile}", "--ip=127.0.0.1"],
        env={**os.environ, "IPYTHONDIR": str(profile.parent / "ipython"), "PYTHONPATH": str(PROJECT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )


@contextmanager
def controller(config: str, limit: int):
    """ipcontroller with CONFIG under descriptor limit LIMIT, in a session of its own."""
    work = Path(tempfile.mkdtemp(prefix="ipfleet-scale-"))
    profile = work / "profile"
    profile.mkdir()
    (profile / "ipcontroller_config.py").write_text(config)
    log_path = work / "controller.log"
    log = open(log_path, "w")

    process = start_controller(profile, log, limit)
    security = profile / "security"
    try:
        deadline = time.monotonic() + 60
        while not (security / "ipcontroller-engine.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ipcontroller did not start: {log_path}")
            time.sleep(0.2)
        time.sleep(1)  # the schedulers' processes bind their ports
        # ipcontroller starts with its defaults when its config fails: that is not ipfleet's.
        if "Exception while loading config" in log_path.read_text():
            raise RuntimeError(f"ipcontroller could not load ipfleet's configuration: {log_path}")
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
def engines(kind: str, count: int, security: Path, over: float = 0.0):
    """COUNT engines of KIND (`light` or `real`), started at once (or light ones arriving
    over OVER seconds); yields the folder their ready files are in."""
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
                            str(over),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(work / f"swarm-{index}.log", "w"),
                        start_new_session=True,
                    ).pid
                )
        yield work
    finally:
        for pid in pids:
            stop_session(pid)
        shutil.rmtree(work, ignore_errors=True)


# The baseline: the same configuration with ipyparallel's own task scheduler.
IPYPARALLEL_SCHEDULER = (
    "\nfrom ipyparallel.controller import app as _app, task_scheduler as _task_scheduler\n"
    "_app.TaskScheduler = _task_scheduler.TaskScheduler\n"
)


def measure(kind: str, count: int, tasks: int, config: str, limit: int, applied: int) -> dict:
    from ipyparallel import Client

    with controller(config, applied) as (pid, security, log_path):
        processes = session_processes(pid)
        rc = Client(str(security / "ipcontroller-client.json"))
        started = time.monotonic()
        peak_fds = 0
        with engines(kind, count, security) as swarm_dir:
            registered_at = None
            while time.monotonic() - started < STORM_TIMEOUT:
                rc.spin()
                peak_fds = max(peak_fds, most_descriptors(processes))
                if len(rc.ids) >= count:
                    registered_at = time.monotonic() - started
                    break
                time.sleep(0.1)
            registered = len(rc.ids)
            gave_up = sum(json.loads(f.read_text() or "{}").get("gave_up", 0) for f in swarm_dir.glob("ready-*"))
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
        "gave_up": gave_up,
        "register_s": None if registered_at is None else round(registered_at, 1),
        "ctl_cpu_ms_per_task": round(1000 * used / tasks, 2),
        "idle_cpu_percent": round(100 * idle_rate, 1),
        "tasks_per_s": round(tasks / wall),
        "fd_fraction": round(peak_fds / limit, 4),
        "fds": peak_fds,
    }


def recovery(tasks: int, config: str, applied: int) -> dict:
    """TASKS no-op tasks queued on a controller with no engines (so all wait), the
    controller restarted in place (its scheduler's queue is gone): how long until
    `ipfleet.client()` has found and sent again every one, and the new controller
    knows them all."""
    import gc

    from ipfleet.fleet_client import FleetClient, sample

    with controller(config, applied) as (pid, security, log_path):
        rc = FleetClient(str(security / "ipcontroller-client.json"), stall_seconds=5.0)
        view = rc.load_balanced_view()
        submitted_from = time.monotonic()
        # ipyparallel's client slows as its heap grows (the collector walks every result it
        # keeps): this setup is not what is measured.
        gc.disable()
        pending = [view.apply_async(_noop) for _ in range(tasks)]
        gc.enable()
        submit_s = time.monotonic() - submitted_from
        ids = [r.msg_ids[0] for r in pending]
        time.sleep(2)
        profile = security.parent
        stop_session(pid)
        asks: list[int] = []
        ask = rc._ask

        def counted(msg_type: str, content: dict | None, timeout: float) -> dict:
            asks.append(len((content or {}).get("msg_ids", [])))
            return ask(msg_type, content, timeout)

        rc._ask = counted  # type: ignore[method-assign]
        restarted_at = time.monotonic()
        with open(log_path, "a") as log:
            again = start_controller(profile, log, applied)
        client_cpu = time.process_time()
        try:
            recovered_s = None
            controller_cpu = 0.0
            while time.monotonic() - restarted_at < STORM_TIMEOUT:
                time.sleep(1)
                if rc.tasks_sent_again < tasks:
                    continue
                # A sample first: asking for all 100,000 every second would slow the hub.
                if rc._unknown_to_controller(sample(ids), timeout=60):
                    continue
                unknown = rc._unknown_to_controller(ids, timeout=60)
                if not unknown:
                    recovered_s = time.monotonic() - restarted_at
                    controller_cpu = cpu_seconds(session_processes(again.pid))
                    break
        finally:
            rc.close()
            stop_session(again.pid)
    return {
        "tasks": tasks,
        "submit_s": round(submit_s, 1),
        "recovered_s": None if recovered_s is None else round(recovered_s, 1),
        "sent_again": rc.tasks_sent_again,
        "controller_cpu_s": round(controller_cpu, 1),
        "client_cpu_s": round(time.process_time() - client_cpu, 1),
        "status_requests": len(asks),
        "most_ids_per_request": max(asks, default=0),
    }


# EC2's launch rate (AWS's figure, not measurable here): a burst of about 1,000
# instances at once, then about 2 a second.
EC2_BURST = 1000
EC2_PER_SECOND = 2.0


def paced_registration(count: int, over: float, config: str, applied: int) -> dict:
    """COUNT lightweight engines arriving at random over OVER seconds, as a fleet's nodes
    reach the controller after their boot and their turn at the rendezvous: does the
    controller keep up (each engine's wait from its start to its registration)?"""
    from ipyparallel import Client

    with controller(config, applied) as (_pid, security, _log_path):
        rc = Client(str(security / "ipcontroller-client.json"))
        started = time.monotonic()
        with engines("light", count, security, over) as swarm_dir:
            all_at = None
            while time.monotonic() - started < over + STORM_TIMEOUT:
                rc.spin()
                if len(rc.ids) >= count:
                    all_at = time.monotonic() - started
                    break
                time.sleep(0.2)
            time.sleep(1)  # the last ready files
            ready = [json.loads(f.read_text() or "{}") for f in swarm_dir.glob("ready-*")]
            registered = len(rc.ids)
        rc.close()
    return {
        "engines": count,
        "over_s": over,
        "registered": registered,
        "all_registered_s": None if all_at is None else round(all_at, 1),
        "after_last_arrival_s": None if all_at is None else round(max(0.0, all_at - over), 1),
        "wait_p99_s": max((r.get("p99_s", 0) for r in ready), default=None),
        "wait_slowest_s": max((r.get("slowest_s", 0) for r in ready), default=None),
        "gave_up": sum(r.get("gave_up", 0) for r in ready),
    }


def cold_start(nodes: int, engines_per_node: int, config: str, applied: int, budget: dict | None, twin: dict | None):
    """The time from `ipfleet scale` to every engine registered, stage by stage, each from
    a measurement: EC2's launch curve (AWS's figure), a node's boot on the twin
    (benchmarks/twin_startup.py --json), a node's path through AWS's APIs at scaled quotas
    (benchmarks/aws_budget.py --json: boot to its engines registered, p99), and the
    controller taking arrivals at that pace (measured here)."""
    import math

    from bootstrap.ipfleet_node.agent import rendezvous_spread

    spread = rendezvous_spread({"fleet_nodes": nodes})
    launch_s = max(0, nodes - EC2_BURST) / EC2_PER_SECOND
    paced = paced_registration(nodes * engines_per_node, spread, config, applied)
    stages: dict[str, float | None] = {"ec2_launch_s": launch_s}
    for form in ("baked", "wheelhouse"):
        rows = [r for r in (twin or {}).get("rows", []) if r.get("image") == form and r.get("engine_nodes") == 1]
        stages[f"boot_{form}_s"] = rows[0]["boot_to_registered"] if rows else None
    stages["api_path_p99_s"] = (budget or {}).get("engines_p99_s")
    stages["registration_after_last_s"] = paced["after_last_arrival_s"]
    known = [v for k, v in stages.items() if v is not None and k != "boot_baked_s"]
    total = None
    if all(stages[k] is not None for k in ("boot_wheelhouse_s", "api_path_p99_s", "registration_after_last_s")):
        total = math.ceil(sum(known))
    return {"nodes": nodes, "engines": nodes * engines_per_node, "stages": stages, "total_s": total, "paced": paced}


def long_run(tasks: int, config: str, applied: int, engines_count: int = 8, chunk: int = 10_000) -> dict:
    """TASKS no-op tasks through one controller, CHUNK at a time (the client forgets each
    chunk's results, as a long-running client must): the controller's memory (every
    process) and tasks.db, sampled as it goes."""
    import gc

    from ipfleet.fleet_client import FleetClient

    samples = []
    with controller(config, applied) as (pid, security, log_path):
        processes = session_processes(pid)
        found = re.search(r"taskdb\.install\(c, \"([^\"]+)\"\)", config)
        if found is None:
            raise SystemExit("the controller's config installs no task database")
        state = Path(found.group(1)) / "tasks.db"
        with engines("light", engines_count, security):
            rc = FleetClient(str(security / "ipcontroller-client.json"))
            rc.wait_for_engines(engines_count, timeout=120)
            view = rc.load_balanced_view()
            started = time.monotonic()
            done = 0
            while done < tasks:
                batch = min(chunk, tasks - done)
                view.map(_noop_arg, range(batch), block=True)
                done += batch
                # The client keeps every result and message it saw; a long run forgets them.
                rc.purge_local_results("all")
                rc.history.clear()
                view.history.clear()
                gc.collect()
                memory = sum(p.memory_info().rss for p in processes if p.is_running())
                samples.append({"tasks": done, "memory": memory, "db": state.stat().st_size if state.exists() else 0})
                print(
                    f"  long run: {done} tasks, controller {memory >> 20} MiB, tasks.db {samples[-1]['db'] >> 20} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            wall = time.monotonic() - started
            rc.close()
        culled = log_path.read_text().count("culled the")
    return {
        "tasks": tasks,
        "tasks_per_s": round(tasks / wall),
        "memory_mib": round(samples[-1]["memory"] / 2**20),
        "most_memory_mib": round(max(s["memory"] for s in samples) / 2**20),
        "tasks_db_mib": round(samples[-1]["db"] / 2**20),
        "culls": culled,
        "samples": samples,
    }


def _noop_arg(_):
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", nargs="?", default="example")
    parser.add_argument("--engines", type=int, nargs="*", default=[64, 1024, 2048])
    parser.add_argument(
        "--baseline", type=int, nargs="*", default=[64, 1024], help="engines, with ipyparallel's own scheduler"
    )
    parser.add_argument("--validate", type=int, default=8, help="real and lightweight engines compared (0: skip)")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument(
        "--recovery", type=int, default=100_000, help="queued tasks a restarted controller loses (0: skip)"
    )
    parser.add_argument("--long", type=int, default=1_000_000, help="no-op tasks through one controller (0: skip)")
    parser.add_argument(
        "--cold-start", type=int, default=1000, help="engine nodes in the cold-start model, 2 engines each (0: skip)"
    )
    parser.add_argument("--budget", type=Path, help="benchmarks/aws_budget.py --json's output, for the model")
    parser.add_argument("--twin", type=Path, help="benchmarks/twin_startup.py --json's output, for the model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Stopped (timeout, kill): the finally blocks stop the controllers and engines.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    limit = unit_descriptor_limit(args.stack)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    applied = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    work = Path(tempfile.mkdtemp(prefix="ipfleet-scale-config-"))
    try:
        config = controller_config(args.stack, work)
        plan = [("real", args.validate, config), ("light", args.validate, config)] if args.validate else []
        plan += [("light", n, config) for n in args.engines]
        plan += [("light", n, config + IPYPARALLEL_SCHEDULER) for n in args.baseline]
        rows = []
        for kind, count, text in plan:
            row = measure(kind, count, args.tasks, text, limit, applied)
            if text != config:
                row["kind"] = "light, ipyparallel's scheduler"
            print(f"  {kind} {count}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
        recovered = recovery(args.recovery, config, applied) if args.recovery else None
        if recovered:
            print(f"  recovery: {recovered}", file=sys.stderr, flush=True)
        long = long_run(args.long, config, applied) if args.long else None
        cold = None
        if args.cold_start:
            budget = json.loads(args.budget.read_text()) if args.budget else None
            twin = json.loads(args.twin.read_text()) if args.twin else None
            cold = cold_start(args.cold_start, 2, config, applied, budget, twin)
            print(f"  cold start: {cold}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "unit_limit": limit,
        "applied_limit": applied,
        "tasks": args.tasks,
        "rows": rows,
        "recovery": recovered,
        "long": long,
        "cold_start": cold,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"descriptor limit: the unit's {limit}, applied here {applied}; {args.tasks} no-op tasks per row")
    print(
        "| engines | kind | registered | purged | gave up | register s | ctl CPU ms/task | vs its kind's first "
        "| idle CPU % | tasks/s | fds | fd fraction |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    # Each kind against its own smallest row; the real engines against the light ones.
    firsts: dict[str, dict] = {}
    for r in rows:
        if r["kind"] != "real":
            firsts.setdefault(r["kind"], r)
    for r in rows:
        base = next((x for x in rows if x["kind"] == "light"), r) if r["kind"] == "real" else firsts[r["kind"]]
        first = base["ctl_cpu_ms_per_task"]
        ratio = r["ctl_cpu_ms_per_task"] / first if first else 0
        print(
            f"| {r['engines']} | {r['kind']} | {r['registered']} | {r['purged']} | {r['gave_up']} | "
            f"{r['register_s']} | "
            f"{r['ctl_cpu_ms_per_task']} | {ratio:.2f}x | {r['idle_cpu_percent']} | {r['tasks_per_s']} | "
            f"{r['fds']} | {r['fd_fraction']} |"
        )
    if recovered:
        print(
            f"\nrecovery: {recovered['tasks']} queued tasks lost by a restarted controller, all sent again "
            f"and known to it {recovered['recovered_s']} s after the restart, in {recovered['status_requests']} "
            f"status requests (at most {recovered['most_ids_per_request']} ids each); "
            f"{recovered['sent_again']} sends again; submitting them took {recovered['submit_s']} s at first"
        )

    if long:
        print(
            f"\nlong run: {long['tasks']} no-op tasks at {long['tasks_per_s']}/s; at the end the controller held "
            f"{long['memory_mib']} MiB (at most {long['most_memory_mib']}) and tasks.db {long['tasks_db_mib']} MiB, "
            f"after {long['culls']} culls"
        )
    if cold:
        print_cold_start(cold)


def print_cold_start(cold: dict) -> None:
    stages, paced = cold["stages"], cold["paced"]

    def shown(value) -> str:
        return "not measured in this run (give --twin / --budget)" if value is None else f"{value} s"

    print(f"\ncold start, 0 to {cold['nodes']} engine nodes ({cold['engines']} engines):")
    print("| stage | seconds | from |")
    print("|---|---:|---|")
    print(f"| EC2 launches them all | {stages['ec2_launch_s']} | AWS's curve: {EC2_BURST} at once, then 2/s |")
    print(f"| a node boots (wheelhouse image) | {shown(stages['boot_wheelhouse_s'])} | twin_startup.py, 1 node |")
    print(f"| (baked image, instead) | {shown(stages['boot_baked_s'])} | twin_startup.py, 1 node |")
    print(
        f"| its API path, boot to engines registered (p99) | {shown(stages['api_path_p99_s'])} "
        "| aws_budget.py, scaled quotas |"
    )
    print(
        f"| the controller's registration after the last arrival | {shown(stages['registration_after_last_s'])} "
        f"| here: {paced['engines']} engines arriving over {paced['over_s']} s, wait p99 {paced['wait_p99_s']} s |"
    )
    total = cold["total_s"]
    print(f"| **sum** | **{total if total is not None else '-'}** | budget: 300 s |")


if __name__ == "__main__":
    main()
