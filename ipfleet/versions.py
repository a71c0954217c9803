"""What breaks pickled functions between a laptop and the engines, said before the first map.

The controller publishes its Python, ipyparallel, cloudpickle and pyzmq versions
beside the connection info; the engines run the same venv. A function pickled
on Python 3.12 may not unpickle on 3.11 (code objects change between minor
versions), and ipyparallel's wire protocol and cloudpickle's format move too.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

# What must agree exactly (after the Python minor version).
PACKAGES = ("ipyparallel", "cloudpickle")


class VersionMismatchWarning(UserWarning):
    """The laptop and the cluster disagree on something that pickled functions need."""


def local_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in (*PACKAGES, "pyzmq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _minor(python: str) -> str:
    return ".".join(python.split(".")[:2])


def mismatches(cluster: dict[str, str], here: dict[str, str] | None = None) -> list[str]:
    """One sentence per disagreement, naming both versions and what to do; [] when all agree."""
    here = local_versions() if here is None else here
    problems = []
    theirs, ours = cluster.get("python"), here.get("python")
    if theirs and ours and _minor(theirs) != _minor(ours):
        problems.append(
            f"Python {_minor(ours)} here but {_minor(theirs)} on the engines: functions pickled "
            f"here may fail to load there. Use Python {_minor(theirs)} on this machine "
            f"(e.g. `uv venv --python {_minor(theirs)}`)."
        )
    for name in PACKAGES:
        theirs, ours = cluster.get(name), here.get(name)
        if theirs and theirs != ours:
            problems.append(
                f"{name} {ours or 'is not installed'} here but {theirs} on the engines: "
                f"`pip install {name}=={theirs}` here."
            )
    return problems
