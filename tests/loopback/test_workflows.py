"""The deploy workflow's own script, run in real git repositories (the workflows' other
promises, and actionlint, are in tests/fast/test_workflows.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fast.test_workflows import _deploy_changed_step


@pytest.mark.parametrize(
    "before,expected",
    [
        ("0000000000000000000000000000000000000000", ["alpha", "beta"]),  # a new branch's first push
        ("1234567890abcdef1234567890abcdef12345678", ["alpha", "beta"]),  # force-pushed away
        ("HEAD~1", ["beta"]),  # an ordinary push: only what changed
    ],
)
def test_the_deploy_finds_its_stacks_whatever_before_is(tmp_path, before, expected):
    """The deploy job's own script, run as the runner runs it, in a repository with two
    stacks and a push that changed one of them (and deleted a third, left to a notice)."""
    import os
    import sys

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.email=ci@example.org", "-c", "user.name=ci", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: ipfleet\nruntime: python\nstackConfigDir: stacks\n")
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / "stacks" / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    (tmp_path / "stacks" / "Pulumi.beta.yaml").write_text("config: {aws:region: eu-west-1}\n")
    (tmp_path / "stacks" / "Pulumi.gamma.yaml").unlink()
    git("add", "-A")
    git("commit", "-q", "-m", "push")
    revision = git("rev-parse", before) if before.startswith("HEAD") else before
    output = tmp_path / "github-output"
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        ["bash", "-e", "-c", _deploy_changed_step()],
        cwd=tmp_path,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "BEFORE": revision,
            "GITHUB_OUTPUT": str(output),
            "PYTHONPATH": os.pathsep.join(sys.path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = output.read_text().strip()
    assert line.startswith("stacks=")
    assert json.loads(line.removeprefix("stacks=")) == expected
    if before == "HEAD~1":
        assert "stack file of 'gamma' deleted" in result.stderr
