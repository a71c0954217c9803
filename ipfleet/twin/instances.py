"""One twin node: an overlay of the image, a NoCloud seed holding the node's exact
user data, and systemd-nspawn booting real systemd (and so real cloud-init) in
the node's network namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ipfleet.errors import IpfleetError

# Where the twin's stand-ins appear inside every node.
SHARED_SOURCE = "/srv/efs"  # a host folder standing in for the EFS export
WHEELHOUSE_MOUNT = "/srv/ipfleet-wheels"  # the package index, read-only


class NodeError(IpfleetError, RuntimeError):
    pass


@dataclass
class Node:
    name: str  # hostname, e.g. demo-engine-1
    role: str  # controller or engine
    namespace: str
    address: str
    work_dir: str  # holds upper/, work/, root/ (the overlay) and the console log
    pid: int | None = None  # systemd-nspawn's
    instance_id: str = ""  # what its instance metadata calls it, as EC2 would
    image: str = ""  # the root file system it overlays (the AMI)
    wheelhouse: str = ""  # the package index it was booted with

    @property
    def root(self) -> Path:
        return Path(self.work_dir) / "root"

    @property
    def console_log(self) -> Path:
        return Path(self.work_dir) / "console.log"

    def as_dict(self) -> dict:
        return asdict(self)

    # --- lifecycle -----------------------------------------------------------

    def prepare(self, image: Path, user_data: bytes) -> None:
        """Overlay the image and plant the NoCloud seed (what EC2 metadata would serve)."""
        self.image = str(image)
        work = Path(self.work_dir)
        for sub in ("upper", "work", "root"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={image},upperdir={work / 'upper'},workdir={work / 'work'}",
                str(self.root),
            ]
        )
        seed = self.root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "user-data").write_bytes(user_data)
        (seed / "meta-data").write_text(f"instance-id: {self.name}\nlocal-hostname: {self.name}\n")

    def boot(self, shared_dir: Path, wheelhouse: Path) -> None:
        self.wheelhouse = str(wheelhouse)
        command = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--network-namespace-path=/run/netns/{self.namespace}",
            f"--bind={shared_dir}:{SHARED_SOURCE}",
            f"--bind-ro={wheelhouse}:{WHEELHOUSE_MOUNT}",
            # s3fs mounts through FUSE, as on an EC2 instance.
            "--bind=/dev/fuse",
            "--console=pipe",
        ]
        log = self.console_log.open("wb")
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = process.pid

    def running(self) -> bool:
        return self.pid is not None and process_alive(self.pid)

    def init_pid(self) -> int:
        """PID of the node's own systemd, for entering its namespaces."""
        if self.pid is None or not self.running():
            raise NodeError(f"{self.name} is not running")
        queue = [self.pid]
        while queue:
            pid = queue.pop(0)
            for child in _children(pid):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
                queue.append(child)
        raise NodeError(f"{self.name}: systemd has not started yet")

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the node (its mount, PID, UTS, IPC and network namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid()), "-m", "-u", "-i", "-n", "-p", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def kill(self) -> None:
        """Lose the node without warning, as when its host dies: its network goes first
        (no goodbye reaches anyone), then every process in it at once (SIGKILL to the
        init of its PID namespace takes the whole namespace down)."""
        if not self.running():
            return
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "eth0", "down"], capture_output=True)
        os.kill(self.init_pid(), signal.SIGKILL)
        self.stop(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        """Power off cleanly (SIGTERM to nspawn), then force; then drop the overlay."""
        if self.pid is not None and self.running():
            stop_group(self.pid, grace=timeout)
        if os.path.ismount(self.root):
            _run(["umount", "--lazy", str(self.root)])


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    return found


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def reap(pid: int) -> None:
    """Collect an exited child of ours, so that it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM a process group we started (PID leads it), SIGKILL it after GRACE seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap(pid)
        if not process_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    time.sleep(0.2)
    reap(pid)
