"""The versions a node installs: the ones this project runs (its lock, installed here).

ipfleet's node packages are pinned to the installed versions (requirements), and
every package they depend on, at any depth, is constrained to its installed
version too (constraints). A constraint only pins a package the node turns out
to need: which ones that is depends on the node's Python, not this machine's, so
markers are left to uv on the node. A laptop's client and the engines then agree
on every version (ipyparallel, pyzmq, cloudpickle, jupyter_client...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import InvalidRequirement, Requirement

EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(name: str) -> str:
    """`name==version` as installed here, or the bare name if it is not installed."""
    try:
        return f"{canonical(name)}=={distribution(name).version}"
    except PackageNotFoundError:
        return canonical(name)


def closure_pins(names: Iterable[str]) -> tuple[str, ...]:
    """`name==version` for every installed package NAMES depend on, themselves included.

    Dependencies of extras count only where the extra is asked for. One that is not
    installed here (another platform's, another Python's) is left to the node's resolver.
    """
    pins: dict[str, str] = {}
    queue: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in names]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, extras = queue.pop()
        key = (canonical(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        pins[canonical(name)] = dist.version
        for line in dist.requires or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            wanted_by = set(EXTRA.findall(str(requirement.marker))) if requirement.marker else set()
            if wanted_by and not wanted_by & extras:
                continue
            queue.append((requirement.name, frozenset(requirement.extras)))
    return tuple(f"{name}=={pins[name]}" for name in sorted(pins))
