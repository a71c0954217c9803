"""`ipfleet connect`: everything a laptop needs to use a cluster, and `ipfleet.client()`.

Access modes (the stack's `ipfleet:access`):

- `ssm`: nothing is open to the internet. SSH to the controller rides on AWS
  Systems Manager Session Manager (the `AWS-StartSSHSession` document as ssh's
  ProxyCommand), and ipyparallel's own ssh tunnelling carries the ZMQ sockets.
- `ssh`: the same tunnels, straight to port 22 (open to adminCidrs only).
- `direct`: the client ports, open to adminCidrs only, with CurveZMQ.

For the tunnelled modes, connect writes one ssh config entry per stack
(`~/.ssh/ipfleet/STACK.conf`, with the controller's host keys pinned in
`~/.ssh/ipfleet/STACK.known_hosts`, taken from what the controller published
through AWS rather than trusted on first use), and makes sure `~/.ssh/config`
includes that folder (by absolute path). ipyparallel's tunnels run plain `ssh ipfleet-STACK`, so
the entry must be where ssh looks. One control master carries every tunnel.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ipfleet.access import Access
from ipfleet.fetch import (
    Fetched,
    FetchError,
    PublishedController,
    client_file_path,
    fetch,
    replace_file,
    write_private,
)
from ipfleet.names import check_region, check_stack_name
from ipfleet.remote import SSH_KEY_PATTERN, printable
from ipfleet.versions import VersionMismatchWarning, mismatches

SIDECAR = "ipfleet-connection.json"
# Private keys looked for when --identity is not given, in ssh's own order.
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


def ssh_alias(stack: str) -> str:
    return f"ipfleet-{check_stack_name(stack)}"


# What a remote value may be in an ssh config: an instance id, an address, a user name.
_PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _plain_token(value: str, keyword: str) -> str:
    if not _PLAIN_TOKEN.match(value):
        raise FetchError(f"refusing to write ssh {keyword} {printable(value, 80)!r}: not a plain name or address")
    return value


def _one_line(value: str, keyword: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise FetchError(f"refusing to write ssh {keyword}: it spans lines ({printable(value, 80)!r})")
    return value


def _path_token(path: Path | str) -> str:
    """A local path as one quoted ssh config token: `%` escaped (ssh expands its tokens in
    these keywords), and no quote or line break, which ssh cannot escape."""
    text = str(path)
    if any(c in text for c in '"\r\n\0'):
        raise FetchError(f"refusing to write the path {printable(text, 120)!r} into an ssh config")
    return '"' + text.replace("%", "%%") + '"'


def ssm_proxy_command(region: str) -> str:
    """ssh's ProxyCommand for Session Manager (needs the AWS CLI and its session-manager-plugin).
    ssh runs it through a shell: REGION is checked to be a region name, nothing else."""
    check_region(region)
    return (
        f"aws ssm start-session --target %h --document-name AWS-StartSSHSession "
        f"--parameters portNumber=%p --region {region}"
    )


@dataclass(frozen=True)
class Tunnel:
    """How ssh reaches the controller: rendered as a config entry and as a plain command."""

    alias: str
    host_name: str  # instance id (ssm) or address (ssh)
    user: str
    identity: Path
    known_hosts: Path
    proxy_command: str | None
    control_path: str

    def config_entry(self, stack: str) -> str:
        """The ssh config entry. Every value is one token that ssh reads back as it is: the
        remote ones (host, user) have been checked against their schema (ipfleet/remote.py)
        and are checked again here; paths are quoted, with ssh's `%` tokens escaped."""
        lines = [
            f"# ipfleet stack {check_stack_name(stack)}: written by `ipfleet connect {stack}`; safe to delete.",
            f"Host {self.alias}",
            f"    HostName {_plain_token(self.host_name, 'HostName')}",
            f"    User {_plain_token(self.user, 'User')}",
            f"    IdentityFile {_path_token(self.identity)}",
            "    IdentitiesOnly yes",
            # Host keys come from the controller, through AWS: no trust on first use.
            f"    HostKeyAlias {self.alias}",
            f"    UserKnownHostsFile {_path_token(self.known_hosts)}",
            "    StrictHostKeyChecking yes",
            # ipyparallel opens one tunnel per socket; one connection carries them all.
            "    ControlMaster auto",
            f"    ControlPath {_path_token(self.control_path)}",
            "    ControlPersist 10m",
            "    ServerAliveInterval 30",
        ]
        if self.proxy_command:
            # The user's own command (or ipfleet's): one line, whatever it holds.
            lines.append(f"    ProxyCommand {_one_line(self.proxy_command, 'ProxyCommand')}")
        return "\n".join(lines) + "\n"

    def ssh_command(self) -> list[str]:
        """The same login without the config entry (for `--no-ssh-config`)."""
        command = [
            "ssh",
            "-i",
            str(self.identity),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"HostKeyAlias={self.alias}",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
        if self.proxy_command:
            command += ["-o", f"ProxyCommand={self.proxy_command}"]
        return command + [f"{self.user}@{self.host_name}"]


@dataclass(frozen=True)
class Connection:
    """What `connect` saved beside the client file; `ipfleet.client()` reads it back."""

    stack: str
    region: str
    access: str
    client_file: str
    ssh_host: str | None
    identity: str | None
    versions: dict
    notebook: dict | None

    @staticmethod
    def path(stack: str, ipython_base: Path | None = None) -> Path:
        return client_file_path(stack, ipython_base).with_name(SIDECAR)

    def save(self, ipython_base: Path | None = None) -> None:
        # Owner-only: it holds the notebook's token.
        write_private(self.path(self.stack, ipython_base), asdict(self))

    @classmethod
    def load(cls, stack: str, ipython_base: Path | None = None) -> Connection | None:
        path = cls.path(stack, ipython_base)
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    @property
    def warnings(self) -> list[str]:
        return mismatches(self.versions)


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def find_identity(authorized_key: str | None, given: Path | None, directory: Path) -> Path:
    """The private key whose public half the controller accepts."""
    if given is not None:
        if not given.exists():
            raise FetchError(f"--identity {given}: no such file")
        return given
    if not authorized_key:
        raise FetchError(
            "the stack has no ipfleet:sshPublicKey, so the controller accepts no login: "
            "add your public key to the stack file, `pulumi up`, then connect again"
        )
    wanted = authorized_key.split()[:2]
    candidates = [directory / name for name in DEFAULT_IDENTITIES]
    candidates += sorted(p.with_suffix("") for p in directory.glob("*.pub"))
    for private in dict.fromkeys(candidates):
        public = private.with_name(private.name + ".pub")
        if private.exists() and public.exists() and public.read_text().split()[:2] == wanted:
            return private
    raise FetchError(
        f"no key in {directory} matches the stack's sshPublicKey ({' '.join(wanted)[:40]}...); pass --identity PATH"
    )


def include_line(directory: Path) -> str:
    return f"Include {directory / 'ipfleet'}/*.conf"


def ensure_include(directory: Path) -> bool:
    """Make ~/.ssh/config include ipfleet's entries. Returns True if it had to add the line.

    The line goes first (an Include inside a Host block would apply to that host
    only); everything already in the file is kept as it was.
    """
    directory.mkdir(mode=0o700, exist_ok=True)
    # A config that is a link (to a dotfiles checkout, say) stays one: its target changes.
    config = (directory / "config").resolve() if (directory / "config").is_symlink() else directory / "config"
    existing = config.read_text() if config.exists() else ""
    line = include_line(directory)
    if any(existing_line.strip() == line for existing_line in existing.splitlines()):
        return False
    header = f"# Added by ipfleet: one entry per stack, written by `ipfleet connect`.\n{line}\n\n"
    replace_file(config, header + existing, config.stat().st_mode & 0o777 if config.exists() else 0o600)
    return True


def tunnel_for(
    stack: str,
    region: str,
    controller: PublishedController,
    identity: Path,
    directory: Path,
    proxy_command: str | None = None,
) -> Tunnel:
    if controller.ssh is None:
        raise FetchError("the controller published no ssh login, which the tunnels need")
    host: str | None
    proxy: str | None
    if controller.access is Access.SSM:
        host = controller.instance_id
        if not host:
            raise FetchError("the controller published no instance id, which Session Manager needs")
        proxy = proxy_command or ssm_proxy_command(region)
    else:
        host = controller.public_address or controller.address
        proxy = proxy_command
    return Tunnel(
        alias=ssh_alias(stack),
        host_name=host,
        user=controller.ssh.user,
        identity=identity,
        known_hosts=directory / "ipfleet" / f"{stack}.known_hosts",
        proxy_command=proxy,
        # Unix sockets allow ~100 characters: keep the name short.
        control_path=str(directory / "ipfleet" / f"{stack}.sock"),
    )


def write_known_hosts(tunnel: Tunnel, host_keys: list[str]) -> Path:
    """The controller's host keys, under the alias ssh checks them by (HostKeyAlias):
    each exactly `TYPE BASE64`, so no line can carry a marker or a second host."""
    for key in host_keys:
        if not re.match(SSH_KEY_PATTERN, key):
            raise FetchError(f"refusing the published host key {printable(key, 80)!r}: not `TYPE BASE64`")
    tunnel.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(tunnel.known_hosts, "".join(f"{tunnel.alias} {key}\n" for key in host_keys))
    return tunnel.known_hosts


def write_ssh_files(
    stack: str, tunnel: Tunnel, host_keys: list[str], directory: Path, include: bool = True
) -> list[Path]:
    """The stack's entry and pinned host keys; returns the files written."""
    entry = write_known_hosts(tunnel, host_keys).with_name(f"{check_stack_name(stack)}.conf")
    replace_file(entry, tunnel.config_entry(stack))
    written = [entry, tunnel.known_hosts]
    if include and ensure_include(directory):
        written.append(directory / "config")
    return written


@dataclass(frozen=True)
class Connected:
    connection: Connection
    fetched: Fetched
    tunnel: Tunnel | None
    written: list[Path]

    def snippet(self) -> str:
        return f'import ipfleet\nrc = ipfleet.client("{self.connection.stack}")'

    def as_json(self) -> dict:
        return {
            **self.fetched.as_json(),
            "access": self.connection.access,
            "ssh_host": self.connection.ssh_host,
            "identity": self.connection.identity,
            "ssh_command": shlex.join(self.tunnel.ssh_command()) if self.tunnel else None,
            "files_written": [str(p) for p in self.written],
            "warnings": [*self.fetched.warnings, *self.connection.warnings],
            "snippet": self.snippet(),
        }


def connect(
    stack: str,
    region: str,
    timeout: float = 600.0,
    identity: Path | None = None,
    write_ssh_config: bool = True,
    proxy_command: str | None = None,
    on_wait: Callable[[float], None] = lambda elapsed: None,
) -> Connected:
    """Fetch the client file, prepare the tunnel for the stack's access mode, save the result."""
    fetched = fetch(stack, region, timeout, on_wait=on_wait)
    controller = fetched.controller
    access = controller.access
    tunnel = None
    written = [fetched.path]
    if access.tunnelled:
        directory = ssh_dir()
        key = find_identity(controller.ssh.authorized_key if controller.ssh else None, identity, directory)
        tunnel = tunnel_for(stack, region, controller, key, directory, proxy_command)
        host_keys = controller.ssh.host_keys if controller.ssh else []
        if write_ssh_config:
            written += write_ssh_files(stack, tunnel, host_keys, directory)
            # A master left from an earlier connect may lead to a controller that was
            # replaced since: ssh would keep using it until its keep-alives gave up.
            close_control_master(tunnel.alias)
        else:
            written.append(write_known_hosts(tunnel, host_keys))
    connection = Connection(
        stack=stack,
        region=region,
        access=access,
        client_file=str(fetched.path),
        ssh_host=tunnel.alias if tunnel and write_ssh_config else None,
        identity=str(tunnel.identity) if tunnel else None,
        versions=controller.versions,
        notebook=fetched.notebook,
    )
    connection.save()
    return Connected(connection, fetched, tunnel, written)


def close_control_master(alias: str) -> bool:
    """Stop the stack's shared ssh connection if one runs. Returns True if one did."""
    import subprocess

    try:
        result = subprocess.run(["ssh", "-O", "exit", alias], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def open_control_master(alias: str, timeout: float = 60.0) -> None:
    """Start the ssh connection every tunnel will share, detached from this terminal.

    ipyparallel starts ssh under a pseudo-terminal (pexpect); a connection it
    started would die with that terminal, ProxyCommand (Session Manager's
    plugin) included. Started here in a session of its own, the master lives
    on (ControlPersist) and ipyparallel's tunnels are added to it.
    """
    import subprocess

    if subprocess.run(["ssh", "-O", "check", alias], capture_output=True).returncode == 0:
        return
    result = subprocess.run(
        ["ssh", "-o", "ControlMaster=yes", "-o", "BatchMode=yes", alias, "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise FetchError(f"ssh to the controller ({alias}) failed: {result.stderr.strip()[-500:]}")


# Set by `ipfleet run` for its command: `ipfleet.client()` then needs no argument.
STACK_VARIABLE = "IPFLEET_STACK"


def client(
    stack: str | None = None,
    *,
    region: str | None = None,
    timeout: float = 60.0,
    task_retries: int | None = None,
    recover_lost_tasks: bool = True,
    **kwargs,
):
    """A ready client for STACK: the right file, tunnel and key (an `ipyparallel.Client`).
    Without STACK, the one `ipfleet run` names (IPFLEET_STACK).

    Uses what `ipfleet connect STACK` saved; connects first (AWS credentials
    needed) when nothing is saved. Warns (VersionMismatchWarning) when this
    Python or its ipyparallel/cloudpickle differ from the engines'.

    Load-balanced views retry a task whose engine dies `task_retries` times
    (default 3; 0 turns it off), and tasks a restarted controller lost are sent
    again unless `recover_lost_tasks=False` (see ipfleet/fleet_client.py).
    """
    from ipfleet.fleet_client import DEFAULT_TASK_RETRIES, FleetClient

    if stack is None:
        stack = os.environ.get(STACK_VARIABLE)
        if not stack:
            raise FetchError(
                f"ipfleet.client() needs a stack: client('NAME'), or run under `ipfleet run` ({STACK_VARIABLE})"
            )
    connection = Connection.load(stack)
    if connection is None:
        if region is None:
            from ipfleet.project import default_region

            region = default_region(stack)
        if region is None:
            raise FetchError(f"no AWS region for stack {stack!r}: pass region=..., or set AWS_REGION")
        connection = connect(stack, region, timeout=timeout).connection
    for problem in connection.warnings:
        warnings.warn(problem, VersionMismatchWarning, stacklevel=2)
    options = dict(
        kwargs,
        timeout=timeout,
        recover_lost_tasks=recover_lost_tasks,
        task_retries=DEFAULT_TASK_RETRIES if task_retries is None else task_retries,
    )
    if Access(connection.access).tunnelled:
        if not connection.ssh_host:
            raise FetchError(
                f"`ipfleet connect {stack}` ran with --no-ssh-config: ipyparallel's "
                "tunnels need the ssh config entry; connect again without it"
            )
        open_control_master(connection.ssh_host, timeout)
        return FleetClient(connection.client_file, sshserver=connection.ssh_host, sshkey=connection.identity, **options)
    return FleetClient(connection.client_file, **options)
