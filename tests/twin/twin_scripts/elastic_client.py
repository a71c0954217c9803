"""A laptop's session on an elastic cluster, run by tests/twin/test_twin_elastic.py through
`ipfleet twin exec STACK -- python tests/twin_scripts/elastic_client.py ...`.

  scale-out STACK N   connect a client, run `ipfleet scale STACK N --wait`, then map
                      on the same client: which engines did the work
  scale-in STACK N    map 200 tasks of 0.2 s; a quarter of the way in, run
                      `ipfleet scale STACK N --wait`; check every result
  wake STACK N        connect a client to an idle cluster; wait (bounded) until N
                      engines are registered again

Prints one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import ipfleet


def scale(stack: str, nodes: int) -> dict:
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", "scale", stack, str(nodes), "--wait", "--json", "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=360,
    )
    if out.returncode != 0:
        raise SystemExit(f"ipfleet scale failed: {out.stderr}")
    return {**json.loads(out.stdout), "started_at": started}


def client(stack: str):
    """What `ipfleet connect STACK` saved (the twin's exec gives connect its proxy)."""
    return ipfleet.client(stack)


def who(_):
    import os
    import socket
    import time

    time.sleep(0.05)
    return socket.gethostname(), os.getpid()


def scale_out(stack: str, nodes: int) -> dict:
    rc = client(stack)
    view = rc.load_balanced_view()
    before = rc.engine_ids()
    scaled = scale(stack, nodes)
    # The same client, not reconnected: its view now has the new engines.
    deadline = time.monotonic() + 60
    while len(rc.engine_ids()) < scaled["engines"] and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = set(map(tuple, view.map_sync(who, range(20 * scaled["engines"]))))
    result = {
        "engines_before": len(before),
        "engines_after": len(rc.engine_ids()),
        "hosts_used": len({h for h, _ in workers}),
        "engines_used": len(workers),
        "seconds_to_registered": scaled["seconds"],
        "nodes": scaled["nodes"],
    }
    rc.close()
    return result


def slow_square(x):
    import time

    time.sleep(0.2)
    return x * x


def scale_in(stack: str, nodes: int, tasks: int = 200) -> dict:
    rc = client(stack)
    view = rc.load_balanced_view()
    engines_before = len(rc.engine_ids())
    result = view.map_async(slow_square, range(tasks))
    scaled = {}

    def shrink():
        while result.progress < tasks // 4:
            time.sleep(0.05)
        scaled.update(scale(stack, nodes))

    shrinker = threading.Thread(target=shrink)
    shrinker.start()
    values = result.get(timeout=600)
    shrinker.join(timeout=400)
    out = {
        "tasks": tasks,
        "results_correct": sum(v == i * i for i, v in enumerate(values)),
        "engines_before": engines_before,
        "engines_after": len(rc.engine_ids()),
        "seconds_to_drained": scaled.get("seconds"),
        "nodes": scaled.get("nodes"),
    }
    rc.close()
    return out


def wake(stack: str, engines: int, timeout: float = 300) -> dict:
    started = time.time()
    rc = client(stack)
    deadline = time.monotonic() + timeout
    while len(rc.engine_ids()) < engines:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(rc.engine_ids())} of {engines} engines after {timeout:.0f} s")
        time.sleep(1)
    answer = rc.load_balanced_view().apply_sync(slow_square, 7)
    rc.close()
    return {"engines": engines, "answer": answer, "seconds_to_registered": round(time.time() - started, 1)}


if __name__ == "__main__":
    command, stack, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = {"scale-out": scale_out, "scale-in": scale_in, "wake": wake}[command]
    print(json.dumps(run(stack, number)))
