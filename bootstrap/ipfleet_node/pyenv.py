#!/usr/bin/env python3
"""ipfleet's Python environment on a node: the venv the services run in, with
exactly the versions the stack pins, in a second or two.

uv makes the venv and installs the packages (pip took most of a node's boot).
An image may already hold uv and the environment (a baked AMI, the twin's baked
image): then nothing is fetched, and uv only checks that what is installed
matches the pins, installing whatever differs. Otherwise uv itself comes from the
stack's package index, as a wheel, checked against the index's sha256.

Runs with the system python3, before the venv exists: standard library only.
Then, with the venv's python (boto3 is there), `--runtime` installs ipfleet's node
runtime: the wheel the stack stores in S3 under its sha256, checked against it.
Usage: pyenv.py [--compile-bytecode]   (compiling is for baking images)
       pyenv.py --runtime
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

FACTS_FILE = Path(os.environ.get("IPFLEET_NODE_FACTS", "/etc/ipfleet/node.json"))
# What the venv holds: pinned requirements, and constraints for all they pull in.
REQUIREMENTS = "/etc/ipfleet/python-requirements.txt"
CONSTRAINTS = "/etc/ipfleet/python-constraints.txt"
UV_HOME = Path("/opt/ipfleet/uv")
UV_CACHE = "/var/cache/ipfleet/uv"  # beside the venv: uv links files instead of copying
PYPI = "https://pypi.org/simple"


class PythonEnvError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"ipfleet-pyenv: {message}", flush=True)


def read_url(url: str) -> bytes:
    """GET URL, retried (a mirror coming up); a file:// folder reads as its index.html."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.parse.unquote(parts.path))
        return (path / "index.html" if path.is_dir() else path).read_bytes()
    for attempt in range(4):
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                return response.read()
        except OSError as e:
            if attempt == 3:
                raise PythonEnvError(f"cannot read {url}: {e}") from e
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def uv_wheels(index_url: str) -> dict[tuple[int, ...], tuple[str, str]]:
    """{version: (URL, sha256 or "")} of uv's manylinux wheels for this machine on a PEP 503 index."""
    page_url = index_url.rstrip("/") + "/uv/"
    found = {}
    for link in re.findall(r'href="([^"]+)"', read_url(page_url).decode("utf-8", "replace")):
        link = link.replace("&amp;", "&")
        address, _, fragment = link.partition("#")
        name = urllib.parse.unquote(address.rsplit("/", 1)[-1])
        match = re.fullmatch(r"uv-([0-9.]+)-py3-none-(\S+)\.whl", name)
        if match and any(
            tag.startswith("manylinux") and tag.endswith("_" + platform.machine()) for tag in match.group(2).split(".")
        ):
            version = tuple(int(part) for part in match.group(1).split("."))
            found[version] = (urllib.parse.urljoin(page_url, address), fragment.removeprefix("sha256="))
    return found


def fetch_uv(index_url: str, requirement: str) -> Path:
    """uv's binary from its wheel on the index (the pinned version, else the newest), into UV_HOME."""
    wheels = uv_wheels(index_url)
    pin = requirement.partition("==")[2]
    version = tuple(int(part) for part in pin.split(".")) if pin else max(wheels, default=None)
    if version not in wheels:
        raise PythonEnvError(f"{index_url} has no {requirement} wheel for {platform.machine()} Linux")
    url, digest = wheels[version]
    data = read_url(url)
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise PythonEnvError(f"{url} does not match the sha256 the index gives for it")
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise PythonEnvError(f"{url} holds no uv binary")
        UV_HOME.mkdir(parents=True, exist_ok=True)
        partial = UV_HOME / "uv.partial"
        partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    log(f"uv {'.'.join(map(str, version))} from {url}")
    return partial.replace(UV_HOME / "uv")


def venv_works(venv: Path) -> bool:
    """The venv exists and its python runs (a venv of a python3 since replaced does not)."""
    python = venv / "bin" / "python"
    return python.exists() and subprocess.run([python, "-c", ""], capture_output=True).returncode == 0


