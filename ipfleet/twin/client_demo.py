"""Runs in the twin's client namespace, as a laptop would: StarCluster's demo.

Usage: python -m ipfleet.twin.client_demo STACK ENGINES TIMEOUT
Prints one JSON object: engines, results, hostnames, registered_at, done_at.
"""

from __future__ import annotations

import json
import sys
import time


def hostname() -> str:
    import socket

    return socket.gethostname()


def wait_for_engines(rc, stack: str, engines: int, timeout: float):
    """Wait until the controller has ENGINES engines, and return a client that knows them all.

    ipyparallel's own wait_for_engines counts registration notifications. One
    that arrives while the client's subscription is still travelling through
    the tunnel is lost, and the client never learns of that engine. So ask the
    controller (a request and reply), and if it knows engines
    the client does not, connect again: a new client gets the full list.
    (`engine_ids`: ipfleet's client asks the controller which engines it has now.)
    """
    import ipfleet

    deadline = time.monotonic() + timeout
    while len(rc.engine_ids()) < engines:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{engines} engines not registered in {timeout:.0f} s")
        time.sleep(0.5)
    if len(rc.ids) < engines:
        rc.close()
        rc = ipfleet.client(stack, timeout=timeout)
    return rc


def main() -> None:
    import ipfleet

    stack, engines, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    # What `ipfleet connect` prints for users to run: the right file, tunnel and key.
    rc = ipfleet.client(stack, timeout=timeout)
    try:
        rc = wait_for_engines(rc, stack, engines, timeout)
        registered_at = time.time()
        view = rc[:]
        results = view.map_async(lambda x: x**30, range(8)).get(timeout=timeout)
        # One task per engine through the direct view: every engine host answers.
        hosts = rc[:].apply_async(hostname).get(timeout=timeout)
        print(
            json.dumps(
                {
                    "engines": len(rc.ids),
                    "results": results,
                    "hostnames": sorted(set(hosts)),
                    "registered_at": registered_at,
                    "done_at": time.time(),
                }
            )
        )
    finally:
        rc.close()


if __name__ == "__main__":
    main()
