"""Start-up of a twin as the engine fleet grows: boot to every engine registered.

Self-configuring nodes should make start-up flat in node count (StarCluster's
SSH orchestration took 6.9 min for 2 nodes; ElastiCluster's setup grows with nodes).
Baseline: 1 engine node, measured in the same run. Needs root (see `ipfleet twin`).

    .venv/bin/python benchmarks/twin_startup.py [STACK] [--repeats 3] [--nodes 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from ipfleet.twin import cluster


def measure(stack: str, engine_nodes: int) -> dict:
    state = cluster.up(stack, log=lambda *_: None, engine_nodes=engine_nodes)
    try:
        cluster.wait_ready(state, timeout=600, log=lambda *_: None)
        result = cluster.fetch_and_demo(state, timeout=600, log=lambda *_: None)
    finally:
        cluster.down(state, log=lambda *_: None)
    assert result["results"] == [x**30 for x in range(8)]
    return {"engines": result["engines"], **result["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", nargs="?", default="example")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    cluster.check_platform()
    # Warm the image and wheelhouse caches so that no run pays for building them.
    measure(args.stack, 1)

    rows = {}
    for nodes in args.nodes:
        runs = []
        for attempt in range(args.repeats):
            started = time.monotonic()
            runs.append(measure(args.stack, nodes))
            print(f"  {nodes} engine node(s), run {attempt + 1}: registered after "
                  f"{runs[-1]['boot_to_registered']} s (whole run {time.monotonic() - started:.0f} s)",
                  file=sys.stderr, flush=True)
        rows[nodes] = runs

    baseline = statistics.median(r["boot_to_registered"] for r in rows[args.nodes[0]])
    print(f"\nTwin start-up, stack {args.stack!r}, {os.cpu_count()} CPUs, median of {args.repeats}"
          f" (seconds from boot)\n")
    print("| engine nodes | engines | controller up | published | all registered | publish to registered "
          "| demo done | vs 1 node |")
    print("|---|---|---|---|---|---|---|---|")
    for nodes, runs in rows.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in runs)

        registered = median("boot_to_registered")
        # The rendezvous alone: from the controller publishing to every engine registered.
        gap = statistics.median(r["boot_to_registered"] - r["boot_to_published"] for r in runs)
        print(f"| {nodes} | {runs[0]['engines']} | {median('boot_to_controller_up'):.1f} | "
              f"{median('boot_to_published'):.1f} | {registered:.1f} | {gap:.1f} | "
              f"{median('boot_to_demo_done'):.1f} | {registered / baseline:.2f}x |")


if __name__ == "__main__":
    main()
