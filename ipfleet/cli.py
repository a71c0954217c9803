"""The `ipfleet` command: the user's side of an ipfleet cluster.

Deploying is Pulumi's job (`pulumi up -s NAME`); ipfleet reviews a stack
offline, shows what nodes will run, and brings the connection file home.
Heavy libraries are imported inside commands so that `--help` answers fast.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ipfleet.console import fail as _fail
from ipfleet.errors import IpfleetError, UsageError
from ipfleet.project import default_region


class _Commands(TyperGroup):
    """Every command's errors end here: ipfleet's own become one red line and their exit
    code (ipfleet/errors.py); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IpfleetError as e:
            _fail(e.message(), e.exit_code)


app = typer.Typer(
    cls=_Commands,
    name="ipfleet",
    help=(
        "IPython-parallel clusters on AWS, declared as code.\n\n"
        "A cluster is a Pulumi stack: settings in stacks/Pulumi.NAME.yaml, deployed with "
        "`pulumi up -s NAME`, removed with `pulumi destroy -s NAME`.\n\n"
        "Typical use:  ipfleet check NAME  ->  ipfleet plan NAME  (review)  ->  pulumi up -s NAME  ->  "
        "ipfleet connect NAME  ->  in Python: rc = ipfleet.client('NAME')"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _stack_or_file(value: str) -> str:
    """A stack name, or a path to a stack file (whose name resolve_stack checks)."""
    if Path(value).suffix in (".yaml", ".yml") and not value.startswith("-"):
        return value
    return _stack_name(value)


def _stack_name(value: str) -> str:
    from ipfleet.names import InvalidStackName, check_stack_name

    try:
        return check_stack_name(value)
    except InvalidStackName as e:
        raise typer.BadParameter(str(e)) from None


StackArg = Annotated[
    str,
    typer.Argument(
        metavar="STACK",
        help="A stack name (its settings in stacks/Pulumi.STACK.yaml) or a path to a stack file.",
        callback=_stack_or_file,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
RegionOpt = Annotated[
    str | None, typer.Option(help="AWS region; default: the stack file's aws:region, else your AWS configuration.")
]
DeployedStackArg = Annotated[
    str, typer.Argument(metavar="STACK", help="The deployed stack's name.", callback=_stack_name)
]


class RoleChoice(StrEnum):
    controller = "controller"
    engine = "engine"


def _plan(stack: str):
    """Load, validate and run the stack offline. User mistakes exit 2 with a clear list."""
    return _plan_with_settings(stack)[1]


def _settings(stack: str):
    """STACK's settings, from its file (STACK is a name or a path). A missing, unreadable
    or invalid file is the user's to fix: exit 2, saying which."""
    from ipfleet.project import resolve_stack
    from ipfleet.settings import SettingsError, parse_settings
    from ipfleet.stack_config import read_stack_file

    ref = resolve_stack(stack)
    try:
        return parse_settings(ref.name, read_stack_file(ref.path))
    except SettingsError as e:
        e.stack = e.stack or ref.name
        raise
    except (ValueError, OSError) as e:  # an unreadable stack file
        raise UsageError(str(e)) from e


def _plan_with_settings(stack: str):
    from components.preflight import preflight
    from ipfleet.project import resolve_stack
    from ipfleet.settings import SettingsError, parse_settings
    from ipfleet.stack_config import read_stack_file

    ref = resolve_stack(stack)
    try:
        config = read_stack_file(ref.path)
        settings = parse_settings(ref.name, config)
        preflight(settings)
    except SettingsError as e:
        e.stack = e.stack or ref.name
        raise
    except (ValueError, OSError) as e:  # an unreadable stack file
        raise UsageError(str(e)) from e
    from ipfleet.plan import run_plan

    return settings, run_plan(ref.project_dir, ref.name, config, settings)


@app.command()
def plan(
    stack: StackArg,
    as_json: JsonOpt = False,
    diff_ref: Annotated[
        str | None,
        typer.Option(
            "--diff",
            metavar="REF",
            help="Compare with the stack and program at git REF (a branch, tag or commit): what is added, "
            "removed, changed, and what `pulumi up` replaces.",
        ),
    ] = None,
) -> None:
    """Show every resource STACK declares, offline, with no AWS credentials.

    Runs the same Pulumi program as `pulumi up` under Pulumi's mock runtime and
    lists each resource (type, name, parent, inputs; secrets masked) and the
    stack outputs. Values AWS assigns at deploy time show as <name.attribute>.

    With --diff REF, shows instead what changed since REF: the text a pull
    request's review comment carries, e.g. `ipfleet plan prod --diff origin/main`.
    """
    from ipfleet.plan_view import render_text

    if diff_ref is not None:
        _plan_diff(stack, diff_ref, as_json)
        return
    result = _plan(stack)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2, sort_keys=True))
    else:
        typer.echo(render_text(result))


def _plan_diff(stack: str, ref: str, as_json: bool) -> None:
    from ipfleet import plan_diff
    from ipfleet.project import STACK_FILE, project_dir, stack_name, stacks_dir

    candidate = Path(stack)
    if candidate.suffix in (".yaml", ".yml"):
        path, name = candidate, stack_name(candidate)
    else:
        path, name = stacks_dir(project_dir()) / STACK_FILE.format(name=stack), stack
    old = plan_diff.plan_at(ref, path)
    # A stack the change deletes has no plan in the working tree.
    new = json.loads(json.dumps(_plan(str(path)).as_json())) if path.exists() else None
    if old is None and new is None:
        _fail(f"no stack {stack!r} at {ref} or in the working tree ({path})", 2)
    result = plan_diff.diff(name, ref, old, new)
    change = _cost_of_change(name, ref, path)
    if as_json:
        typer.echo(json.dumps({**result.as_json(), "cost": change.as_json()}, indent=2, sort_keys=True))
    else:
        from ipfleet.cost_diff import render

        typer.echo("\n".join([plan_diff.render_text(result), *render(change)]))


def _cost_of_change(name: str, ref: str, path: Path):
    """The change's cost per hour and month at the stack's bounds, from cached prices."""
    from ipfleet import plan_diff
    from ipfleet.cost_diff import cost_change
    from ipfleet.prices import load_cache
    from ipfleet.settings import SettingsError, parse_settings
    from ipfleet.stack_config import read_stack_file

    def settings(config: dict | None):
        if config is None:
            return None
        try:
            return parse_settings(name, config)
        except SettingsError:  # a stack file of an older ipfleet: no cost for that side
            return None

    old = settings(plan_diff.stack_config_at(ref, path))
    new = settings(read_stack_file(path)) if path.exists() else None
    return cost_change(old, new, load_cache())


@app.command()
def stacks(
    changed_since: Annotated[
        str | None,
        typer.Option(
            metavar="REF",
            help="Only stacks whose plan may differ from git REF's: their file changed, or the "
            "program did (then every stack).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the project's stacks (stacks/Pulumi.NAME.yaml).

    With --changed-since, the stacks a change touches: what CI reviews and deploys,
    e.g. `ipfleet stacks --changed-since origin/main --json`.
    """
    from ipfleet import plan_diff
    from ipfleet.project import list_stacks, project_dir, stacks_dir

    root = project_dir()
    names = list_stacks(root)
    if changed_since is not None:
        names = plan_diff.changed_stacks(changed_since, root, names, stacks_dir(root))
    typer.echo(json.dumps(names) if as_json else "\n".join(names))


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


def _region(stack: str, given: str | None) -> str:
    from ipfleet.names import check_region

    region = check_region(given, "--region") if given else default_region(stack)
    if not region:
        _fail("no AWS region: pass --region, or set AWS_REGION", 2)
    return region


@app.command()
def fetch(
    stack: DeployedStackArg,
    region: RegionOpt = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for a booting controller to publish.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch STACK's client connection file so ipyparallel.Client works here.

    Reads what the controller published at boot (an encrypted SSM parameter),
    waiting while the controller boots, and writes it owner-only (0600) to
    ~/.ipython/profile_ipfleet-STACK/security/ipcontroller-client.json.
    Needs AWS credentials allowed to read /ipfleet/STACK/connection; not Pulumi.
    """
    from ipfleet.fetch import fetch as do_fetch
    from ipfleet.progress import waiting

    region = _region(stack, region)
    with waiting(f"waiting for the controller of {stack!r} to publish", quiet=as_json) as tick:
        result = do_fetch(stack, region, timeout, on_wait=tick)
    for problem in result.warnings:
        typer.secho(f"ipfleet: warning: {problem}", err=True, fg=typer.colors.YELLOW)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    versions = result.controller.versions
    typer.echo(
        f"Wrote {result.path} (published {result.published_at}, controller "
        f"{result.controller.address}, Python {versions.get('python', '?')})."
    )
    typer.echo(f"\nIn Python:\n    import ipyparallel as ipp\n    rc = ipp.Client(profile={result.profile!r})")


@app.command()
def status(stack: DeployedStackArg, region: RegionOpt = None, as_json: JsonOpt = False) -> None:
    """Every node of STACK as it reports itself: phase, engines, last error.

    Each node's agent keeps a record under /ipfleet/STACK/nodes/ (SSM): its
    instance, type, spot or on-demand, zone, address, bootstrap phase (booting,
    running, failed, draining, drained), its engines (registered, on the
    controller; running, on engine nodes) and, if its bootstrap failed, the
    step, exit code and last log lines. Engine nodes also show their state in
    the Auto Scaling group (InService, Terminating:Wait while draining), and
    the controller's keeper says what the idle guard and autoscaler are doing.
    Needs AWS credentials only.
    """
    import botocore.exceptions as boto_errors

    from ipfleet import aws
    from ipfleet.node_status import describe_failure, describe_scaling, read_all_records
    from ipfleet.remote import printable
    from ipfleet.scaling import ScaleError, counted, find_group

    region = _region(stack, region)
    try:
        found = read_all_records(aws.client("ssm", region), aws.client("s3", region), stack)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
        _fail(f"cannot read the node records of {stack!r} in {region}: {printable(e)}")
    try:  # the group's own view: which instances it holds, in which lifecycle state
        group = find_group(aws.client("autoscaling", region), stack)
    except (ScaleError, boto_errors.BotoCoreError, boto_errors.ClientError):
        group = None
    states = group.instances if group else {}
    records = counted(found.valid, set(states) if group else None)
    ignored = found.refused + [
        f"{r.instance_id} claims the role {r.role}, which its place in the engine group denies"
        for r in found.valid
        if r not in records
    ]
    controller = next((r for r in records if r.role == "controller"), None)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "stack": stack,
                    "region": region,
                    "group": group.as_json() if group else None,
                    "nodes": [{**r.as_json(), "groupState": states.get(r.instance_id)} for r in records],
                    "ignored": ignored,
                },
                indent=2,
            )
        )
        return
    for line in ignored:
        typer.secho(f"ipfleet: warning: ignored a node record: {printable(line)}", err=True, fg=typer.colors.YELLOW)
    if not records:
        typer.echo(f"No node of {stack!r} has reported in {region} (not deployed, or still booting).")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"ipfleet stack {stack} ({region})")
    for column in ("role", "instance", "type", "market", "zone", "address", "phase", "group state", "engines", "error"):
        table.add_column(column, no_wrap=column != "error")
    for r in records:
        cells = (
            r.role,
            r.instance_id,
            r.instance_type or "-",
            r.lifecycle or "-",
            r.zone or "-",
            r.address or "-",
            r.phase,
            states.get(r.instance_id, "-"),
            r.engines_text,
            r.error_text or r.reason or "",
        )
        # Text, not str: rich would read markup ([link=...]) in what a node wrote.
        table.add_row(*(Text(printable(cell)) for cell in cells))
    # Piped (grep, a log), the table keeps its full width rather than a guessed 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    if controller:
        typer.echo(describe_scaling(controller.scaling))
    for r in records:
        if r.phase == "failed":
            typer.echo(describe_failure(r), err=True)


@app.command()
def scale(
    stack: DeployedStackArg,
    nodes: Annotated[int, typer.Argument(metavar="N", min=0, help="Engine nodes wanted.")],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until N nodes run their engines, all registered "
            "with the controller, and every leaving node has drained and gone.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds --wait waits.")] = 900.0,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set STACK's engine group to N nodes (StarCluster's addnode and removenode).

    N must lie within ipfleet:minEngineNodes and ipfleet:maxEngineNodes of the
    stack file, which own the bounds; the size itself is the running cluster's:
    `pulumi up` leaves it as scaled. New engines join the clients already
    connected. Leaving nodes drain first: their engines stop, and the tasks they
    were running are retried on the others (ipfleet.client()'s views retry by
    default), so no result is lost. Scaling an idle-guarded cluster wakes it.
    Needs AWS credentials only.

    Example: ipfleet scale demo 4 --wait
    """
    import botocore.exceptions as boto_errors

    from ipfleet import aws
    from ipfleet.scaling import scale as do_scale

    region = _region(stack, region)
    report = (lambda _: None) if as_json else (lambda line: typer.echo(line, err=True))
    try:
        result = do_scale(
            aws.client("autoscaling", region),
            aws.client("ssm", region),
            aws.client("s3", region),
            stack,
            nodes,
            wait,
            timeout,
            report,
        )
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
        _fail(f"cannot scale {stack!r} in {region}: {e}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif wait:
        typer.echo(f"{stack}: {nodes} engine nodes, {result['engines']} engines registered, in {result['seconds']} s.")
    else:
        typer.echo(
            f"{stack}: asked for {nodes} engine nodes (was {result['from']}); "
            f"`ipfleet status {stack}` shows them arrive, or add --wait."
        )


@app.command()
def run(
    stack: DeployedStackArg,
    command: Annotated[
        list[str] | None, typer.Argument(metavar="-- COMMAND...", help="What to run here, after `--`.")
    ] = None,
    nodes: Annotated[
        int | None, typer.Option("--nodes", min=1, help="Engine nodes for the run; default: the stack's engineNodes.")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the nodes up after COMMAND (no release).")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the nodes' engines.")] = 900.0,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a batch job on N engine nodes, then give them back.

    Scales STACK's engine group to N nodes and waits for their engines (with
    progress), runs COMMAND here with the stack's connection ready (inside it,
    `ipfleet.client()` needs no argument), streams its output, then scales the group
    back to its minimum however COMMAND ended (exit, failure, Ctrl-C), prints the
    node-hours used, and exits with COMMAND's code. Read inputs from and write
    results to the stack's S3 mounts, and nothing stays running.

    Example: ipfleet run science --nodes 8 -- python analyse.py
    """
    import botocore.exceptions as boto_errors

    from ipfleet import aws
    from ipfleet.batch import check_request, run_batch
    from ipfleet.scaling import find_group
    from ipfleet.scaling import scale as do_scale

    region = _region(stack, region)
    autoscaling = aws.client("autoscaling", region)
    ssm = aws.client("ssm", region)
    s3 = aws.client("s3", region)
    report = (lambda _: None) if as_json else (lambda line: typer.echo(line, err=True))
    try:
        group = find_group(autoscaling, stack)
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
        _fail(f"cannot find the engine group of {stack!r} in {region}: {e}")
    from ipfleet.project import StackNotFound

    settings = None  # the stack file, when it is at hand: the run's default size and its price
    try:
        settings = _settings(stack)
    except StackNotFound:
        pass
    except UsageError:  # a stack file that does not parse: needed only without --nodes
        if nodes is None:
            raise
    wanted = nodes
    if wanted is None:
        if settings is None:
            raise UsageError(f"no stack file for {stack!r} here to take engineNodes from: pass --nodes N")
        wanted = settings.engine_nodes
    check_request(group, wanted, command or [])

    def scale(count: int, wait: bool) -> None:
        do_scale(autoscaling, ssm, s3, stack, count, wait, timeout, report)

    result = run_batch(stack, group, wanted, command or [], scale, keep=keep, report=report)
    price = None
    if settings is not None:
        from ipfleet.cost import engine_node_hour
        from ipfleet.prices import load_cache

        price = engine_node_hour(settings, load_cache(), wanted)
    spent = None if price is None else round(price * result.node_hours, 4)
    if as_json:
        typer.echo(json.dumps({**result.as_json(), "estimated_usd": spent}, indent=2))
    else:
        kept = "left up (--keep)" if keep else f"released (the group back to {result.minimum})"
        estimate_text = (
            f"about ${spent:.4f} at ${price:.4f} per node-hour"
            if price is not None and spent is not None
            else "no cost estimate (`ipfleet cost STACK` caches the prices)"
        )
        typer.echo(
            f"{stack}: {result.nodes} nodes for {result.seconds:.0f} s, {result.node_hours:.3f} node-hours, "
            f"{estimate_text}; nodes {kept}; COMMAND exited {result.exit_code}.",
            err=True,
        )
    raise typer.Exit(result.exit_code)


