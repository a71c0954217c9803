"""`ipfleet fetch`: bring a cluster's client connection file to this machine.

Needs only AWS credentials and the stack name: the controller publishes to a
parameter path derived from the stack name (see components/rendezvous.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootstrap.node.ipfleet_node import FORMAT, PENDING
from ipfleet.access import Access
from ipfleet.errors import IpfleetError
from ipfleet.settings import rendezvous_parameter

CLIENT_FILE = "ipcontroller-client.json"
# What a connection file must hold for ipyparallel.Client to use it.
CLIENT_KEYS = ("key", "signature_scheme", "location", "registration", "interface")


class FetchError(IpfleetError, RuntimeError):
    """Something the user can act on; the message says what."""


@dataclass(frozen=True)
class SshLogin:
    """The controller's login for tunnels (access ssm and ssh)."""

    user: str
    authorized_key: str | None
    host_keys: list[str]


@dataclass(frozen=True)
class PublishedController:
    """The controller as it describes itself in the published document (the agent's
    `publish`, bootstrap/node/ipfleet_node.py), parsed once where `fetch` reads it."""

    address: str
    access: Access
    public_address: str | None = None
    instance_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    ssh: SshLogin | None = None
    # As published, for `--json`.
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, data: Any, where: str = "the published document") -> PublishedController:
        if not isinstance(data, dict) or not isinstance(data.get("address"), str):
            raise FetchError(f"{where} names no controller address")
        # Controllers from before the access modes published none: they were direct.
        value = data.get("access", "direct")
        try:
            access = Access(value)
        except ValueError:
            modes = ", ".join(mode.value for mode in Access)
            raise FetchError(
                f"the controller published access {value!r}, which this ipfleet does not know ({modes})"
            ) from None
        ssh = data.get("ssh")
        login = None
        if isinstance(ssh, dict) and ssh.get("user"):
            login = SshLogin(str(ssh["user"]), ssh.get("authorized_key"), list(ssh.get("host_keys") or []))
        return cls(
            address=data["address"],
            access=access,
            public_address=data.get("public_address"),
            instance_id=data.get("instance_id"),
            versions=dict(data.get("versions") or {}),
            ssh=login,
            raw=dict(data),
        )

    def as_json(self) -> dict[str, Any]:
        return self.raw


@dataclass(frozen=True)
class Fetched:
    stack: str
    region: str
    path: Path
    profile: str
    published_at: str
    controller: PublishedController
    # JupyterLab's port and token on the controller, when the stack runs one.
    notebook: dict | None = None

    def as_json(self) -> dict:
        return {
            "stack": self.stack,
            "region": self.region,
            "path": str(self.path),
            "profile": self.profile,
            "published_at": self.published_at,
            "controller": self.controller.as_json(),
        }


def profile_name(stack: str) -> str:
    return f"ipfleet-{stack}"


def ipython_dir() -> Path:
    return Path(os.environ.get("IPYTHONDIR") or Path.home() / ".ipython").expanduser()


def client_file_path(stack: str, base: Path | None = None) -> Path:
    return (base or ipython_dir()) / f"profile_{profile_name(stack)}" / "security" / CLIENT_FILE


def fetch(
    stack: str,
    region: str,
    timeout: float,
    ipython_base: Path | None = None,
    on_wait: Callable[[float], None] = lambda elapsed: None,
    poll_seconds: float = 3.0,
) -> Fetched:
    """Wait (at most `timeout` s) for the stack's connection info and write the client file."""
    import boto3
    import botocore.exceptions as boto_errors

    name = rendezvous_parameter(stack)
    client = boto3.client("ssm", region_name=region)
    started = time.monotonic()
    while True:
        try:
            value = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except client.exceptions.ParameterNotFound:
            raise FetchError(
                f"no ipfleet stack {stack!r} in {region}: {name} does not exist. "
                f"Deploy it with `pulumi up -s {stack}`, or check --region."
            ) from None
        except boto_errors.NoCredentialsError:
            raise FetchError(
                "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
            ) from None
        except boto_errors.ClientError as e:
            error = e.response.get("Error", {})
            raise FetchError(f"AWS refused to read {name}: {error.get('Code')}: {error.get('Message')}") from None
        except boto_errors.EndpointConnectionError as e:
            raise FetchError(f"cannot reach AWS Systems Manager: {e}") from None
        if value != PENDING:
            break
        # A controller whose bootstrap failed will never publish: say why now.
        from ipfleet.node_status import describe_failure, failed_controller, read_records

        try:
            failed = failed_controller(read_records(client, stack))
        except boto_errors.ClientError:  # no right to read the records: keep waiting
            failed = None
        if failed is not None:
            raise FetchError(describe_failure(failed) + f"\n(`ipfleet status {stack}` shows every node)")
        elapsed = time.monotonic() - started
        if elapsed + poll_seconds > timeout:
            raise FetchError(
                f"the controller of {stack!r} has not published connection info after "
                f"{elapsed:.0f} s. It may still be booting: run `ipfleet fetch {stack}` "
                f"again, or read its boot log (`cloud-init status --long` on the controller)."
            )
        on_wait(elapsed)
        time.sleep(poll_seconds)

    document = _parse(name, value)
    controller = PublishedController.parse(document.get("controller"), name)
    path = client_file_path(stack, ipython_base)
    write_private(path, document["client"])
    return Fetched(
        stack=stack,
        region=region,
        path=path,
        profile=profile_name(stack),
        published_at=document.get("published_at", ""),
        controller=controller,
        notebook=document.get("notebook"),
    )


def _parse(name: str, value: str) -> dict:
    try:
        document = json.loads(value)
    except json.JSONDecodeError:
        raise FetchError(f"{name} does not hold ipfleet connection info (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise FetchError(f"{name} does not hold ipfleet connection info (format {FORMAT} expected)")
    client = document.get("client")
    missing = [k for k in CLIENT_KEYS if not isinstance(client, dict) or k not in client]
    if missing:
        raise FetchError(f"{name} holds incomplete connection info (missing {', '.join(missing)})")
    return document


def write_private(path: Path, content: dict) -> None:
    """Write the file owner-only from its first byte: it holds the cluster's key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(content, f, indent=2)
    os.replace(tmp, path)
