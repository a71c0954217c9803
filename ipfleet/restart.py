"""`ipfleet restart-engines`: every engine process on every node, restarted in place.

StarCluster's ipclusterrestart did it over SSH; here each engine is asked to shut
down through the controller, and systemd on its node (Restart=always) starts it
again: it registers afresh, under a new id.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def restart_engines(stack: str, timeout: float, on_progress: Callable[[float], None] = lambda s: None) -> dict:
    from ipfleet.connect import client as connect

    rc = connect(stack, timeout=60)
    try:
        # What the controller has registered now (a request and reply, not the client's notices).
        before = set(rc.engine_ids())
        started = time.monotonic()
        if before:
            rc.shutdown(targets=sorted(before), hub=False, block=True)
        deadline = started + timeout
        while True:
            now = set(rc.engine_ids())
            new = now - before
            # Done when as many have registered again and the controller has let the old go.
            if len(new) >= len(before) and not now & before:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(new)} of {len(before)} engines of {stack!r} registered again "
                    f"in {timeout:.0f} s; `ipfleet status {stack}` shows the nodes"
                )
            on_progress(time.monotonic() - started)
            time.sleep(1.0)
        return {
            "stack": stack,
            "engines_before": len(before),
            "engines_after": len(new),
            "old_ids": sorted(before),
            "new_ids": sorted(new),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        rc.close()
