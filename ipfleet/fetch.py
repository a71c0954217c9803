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

from bootstrap.ipfleet_node import wire
from bootstrap.ipfleet_node.wire import FORMAT, PENDING
from ipfleet import remote
from ipfleet.access import Access
from ipfleet.errors import IpfleetError
from ipfleet.names import check_stack_name
from ipfleet.remote import printable
from ipfleet.settings import notebook_parameter, rendezvous_parameter

CLIENT_FILE = "ipcontroller-client.json"


class FetchError(IpfleetError, RuntimeError):
    """Something the user can act on; the message says what."""


@dataclass(frozen=True)
class SshLogin:
    """The controller's login for tunnels (access ssm and ssh): checked values only."""

    user: str
    authorized_key: str | None
    host_keys: list[str]


@dataclass(frozen=True)
class PublishedController:
    """The controller as it describes itself in the published document (the agent's
    `publish`, bootstrap/ipfleet_node/agent.py), parsed once where `fetch` reads it,
    against ipfleet/remote.py's schema: every field here has the shape it claims."""

    address: str
    access: Access
    public_address: str | None = None
    instance_id: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    ssh: SshLogin | None = None

    @classmethod
    def parse(cls, data: Any, where: str = "the published document") -> PublishedController:
        if not isinstance(data, dict) or "address" not in data:
            raise FetchError(f"{where} names no controller address")
        if isinstance(data.get("access"), str) and data["access"] not in {mode.value for mode in Access}:
            modes = ", ".join(mode.value for mode in Access)
            raise FetchError(
                f"the controller published access {printable(data['access'], 40)!r}, "
                f"which this ipfleet does not know ({modes})"
            )
        try:
            facts = remote.parse(remote.ControllerFacts, data, f"{where}: controller")
        except remote.RemoteDataError as e:
            raise FetchError(str(e)) from None
        login = None
        if facts.ssh is not None:
            login = SshLogin(facts.ssh.user, facts.ssh.authorized_key, list(facts.ssh.host_keys))
        return cls(
            address=facts.address,
            access=Access(facts.access),
            public_address=facts.public_address,
            instance_id=facts.instance_id,
            versions={str(k): v for k, v in facts.versions.items()},
            ssh=login,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "access": self.access.value,
            "public_address": self.public_address,
            "instance_id": self.instance_id,
            "versions": self.versions,
            "ssh": None
            if self.ssh is None
            else {"user": self.ssh.user, "authorized_key": self.ssh.authorized_key, "host_keys": self.ssh.host_keys},
        }


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
    # What could not be confirmed with EC2 (confirm_with_ec2).
    warnings: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {
            "stack": self.stack,
            "region": self.region,
            "path": str(self.path),
            "profile": self.profile,
            "published_at": self.published_at,
            "controller": self.controller.as_json(),
            "warnings": list(self.warnings),
        }


def profile_name(stack: str) -> str:
    return f"ipfleet-{stack}"


def ipython_dir() -> Path:
    return Path(os.environ.get("IPYTHONDIR") or Path.home() / ".ipython").expanduser()


def client_file_path(stack: str, base: Path | None = None) -> Path:
    check_stack_name(stack)  # a name with `/` or `..` would write outside the profile folder
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
    import botocore.exceptions as boto_errors

    from ipfleet import aws

    name = rendezvous_parameter(stack)
    client = aws.client("ssm", region)
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
        from ipfleet.node_status import controller_record, describe_failure

        try:
            record = controller_record(client, stack)
            failed = record if record is not None and record.phase == "failed" else None
        except boto_errors.ClientError:  # no right to read the records: keep waiting
            failed = None
        if failed is not None:
            # Believed only from the instance EC2 calls the stack's controller: any node
            # can write a record that claims the controller's role.
            known = controller_instances(aws.client("ec2", region), stack)
            if isinstance(known, dict) and known and failed.instance_id not in known:
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

    document = _parse(name, value, stack)
    controller = PublishedController.parse(document.controller.model_dump(), name)
    confirmed = confirm_with_ec2(aws.client("ec2", region), stack, controller)
    try:
        client_file = document.client.client_file()
    except remote.RemoteDataError as e:
        raise FetchError(f"{name}: {e}") from None
    path = client_file_path(stack, ipython_base)
    write_private(path, client_file)
    return Fetched(
        stack=stack,
        region=region,
        path=path,
        profile=profile_name(stack),
        published_at=document.published_at,
        controller=controller,
        notebook=_notebook(client, stack, document.notebook),
        warnings=confirmed,
    )


