"""A batch job as `ipfleet run` runs it, on the laptop: the inputs on the stack's read-only
S3 mount (/data/in), one task per file, each result written by an engine to the
writable mount (/data/out). `ipfleet.client()` takes the stack from `ipfleet run`."""

from __future__ import annotations

import json


def shout(name: str) -> str:
    import socket

    with open(f"/data/in/{name}") as f:
        text = f.read()
    with open(f"/data/out/{name}.upper", "w") as f:
        f.write(text.upper())
    return socket.gethostname()


def inputs() -> list[str]:
    import os

    return sorted(os.listdir("/data/in"))


def main() -> None:
    import ipfleet

    rc = ipfleet.client()
    names = rc[rc.ids[0]].apply_sync(inputs)
    hosts = rc.load_balanced_view().map_sync(shout, names)
    print(json.dumps({"files": names, "hosts": sorted(set(hosts))}), flush=True)
    rc.close()


if __name__ == "__main__":
    main()
