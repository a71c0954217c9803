"""Finding the ipfleet project and a stack's settings file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ipfleet.errors import UsageError
from ipfleet.names import check_region, check_stack_name

STACK_FILE = "Pulumi.{name}.yaml"


class StackNotFound(UsageError, LookupError):
    pass


@dataclass(frozen=True)
class StackRef:
    name: str
    path: Path
    project_dir: Path


def project_dir(start: Path | None = None) -> Path:
    """The nearest folder (from `start` up) whose Pulumi.yaml is the ipfleet project,
    else the checkout this package was installed from."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if _is_ipfleet_project(folder):
            return folder
    source = Path(__file__).resolve().parent.parent
    if _is_ipfleet_project(source):
        return source
    raise StackNotFound("not inside an ipfleet project (no Pulumi.yaml with `name: ipfleet` here or above)")


def stack_name(path: Path) -> str:
    """The stack a settings file is for: Pulumi.NAME.yaml is NAME's."""
    return path.name.removeprefix("Pulumi.").rsplit(".", 1)[0]


def resolve_stack(stack: str, start: Path | None = None) -> StackRef:
    """STACK is a stack name (stacks/Pulumi.STACK.yaml) or a path to a stack file."""
    candidate = Path(stack)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        name = check_stack_name(stack_name(candidate), f"the stack file {candidate.name!r} names a stack, but")
        return StackRef(name=name, path=candidate.resolve(), project_dir=project_dir(candidate.parent))
    check_stack_name(stack)
    root = project_dir(start)
    path = stacks_dir(root) / STACK_FILE.format(name=stack)
    if not path.exists():
        known = ", ".join(list_stacks(root)) or "none yet"
        raise StackNotFound(f"no stack {stack!r}: {path} does not exist (stacks here: {known})")
    return StackRef(name=stack, path=path, project_dir=root)


def stacks_dir(root: Path) -> Path:
    document = yaml.safe_load((root / "Pulumi.yaml").read_text()) or {}
    return root / document.get("stackConfigDir", ".")


def list_stacks(root: Path) -> list[str]:
    """Every stack file's stack; a file whose name is no stack name is an error that names
    it (a review must go red for it, not skip it)."""
    files = stacks_dir(root).glob("Pulumi.*.yaml")
    return sorted(check_stack_name(stack_name(p), f"stack file {p.name!r}:") for p in files)


def _is_ipfleet_project(folder: Path) -> bool:
    manifest = folder / "Pulumi.yaml"
    if not manifest.is_file():
        return False
    try:
        return (yaml.safe_load(manifest.read_text()) or {}).get("name") == "ipfleet"
    except yaml.YAMLError:
        return False


def default_region(stack: str) -> str | None:
    """The stack file's aws:region when it is at hand, else the AWS configuration's;
    whichever it is, checked (it reaches ssh's ProxyCommand, a shell command)."""
    from ipfleet.stack_config import read_stack_file

    try:
        region = read_stack_file(resolve_stack(stack).path).get("aws:region")
    except (StackNotFound, ValueError, OSError):
        region = None
    if region:
        return check_region(str(region), f"aws:region of stack {stack!r}:")
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(variable):
            return check_region(os.environ[variable], f"{variable}:")
    import boto3

    configured = boto3.session.Session().region_name
    return check_region(configured, "the AWS configuration's region:") if configured else None
