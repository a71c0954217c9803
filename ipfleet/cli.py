"""The `ipfleet` command: the user's side of an ipfleet cluster.

Deploying is Pulumi's job (`pulumi up -s NAME`); ipfleet reviews a stack
offline, shows what nodes will run, and brings the connection file home.
Heavy libraries are imported inside commands so that `--help` answers fast.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ipfleet.console import fail as _fail

app = typer.Typer(
    name="ipfleet",
    help=(
        "IPython-parallel clusters on AWS, declared as code.\n\n"
        "A cluster is a Pulumi stack: settings in stacks/Pulumi.NAME.yaml, deployed with "
        "`pulumi up -s NAME`, removed with `pulumi destroy -s NAME`.\n\n"
        "Typical use:  ipfleet plan NAME  (review)  ->  pulumi up -s NAME  ->  "
        "ipfleet fetch NAME  ->  ipyparallel.Client(profile='ipfleet-NAME')"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StackArg = Annotated[str, typer.Argument(
    metavar="STACK", help="A stack name (its settings in stacks/Pulumi.STACK.yaml) or a path to a stack file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


class RoleChoice(str, Enum):
    controller = "controller"
    engine = "engine"


def _plan(stack: str):
    """Load, validate and run the stack offline. User mistakes exit 2 with a clear list."""
    from ipfleet.project import StackNotFound, resolve_stack
    from ipfleet.settings import SettingsError, parse_settings
    from ipfleet.stack_config import read_stack_file

    name = stack
    try:
        ref = resolve_stack(stack)
        name = ref.name
        config = read_stack_file(ref.path)
        settings = parse_settings(ref.name, config)
        from bootstrap.preflight import check_user_data

        check_user_data(settings)
    except StackNotFound as e:
        _fail(str(e), 2)
    except SettingsError as e:
        _fail(e.report(name), 2)
    except (ValueError, OSError) as e:
        _fail(str(e), 2)
    from ipfleet.plan import run_plan

    return run_plan(ref.project_dir, ref.name, config, settings)


@app.command()
def plan(stack: StackArg, as_json: JsonOpt = False) -> None:
    """Show every resource STACK declares, offline, with no AWS credentials.

    Runs the same Pulumi program as `pulumi up` under Pulumi's mock runtime and
    lists each resource (type, name, parent, inputs; secrets masked) and the
    stack outputs. Values AWS assigns at deploy time show as <name.attribute>.
    Commit the output next to a settings change to review it in a pull request.
    """
    from ipfleet.plan_view import render_text

    result = _plan(stack)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2, sort_keys=True))
    else:
        typer.echo(render_text(result))


@app.command()
def render(
    stack: StackArg,
    role: Annotated[RoleChoice, typer.Option(help="Whose user data: the controller's or the engines'.")],
) -> None:
    """Print the cloud-init user data STACK's controller or engine nodes boot with.

    Taken from the plan itself (the controller instance, the engines' launch
    template) and decoded, so it is exactly what `pulumi up` would send.
    """
    from ipfleet.plan_view import user_data

    typer.echo(user_data(_plan(stack), role.value), nl=False)


@app.command()
def fetch(
    stack: Annotated[str, typer.Argument(metavar="STACK", help="The deployed stack's name.")],
    region: Annotated[str | None, typer.Option(
        help="AWS region; default: the stack file's aws:region, else your AWS configuration.")] = None,
    timeout: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for a booting controller to publish.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch STACK's client connection file so ipyparallel.Client works here.

    Reads what the controller published at boot (an encrypted SSM parameter),
    waiting while the controller boots, and writes it owner-only (0600) to
    ~/.ipython/profile_ipfleet-STACK/security/ipcontroller-client.json.
    Needs AWS credentials allowed to read /ipfleet/STACK/connection; not Pulumi.
    """
    from ipfleet.fetch import FetchError
    from ipfleet.fetch import fetch as do_fetch
    from ipfleet.progress import waiting

    region = region or _default_region(stack)
    if not region:
        _fail("no AWS region: pass --region, or set AWS_REGION", 2)
    try:
        with waiting(f"waiting for the controller of {stack!r} to publish", quiet=as_json) as tick:
            result = do_fetch(stack, region, timeout, on_wait=tick)
    except FetchError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    versions = result.controller.get("versions", {})
    typer.echo(f"Wrote {result.path} (published {result.published_at}, controller "
               f"{result.controller.get('address', '?')}, Python {versions.get('python', '?')}).")
    typer.echo("\nIn Python:\n    import ipyparallel as ipp\n"
               f"    rc = ipp.Client(profile={result.profile!r})")


def _default_region(stack: str) -> str | None:
    """The stack file's aws:region when it is at hand, else the AWS configuration's."""
    from ipfleet.project import StackNotFound, resolve_stack
    from ipfleet.stack_config import read_stack_file

    try:
        region = read_stack_file(resolve_stack(stack).path).get("aws:region")
        if region:
            return str(region)
    except (StackNotFound, ValueError, OSError):
        pass
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(variable):
            return os.environ[variable]
    import boto3

    return boto3.session.Session().region_name


from ipfleet.twin_cli import twin_app  # noqa: E402 (a sub-command group; imports nothing heavy)

app.add_typer(twin_app)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
