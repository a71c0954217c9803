"""The twin's laptop runs the cluster's Python.

cloudpickle ships a function's bytecode, which differs between Python minor
versions: a laptop on 3.11 cannot send `lambda x: x**30` to engines on 3.13
(`ipfleet connect` warns about exactly this). So the twin's client gets a
virtualenv of the image's minor version, built once, holding ipfleet's
dependencies at the versions installed here (the lock's, in a checkout), and
a copy of ipfleet's own packages on its PYTHONPATH. Nothing is read from a
checkout: an installed `ipfleet[twin]` works the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement

from bootstrap.pins import canonical, closure_pins
from ipfleet.errors import IpfleetError
from ipfleet.twin.package_index import CACHE

# ipfleet's own packages: what the laptop imports from the copy on its PYTHONPATH.
OWN_PACKAGES = ("ipfleet", "bootstrap", "components")


class ClientEnvError(IpfleetError, RuntimeError):
    pass


def _minor(python: str) -> str | None:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _uv() -> str:
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise ClientEnvError("uv is needed to build the twin's client environment (pip install uv)")
    return found


def find_python(minor: str, log=print) -> str:
    """An interpreter of Python `minor` (e.g. "3.13"): this one, one on PATH, pyenv's, or uv's."""
    candidates = [sys.executable, shutil.which(f"python{minor}") or ""]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{minor}.*/bin/python{minor}"))
    for python in filter(None, candidates):
        if _minor(python) == minor:
            return python
    uv = _uv()
    found = subprocess.run([uv, "python", "find", minor], capture_output=True, text=True)
    if found.returncode != 0:
        log(f"no Python {minor} here; asking uv to install one")
        subprocess.run([uv, "python", "install", minor], capture_output=True, text=True)
        found = subprocess.run([uv, "python", "find", minor], capture_output=True, text=True)
    if found.returncode != 0 or _minor(found.stdout.strip()) != minor:
        raise ClientEnvError(
            f"the twin's nodes run Python {minor} and its laptop must too (pickled functions carry "
            f"bytecode), but no Python {minor} was found: install python{minor}, or `uv python install {minor}`"
        )
    return found.stdout.strip()


def client_requirements() -> tuple[list[str], list[str]]:
    """ipfleet's own dependencies pinned to their installed versions, and constraints for
    everything they pull in (as a node's are: bootstrap/pins.py)."""
    direct = [Requirement(line) for line in distribution("ipfleet").requires or []]
    direct = [r for r in direct if not (r.marker and "extra" in str(r.marker))]
    requirements = []
    for r in direct:
        extras = f"[{','.join(sorted(r.extras))}]" if r.extras else ""
        requirements.append(f"{canonical(r.name)}{extras}=={distribution(r.name).version}")
    return sorted(requirements), list(closure_pins(r.name for r in direct))


def ensure_client_python(minor: str, log=print) -> str:
    """The python of a cached venv of Python `minor` holding ipfleet's dependencies."""
    requirements, constraints = client_requirements()
    key = hashlib.sha256("\n".join([minor, *requirements, "--", *constraints]).encode()).hexdigest()[:12]
    venv = CACHE / f"client-{minor}-{key}"
    python = venv / "bin" / "python"
    if (venv / ".ipfleet-complete").exists():
        return str(python)
    interpreter = find_python(minor, log)
    log(f"building the laptop's Python {minor} environment in {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    uv = _uv()
    venv.mkdir(parents=True)
    (venv / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (venv / "constraints.txt").write_text("\n".join(constraints) + "\n")
    install = [uv, "pip", "install", "-q", "-r", str(venv / "requirements.txt"), "-c", str(venv / "constraints.txt")]
    for command in ([uv, "venv", "-q", "--allow-existing", "-p", interpreter, str(venv)], install):
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "VIRTUAL_ENV": str(venv)})
        if result.returncode != 0:
            raise ClientEnvError(f"`{' '.join(command[:3])}` failed:\n{result.stderr[-2000:]}")
    (venv / ".ipfleet-complete").write_text(interpreter + "\n")
    return str(python)


@cache
def client_source() -> Path:
    """A cached copy of ipfleet's own packages, as installed here, for the laptop's PYTHONPATH
    (the host's site-packages would bring its other Python's compiled modules along)."""
    import importlib

    roots = [Path(importlib.import_module(name).__file__ or "").parent for name in OWN_PACKAGES]
    files = sorted(
        (root.name, path.relative_to(root))
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    digest = hashlib.sha256()
    for package, relative in files:
        digest.update(f"{package}/{relative}\n".encode())
        digest.update((roots[OWN_PACKAGES.index(package)] / relative).read_bytes())
    target = CACHE / f"client-source-{digest.hexdigest()[:12]}"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="client-source-", dir=CACHE))
        for root in roots:
            shutil.copytree(root, staging / root.name, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            staging.rename(target)
        except OSError:  # another twin made the same copy first
            shutil.rmtree(staging, ignore_errors=True)
    return target
