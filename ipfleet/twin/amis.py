"""The twin's node image: a Debian root file system made with debootstrap.

It plays the part of the stack's AMI, of the same release (`ipfleet:image`
debian-13 is trixie, debian-12 bookworm). It holds what the official Debian image
holds that matters here (systemd, cloud-init, Python, sshd), plus every Debian
package the nodes' user data asks for, pre-installed because the twin's nodes
have no way out to a mirror. It is cached and rebuilt only when that package
list changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from bootstrap.ipfleet_node import paths
from ipfleet.errors import IpfleetError

CACHE = Path("/var/cache/ipfleet/twin")

# What the official Debian cloud images provide that the bootstrap relies on...
BASE_PACKAGES = (
    # (No python3-venv: uv makes the nodes' venv, so the image need not have it.)
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3",
    # debootstrap cannot configure python3-cryptography (a cloud-init dependency) without it.
    "python3-cffi-backend",
    "iproute2",
    "netbase",
    "ca-certificates",
    "sudo",
    "openssh-server",
    # ...and every package ipfleet's own bootstrap may ask for, so that one cached
    # image serves every stack; only a stack's aptPackages make another.
    "nfs-common",
    "s3fs",
)

# Image settings, as an image builder bakes them: the NoCloud seed stands in for
# EC2's metadata, the network is configured by the twin's namespaces, and apt has
# no sources (nodes are offline; every package they ask for is already installed).
CLOUD_CONFIG = """\
# ipfleet twin image: NoCloud seed instead of EC2 metadata; network set up outside.
datasource_list: [NoCloud, None]
network:
  config: disabled
"""


class RootfsError(IpfleetError, RuntimeError):
    pass


def packages_for(apt_packages: Iterable[str]) -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(apt_packages))


def cache_key(suite: str, packages: list[str]) -> str:
    return hashlib.sha256(" ".join([suite, *packages]).encode()).hexdigest()[:12]


def mirror() -> str:
    """The Debian mirror this machine's apt already uses."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    raise RootfsError("no Debian mirror in this machine's apt sources")


def ensure_rootfs(suite: str, apt_packages: Iterable[str], log=print) -> Path:
    """The cached image of Debian `suite` with these packages, built on first use (about a minute)."""
    packages = packages_for(apt_packages)
    target = CACHE / f"rootfs-{suite}-{cache_key(suite, packages)}"
    if (target / ".ipfleet-complete").exists():
        return target
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed (apt-get install debootstrap)")
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    debs = CACHE / f"debs-{suite}"
    debs.mkdir(parents=True, exist_ok=True)
    log(f"building the node image (Debian {suite}, {len(packages)} packages) in {target}")
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            f"--include={','.join(packages)}",
            suite,
            str(building),
            mirror(),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RootfsError(f"debootstrap failed:\n{tail}")
    _bake(building)
    (building / ".ipfleet-complete").write_text(" ".join(packages) + "\n")
    building.rename(target)
    return target


def _bake(root: Path) -> None:
    (root / "etc/cloud/cloud.cfg.d/90-ipfleet-twin.cfg").write_text(CLOUD_CONFIG)
    (root / "etc/apt/sources.list").write_text("")
    for sources in (root / "etc/apt/sources.list.d").glob("*"):
        sources.unlink()
    # Empty: systemd makes a fresh machine id on each node's first boot.
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)


def image_python_version(image: Path) -> str:
    """The image's python3 version (e.g. 3.13.5), read from its dpkg database."""
    status = (image / "var/lib/dpkg/status").read_text()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if re.fullmatch(r"python3\.\d+", fields.get("Package", "")) and "Version" in fields:
            return fields["Version"].split("-", 1)[0].split("+", 1)[0]
    raise RuntimeError(f"no python3.X package in {image}")


def ensure_baked_image(
    image: Path,
    wheelhouse: Path,
    requirements: Iterable[str],
    constraints: Iterable[str],
    python_facts: dict,
    pyenv_program: str,
    log=print,
) -> Path:
    """IMAGE with the nodes' Python environment already in it, as a baked AMI holds it.

    Made by running the nodes' own bootstrap/ipfleet_node/pyenv.py in a copy of the
    image, with the package index the nodes use, and the bytecode compiled (time is
    free here). Cached per image, requirements and program.
    """
    from ipfleet.twin.instances import WHEELHOUSE_MOUNT

    requirements, constraints = sorted(requirements), sorted(constraints)
    key = hashlib.sha256(
        "\n".join(
            [
                image.name,
                wheelhouse.name,
                *requirements,
                "--",
                *constraints,
                json.dumps(python_facts, sort_keys=True),
                pyenv_program,
            ]
        ).encode()
    )
    target = image.with_name(f"{image.name}-baked-{key.hexdigest()[:12]}")
    if (target / ".ipfleet-complete").exists():
        return target
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    log(f"baking the nodes' Python environment into a copy of the image: {target}")
    result = subprocess.run(["cp", "-a", "--reflink=auto", str(image), str(building)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RootfsError(f"copying the image failed: {result.stderr.strip()}")
    (building / ".ipfleet-complete").unlink(missing_ok=True)
    facts = {"python": python_facts}
    placed = {
        paths.FACTS_FILE: json.dumps(facts),
        paths.PYTHON_REQUIREMENTS: "\n".join(requirements) + "\n",
        paths.PYTHON_CONSTRAINTS: "\n".join(constraints) + "\n",
        paths.PYENV: pyenv_program,
    }
    for path, text in placed.items():
        (building / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (building / path.lstrip("/")).write_text(text)
    result = subprocess.run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--directory={building}",
            f"--bind-ro={wheelhouse}:{WHEELHOUSE_MOUNT}",
            "/usr/bin/python3",
            paths.PYENV,
            "--compile-bytecode",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise RootfsError(f"baking the Python environment failed:\n{tail}")
    # What cloud-init writes at boot is the stack's, not the image's.
    for path in placed:
        (building / path.lstrip("/")).unlink()
    shutil.rmtree(building / "var/cache/ipfleet/uv", ignore_errors=True)
    (building / ".ipfleet-complete").write_text("baked: " + " ".join(requirements) + "\n")
    building.rename(target)
    return target
