"""`ipfleet plan STACK --diff REF`: what a change does to a stack, offline, for review.

The stack's offline plan as it is at git REF (its settings and the program of
that commit, run from an extracted copy of it) against the working tree's:
resources added, removed and changed, which inputs changed (secrets stay
masked), and what `pulumi up` will do about a change where ipfleet knows it,
for the resources whose changes matter most (the controller, the engines'
launch template). The text is stable, for a pull-request comment; `--json` is
for scripts.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.render import decode_user_data
from ipfleet.errors import UsageError
from ipfleet.names import check_stack_name
from ipfleet.project import stack_name
from ipfleet.stack_config import read_stack_text

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
USER_DATA_KEYS = ("userData", "userDataBase64")

# What `pulumi up` does when these inputs change (the AWS provider's schema, and
# the options ipfleet's components set).
# The provider's schema, which marks these inputs ForceNew, ships inside its plugin
# binary, which cannot be had here: this table holds the ForceNew inputs of the types
# ipfleet declares, as the Terraform provider under pulumi-aws declares them (the hook's
# and the group's read in terraform-provider-aws's internal/service/autoscaling: a
# hook's group changes in place, its name does not; any initial hook replaces a group).
REPLACING_INPUTS = {
    INSTANCE: {
        "userDataBase64": "new user data replaces the controller (userDataReplaceOnChange)",
        "subnetId": "a controller cannot move subnets: it is replaced",
        "availabilityZone": "a controller cannot move zones: it is replaced",
        "keyName": "a new key pair replaces the controller",
        "privateIp": "a new private address replaces the controller",
    },
    "aws:autoscaling/group:Group": {
        "initialLifecycleHooks": "a change to the group's initial hooks replaces the whole group",
        "name": "a new name replaces the whole group",
        "namePrefix": "a new name replaces the whole group",
    },
    "aws:autoscaling/lifecycleHook:LifecycleHook": {"name": "a new name makes a new hook"},
    "aws:ec2/keyPair:KeyPair": {"publicKey": "a new public key replaces the key pair"},
    "aws:ec2/securityGroup:SecurityGroup": {
        "vpcId": "a security group cannot move VPCs: it (and every node using it) is replaced",
        "description": "a new description replaces the security group",
        "name": "a new name replaces the security group",
        "namePrefix": "a new name replaces the security group",
    },
    "aws:efs/fileSystem:FileSystem": {
        "encrypted": "encryption is set when a file system is made: a new one (empty) replaces it",
        "kmsKeyId": "a new key makes a new file system (empty)",
        "performanceMode": "a new performance mode makes a new file system (empty)",
        "creationToken": "a new creation token makes a new file system (empty)",
    },
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": {
        "securityGroupId": "the rule moves to another security group: it is replaced"
    },
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": {
        "securityGroupId": "the rule moves to another security group: it is replaced"
    },
    "aws:ec2/launchTemplate:LaunchTemplate": {
        "name": "a new name makes a new launch template",
        "namePrefix": "a new name makes a new launch template",
    },
    "aws:efs/mountTarget:MountTarget": {
        "subnetId": "a mount target cannot move subnets: it is replaced",
        "fileSystemId": "a mount target cannot move file systems: it is replaced",
    },
    "aws:ssm/parameter:Parameter": {"name": "a new name makes a new parameter (the old one, and its value, go)"},
    "aws:iam/role:Role": {"name": "a new name replaces the role", "namePrefix": "a new name replaces the role"},
    "aws:iam/instanceProfile:InstanceProfile": {
        "name": "a new name replaces the instance profile",
        "namePrefix": "a new name replaces the instance profile",
    },
    "aws:iam/rolePolicy:RolePolicy": {"name": "a new name replaces the policy", "role": "the policy moves roles"},
    "aws:s3/bucket:Bucket": {
        "bucket": "a new name makes a new bucket (the runtime bucket holds only ipfleet's wheel)",
        "bucketPrefix": "a new name makes a new bucket (the runtime bucket holds only ipfleet's wheel)",
    },
    "aws:s3/bucketObjectv2:BucketObjectv2": {
        "bucket": "the object moves buckets: it is stored again",
        "key": "a new node runtime is a new object under its own sha256; "
        "the old one is deleted at the end of the update (nodes read it at boot only)",
    },
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": {"bucket": "the block moves buckets: it is replaced"},
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": {
        "bucket": "the configuration moves buckets: it is replaced"
    },
}
# Inputs ipfleet's components tell `pulumi up` to leave alone, and why.
IGNORED_NOTES = {
    (
        "aws:autoscaling/group:Group",
        "desiredCapacity",
    ): "the group's size belongs to `ipfleet scale` and the keeper once it exists; `pulumi up` leaves it",
    (INSTANCE, "ami"): "a running controller keeps its image; raise ipfleet:controllerRevision to replace it",
    (
        "aws:autoscaling/group:Group",
        "initialLifecycleHooks",
    ): "the drain hook is a resource of its own (LifecycleHook, which adopts it by name); the group is kept",
}
CHANGE_NOTES = {
    LAUNCH_TEMPLATE: "a new launch template version: the engine group replaces its running nodes with it, "
    "half at a time (instance refresh)",
}


class PlanDiffError(UsageError, RuntimeError):
    pass


@dataclass
class InputChange:
    path: str
    old: Any
    new: Any


@dataclass
class ResourceChange:
    type: str
    name: str
    action: str  # "add", "remove", "update", "replace", "ignored" (only inputs `pulumi up` ignores changed)
    inputs: list[InputChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "type": self.type,
            "name": self.name,
            "action": self.action,
            "notes": self.notes,
            "inputs": [{"path": c.path, "old": c.old, "new": c.new} for c in self.inputs],
        }


@dataclass
class PlanDiff:
    stack: str
    ref: str
    changes: list[ResourceChange]
    outputs: list[InputChange]
    unchanged: int

    def as_json(self) -> dict:
        counts = {
            action: sum(c.action == action for c in self.changes)
            for action in ("add", "remove", "update", "replace", "ignored")
        }
        return {
            "stack": self.stack,
            "ref": self.ref,
            "counts": {**counts, "unchanged": self.unchanged},
            "resources": [c.as_json() for c in self.changes],
            "outputs": [{"path": c.path, "old": c.old, "new": c.new} for c in self.outputs],
        }


# ---- the plan at a git revision


def _git(repo: Path, *args: str, binary: bool = False) -> Any:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=not binary)
    if result.returncode != 0:
        error = result.stderr if not binary else result.stderr.decode(errors="replace")
        raise PlanDiffError(f"git {' '.join(args)}: {error.strip()}")
    return result.stdout


def resolve_commit(top: Path, ref: str) -> str:
    """REF as the commit it names, or a PlanDiffError. A REF is never passed to git where
    it could be read as an option (`--output=FILE`): it is refused if it looks like one,
    resolved after `--end-of-options`, and only the commit id is used afterwards."""
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n\r"):
        raise PlanDiffError(f"{ref!r} is not a git revision")
    result = subprocess.run(
        ["git", "-C", str(top), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    commit = result.stdout.strip()
    if result.returncode != 0 or len(commit) not in (40, 64):
        raise PlanDiffError(f"git knows no commit {ref!r} here")
    return commit


@dataclass(frozen=True)
class _AtCommit:
    """A stack file as git REF has it: the repository, the file's path in it, the commit."""

    top: Path
    relative: Path
    commit: str