def _notebook(ssm, stack: str, published: remote.NotebookInfo | None) -> dict | None:
    """The notebook's port (from the document) and token (from its own parameter)."""
    if published is None:
        return None
    name = notebook_parameter(stack)
    try:
        token = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        token = published.token  # a controller from before the token had its own parameter
    if token == PENDING or token is None:
        return None
    try:
        checked = remote.parse(remote.NotebookInfo, {"port": published.port, "token": token}, name)
    except remote.RemoteDataError as e:
        raise FetchError(str(e)) from None
    return checked.model_dump()


def controller_instances(ec2, stack: str) -> dict[str, dict] | str:
    """EC2's own view of the stack's controller (by its tags, which no node can change):
    its instances by id, or why EC2 could not be asked."""
    import botocore.exceptions as boto_errors

    try:
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                *wire.tagged(stack, "controller"),
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        return {
            str(i.get("InstanceId")): i
            for page in pages
            for reservation in page.get("Reservations", [])
            for i in reservation.get("Instances", [])
        }
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as e:
        return printable(e, 200)


def confirm_with_ec2(ec2, stack: str, controller: PublishedController) -> tuple[str, ...]:
    """Check the published instance id and addresses against EC2. A mismatch is refused;
    what EC2 cannot confirm (no instance listed, no right to ask) is a warning."""
    instances = controller_instances(ec2, stack)
    if isinstance(instances, str):
        return (f"could not confirm the controller with EC2 ({instances}): its published address is trusted",)
    if not instances:
        return (
            f"EC2 lists no running controller tagged ipfleet:stack={stack}: "
            "its published instance id and address could not be confirmed",
        )
    instance = instances.get(str(controller.instance_id))
    if instance is None:
        raise FetchError(
            f"the published controller instance_id {controller.instance_id!r} is not the stack's controller "
            f"according to EC2 ({', '.join(sorted(instances))}): refusing the document"
        )
    if instance.get("PrivateIpAddress") != controller.address:
        raise FetchError(
            f"the published controller address {controller.address} is not {controller.instance_id}'s private "
            f"address according to EC2 ({instance.get('PrivateIpAddress')}): refusing the document"
        )
    if controller.public_address and instance.get("PublicIpAddress") != controller.public_address:
        raise FetchError(
            f"the published public_address {controller.public_address} is not {controller.instance_id}'s public "
            f"address according to EC2 ({instance.get('PublicIpAddress')}): refusing the document"
        )
    return ()


# The largest document SSM can hold (an advanced parameter): anything longer is not ours.
DOCUMENT_LIMIT = 8192


def _parse(name: str, value: str, stack: str) -> remote.PublishedDocument:
    if len(value) > DOCUMENT_LIMIT:
        raise FetchError(f"{name} does not hold ipfleet connection info ({len(value)} characters)")
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise FetchError(f"{name} does not hold ipfleet connection info (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FetchError(f"{name} does not hold ipfleet connection info (format {FORMAT} expected)")
    try:
        document = remote.parse(remote.PublishedDocument, data, name)
    except remote.RemoteDataError as e:
        raise FetchError(str(e)) from None
    if document.stack != stack:
        raise FetchError(f"{name}: stack: the document is for {printable(document.stack, 60)!r}, not {stack!r}")
    return document


def write_private(path: Path, content: dict) -> None:
    """Write the file owner-only from its first byte, in an owner-only folder: it holds
    the cluster's key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    replace_file(path, json.dumps(content, indent=2))


def replace_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace PATH whole with TEXT: a new file with exactly MODE from its first byte,
    renamed over it, never written through a link someone planted at its temporary name."""
    tmp = path.with_name(path.name + ".ipfleet-tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