@app.command("restart-engines")
def restart_engines(
    stack: DeployedStackArg,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the engines to come back.")] = 300.0,
    as_json: JsonOpt = False,
) -> None:
    """Restart every engine process on every node of STACK (engines wedged by a leaking
    extension, or to load new code), and wait until as many have registered again.

    Each engine is told to shut down through the controller; systemd on its node
    starts it again at once, and it registers afresh (with a new id). Uses the
    connection `ipfleet connect STACK` saved.
    """
    from ipfleet.progress import waiting
    from ipfleet.restart import restart_engines as do_restart

    try:
        with waiting(f"restarting the engines of {stack!r}", quiet=as_json) as tick:
            result = do_restart(stack, timeout, on_progress=tick)
    except TimeoutError as e:  # ipyparallel's own
        raise IpfleetError(str(e)) from e
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(
            f"Restarted {result['engines_before']} engines; {result['engines_after']} registered again "
            f"in {result['seconds']} s."
        )


@app.command()
def connect(
    stack: DeployedStackArg,
    region: RegionOpt = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            "-i",
            help="Private key for the controller; default: the ~/.ssh key whose "
            "public half is the stack's sshPublicKey.",
        ),
    ] = None,
    ssh_config: Annotated[
        bool,
        typer.Option(
            help="Write ~/.ssh/ipfleet/STACK.conf and include it from ~/.ssh/config (ipyparallel's "
            "tunnels need it); --no-ssh-config prints the ssh command instead."
        ),
    ] = True,
    proxy_command: Annotated[
        str | None,
        typer.Option(
            envvar="IPFLEET_PROXY_COMMAND",
            help="ssh ProxyCommand to reach the controller instead of Session Manager's "
            "(a bastion, say); ssh's %h and %p tokens work.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for a booting controller.")] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Make STACK usable from this machine: connection file, tunnel, key, version check.

    Does what `fetch` does, then prepares the way in for the stack's access mode:
    ssm (default; nothing open: SSH through AWS Session Manager), ssh (port 22
    from adminCidrs) or direct (client ports from adminCidrs, CurveZMQ). For
    ssm and ssh it writes an ssh config entry with the controller's host keys
    pinned. It warns when this Python, ipyparallel or cloudpickle differ from
    the engines' (pickled functions break). Then, in Python:

        import ipfleet
        rc = ipfleet.client("STACK")
    """
    from ipfleet.connect import connect as do_connect
    from ipfleet.progress import waiting

    region = _region(stack, region)
    with waiting(f"waiting for the controller of {stack!r} to publish", quiet=as_json) as tick:
        result = do_connect(
            stack,
            region,
            timeout,
            identity=identity,
            write_ssh_config=ssh_config,
            proxy_command=proxy_command,
            on_wait=tick,
        )
    for problem in [*result.fetched.warnings, *result.connection.warnings]:
        typer.secho(f"ipfleet: warning: {problem}", err=True, fg=typer.colors.YELLOW)
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
        return
    controller = result.fetched.controller
    typer.echo(
        f"Stack {stack!r} (access: {result.connection.access}), controller "
        f"{controller.address}, published {result.fetched.published_at}."
    )
    for path in result.written:
        typer.echo(f"  wrote {path}")
    if result.tunnel and not result.connection.ssh_host:
        import shlex

        typer.echo("\nLog in to the controller with:\n  " + shlex.join(result.tunnel.ssh_command()))
    elif result.tunnel:
        typer.echo(f"\nLog in to the controller with:  ssh {result.connection.ssh_host}")
    typer.echo("\nIn Python:\n    " + result.snippet().replace("\n", "\n    "))


@app.command()
def notebook(
    stack: DeployedStackArg,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Local port for the notebook.")] = 8888,
) -> None:
    """Open the stack's JupyterLab (stack setting notebook = true) through the controller's tunnel.

    JupyterLab listens on the controller's own 127.0.0.1 only; this forwards it
    to 127.0.0.1:PORT here over the same ssh connection `ipfleet connect` set up,
    prints the URL with its token, and keeps the tunnel open until Ctrl-C.
    Inside it, `ipyparallel.Client()` reaches the cluster with no setup.
    """
    import subprocess

    from ipfleet.connect import Connection
    from ipfleet.notebook import forward

    connection = Connection.load(stack)
    if connection is None:
        _fail(f"not connected to {stack!r}: run `ipfleet connect {stack}` first", 2)
    try:
        with forward(connection, port) as url:
            typer.echo(f"JupyterLab of {stack!r}: {url}\n(Ctrl-C closes the tunnel)")
            try:
                url.process.wait()
            except KeyboardInterrupt:
                pass
    except subprocess.SubprocessError as e:
        _fail(f"the tunnel failed: {e}")


@app.command()
def cost(
    stack: StackArg,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use only the prices cached on this machine; ask AWS for none.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """What STACK costs per hour and per month, before anything is created.

    At engineNodes, at maxEngineNodes and when idle (the idle guard's floor,
    minEngineNodes): the controller (on demand), the engines (spot, and the
    on-demand base), their root volumes, and EFS per GB stored. Prices come from
    AWS (the Pricing API; EC2's spot price history for the stack's types in its
    region), each shown with its source and date, and are cached in
    ~/.cache/ipfleet/prices.json. Without credentials or network the cache answers
    and says how old it is; a price neither has is named, never guessed (exit 1).
    """
    from datetime import UTC, datetime

    from ipfleet.cost import estimate
    from ipfleet.prices import gather

    settings = _settings(stack)
    gathered = gather(
        settings.region,
        settings.controller_instance_type,
        settings.engine_instance_types,
        settings.shared_storage.creates_efs,
        offline=offline,
    )
    result = estimate(settings, gathered.prices)
    now = datetime.now(UTC)
    if as_json:
        document = result.as_json()
        document["fetchedNow"] = gathered.fetched
        document["problems"] = gathered.problems
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(_cost_text(result, gathered, now))
    if result.missing:
        raise typer.Exit(1)


def _cost_text(result, gathered, now) -> str:
    def usd(value: float | None, digits: int = 3) -> str:
        return "?" if value is None else f"${value:,.{digits}f}"

    lines = [f"Stack {result.stack} ({result.region}): cost before launch, USD"]
    lines.append(f"  {'size':<16}{'engine nodes':>13}{'per hour':>12}{'per month':>13}   (spot + on-demand engines)")
    for size in result.sizes:
        lines.append(
            f"  {size.label:<16}{size.engine_nodes:>13}{usd(size.per_hour):>12}{usd(size.per_month, 0):>13}"
            f"   ({size.spot_nodes} spot {usd(size.engines_spot)}, {size.on_demand_nodes} on demand "
            f"{usd(size.engines_on_demand)}, controller {usd(size.controller)}, root volumes {usd(size.volumes)})"
        )
    if result.efs_per_gb_month is not None:
        lines.append(f"  EFS: {usd(result.efs_per_gb_month)} per GB-month stored (billed by use, not in the totals)")
    lines.append("Prices:")
    for price in result.prices:
        age = price.age_days(now)
        when = "fetched now" if age < 1 / 24 else f"cached, {age:.1f} days old"
        lines.append(f"  {price.key}: ${price.usd:g}/{price.unit} ({price.source}, as of {price.as_of}; {when})")
    for key in result.missing:
        why = next((v for k, v in gathered.problems.items() if key.startswith(k) or k.startswith(key)), None)
        lines.append(f"  MISSING {key}: not from AWS ({why or 'not asked'}) and not in {gathered.cache}")
    if not gathered.fetched and not result.missing:
        lines.append("(AWS was not asked or did not answer: every price is from the cache, with its age above.)")
    return "\n".join(lines)


@app.command()
def check(
    stack: StackArg,
    as_json: JsonOpt = False,
    policy_config: Annotated[
        bool,
        typer.Option(
            "--policy-config",
            help="Print instead the config the CrossGuard pack (policy/) needs for STACK: "
            "`pulumi preview --policy-pack policy --policy-pack-config FILE`.",
        ),
    ] = False,
) -> None:
    """Check STACK's plan against ipfleet's security rules; exit 1 if any fails.

    Rules (plain functions in ipfleet/checks.py, run offline over the planned
    resources): no ingress from 0.0.0.0/0 or ::/0 unless listed in adminCidrs;
    IMDSv2 on every instance and launch template; encrypted volumes and file
    systems; public access blocked on every bucket the stack creates; no IAM
    statement that allows writing to "*". The same rules run in `pulumi preview`
    and `pulumi up` as a policy pack: --policy-pack policy.
    """
    from ipfleet.checks import run_checks

    if policy_config:
        from ipfleet.policy import pack_config

        typer.echo(pack_config(_settings(stack).admin_cidrs))
        return

    settings_and_plan = _plan_with_settings(stack)
    findings = run_checks(*settings_and_plan)
    if as_json:
        typer.echo(json.dumps({"passed": not findings, "findings": [f.as_json() for f in findings]}, indent=2))
    elif findings:
        typer.echo(f"{len(findings)} security rule(s) failed for stack {stack!r}:")
        for finding in findings:
            typer.echo(f"  [{finding.rule}] {finding.resource}: {finding.message}")
    else:
        from ipfleet.checks import RULES

        typer.echo(
            f"stack {stack!r}: all {len(RULES)} security rules pass ({', '.join(rule.__name__ for rule in RULES)})"
        )
    if findings:
        raise typer.Exit(1)


from ipfleet.twin_cli import twin_app  # noqa: E402 (a sub-command group; imports nothing heavy)

app.add_typer(twin_app)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
