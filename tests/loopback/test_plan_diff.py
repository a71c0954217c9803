"""`ipfleet plan STACK --diff REF` on real git history: a temporary repository holding
this project, a commit, then changes to a stack (and a new stack) in the working tree.
The plan at REF is run by the program of that commit, from an extracted copy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ipfleet import plan_diff
from tests.conftest import ROOT, run_cli


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=review@example.org", "-c", "user.name=review", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """This project (tracked and new files, as they are now) committed to a fresh repository."""
    repo = tmp_path_factory.mktemp("repo")
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def ipfleet(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The repository's own ipfleet, not this checkout's.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HOME": str(repo)}
    return run_cli(*args, cwd=repo, env=env, timeout=600)


def edit_stack(repo: Path, name: str, **changes) -> None:
    path = repo / "stacks" / f"Pulumi.{name}.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"].update(changes)
    path.write_text(yaml.safe_dump(document))


def test_no_change_is_no_change(repo):
    result = ipfleet(repo, "plan", "example", "--diff", "main", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["resources"] == [] and out["outputs"] == []
    assert out["counts"]["unchanged"] > 20


def test_a_settings_change_shows_inputs_old_and_new_and_what_is_replaced(repo):
    edit_stack(
        repo,
        "example",
        **{
            "ipfleet:controllerInstanceType": "t3.large",
            "ipfleet:pythonPackages": ["numpy", "scipy"],
            "ipfleet:engineNodes": 3,
        },
    )
    try:
        result = ipfleet(repo, "plan", "example", "--diff", "main", "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        by_type = {r["type"]: r for r in out["resources"]}
        controller = by_type[plan_diff.INSTANCE]
        assert controller["action"] == "replace"
        assert {"path": "instanceType", "old": "t3.medium", "new": "t3.large"} in controller["inputs"]
        user_data = next(i for i in controller["inputs"] if i["path"] == "userDataBase64")
        assert any(
            line.strip() == "+scipy" or line.endswith(" scipy") for line in user_data["new"]["cloud-config lines"]
        )
        assert by_type[plan_diff.LAUNCH_TEMPLATE]["action"] == "update"
        group = by_type["aws:autoscaling/group:Group"]
        assert group["action"] == "ignored" and "ipfleet scale" in group["notes"][0]
        assert out["outputs"] == [{"path": "engineNodes", "old": 2, "new": 3}]

        text = ipfleet(repo, "plan", "example", "--diff", "main")
        assert text.returncode == 0, text.stderr
        assert "0 to add, 1 to replace, 1 to update, 0 to remove" in text.stdout
        assert "instanceType: t3.medium -> t3.large" in text.stdout
        assert "replaces the controller" in text.stdout
    finally:
        git(repo, "checkout", "-q", "--", "stacks")


def test_a_new_stack_is_all_additions(repo):
    source = yaml.safe_load((repo / "stacks" / "Pulumi.example.yaml").read_text())
    new = repo / "stacks" / "Pulumi.fresh.yaml"
    new.write_text(yaml.safe_dump(source))
    try:
        result = ipfleet(repo, "plan", "fresh", "--diff", "main")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1].startswith(f"{result.stdout.count(chr(10) + '+ ')} to add, 0 to replace")
        assert "+ fresh-controller-node  (aws:ec2/instance:Instance)  add" in result.stdout
    finally:
        new.unlink()


def test_an_unknown_ref_is_a_clear_error(repo):
    result = ipfleet(repo, "plan", "example", "--diff", "no-such-branch")
    assert result.returncode == 2
    assert "no-such-branch" in result.stderr


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A project with two stacks and nothing else, committed: what `stacks` reads."""
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: ipfleet\nruntime: python\nstackConfigDir: stacks\n")
    for name in ("alpha", "beta"):
        (tmp_path / "stacks" / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def stacks_of(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("stacks", *args, cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "NO_COLOR": "1"})


def test_a_deleted_stack_is_reviewed_and_a_new_one_too(tiny):
    (tiny / "stacks" / "Pulumi.beta.yaml").unlink()
    (tiny / "stacks" / "Pulumi.gamma.yaml").write_text("config: {}\n")
    result = stacks_of(tiny, "--changed-since", "HEAD", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["beta", "gamma"]


@pytest.mark.parametrize("name", ["x$(id>&2)y", "café", "-rf", "a b"])
def test_a_stack_file_whose_name_is_no_stack_name_fails_the_review(tiny, name):
    """Not skipped, not run: named, and the review goes red."""
    (tiny / "stacks" / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    for args in ((), ("--changed-since", "HEAD")):
        result = stacks_of(tiny, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "is not a stack name" in result.stderr
        assert "uid=" not in result.stdout + result.stderr


def test_a_ref_is_never_an_option_to_git(tiny):
    target = tiny / "truncated.txt"
    target.write_text("kept\n")
    for ref in (f"--output={target}", "-p", "--no-index"):
        result = stacks_of(tiny, "--changed-since", ref)
        assert result.returncode == 2 and "is not a git revision" in result.stderr, result.stderr
    assert target.read_text() == "kept\n"
    # A ref that resolves is used only as the commit it names.
    assert stacks_of(tiny, "--changed-since", "main").returncode == 0


def _group(hooks: bool, ignore: list[str]) -> dict:
    inputs = {"minSize": 0, "maxSize": 4, "desiredCapacity": 2}
    if hooks:
        inputs["initialLifecycleHooks"] = [{"name": "ipfleet-drain", "heartbeatTimeout": 120}]
    return {
        "type": "aws:autoscaling/group:Group",
        "name": "x-engines-group",
        "inputs": inputs,
        "options": {"ignoreChanges": ignore},
    }


@pytest.mark.parametrize(
    "old_hooks,new_hooks,ignore,action",
    [
        # From main before this change (the hook inside the group) to the hook as its own resource.
        (True, False, ["desiredCapacity", "initialLifecycleHooks"], "ignored"),
        # Without ignoreChanges, the provider replaces the group: the diff says so.
        (True, False, ["desiredCapacity"], "replace"),
        (False, True, ["desiredCapacity"], "replace"),
    ],
)
def test_a_change_to_the_groups_initial_hooks_is_a_replacement_unless_ignored(old_hooks, new_hooks, ignore, action):
    old = {"resources": [_group(old_hooks, ignore)], "outputs": {}}
    new = {"resources": [_group(new_hooks, ignore)], "outputs": {}}
    [change] = plan_diff.diff("x", "main", old, new).changes
    assert change.action == action


def test_the_readme_lists_every_replacement_the_diff_knows():
    readme = (ROOT / "README.md").read_text()
    for resource_type, inputs in plan_diff.REPLACING_INPUTS.items():
        for name, why in inputs.items():
            assert f"| `{resource_type.split(':')[-1]}` | `{name}` | {why} |" in readme, (resource_type, name)


def test_the_diff_shows_the_change_in_cost_at_the_stacks_bounds(repo):
    """engineNodes 2 -> 3: one more spot node and root volume per hour at that size,
    nothing at maxEngineNodes (4 either way) or idle; from prices `ipfleet cost` cached."""
    from ipfleet import prices

    cache = repo / ".cache" / "ipfleet" / "prices.json"
    stamp = "2026-11-29T10:00:00+00:00"
    book = [
        prices.Price("ondemand:us-east-1:t3.medium", 0.0416, "hour", "AWS Pricing API (AmazonEC2)", stamp, stamp),
        prices.Price("gp3:us-east-1", 0.08, "GB-month", "AWS Pricing API (AmazonEC2)", stamp, stamp),
        prices.Price("efs:us-east-1", 0.30, "GB-month", "AWS Pricing API (AmazonEFS)", stamp, stamp),
    ] + [
        prices.Price(f"spot:us-east-1:{t}:us-east-1a", 0.04, "hour", "EC2 DescribeSpotPriceHistory", stamp, stamp)
        for t in ("c6i.large", "c5.large", "m6i.large")
    ]
    prices.save_cache(book, cache)
    edit_stack(repo, "example", **{"ipfleet:engineNodes": 3})
    try:
        result = ipfleet(repo, "plan", "example", "--diff", "main", "--json")
        assert result.returncode == 0, result.stderr
        sizes = {s["size"]: s for s in json.loads(result.stdout)["cost"]["sizes"]}
        one_node = 0.04 + 0.08 * 20 / 730
        assert sizes["engineNodes"]["perHour"]["change"] == pytest.approx(one_node, abs=1e-4)
        assert sizes["engineNodes"]["perMonth"]["change"] == pytest.approx(one_node * 730, abs=0.01)
        assert sizes["maxEngineNodes"]["perHour"]["change"] == sizes["idle"]["perHour"]["change"] == 0
        text = ipfleet(repo, "plan", "example", "--diff", "main").stdout
        assert "Cost (USD" in text
        assert "engineNodes     per hour $0.13 -> $0.17 (+$0.04), per month $93.57 -> $124.37 (+$30.80)" in text, text
    finally:
        git(repo, "checkout", "-q", "--", "stacks")
        cache.unlink()
