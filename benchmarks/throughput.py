"""Task throughput and round-trip latency: ipyparallel's defaults, ipfleet's controller, and each access mode.

One run measures, with the same number of engines everywhere:

  (a) ipp-defaults   ipcontroller and ipengines as ipyparallel starts them, on loopback:
                     the baseline a user would otherwise pick
  (b) ipfleet        the controller configuration ipfleet's user data writes, on loopback
      ipfleet+KNOB   (b) with one setting changed: what ipfleet's defaults were chosen from
  (c) twin ssm       a twin of the stack; the laptop reaches it through the ssm stand-in
  (d) twin ssh       ... through ssh to port 22
  (e) twin direct    ... straight to the client ports, CurveZMQ on

Per configuration: no-op tasks per second and 10 ms tasks per second through a
load-balanced view (N submitted at once), and the median round trip of one
blocking `apply` on one engine. Ratios are against (a). The twin rows need root
(see `ipfleet twin`); `--access` with no mode measures the loopback rows alone.

    .venv/bin/python benchmarks/throughput.py [STACK] [--engines N] [--tasks 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve()
PROJECT = HERE.parents[1]

# One knob changed from ipfleet's configuration, appended to its config file.
VARIANTS = {
    "ipfleet+DictDB": 'c.IPController.db_class = "ipyparallel.controller.dictdb.DictDB"',
    "ipfleet+pickle": 'c.Session.packer = "pickle"',
    "ipfleet+hwm0": "c.TaskScheduler.hwm = 0",
    "ipfleet+hwm2": "c.TaskScheduler.hwm = 2",
    "ipfleet+ping3000": "c.HeartMonitor.period = 3000",
    "ipfleet+lru": 'c.TaskScheduler.scheme_name = "lru"',
}


# ---- the measurement, run by the client's Python (loopback: this machine; twin: the laptop namespace)


def _noop():
    return None


def _sleep10ms():
    import time

    time.sleep(0.01)


def measure(rc, tasks: int, sleep_tasks: int, pings: int, repeats: int) -> dict:
    """Tasks per second (no-op and 10 ms) through a load-balanced view, and one apply's round trip."""
    view = rc.load_balanced_view()
    one = rc[rc.ids[0]]
    view.apply_sync(_noop)  # first use: the function's code reaches the engines
    one.apply_sync(_noop)

    def rate(function, count: int) -> float:
        started = time.perf_counter()
        pending = [view.apply_async(function) for _ in range(count)]
        for result in pending:
            result.get(timeout=600)
        return count / (time.perf_counter() - started)

    noops = [round(rate(_noop, tasks), 1) for _ in range(repeats)]
    sleeps = [round(rate(_sleep10ms, sleep_tasks), 1) for _ in range(repeats)]
    trips = []
    for _ in range(pings):
        started = time.perf_counter()
        one.apply_sync(_noop)
        trips.append(time.perf_counter() - started)
    return {
        "engines": len(rc.ids),
        "tasks_per_s": statistics.median(noops),
        "tasks_per_s_runs": noops,
        "sleep10ms_tasks_per_s": statistics.median(sleeps),
        "latency_ms": round(statistics.median(trips) * 1000, 2),
        "latency_p90_ms": round(statistics.quantiles(trips, n=10)[-1] * 1000, 2),
    }


def client_main(argv: list[str]) -> None:
    """`throughput.py _client (url FILE | stack NAME) ENGINES TASKS SLEEP_TASKS PINGS REPEATS`: print one JSON row."""
    kind, target, engines, tasks, sleep_tasks, pings, repeats = argv[0], argv[1], *map(int, argv[2:7])
    started = time.perf_counter()
    if kind == "url":
        import ipyparallel

        rc = ipyparallel.Client(target, timeout=60)
        rc.wait_for_engines(engines, timeout=120)
    else:
        import ipfleet
        from ipfleet.twin.client_demo import wait_for_engines

        # A registration notice can be lost in a tunnel: ask the controller instead.
        rc = wait_for_engines(ipfleet.client(target, timeout=120), target, engines, timeout=120)
    # What a user waits for before the first task: connection file, tunnels, every engine known.
    connect_s = round(time.perf_counter() - started, 2)
    try:
        print(json.dumps({**measure(rc, tasks, sleep_tasks, pings, repeats), "connect_s": connect_s}))
    finally:
        rc.close()


