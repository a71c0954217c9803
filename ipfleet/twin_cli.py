"""`ipfleet twin ...`: a deployed stack's local stand-in, for seeing ipfleet work without AWS."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ipfleet.access import Access
from ipfleet.console import fail as _fail
from ipfleet.errors import UsageError

twin_app = typer.Typer(
    name="twin",
    help=(
        "Boot STACK's exact user data on real Debian nodes, here (Linux, root).\n\n"
        "Each node is a systemd-nspawn container running real systemd and cloud-init in "
        "its own network namespace; moto server stands in for AWS. Needs debootstrap, "
        "systemd-container and iproute2; the first run builds a Debian image (about a minute)."
    ),
    no_args_is_help=True,
)

StackArg = Annotated[str, typer.Argument(metavar="STACK", help="A stack name or a path to a stack file.")]
MaybeStack = Annotated[str | None, typer.Argument(metavar="[STACK]", help="Which twin; default: the only one up.")]


def _say(message: str) -> None:
    typer.echo(f"twin: {message}", err=True)


def _stop_on_sigterm() -> None:
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so `finally` cleans up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def twin_name(stack: str) -> str:
    """The twin's name for STACK, given as `up` and `demo` take it: a stack name, or a path
    to a stack file (whose name is its stack's)."""
    from ipfleet.names import check_stack_name
    from ipfleet.project import stack_name

    if Path(stack).suffix in (".yaml", ".yml"):
        stack = stack_name(Path(stack))
    return check_stack_name(stack)


def _running(stack: str | None):
    from ipfleet.twin.state import STATE_ROOT, TwinError, TwinState

    if stack is None:
        up = sorted(p.parent.name for p in STATE_ROOT.glob("*/state.json"))
        if len(up) != 1:
            _fail("no twin is up" if not up else f"several twins are up ({', '.join(up)}): name one", 2)
        stack = up[0]
    stack = twin_name(stack)
    try:
        return TwinState.load(stack)
    except TwinError as e:  # no twin of that name: the name is the mistake
        raise UsageError(str(e)) from e


BakedOption = Annotated[
    bool,
    typer.Option(
        "--baked",
        help="Boot an image that already holds the nodes' Python environment, as a baked AMI "
        "would (built once, cached); by default nodes install it from the package index at boot.",
    ),
]


def _boot(stack: str, engine_nodes: int | None = None, baked: bool = False):
    from ipfleet.twin import cluster

    # Settings and stack-name errors are the user's (exit 2); a twin that cannot boot, 1.
    cluster.check_platform()
    return cluster.up(stack, log=_say, engine_nodes=engine_nodes, baked=baked)


@twin_app.command()
def up(
    stack: StackArg,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the controller to publish.")] = 600,
    baked: BakedOption = False,
) -> None:
    """Boot STACK's twin and wait until its controller has published connection info."""
    from ipfleet.twin import cluster, vpc
    from ipfleet.twin.state import TwinError

    _stop_on_sigterm()
    state = _boot(stack, baked=baked)
    try:
        cluster.wait_ready(state, timeout=timeout, log=_say)
    except (TwinError, KeyboardInterrupt) as e:
        cluster.down(state, log=_say)
        _fail(str(e) or "interrupted")
    typer.echo(
        f"Twin of {state.stack!r} is up: {len(state.nodes)} nodes on {vpc.ENDPOINT}'s network.\n"
        f"  ipfleet twin status {state.stack}     units and cloud-init on every node\n"
        f"  ipfleet twin down {state.stack}       remove everything\n"
        f"A client runs in namespace {state.client_namespace}, e.g.:\n"
        f"  ip netns exec {state.client_namespace} env AWS_ENDPOINT_URL={vpc.ENDPOINT} "
        f"AWS_ACCESS_KEY_ID=twin AWS_SECRET_ACCESS_KEY=twin ipfleet fetch {state.stack} "
        f"--region {state.region}"
    )


@twin_app.command()
def status(
    stack: MaybeStack = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Show each node of a running twin: cloud-init's verdict and the ipfleet units."""
    from ipfleet.twin import laptop

    report = laptop.status(_running(stack))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"Twin of {report['stack']!r} (AWS stand-in at {report['aws_endpoint']})")
    for node in report["nodes"]:
        state = node.get("cloud_init", "not running" if not node["running"] else "?")
        units = ", ".join(f"{u} {s}" for u, s in sorted(node.get("units", {}).items()))
        typer.echo(f"  {node['name']:<28} {node['address']:<12} cloud-init: {state:<8} {units}")
    for label, seconds in report["timings"].items():
        typer.echo(f"  {label}: {seconds} s")


@twin_app.command()
def down(stack: MaybeStack = None) -> None:
    """Stop a twin: nodes, AWS stand-in, mounts, namespaces and files, all of it."""
    from ipfleet.twin import cluster

    leftovers = cluster.down(_running(stack), log=_say)
    if leftovers:
        _fail("could not remove: " + "; ".join(leftovers))


@twin_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec(  # noqa: A001 (the command's name)
    ctx: typer.Context,
    stack: StackArg,
) -> None:
    """Run a command as the laptop: in the client namespace, with the twin's AWS endpoint
    and throwaway credentials, its own home (~/.ssh) and this checkout's ipfleet.

    Put the command after `--`, e.g.:

      ipfleet twin exec example -- ipfleet status example

      ipfleet twin exec example -- ipfleet restart-engines example --json

      ipfleet twin exec example -- python my_script.py
    """
    import os
    import shutil
    import subprocess

    from ipfleet.twin import laptop

    command = list(ctx.args)
    if not command:
        _fail("nothing to run: put the command after `--`", 2)
    state = _running(stack)
    env = laptop.client_env(state)
    if command[0] in ("ipfleet", "python", "python3"):
        # The laptop's own Python (the nodes' version), with this checkout's ipfleet.
        command = [state.client_python] + (["-m", "ipfleet.cli"] if command[0] == "ipfleet" else []) + command[1:]
    elif shutil.which(command[0], path=env.get("PATH", os.defpath)) is None:
        _fail(f"{command[0]}: command not found", 2)
    if Access(state.access) is Access.SSM:
        env["IPFLEET_PROXY_COMMAND"] = laptop.session_proxy_command(state)
    raise typer.Exit(subprocess.run(laptop.as_client(state, command), env=env).returncode)


def _print_fault(result: dict) -> None:
    typer.echo(
        f"\n{result['fault']} ({result['victim']}): {result['results_correct']}/{result['tasks']} results "
        f"exact, {result['lost']} lost"
    )
    for key in ("retried", "sent_again", "engines_before", "engines_after", "engine_ids_kept", "recovery_s", "map_s"):
        typer.echo(f"  {key:<16} {result[key]}")


@twin_app.command()
def demo(
    stack: StackArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results and timings as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for each stage.")] = 600,
    engine_nodes: Annotated[int | None, typer.Option(help="Override the stack's engineNodes for this run.")] = None,
    keep: Annotated[bool, typer.Option(help="Leave the twin up afterwards.")] = False,
    baked: BakedOption = False,
    fault: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help="Then hit a map of 200 tasks with a fault: controller-restart, controller-replace, "
            "engine-loss or spot-interruption; report what was lost and how long recovery took.",
        ),
    ] = None,
) -> None:
    """Up, then StarCluster's demo from a client namespace, then down.

    The client does what a laptop does: `ipfleet fetch`, then ipyparallel.Client
    runs view.map_async(lambda x: x**30, range(8)) and one task per engine that
    names the host it ran on. Prints the results and how long each stage took.
    With --fault, a longer map follows and the fault hits it half-way.
    """
    from ipfleet.twin import cluster, laptop
    from ipfleet.twin.faults import FAULTS, run_fault
    from ipfleet.twin.state import TwinError

    if fault is not None and fault not in FAULTS:
        _fail(f"--fault {fault!r}: choose one of {', '.join(FAULTS)}", 2)
    _stop_on_sigterm()
    state = _boot(stack, engine_nodes, baked)
    try:
        cluster.wait_ready(state, timeout=timeout, log=_say)
        result = laptop.fetch_and_demo(state, timeout=timeout, log=_say)
        if fault is not None:
            result["fault"] = run_fault(state, fault, timeout=timeout, log=_say)
    except (TwinError, KeyboardInterrupt) as e:
        for node in state.nodes:
            if node.running():
                _say(f"--- {node.name} ---\n{cluster.describe_node(node)[-3000:]}")
        cluster.down(state, log=_say)
        _fail(str(e) or "interrupted")
    except BaseException:
        cluster.down(state, log=_say)
        raise
    if not keep:
        cluster.down(state, log=_say)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"\n{result['engines']} engines on {len(result['hostnames'])} engine nodes ({', '.join(result['hostnames'])})."
    )
    typer.echo("view.map_async(lambda x: x**30, range(8)).get():")
    for x, value in enumerate(result["results"]):
        typer.echo(f"  {x}**30 = {value}")
    typer.echo("\nseconds since the nodes booted:")
    for label, seconds in result["timings"].items():
        typer.echo(f"  {label:<28} {seconds:>7}")
    if "fault" in result:
        _print_fault(result["fault"])
    sys.stdout.flush()
