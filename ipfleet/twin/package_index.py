"""Python packages for offline nodes: a wheelhouse served as a package index.

Built once per set of requirements and constraints (what the nodes' user data
asks for, uv included), and laid out as a PEP 503 "simple" index with sha256
fragments, as PyPI serves it, so that nodes reach it through the very setting
users have for mirrors (`ipfleet:packageIndexUrl`, here a file:// URL).
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from bootstrap.pins import canonical
from ipfleet.errors import IpfleetError

CACHE = Path("/var/cache/ipfleet/twin")


NOT_ON_INDEX = re.compile(r"No matching distribution found for (\S+)")


class WheelhouseError(IpfleetError, RuntimeError):
    pass


def ensure_wheelhouse(requirements: Iterable[str], constraints: Iterable[str], python_version: str, log=print) -> Path:
    """A folder holding `files/*.whl` and `simple/<project>/index.html`.

    Resolved for the nodes' Python (`python_version`, the image's), not this
    machine's: a wheel that requires a newer patch release would not install there.
    """
    requirements = sorted(requirements)
    lock = "\n".join(sorted(constraints))
    key = hashlib.sha256("\n".join([*requirements, lock, python_version]).encode()).hexdigest()[:12]
    target = CACHE / f"wheelhouse-{key}"
    if (target / "simple" / "index.html").exists():
        return target
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    files = building / "files"
    files.mkdir(parents=True)
    log(f"downloading {len(requirements)} node requirements and their dependencies into {target}")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "-d",
        str(files),
        *requirements,
    ]
    if lock:
        (building / "constraints.txt").write_text(lock + "\n")
        command[4:4] = ["-c", str(building / "constraints.txt")]
    # A requirement no index has (a typo in ipfleet:pythonPackages, say) is left out, so
    # that the nodes' uv fails on it as it would on AWS, where it is a boot failure.
    for _ in range(len(requirements) + 1):
        result = subprocess.run(command, capture_output=True, text=True)
        missing = NOT_ON_INDEX.search(result.stderr)
        if result.returncode == 0 or not missing or missing.group(1) not in command:
            break
        log(f"{missing.group(1)} is on no index: nodes will fail to install it, as on AWS")
        command.remove(missing.group(1))
    if result.returncode != 0:
        raise WheelhouseError(f"pip download failed:\n{result.stderr[-2000:]}")
    write_simple_index(building)
    building.rename(target)
    return target


def write_simple_index(root: Path) -> None:
    projects: dict[str, list[str]] = {}
    for wheel in sorted((root / "files").glob("*.whl")):
        projects.setdefault(canonical(wheel.name.split("-")[0]), []).append(wheel.name)
    simple = root / "simple"
    simple.mkdir(exist_ok=True)
    for project, wheels in projects.items():
        folder = simple / project
        folder.mkdir(exist_ok=True)
        links = "\n".join(
            f'<a href="../../files/{html.escape(w)}#sha256={_sha256(root / "files" / w)}">{html.escape(w)}</a><br>'
            for w in wheels
        )
        folder.joinpath("index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n")
    index = "\n".join(f'<a href="{p}/">{p}</a><br>' for p in sorted(projects))
    simple.joinpath("index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{index}\n</body></html>\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
