"""ipfleet's agent on every node: how the controller and the engines find each other.

The controller publishes its connection info (made at boot, on the node) to the
stack's rendezvous parameter, an SSM SecureString; engines wait for it and start.
No secret ever travels in user data, and nobody SSHes in to hand files around.

Runs with the node's venv Python (boto3 is there). Reads its facts from
/etc/ipfleet/node.json, written by cloud-init. Every wait is bounded and logged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

FACTS_FILE = Path(os.environ.get("IPFLEET_NODE_FACTS", "/etc/ipfleet/node.json"))
# What a parameter holds before the controller has published (set by the stack).
PENDING = "pending"
FORMAT = 1


def log(message: str) -> None:
    print(f"ipfleet-node: {message}", flush=True)


def load_facts() -> dict:
    return json.loads(FACTS_FILE.read_text())


def security_dir(facts: dict) -> Path:
    return Path(facts["profile_dir"]) / "security"


def ssm_client(facts: dict):
    import boto3

    # boto3 also honours AWS_ENDPOINT_URL; the facts file carries the stack's
    # endpoint override so every process on the node agrees on it.
    endpoint = facts.get("aws_endpoint_url") or None
    return boto3.client("ssm", region_name=facts["region"], endpoint_url=endpoint)


def private_address() -> str:
    """The node's private IPv4 address: what engines and clients are told to dial."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"],
        check=True, capture_output=True, text=True,
    ).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet" and addr.get("local"):
                return addr["local"]
    raise SystemExit("ipfleet-node: no global IPv4 address on this node")


def engine_count(facts: dict) -> int:
    wanted = facts["engines_per_node"]
    # `auto` is StarCluster's rule: one engine per vCPU.
    return (os.cpu_count() or 1) if wanted == "auto" else int(wanted)


def _versions() -> dict:
    """What must match between a laptop and the engines for pickled functions to work."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("ipyparallel", "cloudpickle", "pyzmq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def wait_for_files(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.stat().st_size > 0 for p in paths):
        if time.monotonic() > deadline:
            raise SystemExit(f"ipfleet-node: controller wrote no connection files in {timeout:.0f} s")
        time.sleep(0.5)


def publish(timeout: float) -> None:
    """Controller: publish the connection files the running ipcontroller wrote."""
    facts = load_facts()
    sec = security_dir(facts)
    client_file, engine_file = sec / "ipcontroller-client.json", sec / "ipcontroller-engine.json"
    log(f"waiting for {client_file} and {engine_file}")
    wait_for_files([client_file, engine_file], timeout)
    document = {
        "format": FORMAT,
        "stack": facts["stack"],
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "controller": {"address": private_address(), "versions": _versions()},
        "client": json.loads(client_file.read_text()),
        "engine": json.loads(engine_file.read_text()),
    }
    ssm_client(facts).put_parameter(
        Name=facts["rendezvous_parameter"],
        Value=json.dumps(document),
        Type="SecureString",
        Overwrite=True,
    )
    log(f"published connection info to {facts['rendezvous_parameter']}")


def read_published(client, name: str) -> dict | None:
    """The published document, or None while the controller has not published."""
    try:
        value = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except client.exceptions.ParameterNotFound:
        return None
    if value == PENDING:
        return None
    document = json.loads(value)
    if document.get("format") != FORMAT or "engine" not in document:
        raise ValueError(f"{name} holds no ipfleet connection info")
    return document


def wait_connection(timeout: float) -> None:
    """Engine: wait (bounded) for the controller to publish, then write the engine file."""
    facts = load_facts()
    client = ssm_client(facts)
    name = facts["rendezvous_parameter"]
    deadline = time.monotonic() + timeout
    delay, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            document = read_published(client, name)
        except Exception as e:  # AWS may be briefly unreachable while the node boots
            log(f"attempt {attempt}: cannot read {name} yet ({type(e).__name__}: {e})")
            document = None
        if document is not None:
            break
        if time.monotonic() + delay > deadline:
            raise SystemExit(f"ipfleet-node: nothing published at {name} after {timeout:.0f} s")
        log(f"attempt {attempt}: controller has not published yet; next look in {delay:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    target = security_dir(facts) / "ipcontroller-engine.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    # The file holds the cluster's HMAC key: owner-only from the first byte.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document["engine"], f)
    os.replace(tmp, target)
    log(f"controller at {document['controller']['address']} published "
        f"{document['published_at']}; wrote {target}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ipfleet-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("address", help="print this node's private IPv4 address")
    sub.add_parser("engine-count", help="print how many engines this node runs")
    for name in ("publish", "wait-connection"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if args.command == "address":
        print(private_address())
    elif args.command == "engine-count":
        print(engine_count(load_facts()))
    elif args.command == "publish":
        publish(args.timeout)
    else:
        wait_connection(args.timeout)


if __name__ == "__main__":
    sys.exit(main())