# ---- loopback clusters: ipcontroller and ipengines on 127.0.0.1, in process groups of their own


def ipfleet_controller_config(stack: str, work: Path) -> str:
    """The ipcontroller_config.py ipfleet's user data writes, its node paths pointed into WORK."""
    from ipfleet.project import resolve_stack
    from ipfleet.settings import parse_settings
    from ipfleet.stack_config import read_stack_file
    from tests.loopback.controller_config import loopback_controller_config

    ref = resolve_stack(stack)
    (work / "keys.json").write_text(json.dumps({"hmac_key": os.urandom(16).hex()}))
    (work / "state").mkdir()
    settings = parse_settings(ref.name, read_stack_file(ref.path))
    return loopback_controller_config(settings, work / "keys.json", work / "state")


@contextmanager
def loopback_cluster(python: str, engines: int, config: str | None):
    work = Path(tempfile.mkdtemp(prefix="ipfleet-throughput-"))
    profile = work / "profile"
    profile.mkdir()
    if config is not None:
        (profile / "ipcontroller_config.py").write_text(config)
    env = {**os.environ, "IPYTHONDIR": str(work / "ipython")}
    log = open(work / "cluster.log", "w")
    groups = []
    finished = False  # a failed cluster keeps its folder: the error names its log

    def start(*args: str) -> None:
        groups.append(
            subprocess.Popen(
                [python, "-m", *args, f"--profile-dir={profile}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ).pid
        )

    try:
        start("ipyparallel.controller", "--ip=127.0.0.1")
        url = profile / "security" / "ipcontroller-client.json"
        deadline = time.monotonic() + 60
        while not (url.exists() and (profile / "security" / "ipcontroller-engine.json").exists()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ipcontroller wrote no connection files in 60 s: {work / 'cluster.log'}")
            time.sleep(0.2)
        for _ in range(engines):
            start("ipyparallel.engine")
        yield url
        finished = True
    finally:
        from ipfleet.twin.instances import stop_group

        for pid in groups:
            stop_group(pid)
        log.close()
        if finished:
            shutil.rmtree(work, ignore_errors=True)


def client_args(args) -> list[str]:
    return [str(n) for n in (args.engines, args.tasks, args.sleep_tasks, args.pings, args.repeats)]


def loopback_row(python: str, args, name: str, config: str | None) -> dict:
    with loopback_cluster(python, args.engines, config) as url:
        result = subprocess.run(
            [python, str(HERE), "_client", "url", str(url), *client_args(args)],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
        )
    if result.returncode != 0:
        raise RuntimeError(f"{name}: the client failed:\n{result.stderr[-3000:]}")
    return {"config": name, **json.loads(result.stdout)}


# ---- twin rows: a twin of the stack per access mode, the client in the laptop's namespace


def twin_row(stack: str, access: str, args) -> tuple[dict, str]:
    import yaml

    from ipfleet.project import resolve_stack
    from ipfleet.stack_config import read_stack_file
    from ipfleet.twin import cluster, laptop

    config = read_stack_file(resolve_stack(stack).path)
    config.update({"ipfleet:access": access, "ipfleet:engineNodes": 1, "ipfleet:enginesPerNode": args.engines})
    with tempfile.TemporaryDirectory(prefix="ipfleet-throughput-") as folder:
        path = Path(folder) / f"Pulumi.tput{access}.yaml"
        path.write_text(yaml.safe_dump({"config": config}))
        state = cluster.up(str(path), log=lambda *_: None)
        try:
            cluster.wait_ready(state, timeout=600, log=lambda *_: None)
            laptop.connect(state)
            result = laptop.client_python(
                state, [str(HERE), "_client", "stack", state.stack, *client_args(args)], timeout=900
            )
        finally:
            cluster.down(state, log=lambda *_: None)
    return {"config": f"twin {access}", **json.loads(result.stdout)}, state.client_python


def main() -> None:
    if sys.argv[1:2] == ["_client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", nargs="?", default="example")
    parser.add_argument("--engines", type=int, default=os.cpu_count() or 2, help="engines in every configuration")
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks per measurement")
    parser.add_argument("--sleep-tasks", type=int, default=200, help="10 ms tasks per measurement")
    parser.add_argument("--pings", type=int, default=200, help="blocking applies for the latency")
    parser.add_argument("--repeats", type=int, default=3, help="task measurements per configuration (median)")
    parser.add_argument(
        "--access",
        nargs="*",
        default=["ssm", "ssh", "direct"],
        choices=["ssm", "ssh", "direct"],
        help="the twin's access modes to measure (none: loopback rows only, no root needed)",
    )
    parser.add_argument("--no-variants", action="store_true", help="leave out the one-knob variants of (b)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    from twin_startup import machine  # beside this file: the same machine line in both tables

    def progress(row: dict) -> None:
        print(f"  {row['config']}: {row['tasks_per_s']} tasks/s, {row['latency_ms']} ms", file=sys.stderr, flush=True)

    rows = []
    python = sys.executable
    # The twin's laptop runs the nodes' Python; the loopback rows then use it too.
    for access in args.access:
        row, python = twin_row(args.stack, access, args)
        rows.append(row)
        progress(row)
    python_version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # The keys and task database of ipfleet's configuration, for every loopback row.
    with tempfile.TemporaryDirectory(prefix="ipfleet-throughput-") as work:
        base = ipfleet_controller_config(args.stack, Path(work))
        loopback = [("ipp-defaults", None), ("ipfleet", base)]
        if not args.no_variants:
            loopback += [(name, f"{base}{line}\n") for name, line in VARIANTS.items()]
        for name, config in loopback:
            rows.append(loopback_row(python, args, name, config))
            progress(rows[-1])
    # Loopback first, then the twin: the table reads from baseline to the farthest laptop.
    rows.sort(key=lambda r: r["config"].startswith("twin"))
    baseline = next(r for r in rows if r["config"] == "ipp-defaults")
    for row in rows:
        row["ratio"] = round(row["tasks_per_s"] / baseline["tasks_per_s"], 2)
        row["sleep10ms_ratio"] = round(row["sleep10ms_tasks_per_s"] / baseline["sleep10ms_tasks_per_s"], 2)
        row["latency_ratio"] = round(row["latency_ms"] / baseline["latency_ms"], 2)

    if args.json:
        print(
            json.dumps(
                {
                    "stack": args.stack,
                    "machine": machine(),
                    "python": python_version,
                    "engines": args.engines,
                    "tasks": args.tasks,
                    "rows": rows,
                }
            )
        )
        return
    print(
        f"\nThroughput, {args.engines} engines, {args.tasks} no-op / {args.sleep_tasks} 10 ms tasks, "
        f"median of {args.repeats}; latency: median of {args.pings} applies\n"
        f"Machine: {machine()}, Python {python_version}\n"
    )
    print(
        "| configuration | no-op tasks/s (runs) | vs (a) | 10 ms tasks/s | vs (a) | apply round trip | vs (a) "
        "| client ready |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        runs = "/".join(f"{r:.0f}" for r in row["tasks_per_s_runs"])
        print(
            f"| {row['config']} | {row['tasks_per_s']:.0f} ({runs}) | {row['ratio']:.2f}x | "
            f"{row['sleep10ms_tasks_per_s']:.0f} | {row['sleep10ms_ratio']:.2f}x | "
            f"{row['latency_ms']:.1f} ms | {row['latency_ratio']:.2f}x | {row['connect_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
