"""`ipfleet run` against moto on loopback: a batch run that gives its nodes back
(the offline cases are in tests/fast/test_batch.py)."""

from __future__ import annotations

import os


def test_a_stack_that_is_not_deployed_is_refused_before_anything_runs(aws_env, tmp_path):
    from tests.conftest import run_cli

    marker = tmp_path / "ran"
    env = {**os.environ, **aws_env, "NO_COLOR": "1"}
    result = run_cli("run", "ghost", "--nodes", "1", "--", "touch", str(marker), env=env)
    assert result.returncode == 1
    assert "stack 'ghost' has no engine group in this region (not deployed" in result.stderr
    assert not marker.exists()