def find_uv() -> Path | None:
    found = UV_HOME / "uv" if (UV_HOME / "uv").is_file() else shutil.which("uv")
    return Path(found) if found else None


def uv_env() -> dict:
    return {**os.environ, "UV_CACHE_DIR": UV_CACHE, "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}


def run(command: list, env: dict) -> None:
    code = subprocess.run([str(part) for part in command], env=env).returncode
    if code != 0:
        raise PythonEnvError(f"uv {command[1]} failed (exit {code})")


def ensure(python: dict, compile_bytecode: bool = False) -> None:
    """Make or check the environment the facts' python section describes."""
    venv, index_url = Path(python["venv"]), python.get("index_url") or PYPI
    env = uv_env()
    started = time.monotonic()
    found = find_uv()
    uv = found or fetch_uv(index_url, python["uv"])
    fetched = time.monotonic()
    if not venv_works(venv):
        run([uv, "venv", "--quiet", "--clear", "--python", sys.executable, venv], env)
    made = time.monotonic()
    # Exact pins (requirements) and ipfleet's versions of all they pull in (constraints):
    # uv installs what is missing or different and leaves the rest alone.
    run(
        [
            uv,
            "pip",
            "install",
            "--python",
            venv / "bin" / "python",
            "--index-url",
            index_url,
            "-r",
            REQUIREMENTS,
            "-c",
            CONSTRAINTS,
            *(["--compile-bytecode"] if compile_bytecode else []),
        ],
        env,
    )
    done = time.monotonic()
    log(
        f"python environment ready in {done - started:.1f} s: uv {fetched - started:.1f} s "
        f"({'image' if found else 'fetched'}), venv {made - fetched:.1f} s, packages {done - made:.1f} s"
    )


def download_runtime(facts: dict, attempts: int = 12) -> bytes:
    """The runtime's wheel from the stack's bucket, with the node's role. Retried: on a
    fresh stack, IAM may take a few seconds before the role's new policy holds."""
    import boto3  # the venv's: this part runs after `ensure`
    from botocore.exceptions import BotoCoreError, ClientError

    where = facts["runtime"]
    s3 = boto3.client("s3", region_name=facts["region"], endpoint_url=facts.get("aws_endpoint_url"))
    for attempt in range(attempts):
        try:
            return s3.get_object(Bucket=where["bucket"], Key=where["key"])["Body"].read()
        except (BotoCoreError, ClientError) as e:
            if attempt == attempts - 1:
                raise PythonEnvError(f"cannot read s3://{where['bucket']}/{where['key']}: {e}") from e
            log(f"node runtime not readable yet ({e}); retrying")
            time.sleep(min(2**attempt, 15))
    raise AssertionError("unreachable")


def install_runtime(facts: dict) -> None:
    """The node runtime into the venv, unless that very wheel is there already."""
    venv, where = Path(facts["python"]["venv"]), facts["runtime"]
    marker = venv / "ipfleet-node-runtime.sha256"
    if marker.is_file() and marker.read_text().strip() == where["sha256"]:
        log("node runtime already installed")
        return
    data = download_runtime(facts)
    if hashlib.sha256(data).hexdigest() != where["sha256"]:
        raise PythonEnvError(f"s3://{where['bucket']}/{where['key']} does not match the sha256 the stack gives for it")
    uv = find_uv()
    if uv is None:
        raise PythonEnvError("no uv to install the node runtime with")
    folder = Path(tempfile.mkdtemp(prefix="ipfleet-runtime-"))
    try:
        wheel = folder / where["key"].rsplit("/", 1)[-1]
        wheel.write_bytes(data)
        env = uv_env()
        run(
            [uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "--no-deps", "--reinstall", wheel],
            env,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    marker.write_text(where["sha256"] + "\n")
    log(f"node runtime {where['sha256'][:12]} installed")


if __name__ == "__main__":
    try:
        facts = json.loads(FACTS_FILE.read_text())
        if "--runtime" in sys.argv[1:]:
            install_runtime(facts)
        else:
            ensure(facts["python"], "--compile-bytecode" in sys.argv[1:])
    except PythonEnvError as e:
        log(f"error: {e}")
        sys.exit(1)
