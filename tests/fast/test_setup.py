"""tools/system-packages: the Makefile's setup asks apt only for what is missing.

The machine state of a common laptop: Node.js (with its own npm) from another source
whose package conflicts with Debian's npm, and one tool the twin needs missing. A
stand-in apt-get answers as apt does when asked for both conflicting packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "tools" / "system-packages"

# apt's answer when NodeSource's nodejs is installed and Debian's npm (or nodejs) is asked for.
FAKE_APT = """#!/bin/sh
echo "$@" >> "{log}"
case "$*" in
  *install*) for word in "$@"; do
      case $word in
        nodejs|npm) echo "E: Unable to correct problems, you have held broken packages." >&2; exit 100;;
      esac
    done ;;
esac
exit 0
"""


def make_tools(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tool = folder / name
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o755)


def run_setup(tmp_path: Path, present: list[str], *pairs: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    make_tools(bin_dir, present)
    log = tmp_path / "apt.log"
    apt = tmp_path / "apt-get"
    apt.write_text(FAKE_APT.format(log=log))
    apt.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APT_GET": str(apt), "PYTHON": sys.executable}
    # The script needs `id`, `command` and sh from the system; every tool it checks is
    # looked up in bin_dir first, so the test hides the real ones by giving names that
    # exist nowhere else.
    result = subprocess.run(["sh", str(SCRIPT), *pairs], capture_output=True, text=True, env=env, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_a_conflicting_node_is_used_as_it_is_and_only_the_missing_package_is_asked_for(tmp_path):
    if os.geteuid() != 0:
        import pytest

        pytest.skip("the script installs as root only")
    present = ["ipfleet-test-node", "ipfleet-test-npm", "ipfleet-test-ip"]
    result, calls = run_setup(
        tmp_path,
        present,
        "ipfleet-test-node=nodejs",
        "ipfleet-test-npm=npm",
        "ipfleet-test-ip=iproute2",
        "ipfleet-test-nspawn=systemd-container",
    )
    assert result.returncode == 0, result.stderr
    assert calls[-1].split()[-1] == "systemd-container"
    assert not any(word in ("nodejs", "npm") for call in calls for word in call.split())
    assert "installing missing system packages: systemd-container" in result.stdout


def test_nothing_missing_asks_apt_for_nothing(tmp_path):
    result, calls = run_setup(tmp_path, ["ipfleet-test-a"], "ipfleet-test-a=a-package", "python3-venv=python3-venv")
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_asking_for_both_conflicting_packages_is_what_fails(tmp_path):
    """The negative control: the stand-in apt does refuse the old Makefile's request."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("the script installs as root only")
    result, _ = run_setup(tmp_path, [], "ipfleet-test-node=nodejs", "ipfleet-test-npm=npm")
    assert result.returncode == 100
    assert "held broken packages" in result.stderr


def test_the_makefile_asks_for_no_node_in_the_demo():
    makefile = (ROOT / "Makefile").read_text()
    demo_tools = next(line for line in makefile.splitlines() if line.startswith("DEMO_TOOLS"))
    assert "node" not in demo_tools and "shellcheck" not in demo_tools
    assert "demo: setup-demo" in makefile
