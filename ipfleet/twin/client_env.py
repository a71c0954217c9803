"""The twin's laptop runs the cluster's Python.

cloudpickle ships a function's bytecode, which differs between Python minor
versions: a laptop on 3.11 cannot send `lambda x: x**30` to engines on 3.13
(`ipfleet connect` warns about exactly this). So the twin's client gets a
virtualenv of the image's minor version, built once from the project's lock,
with the project itself on PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ipfleet.errors import IpfleetError
from ipfleet.twin.wheelhouse import CACHE

PROJECT = Path(__file__).resolve().parents[2]
LOCK = PROJECT / "requirements.lock"


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


def ensure_client_python(minor: str, log=print) -> str:
    """The python of a cached venv of Python `minor` holding the project's locked dependencies."""
    lock = LOCK.read_text()
    key = hashlib.sha256(f"{minor}\n{lock}".encode()).hexdigest()[:12]
    venv = CACHE / f"client-{minor}-{key}"
    python = venv / "bin" / "python"
    if (venv / ".ipfleet-complete").exists():
        return str(python)
    interpreter = find_python(minor, log)
    log(f"building the laptop's Python {minor} environment in {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    uv = _uv()
    for command in ([uv, "venv", "-q", "-p", interpreter, str(venv)], [uv, "pip", "install", "-q", "-r", str(LOCK)]):
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "VIRTUAL_ENV": str(venv)})
        if result.returncode != 0:
            raise ClientEnvError(f"`{' '.join(command[:3])}` failed:\n{result.stderr[-2000:]}")
    (venv / ".ipfleet-complete").write_text(interpreter + "\n")
    return str(python)
