"""Start-up of a twin as the engine fleet grows: boot to every engine registered.

Self-configuring nodes should make start-up flat in node count (StarCluster's
SSH orchestration took 6.9 min for 2 nodes; ElastiCluster's setup grows with nodes).
Two image forms: `wheelhouse`, the official image, where each node installs its
Python environment from the package index at boot; `baked`, an image that holds it
already (a baked AMI), where the node only checks it. Baseline: 1 engine node of
the same form, measured in the same run. Needs root (see `ipfleet twin`).

    .venv/bin/python benchmarks/twin_startup.py [STACK] [--repeats 3] [--nodes 1 2 4]
        [--baked-nodes 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from ipfleet.twin import cluster, laptop

STAGES = (
    "boot_to_controller_up",
    "boot_to_published",
    "boot_to_registered",
    "boot_to_client_ready",
    "boot_to_demo_done",
)


def measure(stack: str, engine_nodes: int, baked: bool) -> dict:
    state = cluster.up(stack, log=lambda *_: None, engine_nodes=engine_nodes, baked=baked)
    try:
        cluster.wait_ready(state, timeout=600, log=lambda *_: None)
        result = laptop.fetch_and_demo(state, timeout=600, log=lambda *_: None)
    finally:
        cluster.down(state, log=lambda *_: None)
    assert result["results"] == [x**30 for x in range(8)]
    return {"engines": result["engines"], **result["timings"]}


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.machine(),
    )
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", nargs="?", default="example")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--nodes",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="engine node counts, image from the package index (first is the baseline)",
    )
    parser.add_argument(
        "--baked-nodes",
        type=int,
        nargs="*",
        default=[1],
        help="engine node counts with the environment baked into the image",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    cluster.check_platform()

    rows = []
    for baked, counts in ((False, args.nodes), (True, args.baked_nodes)):
        if not counts:
            continue
        form = "baked" if baked else "wheelhouse"
        measure(args.stack, 1, baked)  # warm the caches (image, wheelhouse, baked image): no run pays for them
        baseline = None
        for nodes in counts:
            runs = []
            for attempt in range(args.repeats):
                started = time.monotonic()
                runs.append(measure(args.stack, nodes, baked))
                print(
                    f"  {form}, {nodes} engine node(s), run {attempt + 1}: registered after "
                    f"{runs[-1]['boot_to_registered']} s (whole run {time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            medians = {stage: round(statistics.median(r[stage] for r in runs), 2) for stage in STAGES}
            baseline = baseline or medians["boot_to_registered"]
            rows.append(
                {
                    "image": form,
                    "engine_nodes": nodes,
                    "engines": runs[0]["engines"],
                    **medians,
                    "ratio": round(medians["boot_to_registered"] / baseline, 2),
                    "runs": [r["boot_to_registered"] for r in runs],
                }
            )

    if args.json:
        print(json.dumps({"stack": args.stack, "repeats": args.repeats, "machine": machine(), "rows": rows}))
        return
    print(
        f"\nTwin start-up, stack {args.stack!r}, median of {args.repeats} (seconds from boot)\nMachine: {machine()}\n"
    )
    print(
        "| image | engine nodes | engines | controller up | published | all registered | laptop sees all "
        "| demo done | vs 1 node |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['image']} | {row['engine_nodes']} | {row['engines']} | {row['boot_to_controller_up']:.1f} | "
            f"{row['boot_to_published']:.1f} | {row['boot_to_registered']:.1f} | "
            f"{row['boot_to_client_ready']:.1f} | {row['boot_to_demo_done']:.1f} | {row['ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