def _file_at(ref: str, stack_file: Path) -> _AtCommit | None:
    """STACK_FILE at REF, or None where the commit does not hold it."""
    top = Path(_git(stack_file.resolve().parent, "rev-parse", "--show-toplevel").strip())
    relative = stack_file.resolve().relative_to(top)
    commit = resolve_commit(top, ref)
    if not _git(top, "ls-tree", "--name-only", commit, "--", str(relative)).strip():
        return None
    return _AtCommit(top, relative, commit)


def plan_at(ref: str, stack_file: Path) -> dict | None:
    """The offline plan (as `ipfleet plan --json` prints it) of STACK_FILE at git REF,
    run by the program of that commit; None if the stack did not exist there."""
    at = _file_at(ref, stack_file)
    if at is None:
        return None
    top, relative, commit = at.top, at.relative, at.commit
    folder = stack_file.resolve().parent
    with tempfile.TemporaryDirectory(prefix="ipfleet-diff-") as tmp:
        archive = Path(tmp) / "tree.tar"
        archive.write_bytes(_git(top, "archive", "--format=tar", commit, binary=True))
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "tree", filter="data")
        tree = Path(tmp) / "tree"
        # The old program runs itself: its own ipfleet, components and bootstrap first on the path.
        project = tree / _project_relative(top, folder)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))}
        result = subprocess.run(
            [sys.executable, "-m", "ipfleet.cli", "plan", str(tree / relative), "--json"],
            cwd=project,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    if result.returncode != 0:
        raise PlanDiffError(f"the plan of {relative} at {ref} failed:\n{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def stack_config_at(ref: str, stack_file: Path) -> dict | None:
    """The `config:` of STACK_FILE at git REF (None where it did not exist)."""
    at = _file_at(ref, stack_file)
    if at is None:
        return None
    return read_stack_text(_git(at.top, "show", f"{at.commit}:{at.relative.as_posix()}"), str(at.relative))


def _project_relative(top: Path, folder: Path) -> Path:
    """The project folder (the one holding Pulumi.yaml) relative to the repository."""
    for candidate in (folder, *folder.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate.relative_to(top)
        if candidate == top:
            break
    return Path(".")


# What the program is made of: a change to any of these can change every stack's plan.
PROGRAM_PATHS = (
    "__main__.py",
    "Pulumi.yaml",
    "pyproject.toml",
    "requirements.lock",
    "components/",
    "bootstrap/",
    "ipfleet/",
)


def changed_stacks(ref: str, project: Path, stacks: list[str], stack_folder: Path) -> list[str]:
    """The stacks whose plan may differ from git REF's: those of STACKS (in STACK_FOLDER)
    whose file changed, those whose file the change deleted, or all of STACKS when the
    program changed. Names come from git as bytes (`-z`), so no name is quoted or lost."""
    top = Path(_git(project, "rev-parse", "--show-toplevel").strip())
    prefix = project.resolve().relative_to(top)
    commit = resolve_commit(top, ref)
    listed = _git(top, "diff", "-z", "--no-renames", "--name-only", commit, "--", ".")
    listed += _git(top, "ls-files", "-z", "--others", "--exclude-standard")
    changed = [Path(p) for p in listed.split("\0") if p]
    inside = [p.relative_to(prefix).as_posix() for p in changed if p.is_relative_to(prefix)]
    # A file of the program itself, or anything in one of its folders.
    if any(
        path == entry or (entry.endswith("/") and path.startswith(entry)) for path in inside for entry in PROGRAM_PATHS
    ):
        return list(stacks)
    folder = stack_folder.resolve().relative_to(project.resolve())
    names = {
        check_stack_name(stack_name(Path(path)), f"stack file {Path(path).name!r}:")
        for path in inside
        if Path(path).parent == folder and Path(path).name.startswith("Pulumi.") and path.endswith(".yaml")
    }
    return sorted(names)


# ---- comparing two plans


def diff(stack: str, ref: str, old: dict | None, new: dict | None) -> PlanDiff:
    before = {(r["type"], r["name"]): r for r in (old or {}).get("resources", [])}
    after = {(r["type"], r["name"]): r for r in (new or {}).get("resources", [])}
    changes, unchanged = [], 0
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k[1], k[0])):
        type_, name = key
        if key not in before:
            changes.append(ResourceChange(type_, name, "add"))
        elif key not in after:
            changes.append(ResourceChange(type_, name, "remove", notes=_removal_notes(before[key])))
        else:
            change = _compare(before[key], after[key])
            if change is None:
                unchanged += 1
            else:
                changes.append(change)
    outputs = _changed_values("", (old or {}).get("outputs", {}), (new or {}).get("outputs", {}))
    return PlanDiff(stack, ref, changes, outputs, unchanged)


def _removal_notes(resource: dict) -> list[str]:
    if (resource.get("options") or {}).get("retainOnDelete"):
        return ["retained: removed from the stack, kept in the account (retainOnDelete)"]
    return []


def _compare(old: dict, new: dict) -> ResourceChange | None:
    changed = _changed_values("", old.get("inputs", {}), new.get("inputs", {}))
    if not changed:
        return None
    ignored = set((new.get("options") or {}).get("ignoreChanges") or [])
    replacing = REPLACING_INPUTS.get(new["type"], {})
    notes, action = [], "update"
    # The input each change is under (`metadataOptions` for `metadataOptions.httpTokens`).
    tops = [change.path.split(".", 1)[0].split("[", 1)[0] for change in changed]
    for top in tops:
        if top in ignored:
            why = IGNORED_NOTES.get((new["type"], top), "the running resource keeps the old value")
            notes.append(f"{top}: ignored by `pulumi up` (ignoreChanges): {why}")
        elif top in replacing:
            action = "replace"
            notes.append(f"{top}: {replacing[top]}")
    if all(top in ignored for top in tops):
        action = "ignored"
    elif new["type"] in CHANGE_NOTES:
        notes.append(CHANGE_NOTES[new["type"]])
    return ResourceChange(new["type"], new["name"], action, [_shown(c) for c in changed], notes)


def _changed_values(path: str, old: Any, new: Any) -> list[InputChange]:
    """Leaf-level differences; lists of scalars and of different lengths compare whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(old.keys() | new.keys()):
            sub = f"{path}.{key}" if path else key
            out += _changed_values(sub, old.get(key), new.get(key))
        return out
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and any(isinstance(x, (dict, list)) for x in old + new)
    ):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _changed_values(f"{path}[{i}]", a, b)
        return out
    return [] if old == new else [InputChange(path, old, new)]


def _shown(change: InputChange) -> InputChange:
    """User data as the lines that changed in its decoded cloud-config, not base64; an
    S3 object's content as its size and sha256 (the node runtime's wheel is 100 KB)."""
    if change.path in USER_DATA_KEYS and isinstance(change.old, str) and isinstance(change.new, str):
        try:
            old, new = decode_user_data(change.old), decode_user_data(change.new)
        except Exception:  # a placeholder, not user data
            return change
        lines = _json_lines_as_keys(
            [
                line
                for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
                if not line.startswith(("---", "+++", "@@"))
            ]
        )
        return InputChange(change.path, f"<{len(old)} characters of cloud-config>", {"cloud-config lines": lines})
    if change.path == "contentBase64":
        return InputChange(change.path, _content(change.old), _content(change.new))
    return change


def _content(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError:
        return value
    return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"


def _json_lines_as_keys(lines: list[str]) -> list[str]:
    """A removed and an added line that are both JSON objects (the node's facts) shown as
    the keys that changed, one line each: a new node runtime is its new hash."""
    removed = [line for line in lines if line.startswith("-")]
    added = [line for line in lines if line.startswith("+")]
    if len(removed) != len(added):
        return lines
    # Removed and added lines pair up in order; each pair of JSON objects is parsed once.
    as_keys: dict[str, list[str]] = {}
    for old_line, new_line in zip(removed, added, strict=True):
        old, new = _json_object(old_line[1:]), _json_object(new_line[1:])
        if old is not None and new is not None:
            changes = _changed_values("", old, new)
            as_keys[old_line] = [f"~ {c.path}: {_compact(c.old)} -> {_compact(c.new)}" for c in changes]
            as_keys[new_line] = []
    out = []
    for line in lines:
        out += as_keys.get(line, [line])
    return out


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---- the text of a pull-request comment

SYMBOLS = {"add": "+", "remove": "-", "update": "~", "replace": "+-", "ignored": "="}


def render_text(d: PlanDiff) -> str:
    counts = d.as_json()["counts"]
    lines = [
        f"Stack {d.stack}: plan at {d.ref} -> working tree",
        f"{counts['add']} to add, {counts['replace']} to replace, {counts['update']} to update, "
        f"{counts['remove']} to remove, {counts['unchanged']} unchanged"
        + (f", {counts['ignored']} changed only where `pulumi up` ignores it." if counts["ignored"] else "."),
    ]
    if not d.changes and not d.outputs:
        lines.append("No changes.")
    for change in d.changes:
        lines += ["", f"{SYMBOLS[change.action]} {change.name}  ({change.type})  {change.action}"]
        for note in change.notes:
            lines.append(f"    ! {note}")
        for item in change.inputs:
            if isinstance(item.new, dict) and "cloud-config lines" in item.new:
                lines.append(f"    {item.path}: cloud-config changed:")
                lines += [f"        {line}" for line in item.new["cloud-config lines"][:40]]
                hidden = len(item.new["cloud-config lines"]) - 40
                if hidden > 0:
                    lines.append(f"        ... {hidden} more lines (`ipfleet render`)")
            else:
                lines.append(f"    {item.path}: {_compact(item.old)} -> {_compact(item.new)}")
    if d.outputs:
        lines += ["", "Outputs:"]
        lines += [f"    {c.path}: {_compact(c.old)} -> {_compact(c.new)}" for c in d.outputs]
    return "\n".join(lines)


def _compact(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."
