"""The versions a node installs: the ones in this repository's lock, never the running
interpreter's.

ipfleet's node packages are pinned (requirements), and every package they depend on,
at any depth, is constrained too (constraints). Both come from `node-pins.json`, made
from the venv that `make venv` installs from requirements.lock (`make lock` refreshes
it; a test holds it to that venv). A plan is then a function of the stack file and the
repository alone: the program run by `pulumi up`, from another venv or another
machine, writes the same user data. A laptop's client (installed from the same lock)
and the engines agree on every version (ipyparallel, pyzmq, cloudpickle...).

A constraint only pins a package the node turns out to need: which ones that is depends
on the node's Python, so markers are left to uv on the node.

Run `python -m bootstrap.pins` to rewrite node-pins.json from the venv it runs in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

NODE_PINS = Path(__file__).parent / "node-pins.json"

# The Python packages every node runs: a laptop's client and the engines must agree on
# ipyparallel, pyzmq and cloudpickle (`ipfleet connect` compares them).
NODE_PACKAGES = ("ipyparallel", "pyzmq", "cloudpickle", "boto3")
# With ipfleet:ipyparallel.packer msgpack.
MSGPACK = "msgpack"
# On the controller with ipfleet:notebook.
NOTEBOOK_PACKAGES = ("jupyterlab",)
# What installs them on the node (bootstrap/ipfleet_node/pyenv.py), also pinned.
UV = "uv"
# Every package a node may be asked to install: the roots of node-pins.json.
PINNED_ROOTS = (*NODE_PACKAGES, MSGPACK, *NOTEBOOK_PACKAGES, UV)

EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class PinsError(RuntimeError):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _key(name: str, extras: Iterable[str]) -> str:
    """`name` or `name[a,b]`: a package as asked for, extras and all."""
    extras = sorted(extras)
    return f"{canonical(name)}[{','.join(extras)}]" if extras else canonical(name)


def _split(key: str) -> tuple[str, frozenset[str]]:
    name, _, extras = key.partition("[")
    return name, frozenset(e for e in extras.rstrip("]").split(",") if e)


def installed_graph(roots: Iterable[str]) -> dict:
    """{"versions": {name: version}, "requires": {key: [keys]}} for ROOTS and everything
    they pull in, as installed here. Dependencies of extras count only where the extra
    is asked for. One that is not installed here (another platform's, another Python's)
    is left to the node's resolver."""
    versions: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    queue = [_key(name, ()) for name in roots]
    while queue:
        key = queue.pop()
        if key in requires:
            continue
        name, extras = _split(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        versions[name] = dist.version
        found = []
        for line in dist.requires or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            wanted_by = set(EXTRA.findall(str(requirement.marker))) if requirement.marker else set()
            if wanted_by and not wanted_by & extras:
                continue
            found.append(_key(requirement.name, requirement.extras))
        requires[key] = sorted(set(found))
        queue += found
    return {"versions": dict(sorted(versions.items())), "requires": dict(sorted(requires.items()))}


def closure(graph: dict, names: Iterable[str]) -> tuple[str, ...]:
    """`name==version` for NAMES and all they pull in, by GRAPH (installed_graph's shape)."""
    seen: set[str] = set()
    queue = [_key(name, ()) for name in names]
    while queue:
        key = queue.pop()
        if key in seen or key not in graph["requires"]:
            continue
        seen.add(key)
        queue += graph["requires"][key]
    names_seen = {_split(key)[0] for key in seen}
    return tuple(f"{name}=={graph['versions'][name]}" for name in sorted(names_seen))


def closure_pins(names: Iterable[str]) -> tuple[str, ...]:
    """`name==version` for every installed package NAMES depend on, themselves included
    (the twin's laptop: the environment that runs it, by design)."""
    names = list(names)
    return closure(installed_graph(names), names)


@cache
def node_pins() -> dict:
    return json.loads(NODE_PINS.read_text())


def locked(name: str) -> str:
    """`name==version` from the lock; the bare name for a root the lock does not hold
    (msgpack and jupyterlab: ipfleet itself does not run them, so its lock has none)."""
    if canonical(name) not in {canonical(root) for root in PINNED_ROOTS}:
        raise PinsError(f"{name} is not among the pinned roots: add it to PINNED_ROOTS and run `make lock`")
    version = node_pins()["versions"].get(canonical(name))
    return f"{canonical(name)}=={version}" if version else canonical(name)


def locked_closure(names: Iterable[str]) -> tuple[str, ...]:
    """`name==version` for NAMES and all they pull in, from the lock."""
    return closure(node_pins(), names)


if __name__ == "__main__":
    NODE_PINS.write_text(json.dumps(installed_graph(PINNED_ROOTS), indent=1) + "\n")
    print(f"wrote {NODE_PINS}")
