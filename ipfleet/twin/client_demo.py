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


def main() -> None:
    import ipfleet

    stack, engines, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    # What `ipfleet connect` prints for users to run: the right file, tunnel and key.
    rc = ipfleet.client(stack, timeout=timeout)
    try:
        rc.wait_for_engines(engines, timeout=timeout)
        registered_at = time.time()
        view = rc[:]
        results = view.map_async(lambda x: x**30, range(8)).get(timeout=timeout)
        # One task per engine through the direct view: every engine host answers.
        hosts = rc[:].apply_async(hostname).get(timeout=timeout)
        print(json.dumps({
            "engines": len(rc.ids),
            "results": results,
            "hostnames": sorted(set(hosts)),
            "registered_at": registered_at,
            "done_at": time.time(),
        }))
    finally:
        rc.close()


if __name__ == "__main__":
    main()
